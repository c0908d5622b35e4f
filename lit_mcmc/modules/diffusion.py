"""DiffusionModule: DDPM ε-training of a score- or energy-parameterised network."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.nets.energy import EnergyForm, EnergyNet
from lit_mcmc.samplers import AnnealedSampler
from lit_mcmc.targets import EnergyModelTarget, ScoreModelTarget, Target

Parameterization = Literal["score", "energy"]


def rank_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator whose stream differs per process rank (``seed_everything`` alone gives every rank the same)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)


def _given_by_cli(module: L.LightningModule) -> bool:
    """Whether LightningCLI's instantiator is supplying this module's hyper-parameters (as plain config)."""
    from lightning.pytorch.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)  # Lightning >= 2.3; absent: treat as Python use
    return given is not None and given.get() is not None


class DiffusionModule(L.LightningModule):
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
    """

    def __init__(self, net: nn.Module, schedule: ScheduleConfig | None = None,
                 parameterization: Parameterization = "score", energy_form: EnergyForm = "sqdist",
                 lr: float = 1e-3, warmup_steps: int = 0, weight_decay: float = 0.0,
                 sample_shape: list[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        if parameterization not in ("score", "energy"):
            raise ValueError(f"model.parameterization={parameterization!r} is not one of ['score', 'energy']")
        if lr <= 0:
            raise ValueError(f"model.lr={lr} must be positive")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps={warmup_steps} must be >= 0")
        # Under `lit-mcmc`, hparams hold the network's config (class_path/init_args), so a checkpoint rebuilds it;
        # from Python, pass `net=` to `load_from_checkpoint` instead.
        self.save_hyperparameters(ignore=["net"] if isinstance(net, nn.Module) and not _given_by_cli(self) else None)
        self.schedule_config = schedule or ScheduleConfig()
        self.schedule: NoiseSchedule = self.schedule_config.build()
        self.parameterization = parameterization
        self.net = EnergyNet(net, energy_form) if parameterization == "energy" else net
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None

    # ----- the loss -----------------------------------------------------------------------------------------

    def _train_generator(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            self._generator = rank_generator(self.hparams.seed, self.global_rank, self.device)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

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
        loss = self.loss(self._data(batch), self._train_generator())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        # Fixed noise per batch, so validation losses are comparable across epochs. Energy models need input
        # gradients, which Lightning's default inference mode forbids: leave it for this step.
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed + 7919 * batch_idx)
        with torch.inference_mode(False), torch.enable_grad():
            loss = self.loss(self._data(batch).clone(), generator)
        self.log("val/loss", loss.detach(), prog_bar=True, sync_dist=True)
        return loss.detach()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup, 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- checkpoints: keep the per-rank random stream across restarts ------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._generator is not None:
            checkpoint["noise_generator_state"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._generator_state = checkpoint.get("noise_generator_state")
        self._generator = None

    # ----- sampling ----------------------------------------------------------------------------------------------

    def target(self) -> Target:
        """This model as a sampling target: −ε̂/σ_t for score models, −E/σ_t (with its score) for energy models."""
        if isinstance(self.net, EnergyNet):
            return EnergyModelTarget(self.net, self.schedule)
        return ScoreModelTarget(self.net, self.schedule)

    def generate_samples(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, None]:
        """n samples from the plain reverse process (used by monitoring callbacks during ``fit``)."""
        if self.hparams.sample_shape is None:
            raise ValueError("model.sample_shape is needed to generate samples (e.g. [2] or [3, 32, 32])")
        sampler = AnnealedSampler(self.target(), self.schedule, None, reverse=True)
        samples, _ = sampler.sample((n, *self.hparams.sample_shape), generator, device=self.device)
        return samples, None
