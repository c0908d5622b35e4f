"""SampleWriter: one atomic shard per predict batch, merged at the end, and the run's report.

Shards make sampling preemption-safe; the merge gives ``samples.npz`` + ``stats.json``. Metric callbacks listed
after the writer score the merged samples (so a resumed run is scored on all of them) and hand their numbers to
:meth:`SampleWriter.add_metrics`; the writer then writes ``metrics.json`` and logs the sampler's hyper-parameters
with every metric to TensorBoard's HParams view, the acceptance rate per level as a curve, and a picture of the
samples (a scatter plot for 2D, an image grid for images).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
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

from lit_mcmc.data.indices import read_shard, shard_name, shard_paths
from lit_mcmc.report import quality_family, run_hparams, run_metrics, write_hparams_session
from lit_mcmc.samplers.diagnostics import degenerate_report


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz so that readers see either nothing or the whole file (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def expected_bytes(datamodule: Any, pl_module: L.LightningModule) -> int:
    """A lower bound on what a predict run writes: every sample twice (its shard and samples.npz), in float32."""
    n_samples = getattr(datamodule, "n_samples", None)
    shape = getattr(pl_module, "sample_shape", None)
    if n_samples is None or shape is None:
        return 0
    return 2 * 4 * int(n_samples) * int(np.prod(shape))


def check_output_dir(directory: Path, needed_bytes: int) -> None:
    """A clear error before sampling starts if ``directory`` cannot be written or lacks the space ``needed_bytes``."""
    try:
        (directory / "shards").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory / "shards", prefix=".probe_"):
            pass
    except OSError as err:
        raise OSError(f"the output directory {directory} (trainer.default_root_dir, or the SampleWriter's output_dir) "
                      f"cannot be written: {err.strerror or err}") from None
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OSError(f"the output directory {directory} has {free / 2**20:.0f} MiB free, but the run writes at least "
                      f"{needed_bytes / 2**20:.0f} MiB: free space or choose another trainer.default_root_dir")


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
        self.merged: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}
        self._start = 0.0

    def resolve_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self.merged = None
        self.metrics = {}
        check_output_dir(self.resolve_dir(trainer), expected_bytes(getattr(trainer, "datamodule", None), pl_module))

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        indices = prediction["indices"].numpy()
        levels = sorted(prediction["accept_rate_per_level"])
        path = self.resolve_dir(trainer) / "shards" / shard_name(indices)
        if self.nonfinite_samples == "refuse":
            broken = ~torch.isfinite(prediction["samples"].detach().flatten(1)).all(1).cpu()
            if bool(broken.any()):
                raise ValueError(f"{int(broken.sum())} samples of batch {path.stem} are not finite (e.g. index "
                                 f"{int(indices[broken.numpy()][0])}); not written, as the SampleWriter's "
                                 "nonfinite_samples is 'refuse'. A diverged model or too large steps: see "
                                 "stats.json's degenerate_levels of a run with nonfinite_samples: flag")
        try:
            self._write_shard(path, indices, levels, prediction)
        except OSError as err:  # the partial file is gone (atomic write): this batch is simply not done
            raise OSError(f"could not write {path}: {err.strerror or err}. Nothing of this batch was kept; free space "
                          "or fix the output directory (trainer.default_root_dir), then rerun the same command to "
                          "resume") from None

    @staticmethod
    def _write_shard(path: Path, indices: np.ndarray, levels: list[int], prediction: dict[str, Any]) -> None:
        atomic_save_npz(
            path,
            indices=indices,
            samples=prediction["samples"].detach().float().cpu().numpy(),
            accept_rate=prediction["accept_rate"].numpy(),
            nfe=np.array(prediction["nfe"]),
            adjusted=np.array(prediction["adjusted"]),
            levels=np.array(levels, dtype=np.int64),
            level_accept_rate=np.array([prediction["accept_rate_per_level"][lvl] for lvl in levels]),
            n_nonfinite=np.array(prediction["n_nonfinite"]),
            level_quadrature_error=np.array([prediction.get("quadrature_error_per_level", {}).get(lvl, np.nan)
                                             for lvl in levels], dtype=np.float64),
            level_log_ratio_mean=np.array([prediction.get("log_ratio_mean_per_level", {}).get(lvl, np.nan)
                                           for lvl in levels], dtype=np.float64),
            **level_health_arrays(prediction),
            seconds=np.array(prediction["seconds"]),
            **({"labels": prediction["labels"].cpu().numpy()} if prediction.get("labels") is not None else {}),
            **({"images": prediction["images"].detach().float().cpu().numpy()}
               if prediction.get("images") is not None else {}),
            **particle_arrays(prediction.get("particles")),
        )

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()  # every rank has written its shards
        if trainer.is_global_zero:
            self.merged = self.merge(trainer, pl_module)
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
        stats = self._stats(shards, indices, accept, pl_module)
        stats.update(health_stats(shards, indices, samples, stats["accept_rate_per_level"],
                                  getattr(pl_module, "sampler_config", None)))
        stats.update(particle_stats(shards))
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

    def add_metrics(self, values: dict[str, float]) -> None:
        """Called by metric callbacks (listed after the writer) with their values for this run."""
        self.metrics.update({k: float(v) for k, v in values.items()})

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.merged is None:
            return
        stats = self.merged["stats"]
        record = {**self.metrics, **{k: stats[k] for k in REPORTED_STATS if k in stats}}
        atomic_write_text(self.resolve_dir(trainer) / "metrics.json", json.dumps(record, indent=2))
        self._log_tensorboard(trainer, stats, record)

    def _log_tensorboard(self, trainer: L.Trainer, stats: dict[str, Any], record: dict[str, Any]) -> None:
        metrics = run_metrics(stats, record)  # sampler statistics and quality metrics (lit_mcmc.report's columns)
        hparams = run_hparams(stats)  # what distinguishes this run from other sampler runs
        quality = quality_family(scored_samples(self.merged).shape[1:])  # type: ignore[arg-type]
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
                shown = scored_samples(self.merged)  # type: ignore[arg-type]
                picture = sample_picture(shown, stats.get("sampler") or "samples")
                if isinstance(picture, np.ndarray):
                    experiment.add_image("samples", picture, 0, dataformats="CHW")
                elif picture is not None:
                    experiment.add_figure("samples", picture, 0)
            logger.save()

    def _stats(self, shards: list[dict[str, np.ndarray]], indices: np.ndarray, accept: np.ndarray,
               pl_module: L.LightningModule) -> dict[str, Any]:
        level_sums: dict[int, float] = {}
        level_counts: dict[int, int] = {}
        for s in shards:
            n = len(s["indices"])
            for level, rate in zip(s["levels"].tolist(), s["level_accept_rate"].tolist(), strict=True):
                level_sums[level] = level_sums.get(level, 0.0) + rate * n
                level_counts[level] = level_counts.get(level, 0) + n
        sampling_seconds = float(sum(float(s["seconds"]) for s in shards))
        sampler = getattr(pl_module, "sampler_config", None)
        return {
            "sampler": sampler.name if sampler is not None else None,
            "hparams": pl_module.report_hparams() if hasattr(pl_module, "report_hparams")
            else (sampler.hparams() if sampler is not None else {}),
            "n_samples": int(len(indices)),
            "adjusted": bool(any(bool(s["adjusted"]) for s in shards)),
            "accept_rate": float(accept.mean()),
            "accept_rate_per_level": {str(k): level_sums[k] / level_counts[k] for k in sorted(level_sums)},
            "nfe_per_sample": float(np.mean([float(s["nfe"]) for s in shards])),
            "n_nonfinite_log_ratios": int(sum(int(s["n_nonfinite"]) for s in shards)),
            **quadrature_error_stats(shards),
            **({"log_ratio_mean_per_level": means}
               if (means := per_level_mean(shards, "levels", "level_log_ratio_mean")) else {}),
            **step_table_stats(getattr(pl_module, "step_table_record", None)),
            "sampling_seconds": sampling_seconds,
            "samples_per_second": len(indices) / sampling_seconds if sampling_seconds > 0 else None,
            "wall_seconds": time.perf_counter() - self._start,
        }


REPORTED_STATS = ("accept_rate", "nfe_per_sample", "wall_seconds", "samples_per_second",
                  # with particles
                  "ess_mean", "resampling_events", "log_z_mean", "log_z_se", "unique_ancestors_mean")
PARTICLE_LEVEL_STATS = ("ess_mean", "ess_min", "resampled_groups")


def particle_arrays(particles: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """A shard's particle record: per sample ``log_weight``, per group id/log Ẑ/unique ancestors, and per level
    (``particle_levels``) the ESS mean and min over the batch's groups and the number of groups resampled."""
    if particles is None:
        return {}
    levels = sorted(particles["ess_mean_per_level"], reverse=True)
    return {"log_weight": particles["log_weight"].numpy(),
            "group_ids": particles["group_ids"].numpy(),
            "group_log_z": particles["group_log_z"].numpy(),
            "group_unique_ancestors": particles["group_unique_ancestors"].numpy(),
            "particle_levels": np.array(levels, dtype=np.int64),
            **{f"level_{stat}": np.array([particles[f"{stat}_per_level"][lvl] for lvl in levels], dtype=np.float64)
               for stat in PARTICLE_LEVEL_STATS}}


def weighted_output(shards: list[dict[str, np.ndarray]], order: np.ndarray) -> np.ndarray | None:
    """The samples' log-weights in index order when the run kept weights (``final: weighted``: not all zero)."""
    if "log_weight" not in shards[0]:
        return None
    log_weight = np.concatenate([s["log_weight"] for s in shards])[order]
    return log_weight if np.any(log_weight != 0) else None


def equally_weighted(merged: dict[str, Any], log_weight: np.ndarray) -> dict[str, Any]:
    """What metric callbacks and pictures score for weighted samples: a systematic resample of them (by their
    weights, the same every time) with equal weights; samples.npz keeps the weighted samples themselves."""
    weights = np.exp(log_weight - log_weight.max())
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    chosen = np.minimum(np.searchsorted(cdf, (np.arange(len(weights)) + 0.5) / len(weights), side="right"),
                        len(weights) - 1)
    view = {key: (value[chosen] if key in ("samples", "indices", "labels", "images") and value is not None else value)
            for key, value in merged.items()}
    return {**view, "log_weight": log_weight}


def particle_stats(shards: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The particles over the whole run: ESS per level (mean over groups, and min), resampling events per level,
    log Ẑ per group (its mean and standard error) and the unique ancestors at the end; empty without particles."""
    if "group_log_z" not in shards[0]:
        return {}
    n_groups = {id(s): len(s["group_ids"]) for s in shards}
    ess_sum: dict[int, float] = {}
    ess_min: dict[int, float] = {}
    resampled: dict[int, int] = {}
    for s in shards:
        for i, level in enumerate(s["particle_levels"].tolist()):
            ess_sum[level] = ess_sum.get(level, 0.0) + float(s["level_ess_mean"][i]) * n_groups[id(s)]
            ess_min[level] = min(ess_min.get(level, math.inf), float(s["level_ess_min"][i]))
            resampled[level] = resampled.get(level, 0) + int(s["level_resampled_groups"][i])
    total_groups = sum(n_groups.values())
    log_z = np.concatenate([s["group_log_z"] for s in shards])
    ancestors = np.concatenate([s["group_unique_ancestors"] for s in shards])
    levels = sorted(ess_sum, reverse=True)
    ess_mean = {str(k): ess_sum[k] / total_groups for k in levels}
    return {
        "n_groups": int(total_groups),
        "ess_mean": float(np.mean(list(ess_mean.values()))),
        "ess_mean_per_level": ess_mean,
        "ess_min_per_level": {str(k): ess_min[k] for k in levels},
        "resampled_groups_per_level": {str(k): resampled[k] for k in levels},
        "resampling_events": int(sum(resampled.values())),
        "log_z_mean": float(log_z.mean()),
        "log_z_se": float(log_z.std(ddof=1) / math.sqrt(len(log_z))) if len(log_z) > 1 else math.nan,
        # log of the mean of Ẑ over groups: the unbiased estimate (in Ẑ) of the normalising constant of γ_0
        "log_mean_z": float(np.logaddexp.reduce(log_z) - math.log(len(log_z))),
        "unique_ancestors_mean": float(ancestors.mean()),
        "unique_ancestors_min": int(ancestors.min()),
    }


def per_level_mean(shards: list[dict[str, np.ndarray]], levels_key: str, values_key: str) -> dict[str, float]:
    """A per-level value averaged over shards weighted by their samples (non-finite entries, and shards written
    before the value was recorded, left out), keyed by the level as a string (as stats.json holds it)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for s in shards:
        if values_key not in s:
            continue
        for level, value in zip(s[levels_key].tolist(), s[values_key].tolist(), strict=True):
            if np.isfinite(value):
                sums[level] = sums.get(level, 0.0) + value * len(s["indices"])
                counts[level] = counts.get(level, 0) + len(s["indices"])
    return {str(k): sums[k] / counts[k] for k in sorted(sums)}


def quadrature_error_stats(shards: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The line/curve correction's quadrature error estimate |Q − Q_low| per level (sample-weighted over shards)
    and its mean over levels; empty without such a correction (or for shards written before it was recorded)."""
    per_level = per_level_mean(shards, "levels", "level_quadrature_error")
    if not per_level:
        return {}
    return {"quadrature_error_mean": float(np.mean(list(per_level.values()))), "quadrature_error_per_level": per_level}


def level_health_arrays(prediction: dict[str, Any]) -> dict[str, np.ndarray]:
    """The shard's per-level shares of non-finite samples and log-ratios (when the sampler recorded them)."""
    samples = prediction.get("nonfinite_sample_share_per_level")
    if not samples:
        return {}
    levels = sorted(samples)
    log_ratios = prediction.get("nonfinite_log_ratio_share_per_level", {})
    return {"health_levels": np.array(levels, dtype=np.int64),
            "level_nonfinite_samples": np.array([samples[lvl] for lvl in levels], dtype=np.float64),
            "level_nonfinite_log_ratios": np.array([log_ratios.get(lvl, 0.0) for lvl in levels], dtype=np.float64)}


def health_stats(shards: list[dict[str, np.ndarray]], indices: np.ndarray, samples: np.ndarray,
                 accept_rate_per_level: dict[str, float], sampler: Any) -> dict[str, Any]:
    """Non-finite samples (count and first indices) and the degenerate levels, from all shards of the run."""
    broken = ~np.isfinite(samples.reshape(len(samples), -1)).all(1)
    stats: dict[str, Any] = {"n_nonfinite_samples": int(broken.sum()),
                             "nonfinite_sample_indices": indices[broken][:20].tolist()}
    nonfinite_samples = per_level_mean(shards, "health_levels", "level_nonfinite_samples")
    if not nonfinite_samples or sampler is None:
        return stats
    nonfinite_log_ratios = per_level_mean(shards, "health_levels", "level_nonfinite_log_ratios")
    adjusted = bool(any(bool(s["adjusted"]) for s in shards))
    problems = {}
    for level, share in nonfinite_samples.items():
        accept = accept_rate_per_level.get(level) if adjusted else None
        found = sampler.degeneracy.problems(accept, nonfinite_log_ratios.get(level, 0.0), share)
        if found:
            problems[int(level)] = found
    stats.update(nonfinite_sample_share_per_level=nonfinite_samples,
                 degenerate_levels={str(k): v for k, v in sorted(problems.items(), reverse=True)},
                 degenerate_report=degenerate_report(problems))
    return stats


def warn_broken_sampling(stats: dict[str, Any]) -> None:
    """One console warning per range of degenerate levels, and one for non-finite samples."""
    for line in stats.get("degenerate_report", []):
        rank_zero_warn(f"sampling degenerated at {line}; see stats.json's degenerate_levels (smaller steps usually "
                       "help; sampler.fail_on_degenerate: true stops such a run early)")
    if stats.get("n_nonfinite_samples"):
        rank_zero_warn(f"{stats['n_nonfinite_samples']} samples are not finite (indices "
                       f"{stats['nonfinite_sample_indices']}...): written as they are and listed in stats.json")


def step_table_stats(record: dict[str, Any] | None) -> dict[str, Any]:
    """The tuned (or reused) step size per level and how it was obtained, when the sampler used a step table."""
    if record is None:
        return {}
    return {"step_sizes": record["step_sizes"],
            "step_tuning": {k: v for k, v in record.items() if k not in ("step_sizes", "format")}}


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


def scored_samples(outputs: dict[str, Any]) -> Any:
    """What image metrics and pictures look at: the decoded ``images`` of a latent model, else the ``samples``."""
    images = outputs.get("images")
    return images if images is not None else outputs["samples"]


def find_writer(trainer: L.Trainer) -> SampleWriter | None:
    """The trainer's SampleWriter, if any (metric callbacks score its merged samples and report through it)."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, SampleWriter):
            return callback
    return None
