"""Samplers as configs write them: one flat record that builds a kernel and the annealed driver."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from lit_mcmc.diffusion import NoiseSchedule, ReverseVariance
from lit_mcmc.samplers.annealed import AnnealedSampler
from lit_mcmc.samplers.kernels import HMC, MALA, UHMC, ULA, Kernel
from lit_mcmc.samplers.schedules import BetaPower, LevelValue
from lit_mcmc.targets import Target

KernelName = Literal["reverse", "ula", "mala", "uhmc", "hmc"]
KERNELS = ("reverse", "ula", "mala", "uhmc", "hmc")


@dataclass
class SamplerConfig:
    """An annealed sampler: which kernel, its hyper-parameters, and how levels are visited.

    Step size: a constant ``step_size``, or ``step_a``·β_t^``step_b`` when ``step_size`` is null (MCMC-corr's
    images). Mass (diagonal, M): ``mass``, or β_t^``mass_beta_power`` when set (√M = β_t is mass_beta_power: 2).
    ``correction``: "energy" (exact; needs an energy model), "line" or "curve" (HMC), with ``n_points`` interior
    nodes (per segment for "curve"). ``reverse``: take an ancestral step before the kernel steps of each level.
    """

    kernel: KernelName = "reverse"
    n_steps: int = 10
    step_size: float | None = None
    step_a: float | None = None
    step_b: float = 1.0
    correction: Literal["energy", "line", "curve"] | None = None
    n_points: int = 0
    n_leapfrog: int = 3
    damping: float = 0.0
    mass: float = 1.0
    mass_beta_power: float | None = None
    flip_on_reject: bool = True
    carry_momentum: bool = False
    reverse: bool = True
    reverse_variance: ReverseVariance = "beta"
    min_mcmc_level: int = 0

    def __post_init__(self) -> None:
        key = "sampler"
        if self.kernel not in KERNELS:
            raise ValueError(f"{key}.kernel={self.kernel!r} is not one of {list(KERNELS)}")
        if self.kernel == "reverse":
            if not self.reverse:
                raise ValueError(f"{key}.kernel='reverse' needs {key}.reverse=true")
            return
        if self.step_size is None and self.step_a is None:
            raise ValueError(f"{key}.step_size (a constant) or {key}.step_a (for a·β_t^b) must be set for "
                             f"kernel={self.kernel!r}")
        for name in ("step_size", "step_a", "mass"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{key}.{name}={value} must be positive")
        if not 0 <= self.damping <= 1:
            raise ValueError(f"{key}.damping={self.damping} must lie in [0, 1]")
        if self.n_steps < 1:
            raise ValueError(f"{key}.n_steps={self.n_steps} must be >= 1 for kernel={self.kernel!r}")
        adjusted = self.kernel in ("mala", "hmc")
        if adjusted and self.correction is None:
            raise ValueError(f"{key}.correction must be 'energy', 'line' or 'curve' for kernel={self.kernel!r}")
        if not adjusted and self.correction is not None:
            raise ValueError(f"{key}.correction={self.correction!r} has no effect on the unadjusted kernel "
                             f"{self.kernel!r}: remove it, or use kernel 'mala'/'hmc'")

    @property
    def name(self) -> str:
        """A short label in the papers' style: Reverse, U-LA, LA-3-line, HMC-curve, HMC (energy) …"""
        base = {"reverse": "Reverse", "ula": "U-LA", "mala": "LA", "uhmc": "U-HMC", "hmc": "HMC"}[self.kernel]
        if self.correction in ("line", "curve"):
            points = f"{self.n_points}-" if self.n_points or self.correction == "line" else ""
            return f"{base}-{points}{self.correction}"
        return base

    def _level_value(self, schedule: NoiseSchedule, constant: float | None, a: float | None, b: float) -> LevelValue:
        return constant if constant is not None else BetaPower(schedule, a, b)  # type: ignore[arg-type]

    def build_kernel(self, schedule: NoiseSchedule) -> Kernel | None:
        if self.kernel == "reverse":
            return None
        step = self._level_value(schedule, self.step_size, self.step_a, self.step_b)
        if self.kernel == "ula":
            return ULA(step)
        if self.kernel == "mala":
            return MALA(step, self.correction, self.n_points)  # type: ignore[arg-type]
        mass = self.mass if self.mass_beta_power is None else BetaPower(schedule, 1.0, self.mass_beta_power)
        if self.kernel == "uhmc":
            return UHMC(step, self.n_leapfrog, self.damping, mass, self.carry_momentum)
        return HMC(step, self.n_leapfrog, self.damping, mass, self.correction, self.n_points,  # type: ignore[arg-type]
                   self.flip_on_reject, self.carry_momentum)

    def build(self, target: Target, schedule: NoiseSchedule) -> AnnealedSampler:
        """The annealed sampler for ``target`` on ``schedule``."""
        kernel = self.build_kernel(schedule)
        return AnnealedSampler(target, schedule, kernel, self.n_steps if kernel else 0, self.reverse,
                               self.reverse_variance, self.min_mcmc_level)

    def hparams(self) -> dict[str, object]:
        """Flat, TensorBoard-friendly hyper-parameters (None becomes "none")."""
        return {"sampler": self.name, **{k: ("none" if v is None else v) for k, v in asdict(self).items()}}
