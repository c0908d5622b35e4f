"""The shared predict/validation plumbing of the image-metric callbacks (FID in :mod:`callbacks.fid`, classifier
accuracy in :mod:`callbacks.accuracy`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lit_mcmc.run_report import RunReport, class_strata, estimable, particle_groups, run_report, scored_samples


class SampleMetricCallback(Callback, ABC):
    """Base for callbacks that score generated images [B, C, H, W] in [-1, 1].

    A latent model's decoded ``images`` (beside its ``samples``) are what is scored.

    ``predict`` with a ``SampleWriter`` (anywhere in the callback list): global rank zero scores the merged
    samples (all of them, also those of earlier, interrupted runs) in ``on_predict_end`` and adds the values to
    the run's report (:mod:`lit_mcmc.run_report`), which the writer publishes. Without a writer: each batch's
    ``outputs["samples"]`` (and ``outputs.get("labels")``) updates the metrics on every rank; at the end they are
    computed into :attr:`last_values` and, on global rank zero, written with ``add_scalar`` to every logger
    experiment that has it (tags ``predict/<name>``).

    ``fit``/``validate``: every ``every_n_epochs`` validation epochs (0 disables it; the sanity check is
    skipped) the callback asks ``pl_module.generate_samples(n, generator)`` for ``(samples, labels or None)``,
    ``n_val_samples`` in total split over the ranks, with a generator seeded by ``seed + global_rank`` (the same
    images every epoch, so epochs are comparable), and logs ``val/<name>`` with ``pl_module.log``.

    Metric states are torchmetrics states: every rank updates its own and ``compute`` sums them over ranks, so
    the logged values are already global. Subclasses implement ``_prepare``, ``_reset``, ``_update`` and
    ``_compute``.
    """

    def __init__(self, every_n_epochs: int = 1, n_val_samples: int = 256, seed: int = 0) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 0 (0 turns off evaluation in fit)")
        if n_val_samples < 1:
            raise ValueError(f"n_val_samples={n_val_samples} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.n_val_samples = n_val_samples
        self.seed = seed
        self.last_values: dict[str, float] = {}
        # what the standard errors of the merged samples respect: their class (labels are fixed per index, not
        # drawn) and, with particle resampling, their group (copies of a common ancestor)
        self.strata: np.ndarray | None = None
        self.groups: np.ndarray | None = None
        # True while the merged samples are scored: only then do subclasses keep the per-sample values (features,
        # logits) that the standard errors need, not during validation or per-batch scoring
        self.keeping = False

    @abstractmethod
    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Move metric states and networks to the module's device (called before every evaluation)."""

    @abstractmethod
    def _reset(self) -> None:
        """Clear the states of generated images (FID keeps its real statistics)."""

    @abstractmethod
    def _update(self, samples: Tensor, labels: Tensor | None) -> None:
        """Add a batch of generated images [B, C, H, W] in [-1, 1] and their target labels (or None)."""

    @abstractmethod
    def _compute(self) -> dict[str, float]:
        """The metrics over everything added since the last reset, reduced over ranks: {name: value}."""

    def _uncertainty(self) -> dict[str, float]:
        """Standard errors and 95 % intervals of the merged samples' metrics (``<name>_se``, ``_low``, ``_high``),
        computed after :meth:`_compute` on global rank zero (with :attr:`strata` and :attr:`groups` set); none by
        default."""
        return {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._prepare(trainer, pl_module)
        self._reset()

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if run_report(trainer) is not None:
            return  # scored from the merged samples at the end of the run
        if not isinstance(outputs, dict) or "samples" not in outputs:
            found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise KeyError(
                f"{type(self).__name__} reads outputs['samples'] from predict_step, which returned {found}; "
                "return a dict with 'samples' (images in [-1, 1]) and 'labels'"
            )
        self._update(scored_samples(outputs), outputs.get("labels"))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = run_report(trainer)
        if report is not None:
            if trainer.is_global_zero:
                self._score_merged(report, pl_module)
            return
        self.last_values = self._compute()
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            add_scalar = getattr(logger.experiment, "add_scalar", None)
            if add_scalar is None:
                continue
            for name, value in self.last_values.items():
                add_scalar(f"predict/{name}", value, trainer.global_step)

    def _score_merged(self, report: RunReport, pl_module: LightningModule, chunk: int = 500) -> None:
        """Score the merged samples on this rank alone (the other ranks do not join a sync)."""
        merged = report.merged_samples(type(self).__name__)
        self._reset()
        self.keeping = True
        try:
            self._score_all(merged, pl_module, chunk)
        finally:
            self.keeping = False
        report.add_metrics(self.last_values)

    def _score_all(self, merged: dict[str, Any], pl_module: LightningModule, chunk: int) -> None:
        """The metrics of the merged samples and their uncertainty, into :attr:`last_values`."""
        samples, labels = torch.from_numpy(scored_samples(merged)), merged.get("labels")
        self.strata, self.groups = class_strata(labels), particle_groups(merged, pl_module)
        for start in range(0, len(samples), chunk):
            batch_labels = None if labels is None else torch.from_numpy(labels[start:start + chunk])
            self._update(samples[start:start + chunk].to(pl_module.device), batch_labels)
        metrics = [m for v in vars(self).values() if isinstance(v, (Metric, MetricCollection))
                   for m in (v.values() if isinstance(v, MetricCollection) else [v])]
        previous = [m.sync_on_compute for m in metrics]
        for m in metrics:
            m.sync_on_compute = False
        try:
            self.last_values = self._compute()
        finally:
            for m, value in zip(metrics, previous, strict=True):
                m.sync_on_compute = value
        if estimable(self.groups):
            self.last_values.update(self._uncertainty())
        else:
            rank_zero_warn(f"{type(self).__name__}: the samples form one particle group, so their metrics have no "
                           "standard errors; draw several groups (data.n_samples a multiple of the group size)")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        generate = getattr(pl_module, "generate_samples", None)
        if generate is None:
            raise AttributeError(
                f"{type(self).__name__} evaluates during fit by calling pl_module.generate_samples(n, generator) "
                f"-> (samples, labels), which {type(pl_module).__name__} does not have; set every_n_epochs=0 "
                "to evaluate only in predict"
            )
        self._prepare(trainer, pl_module)
        self._reset()
        n_local = math.ceil(self.n_val_samples / trainer.world_size)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + trainer.global_rank)
        # Validation runs in inference mode, but MCMC sampling needs input gradients.
        with torch.inference_mode(False), torch.enable_grad():
            samples, labels = generate(n_local, generator)
        self._update(samples.detach(), None if labels is None else labels.detach())
        self.last_values = self._compute()
        for name, value in self.last_values.items():
            # The value is already reduced over ranks by torchmetrics, so no sync_dist here.
            pl_module.log(f"val/{name}", value)

    def _due(self, trainer: Trainer) -> bool:
        if self.every_n_epochs == 0 or trainer.sanity_checking:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0
