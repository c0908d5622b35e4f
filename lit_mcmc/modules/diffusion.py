"""DiffusionModule: DDPM ε-training of a score- or energy-parameterised network."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.compilation import compile_network
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig, check_trainable_schedule
from lit_mcmc.modules.training import (
    PerRankNoise,
    StopOnDivergence,
    adam_with_warmup,
    check_optimizer_args,
    net_hparams_ignore,
    validation_generator,
)
from lit_mcmc.nets.energy import EnergyForm, EnergyNet
from lit_mcmc.samplers import AnnealedSampler
from lit_mcmc.targets import EnergyModelTarget, ScoreModelTarget, Target

Parameterization = Literal["score", "energy"]


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
        check_trainable_schedule(self.schedule_config)
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
