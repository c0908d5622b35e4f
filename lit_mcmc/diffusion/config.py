"""Noise schedules as configs write them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lit_mcmc.diffusion.paths import resolution_shift
from lit_mcmc.diffusion.schedule import NoiseSchedule, check_levels

KINDS = ("cosine", "linear", "rectified_flow", "karras")
# The keys each kind reads (beyond kind, T, respace); a key set for another kind is a config error.
KIND_KEYS = {
    "linear": ("beta_start", "beta_end"),
    "cosine": ("s", "max_beta"),
    "rectified_flow": ("shift", "resolution_shift", "t_min", "t_max", "num_train_timesteps"),
    "karras": ("sigma_min", "sigma_max", "rho"),
}
RESOLUTION_SHIFT_KEYS = ("image_seq_len", "base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")


@dataclass
class ScheduleConfig:
    """A noise schedule as configs write it: ``{kind: cosine, T: 100}``, ``{kind: linear, T: 1000}``,
    ``{kind: rectified_flow, T: 50, shift: 3.0}`` or ``{kind: karras, T: 40, sigma_min: 0.002, sigma_max: 80}``.

    ``beta_start``/``beta_end`` apply to "linear", ``s``/``max_beta`` to "cosine" (DDPM schedules). "rectified_flow"
    (x_t = (1 − σ)x_0 + σε, SD3/Flux): σ = shift(u), u evenly spaced in [``t_min``, ``t_max``]; ``shift`` is SD3's
    (default 1: none), or ``resolution_shift`` ``{image_seq_len, base_image_seq_len: 256, max_image_seq_len: 4096,
    base_shift: 0.5, max_shift: 1.15}`` gives Flux's resolution-dependent one; the network's time is
    σ·``num_train_timesteps``. "karras" (VE/EDM, x_σ = x_0 + σε): Karras levels between ``sigma_min`` and
    ``sigma_max`` with ``rho``. ``respace`` keeps that many evenly spaced levels (docs/gaussian_paths.md).
    """

    kind: Literal["linear", "cosine", "rectified_flow", "karras"] = "cosine"
    T: int = 100  # noqa: N815
    beta_start: float = 1e-4
    beta_end: float = 0.02
    s: float = 0.008
    max_beta: float = 0.999
    respace: int | None = None
    shift: float | None = None
    resolution_shift: dict[str, Any] | None = None
    t_min: float | None = None
    t_max: float | None = None
    num_train_timesteps: int | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind={self.kind!r} is not one of {sorted(KINDS)}")
        check_levels(self.T)
        optional = KIND_KEYS["rectified_flow"] + KIND_KEYS["karras"]  # None unless set
        stray = [k for k in optional if getattr(self, k) is not None and k not in KIND_KEYS[self.kind]]
        if stray:
            raise ValueError(f"schedule.{stray[0]} does not apply to kind={self.kind!r} (it is a key of "
                             f"{[k for k, keys in KIND_KEYS.items() if stray[0] in keys][0]!r}): remove it")
        if self.shift is not None and self.resolution_shift is not None:
            raise ValueError("schedule.shift and schedule.resolution_shift are both set: give SD3's constant shift "
                             "or Flux's resolution-dependent one, not both")
        if self.resolution_shift is not None:
            unknown = sorted(set(self.resolution_shift) - set(RESOLUTION_SHIFT_KEYS))
            if unknown or "image_seq_len" not in self.resolution_shift:
                raise ValueError(f"schedule.resolution_shift takes {list(RESOLUTION_SHIFT_KEYS)} with image_seq_len "
                                 f"required (packed latent tokens: (H/16)·(W/16) for Flux), got "
                                 f"{sorted(self.resolution_shift)}")

    @property
    def flow_shift(self) -> float:
        """The rectified flow's shift: ``shift``, Flux's e^μ from ``resolution_shift``, or 1."""
        if self.resolution_shift is not None:
            return resolution_shift(**self.resolution_shift)
        return 1.0 if self.shift is None else float(self.shift)

    def build(self) -> NoiseSchedule:
        if self.kind == "linear":
            schedule = NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        elif self.kind == "cosine":
            schedule = NoiseSchedule.cosine(self.T, self.s, self.max_beta)
        elif self.kind == "rectified_flow":
            schedule = NoiseSchedule.rectified_flow(
                self.T, self.flow_shift, 1e-3 if self.t_min is None else self.t_min,
                0.999 if self.t_max is None else self.t_max,
                1000 if self.num_train_timesteps is None else self.num_train_timesteps)
        else:
            schedule = NoiseSchedule.karras(self.T, 0.002 if self.sigma_min is None else self.sigma_min,
                                            80.0 if self.sigma_max is None else self.sigma_max,
                                            7.0 if self.rho is None else self.rho)
        return schedule.respace(self.respace) if self.respace else schedule


def check_trainable_schedule(config: ScheduleConfig) -> None:
    """``lit-mcmc fit`` trains on DDPM schedules: other paths call the network with float times (1000σ, σ), which
    our networks' level embeddings do not take."""
    if config.kind not in ("linear", "cosine"):
        raise ValueError(f"model.schedule.kind={config.kind!r}: lit-mcmc fit trains on DDPM schedules (linear, "
                         "cosine); sample other Gaussian paths with published flow models (pretrained: diffusers) or "
                         "your own denoiser (model.components.<name>.denoiser, docs/gaussian_paths.md)")
