"""Samplers as configs write them: one flat record that builds a kernel and the annealed driver."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from lit_mcmc.diffusion import NoiseSchedule, ReverseVariance, check_eta
from lit_mcmc.samplers.annealed import AnnealedSampler
from lit_mcmc.samplers.corrections import QuadratureName, check_quadrature
from lit_mcmc.samplers.diagnostics import DegeneracyThresholds
from lit_mcmc.samplers.kernels import HMC, MALA, UHMC, ULA, Kernel
from lit_mcmc.samplers.particles import ResampleConfig
from lit_mcmc.samplers.schedules import BetaPower, LevelValue

KernelName = Literal["reverse", "ula", "mala", "uhmc", "hmc"]
KERNELS = ("reverse", "ula", "mala", "uhmc", "hmc")
# What the tuning pass depends on (n_steps too: it adapts over episodes of K steps, as the sampling pass runs them).
TUNING_KEYS = ("kernel", "n_steps", "step_size", "step_a", "step_b", "correction", "n_points", "quadrature",
               "n_leapfrog", "damping", "mass", "mass_beta_power", "flip_on_reject", "carry_momentum", "reverse",
               "reverse_variance", "min_mcmc_level", "target_accept", "tune_samples", "tune_steps")
# Settings a step table depends on that were added later: recorded only away from the value that does what tables
# tuned before them assumed, so that those tables stay valid.
LATER_TUNING_KEYS = {"step_scaling": "none", "reverse_eta": 1.0}
QUADRATURE_LABELS = {"trapezoid": "trapezoid", "simpson": "Simpson", "gauss_legendre": "Gauss-Legendre"}


@dataclass
class SamplerConfig:
    """An annealed sampler: which kernel, its hyper-parameters, and how levels are visited.

    Step size: a constant ``step_size``, or ``step_a``·β_t^``step_b`` when ``step_size`` is null (MCMC-corr's
    images). ``step_scaling: path`` multiplies either by the path's x scale (α_t² + σ_t²) for Langevin kernels, its
    square root for HMC, so steps chosen for VP coordinates keep their meaning on VE paths (docs/gaussian_paths.md);
    "none" (default) uses them as given. Mass (diagonal, M): ``mass``, or β_t^``mass_beta_power`` when set (√M = β_t
    is mass_beta_power: 2).
    ``correction``: "energy" (exact; needs an energy model), "line" or "curve" (HMC), with ``n_points`` interior
    nodes (per segment for "curve") of the ``quadrature`` rule ("trapezoid", "simpson" with odd ``n_points``, or
    "gauss_legendre" for "line"; see ``samplers/corrections.py``). ``reverse``: take an ancestral step before the
    kernel steps of each level.

    Step-size adaptation (``samplers/adaptation.py``; MH kernels only): with ``target_accept`` set, a tuning pass on
    ``tune_samples`` chains of their own adapts ε per level over ``tune_steps`` iterations per level (the step
    above is the initial guess); the sampling pass then uses the tuned table unchanged. ``step_table`` instead
    reuses a ``step_sizes.json`` written by another run (e.g. an unadjusted sampler at its corrected twin's steps).

    Degenerate levels (``samplers/diagnostics.py``): a level whose acceptance is below ``min_accept_rate``, or where
    more than ``max_nonfinite_share`` of the MH log-ratios or of the samples are not finite, is reported (console,
    ``stats.json`` ``degenerate_levels``, TensorBoard); ``fail_on_degenerate: true`` stops the run there instead.

    Particles (``samplers/particles.py``): ``resample`` (``{weights: exact | feynman_kac, group_size, ess_threshold,
    final: resample | weighted}``) weighs and resamples groups of consecutive samples between levels (SMC
    resample-move); null runs independent chains. ``final_denoise``: end a run without reverse steps with Tweedie's
    x̂_0 (no extra evaluation; off by default, as in the papers).

    ``reverse_eta``: DDIM's η for ``reverse_variance: posterior`` (1, the default, is the DDPM posterior; 0 a
    deterministic step); the reverse step works on every Gaussian path (docs/gaussian_paths.md).
    """

    kernel: KernelName = "reverse"
    n_steps: int = 10
    step_size: float | None = None
    step_a: float | None = None
    step_b: float = 1.0
    step_scaling: Literal["none", "path"] = "none"
    correction: Literal["energy", "line", "curve"] | None = None
    n_points: int = 0
    quadrature: QuadratureName = "trapezoid"
    n_leapfrog: int = 3
    damping: float = 0.0
    mass: float = 1.0
    mass_beta_power: float | None = None
    flip_on_reject: bool = True
    carry_momentum: bool = False
    reverse: bool = True
    reverse_variance: ReverseVariance = "beta"
    reverse_eta: float = 1.0
    min_mcmc_level: int = 0
    target_accept: float | None = None
    tune_samples: int = 256
    tune_steps: int = 100
    step_table: str | None = None
    min_accept_rate: float = 0.01
    max_nonfinite_share: float = 0.01
    fail_on_degenerate: bool = False
    resample: ResampleConfig | None = None
    final_denoise: bool = False

    def __post_init__(self) -> None:
        key = "sampler"
        if isinstance(self.resample, dict):  # a config read as plain data
            self.resample = ResampleConfig(**self.resample)
        if self.final_denoise and self.reverse:
            raise ValueError(f"{key}.final_denoise applies to samplers without reverse steps (reverse: false): with "
                             "reverse: true the last reverse step (from level 0, without noise) already returns "
                             "Tweedie's x̂_0; remove it")
        if self.resample is not None and self.resample.weights == "feynman_kac" and not self.reverse:
            raise ValueError(f"{key}.resample.weights='feynman_kac' weighs reverse steps: set {key}.reverse: true, or "
                             "use weights: exact with energy models or analytic targets")
        if self.kernel not in KERNELS:
            raise ValueError(f"{key}.kernel={self.kernel!r} is not one of {list(KERNELS)}")
        self._check_adaptation(key)
        if self.step_scaling not in ("none", "path"):
            raise ValueError(f"{key}.step_scaling={self.step_scaling!r} is not one of ['none', 'path']")
        check_eta(self.reverse_eta, f"{key}.reverse_eta")
        if self.reverse_eta != 1.0 and (self.reverse_variance != "posterior" or not self.reverse):
            raise ValueError(f"{key}.reverse_eta={self.reverse_eta} applies to reverse steps with "
                             f"{key}.reverse_variance: posterior (DDIM(η)); remove it or set reverse_variance")
        if self.reverse_eta != 1.0 and self.resample is not None:
            raise ValueError(f"{key}.reverse_eta={self.reverse_eta}: particle weights assume the DDPM posterior step "
                             f"(η = 1); remove reverse_eta or {key}.resample")
        self.degeneracy  # noqa: B018 - validates the thresholds (errors name the key)
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
        if self.correction in ("line", "curve"):
            check_quadrature(self.quadrature, self.n_points, self.correction, f"{key}.")
        elif self.quadrature != "trapezoid":
            raise ValueError(f"{key}.quadrature={self.quadrature!r} applies to correction 'line' or 'curve' "
                             f"(correction is {self.correction!r}): remove it")

    def _check_adaptation(self, key: str) -> None:
        """target_accept / tune_samples / tune_steps / step_table: valid values, and only where they apply."""
        if self.target_accept is not None:
            if not 0 < self.target_accept < 1:
                raise ValueError(f"{key}.target_accept={self.target_accept} must lie in (0, 1) (e.g. 0.65 for "
                                 "MALA, 0.8 for HMC), or be null to keep the configured step sizes")
            if self.kernel not in ("mala", "hmc"):
                raise ValueError(f"{key}.target_accept tunes the steps of an MH kernel ('mala', 'hmc'); kernel "
                                 f"{self.kernel!r} accepts every proposal. Tune its corrected twin and pass that "
                                 f"run's step_sizes.json as {key}.step_table")
            if self.step_table is not None:
                raise ValueError(f"{key}.target_accept and {key}.step_table are both set: tune (target_accept) or "
                                 "reuse a table (step_table), not both")
        if int(self.tune_samples) != self.tune_samples or self.tune_samples < 1:
            raise ValueError(f"{key}.tune_samples={self.tune_samples} must be an integer >= 1 (chains of the "
                             "tuning pass)")
        if int(self.tune_steps) != self.tune_steps or self.tune_steps < 1:
            raise ValueError(f"{key}.tune_steps={self.tune_steps} must be an integer >= 1 (adaptation iterations "
                             "per level)")
        if self.step_table is not None and self.kernel == "reverse":
            raise ValueError(f"{key}.step_table has no effect on kernel='reverse' (no MCMC steps): remove it")

    @property
    def name(self) -> str:
        """A short label in the papers' style: Reverse, U-LA, LA-3-line, HMC-curve, HMC (energy) …, with "+SMC"
        when particles resample (and "+denoise" with final denoising)."""
        base = {"reverse": "Reverse", "ula": "U-LA", "mala": "LA", "uhmc": "U-HMC", "hmc": "HMC"}[self.kernel]
        if self.correction in ("line", "curve"):
            points = f"{self.n_points}-" if self.n_points or self.correction == "line" else ""
            rule = "" if self.quadrature == "trapezoid" else f" ({QUADRATURE_LABELS[self.quadrature]})"
            base = f"{base}-{points}{self.correction}{rule}"
        if self.resample is not None:
            base += "+SMC" + ("" if self.resample.weights == "exact" else " (FK)")
        return base + ("+denoise" if self.final_denoise else "")

    @property
    def adapts_steps(self) -> bool:
        """Whether sampling uses a per-level step table (tuned here, or reused) instead of the configured steps."""
        return self.target_accept is not None or self.step_table is not None

    def _level_value(self, schedule: NoiseSchedule, constant: float | None, a: float | None, b: float) -> LevelValue:
        if self.step_scaling == "path":  # a step that scales like x² (Langevin) or like x (HMC at fixed mass)
            power = 2.0 if self.kernel in ("ula", "mala") else 1.0
            if constant is not None:
                return BetaPower(schedule, constant, 0.0, power)
            return BetaPower(schedule, a, b, power)  # type: ignore[arg-type]
        return constant if constant is not None else BetaPower(schedule, a, b)  # type: ignore[arg-type]

    def tuning_settings(self) -> dict[str, object]:
        """The settings a tuned step table depends on (saved with it; a rerun reuses a table only if they match)."""
        settings = {name: getattr(self, name) for name in TUNING_KEYS}
        settings.update({name: getattr(self, name) for name, unchanged in LATER_TUNING_KEYS.items()
                         if getattr(self, name) != unchanged})
        return settings

    def initial_steps(self, schedule: NoiseSchedule) -> LevelValue:
        """The configured step per level: ``step_size``, or a·β_t^b (the initial guess when adapting)."""
        return self._level_value(schedule, self.step_size, self.step_a, self.step_b)

    def build_kernel(self, schedule: NoiseSchedule) -> Kernel | None:
        """The kernel with the configured steps (a tuned table replaces them per call, see
        :meth:`AnnealedSampler.sample`)."""
        if self.kernel == "reverse":
            return None
        step = self.initial_steps(schedule)
        if self.kernel == "ula":
            return ULA(step)
        if self.kernel == "mala":
            return MALA(step, self.correction, self.n_points, self.quadrature)  # type: ignore[arg-type]
        mass = self.mass if self.mass_beta_power is None else BetaPower(schedule, 1.0, self.mass_beta_power)
        if self.kernel == "uhmc":
            return UHMC(step, self.n_leapfrog, self.damping, mass, self.carry_momentum)
        return HMC(step, self.n_leapfrog, self.damping, mass, self.correction, self.n_points,  # type: ignore[arg-type]
                   self.flip_on_reject, self.carry_momentum, self.quadrature)

    def build(self, schedule: NoiseSchedule) -> AnnealedSampler:
        """The annealed sampler on ``schedule``; its target comes with each call of ``sample``."""
        kernel = self.build_kernel(schedule)
        return AnnealedSampler(schedule, kernel, self.n_steps if kernel else 0, self.reverse,
                               self.reverse_variance, self.min_mcmc_level, self.degeneracy, self.fail_on_degenerate,
                               self.resample, self.final_denoise, self.reverse_eta)

    @property
    def degeneracy(self) -> DegeneracyThresholds:
        """The thresholds that flag a degenerate level."""
        return DegeneracyThresholds(self.min_accept_rate, self.max_nonfinite_share)

    def hparams(self) -> dict[str, object]:
        """Flat, TensorBoard-friendly hyper-parameters (None becomes "none"; ``resample`` flattened to
        ``resample``, ``resample_weights``, ``resample_group_size``, ...)."""
        flat = {k: ("none" if v is None else v) for k, v in asdict(self).items() if k != "resample"}
        if self.resample is not None:
            flat.update({f"resample_{k}": v for k, v in asdict(self.resample).items()})
        return {"sampler": self.name, **flat, "resample": "none" if self.resample is None else self.resample.weights}

