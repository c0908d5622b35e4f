"""SampleWriter: one atomic shard per predict batch, merged at the end, and the run's report.

Shards make sampling preemption-safe; the merge gives ``samples.npz`` + ``stats.json`` and opens the run's report
(:mod:`lit_mcmc.run_report`). Metric callbacks, in any order, score the merged samples (so a resumed run is scored on
all of them) and add their numbers to the report; the writer then writes ``metrics.json`` and logs the sampler's
hyper-parameters with every metric to TensorBoard's HParams view, the acceptance rate per level as a curve, and a
picture of the samples (a scatter plot for 2D, an image grid for images).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import matplotlib
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from lit_mcmc.data.shards import (
    atomic_save_npz,
    atomic_write_text,
    check_output_dir,
    expected_bytes,
    read_shard,
    shard_name,
    shard_paths,
)
from lit_mcmc.report import quality_family, run_hparams, run_metrics, write_hparams_session
from lit_mcmc.run_report import open_report, run_report, scored_samples
from lit_mcmc.run_stats import REPORTED_STATS, equally_weighted, level_arrays, run_stats, weighted_output


class SampleWriter(BasePredictionWriter):
    """Writes each predict batch as ``<output_dir>/shards/shard_<first>_<last>.npz`` the moment it is done.

    At the end of the epoch rank 0 merges all shards (from this run and any earlier, interrupted ones) into
    ``samples.npz`` (``samples`` N×…, ``indices``, ``accept_rate`` per sample; ``images`` too for latent models,
    the decoded samples in [−1, 1], which the image grid and the metric callbacks then use) in index order, and
    ``stats.json`` (acceptance overall and per level, NFE per sample, timings). ``output_dir`` defaults to the
    trainer's ``default_root_dir``.

    Broken-down sampling is never silent: levels the sampler flags as degenerate are listed in ``stats.json``
    (``degenerate_levels``), warned about once per range of levels, and marked in TensorBoard; samples with
    non-finite values are counted and their indices listed (``nonfinite_samples: flag``), or a batch holding any is
    refused with an error (``nonfinite_samples: refuse``).
    """

    def __init__(self, output_dir: str | None = None, nonfinite_samples: Literal["flag", "refuse"] = "flag") -> None:
        super().__init__(write_interval="batch")
        if nonfinite_samples not in ("flag", "refuse"):
            raise ValueError(f"nonfinite_samples={nonfinite_samples!r} is not one of ['flag', 'refuse']")
        self.output_dir = output_dir
        self.nonfinite_samples = nonfinite_samples
        self._start = 0.0

    def resolve_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        open_report(trainer, self.resolve_dir(trainer))
        check_output_dir(self.resolve_dir(trainer), expected_bytes(getattr(trainer, "datamodule", None), pl_module))

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        indices = prediction["indices"].numpy()
        path = self.resolve_dir(trainer) / "shards" / shard_name(indices)
        if self.nonfinite_samples == "refuse":
            broken = ~torch.isfinite(prediction["samples"].detach().flatten(1)).all(1).cpu()
            if bool(broken.any()):
                raise ValueError(f"{int(broken.sum())} samples of batch {path.stem} are not finite (e.g. index "
                                 f"{int(indices[broken.numpy()][0])}); not written, as the SampleWriter's "
                                 "nonfinite_samples is 'refuse'. A diverged model or too large steps: see "
                                 "stats.json's degenerate_levels of a run with nonfinite_samples: flag")
        try:
            self._write_shard(path, indices, prediction)
        except OSError as err:  # the partial file is gone (atomic write): this batch is simply not done
            raise OSError(f"could not write {path}: {err.strerror or err}. Nothing of this batch was kept; free space "
                          "or fix the output directory (trainer.default_root_dir), then rerun the same command to "
                          "resume") from None

    @staticmethod
    def _write_shard(path: Path, indices: np.ndarray, prediction: dict[str, Any]) -> None:
        atomic_save_npz(
            path,
            indices=indices,
            samples=prediction["samples"].detach().float().cpu().numpy(),
            accept_rate=prediction["accept_rate"].numpy(),
            nfe=np.array(prediction["nfe"]),
            adjusted=np.array(prediction["adjusted"]),
            n_nonfinite=np.array(prediction["n_nonfinite"]),
            seconds=np.array(prediction["seconds"]),
            **level_arrays(prediction.get("levels", {})),
            **({"labels": prediction["labels"].cpu().numpy()} if prediction.get("labels") is not None else {}),
            **({"images": prediction["images"].detach().float().cpu().numpy()}
               if prediction.get("images") is not None else {}),
            **particle_arrays(prediction.get("particles")),
        )

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()  # every rank has written its shards
        if trainer.is_global_zero:
            run_report(trainer).merged = self.merge(trainer, pl_module)  # type: ignore[union-attr]
        trainer.strategy.barrier()

    def merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Merge the shards into samples.npz and stats.json; returns {"samples", "indices", "labels", "images",
        "stats"} ("labels" and "images" None when the samples have none)."""
        out = self.resolve_dir(trainer)
        shards = [s for s in map(read_shard, shard_paths(out)) if s is not None]
        if not shards:
            raise RuntimeError(f"no sample shards found in {out / 'shards'}")
        for stale in (out / "shards").glob(".tmp_*"):  # partial writes of interrupted runs, now resampled
            stale.unlink(missing_ok=True)
        indices = np.concatenate([s["indices"] for s in shards])
        order = np.argsort(indices, kind="stable")
        indices = indices[order]
        if len(np.unique(indices)) != len(indices):
            raise RuntimeError(f"duplicate sample indices in {out / 'shards'}: shards overlap")
        n_samples = getattr(trainer.datamodule, "n_samples", None)
        if n_samples is not None:
            self._check_complete(indices, n_samples, out / "shards")
        samples = np.concatenate([s["samples"] for s in shards])[order]
        accept = np.concatenate([s["accept_rate"] for s in shards])[order]
        labels = np.concatenate([s["labels"] for s in shards])[order] if "labels" in shards[0] else None
        images = np.concatenate([s["images"] for s in shards])[order] if "images" in shards[0] else None
        log_weight = weighted_output(shards, order)
        extra = {name: value for name, value in (("labels", labels), ("images", images), ("log_weight", log_weight))
                 if value is not None}
        atomic_save_npz(out / "samples.npz", samples=samples, indices=indices, accept_rate=accept, **extra)
        sampler = getattr(pl_module, "sampler_config", None)
        hparams = (pl_module.report_hparams() if hasattr(pl_module, "report_hparams")
                   else (sampler.hparams() if sampler is not None else {}))
        stats = run_stats(shards, indices, samples, accept, sampler, hparams,
                          getattr(pl_module, "step_table_record", None))
        sampling_seconds = float(sum(float(s["seconds"]) for s in shards))
        stats.update(sampling_seconds=sampling_seconds,
                     samples_per_second=len(indices) / sampling_seconds if sampling_seconds > 0 else None,
                     wall_seconds=time.perf_counter() - self._start)
        atomic_write_text(out / "stats.json", json.dumps(stats, indent=2))
        warn_broken_sampling(stats)
        merged = {"samples": samples, "indices": indices, "labels": labels, "images": images, "stats": stats}
        return equally_weighted(merged, log_weight) if log_weight is not None else merged

    @staticmethod
    def _check_complete(indices: np.ndarray, n_samples: int, shards: Path) -> None:
        """The merged indices must be exactly 0..n_samples−1 (sorted, without duplicates)."""
        if indices[-1] >= n_samples:
            raise RuntimeError(f"{shards} holds samples up to index {indices[-1]} but data.n_samples={n_samples}: "
                               "they are shards of another run; sample into a fresh trainer.default_root_dir")
        missing = np.setdiff1d(np.arange(n_samples), indices)
        if len(missing):
            raise RuntimeError(f"{shards} lacks {len(missing)} of data.n_samples={n_samples} samples (indices "
                               f"{missing[:5].tolist()}...): rerun the same command to draw them")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Publish the report once every metric callback has added to it (in ``on_predict_end``); Lightning calls
        this only after a run that succeeded."""
        report = run_report(trainer)
        if stage != "predict" or not trainer.is_global_zero or report is None or report.merged is None:
            return
        stats = report.merged["stats"]
        record = {**report.metrics, **{k: stats[k] for k in REPORTED_STATS if k in stats}}
        atomic_write_text(self.resolve_dir(trainer) / "metrics.json", json.dumps(record, indent=2))
        self._log_tensorboard(trainer, report.merged, record)

    @staticmethod
    def _log_tensorboard(trainer: L.Trainer, merged: dict[str, Any], record: dict[str, Any]) -> None:
        stats = merged["stats"]
        metrics = run_metrics(stats, record)  # sampler statistics and quality metrics (lit_mcmc.report's columns)
        hparams = run_hparams(stats)  # what distinguishes this run from other sampler runs
        quality = quality_family(scored_samples(merged).shape[1:])
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # one HParams session with every metric declared
                write_hparams_session(logger.experiment, hparams, metrics, quality)
            else:
                logger.log_hyperparams(hparams)
                logger.log_metrics({f"metrics/{k}": v for k, v in metrics.items()}, step=0)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_scalar"):
                for level, rate in stats["accept_rate_per_level"].items():
                    experiment.add_scalar("sampler/accept_rate_per_level", rate, int(level))
                # the tuned ε per level next to the acceptance, and the quadrature error estimate
                for tag, key in (("step_size", "step_sizes"), ("quadrature_error", "quadrature_error_per_level"),
                                 ("log_ratio_mean", "log_ratio_mean_per_level"), ("ess_mean", "ess_mean_per_level"),
                                 ("ess_min", "ess_min_per_level"), ("resampled_groups", "resampled_groups_per_level")):
                    for level, value in stats.get(key, {}).items():
                        experiment.add_scalar(f"sampler/{tag}_per_level", value, int(level))
                for level in stats.get("nonfinite_sample_share_per_level", {}):  # 1 marks a degenerate level
                    experiment.add_scalar("sampler/degenerate_per_level",
                                          float(level in stats.get("degenerate_levels", {})), int(level))
                shown = scored_samples(merged)
                picture = sample_picture(shown, stats.get("sampler") or "samples")
                if isinstance(picture, np.ndarray):
                    experiment.add_image("samples", picture, 0, dataformats="CHW")
                elif picture is not None:
                    experiment.add_figure("samples", picture, 0)
            logger.save()


def particle_arrays(particles: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """A shard's particle record: per sample ``log_weight``, per group id, log Ẑ and unique ancestors (the per-level
    ESS and resampling are in the batch's per-level record)."""
    if particles is None:
        return {}
    return {key: particles[key].numpy() for key in ("log_weight", "group_ids", "group_log_z", "group_unique_ancestors")}


def warn_broken_sampling(stats: dict[str, Any]) -> None:
    """One console warning per range of degenerate levels, and one for non-finite samples."""
    for line in stats.get("degenerate_report", []):
        rank_zero_warn(f"sampling degenerated at {line}; see stats.json's degenerate_levels (smaller steps usually "
                       "help; sampler.fail_on_degenerate: true stops such a run early)")
    if stats.get("n_nonfinite_samples"):
        rank_zero_warn(f"{stats['n_nonfinite_samples']} samples are not finite (indices "
                       f"{stats['nonfinite_sample_indices']}...): written as they are and listed in stats.json")


def sample_picture(samples: np.ndarray, title: str) -> Any:
    """A scatter figure for 2D points, an image grid (CHW array in [0, 1]) for images, else None."""
    if samples.ndim == 2 and samples.shape[1] == 2:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=title)
        return fig
    if samples.ndim == 4:
        from torchvision.utils import make_grid

        grid = make_grid(torch.from_numpy(samples[:64]), nrow=8, normalize=True, value_range=(-1, 1))
        return grid.numpy()
    return None
