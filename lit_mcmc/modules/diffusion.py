"""DiffusionModule: DDPM ε-training of a score- or energy-parameterised network."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.compilation import compile_network
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.nets.energy import EnergyForm, EnergyNet
from lit_mcmc.samplers import AnnealedSampler
from lit_mcmc.targets import EnergyModelTarget, ScoreModelTarget, Target

Parameterization = Literal["score", "energy"]


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


class DiffusionModule(StopOnDivergence, PerRankNoise, L.LightningModule):
    """Trains ε̂(x_t, t) with the DDPM loss E‖ε − ε̂(√ᾱ_t x_0 + σ_t ε, t)‖² (mean over all elements).

    With ``parameterization="energy"`` the network f is wrapped as E = ‖f(x,t) − x‖² (or ½‖f‖²) and ε̂ = ∇ₓE is
    trained by double backpropagation; the model then has an exact log-density −E/σ_t for MH corrections.
    Exponential moving averages come from Lightning's ``EMAWeightAveraging`` callback (configs add it), whose
    averaged weights are the ones saved in checkpoints and used for sampling.

    Args:
        net: the network ``net(x, t) -> tensor shaped like x``.
        schedule: the noise schedule (``{kind: cosine, T: 100}``).
        parameterization: "score" (ε-prediction) or "energy".
        energy_form: "sqdist" (‖f − x‖², the papers') or "half_norm" (½‖f‖²).
        lr: Adam learning rate; ``warmup_steps`` of linear warm-up, then constant.
        weight_decay: Adam weight decay.
        sample_shape: shape of one sample (e.g. [2] or [3, 32, 32]); needed by :meth:`generate_samples`.
        seed: base seed of the timestep/noise stream (combined with the process rank).
        compile: ``torch.compile`` the network for training (score models; an energy model's double backward
            cannot be compiled, so it stays eager with a warning). Mixed precision is ``trainer.precision``
            (e.g. bf16-mixed).
    """

    def __init__(self, net: nn.Module, schedule: ScheduleConfig | None = None,
                 parameterization: Parameterization = "score", energy_form: EnergyForm = "sqdist",
                 lr: float = 1e-3, warmup_steps: int = 0, weight_decay: float = 0.0,
                 sample_shape: list[int] | None = None, seed: int = 0, compile: bool = False) -> None:
        super().__init__()
        if parameterization not in ("score", "energy"):
            raise ValueError(f"model.parameterization={parameterization!r} is not one of ['score', 'energy']")
        check_optimizer_args(lr, warmup_steps, weight_decay)
        self.save_hyperparameters(ignore=net_hparams_ignore(self, net))
        self.schedule_config = schedule or ScheduleConfig()
        self.schedule: NoiseSchedule = self.schedule_config.build()
        self.parameterization = parameterization
        self.net = EnergyNet(net, energy_form) if parameterization == "energy" else net

    def configure_model(self) -> None:
        if self.hparams.get("compile", False):
            compile_network(self, training_energy=self.parameterization == "energy")

    # ----- the loss -----------------------------------------------------------------------------------------

    def loss(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """The DDPM ε-loss on a batch of data, with timesteps and noise drawn from ``generator``."""
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        eps_hat = self.net(x_t, self.schedule.model_timesteps.to(x0.device)[t])
        return torch.nn.functional.mse_loss(eps_hat, noise)

    @staticmethod
    def _data(batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss(self._data(batch), self.train_generator())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        # Energy models need input gradients, which Lightning's default inference mode forbids: leave it here.
        generator = validation_generator(self.hparams.seed, batch_idx, self.device)
        with torch.inference_mode(False), torch.enable_grad():
            loss = self.loss(self._data(batch).clone(), generator)
        self.log("val/loss", loss.detach(), prog_bar=True, sync_dist=True)
        return loss.detach()

    def configure_optimizers(self) -> Any:
        return adam_with_warmup(self.parameters(), self.hparams.lr, self.hparams.warmup_steps,
                                self.hparams.weight_decay)

    # ----- sampling ----------------------------------------------------------------------------------------------

    def target(self, schedule: NoiseSchedule | None = None) -> Target:
        """This model as a sampling target: −ε̂/σ_t for score models, −E/σ_t (with its score) for energy models.

        ``schedule`` (default: the training schedule) may be a respacing of it: the net is then called with the
        training level of each kept level.
        """
        schedule = schedule or self.schedule
        if isinstance(self.net, EnergyNet):
            return EnergyModelTarget(self.net, schedule)
        return ScoreModelTarget(self.net, schedule)

    def generate_samples(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, None]:
        """n samples from the plain reverse process (used by monitoring callbacks during ``fit``)."""
        if self.hparams.sample_shape is None:
            raise ValueError("model.sample_shape is needed to generate samples (e.g. [2] or [3, 32, 32])")
        sampler = AnnealedSampler(self.schedule, None, reverse=True)
        samples, _ = sampler.sample(self.target(), (n, *self.hparams.sample_shape), generator, device=self.device)
        return samples, None
