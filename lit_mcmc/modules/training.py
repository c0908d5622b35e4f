"""What every training module shares: per-rank noise streams, the optimiser with warm-up, hyper-parameter
bookkeeping, and stopping a run whose loss or gradients are no longer finite (``PerRankNoise`` and
``StopOnDivergence`` are mixins of the Lightning modules that train)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


def rank_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator whose stream differs per process rank (``seed_everything`` alone gives every rank the same)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)


def validation_generator(seed: int, batch_idx: int, device: torch.device) -> torch.Generator:
    """A generator fixed per (seed, validation batch), so validation losses are comparable across epochs."""
    return torch.Generator(device=device).manual_seed(seed + 7919 * batch_idx)


def _given_by_cli(module: L.LightningModule) -> bool:
    """Whether LightningCLI's instantiator is supplying this module's hyper-parameters (as plain config)."""
    from lightning.pytorch.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)  # Lightning >= 2.3; absent: treat as Python use
    return given is not None and given.get() is not None


def net_hparams_ignore(module: L.LightningModule, net: object) -> list[str] | None:
    """What ``save_hyperparameters`` should leave out: the network, unless LightningCLI gives it as config.

    Under ``lit-mcmc``, hparams hold the network's config (class_path/init_args), so a checkpoint rebuilds it;
    from Python, pass ``net=`` to ``load_from_checkpoint`` instead.
    """
    return ["net"] if isinstance(net, nn.Module) and not _given_by_cli(module) else None


def check_optimizer_args(lr: float, warmup_steps: int, weight_decay: float) -> None:
    """Clear errors for the optimiser settings shared by the training modules."""
    if lr <= 0:
        raise ValueError(f"model.lr={lr} must be positive")
    if warmup_steps < 0:
        raise ValueError(f"model.warmup_steps={warmup_steps} must be >= 0")
    if weight_decay < 0:
        raise ValueError(f"model.weight_decay={weight_decay} must be >= 0")


def adam_with_warmup(parameters: Iterable[nn.Parameter], lr: float, warmup_steps: int,
                     weight_decay: float) -> dict[str, Any]:
    """Adam with a linear learning-rate warm-up over ``warmup_steps`` optimiser steps, then constant (the papers')."""
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup_steps, 1)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class PerRankNoise:
    """Mixin for training modules that draw timesteps and noise from a per-rank generator kept in checkpoints.

    The stream is seeded from ``hparams.seed`` and the process rank (:func:`rank_generator`); every rank's state is
    saved with every checkpoint and restored on resume, so each rank of a restarted run continues its own stream
    (a rank beyond the saved world size starts a fresh one).
    """

    _generator: torch.Generator | None = None
    _generator_states: Tensor | None = None  # from a checkpoint: [world size, state bytes], row r for rank r

    def train_generator(self) -> torch.Generator:
        """This rank's training stream, on the module's device (restored from a checkpoint when resuming)."""
        if self._generator is None or self._generator.device != self.device:  # type: ignore[attr-defined]
            rank = self.global_rank  # type: ignore[attr-defined]
            self._generator = rank_generator(self.hparams.seed, rank, self.device)  # type: ignore[attr-defined]
            if self._generator_states is not None and rank < len(self._generator_states):
                self._generator.set_state(self._generator_states[rank].clone())
        return self._generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._generator is not None:
            # Only rank 0 writes the file, so it gathers every rank's state (Lightning calls this on all ranks):
            # [world size, state bytes] under DDP, the state vector itself for a single process.
            state = self._generator.get_state().to(self.device)  # type: ignore[attr-defined]
            checkpoint["noise_generator_state"] = self.all_gather(state).cpu()  # type: ignore[attr-defined]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("noise_generator_state")
        self._generator_states = None if state is None else state.reshape(-1, state.shape[-1])
        self._generator = None


class TrainingDiverged(ArithmeticError):
    """Training produced a non-finite loss or gradient; the weights were not updated with it."""


class StopOnDivergence:
    """Mixin for training modules: a non-finite gradient (from a non-finite loss, or an overflow) stops training
    before the optimiser applies it, so no NaN weights are ever written and the last checkpoint stays the last good
    one. (Under fp16 loss scaling, non-finite gradients are expected and skipped by the scaler: no check then.)"""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        if str(trainer.precision).startswith("16"):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack([g.detach().float().norm() for g in grads]).sum())):
            return
        checkpoint = getattr(trainer.checkpoint_callback, "dirpath", None)
        kept = f"; the last good checkpoint is in {checkpoint}" if checkpoint else ""
        raise TrainingDiverged(
            f"training diverged at step {trainer.global_step}: the loss or its gradients are not finite, and the "
            f"weights were not updated{kept}. Lower model.lr or set trainer.gradient_clip_val, then resume with "
            "--ckpt_path")
