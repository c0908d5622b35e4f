"""SamplingModule: loads component models, composes them, and runs an annealed MCMC sampler in ``predict_step``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.compose import Mixture, Negation, Product
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.modules.diffusion import DiffusionModule
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.targets import DiffusedGaussianMixture, DiffusedUniformBox, Target

ANALYTIC = ("toy2d_gmm", "toy2d_bar")


@dataclass
class ComponentConfig:
    """One model of a composition: a trained checkpoint, or an analytic target (exact scores, no training).

    ``checkpoint``: a ``lit-mcmc fit`` checkpoint of a DiffusionModule (relative paths are resolved against the
    SamplingModule's ``checkpoint_root``). ``analytic``: "toy2d_gmm" or "toy2d_bar" (the paper's 2D densities,
    diffused in closed form).
    """

    checkpoint: str | None = None
    analytic: str | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.analytic is None):
            raise ValueError("a component needs exactly one of 'checkpoint' (a trained model) or 'analytic' "
                             f"(one of {list(ANALYTIC)})")
        if self.analytic is not None and self.analytic not in ANALYTIC:
            raise ValueError(f"analytic={self.analytic!r} is not one of {list(ANALYTIC)}")


@dataclass
class CompositionConfig:
    """How the components combine: "single" (one part), "product", "negation" (parts [p, q]: p^{1+α}/q^α),
    or "mixture" (needs energy models or analytic parts)."""

    kind: Literal["single", "product", "negation", "mixture"] = "product"
    parts: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    alpha: float = 0.3


def analytic_target(name: str, schedule: NoiseSchedule) -> Target:
    """The paper's 2D densities (8-mode GMM, uniform bar), diffused exactly on ``schedule``."""
    from lit_mcmc.data import toy2d

    if name == "toy2d_gmm":
        return DiffusedGaussianMixture(toy2d.GMM_MEANS, toy2d.GMM_STD, schedule)
    return DiffusedUniformBox(toy2d.BAR_LOW, toy2d.BAR_HIGH, schedule)


class SamplingModule(L.LightningModule):
    """Runs a composed, annealed sampler over batches of global sample indices (``lit-mcmc predict``).

    Every sample's randomness is keyed by (``seed``, its global index), so the samples do not depend on the batch
    size, the number of processes, or interruptions.

    Args:
        components: named models (checkpoints or analytic targets).
        composition: how the named components combine.
        sampler: the kernel, its hyper-parameters, and the level schedule.
        sample_shape: shape of one sample, e.g. [2].
        seed: base seed of the per-sample random streams.
        checkpoint_root: directory that relative checkpoint paths are resolved against.
        schedule: noise schedule for analytic components; with checkpoints it must match theirs (or be null).
    """

    def __init__(self, components: dict[str, ComponentConfig], composition: CompositionConfig,
                 sampler: SamplerConfig, sample_shape: list[int], seed: int = 0, checkpoint_root: str = ".",
                 schedule: ScheduleConfig | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sampler_config = sampler
        self.sample_shape = list(sample_shape)
        self.seed = seed
        self.models = nn.ModuleDict()
        schedules: dict[str, NoiseSchedule] = {}
        for name, spec in components.items():
            if spec.checkpoint is not None:
                module = self._load(Path(checkpoint_root) / spec.checkpoint if not Path(spec.checkpoint).is_absolute()
                                    else Path(spec.checkpoint), name)
                self.models[name] = module
                schedules[name] = module.schedule
        self.schedule = self._common_schedule(schedules, schedule)
        parts = {name: (self.models[name].target() if spec.checkpoint is not None
                        else analytic_target(spec.analytic, self.schedule))  # type: ignore[arg-type]
                 for name, spec in components.items()}
        self.target = self._compose(parts, composition)
        self.sampler = sampler.build(self.target, self.schedule)

    @staticmethod
    def _load(path: Path, name: str) -> DiffusionModule:
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint for component {name!r} not found: {path}. Train it with `lit-mcmc fit` (see configs/), "
                f"or set model.components.{name}.checkpoint (relative paths start at model.checkpoint_root)")
        module = DiffusionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        module.eval().requires_grad_(False)  # sampling needs input gradients only
        return module

    @staticmethod
    def _common_schedule(schedules: dict[str, NoiseSchedule], config: ScheduleConfig | None) -> NoiseSchedule:
        candidates = list(schedules.items())
        if config is not None:
            candidates.append(("model.schedule", config.build()))
        if not candidates:
            raise ValueError("model.schedule must be set when every component is analytic")
        ref_name, ref = candidates[0]
        for name, other in candidates[1:]:
            if other.T != ref.T or not torch.allclose(other.betas, ref.betas):
                raise ValueError(f"noise schedules differ between {ref_name!r} ({ref}) and {name!r} ({other}): "
                                 "components of a composition must share one schedule")
        return ref

    @staticmethod
    def _compose(parts: dict[str, Target], spec: CompositionConfig) -> Target:
        names = spec.parts or list(parts)
        unknown = [n for n in names if n not in parts]
        if unknown:
            raise ValueError(f"model.composition.parts names unknown components {unknown}; known: {list(parts)}")
        chosen = [parts[n] for n in names]
        if spec.kind == "single":
            if len(chosen) != 1:
                raise ValueError(f"model.composition.kind='single' needs one part, got {names}")
            return chosen[0]
        if spec.kind == "product":
            return Product(chosen, spec.weights)
        if spec.kind == "negation":
            if len(chosen) != 2:
                raise ValueError(f"model.composition.kind='negation' needs two parts [keep, remove], got {names}")
            return Negation(chosen[0], chosen[1], spec.alpha)
        if spec.kind == "mixture":
            return Mixture(chosen, spec.weights)
        raise ValueError(f"model.composition.kind={spec.kind!r} is not one of single, product, negation, mixture")

    def on_predict_start(self) -> None:
        if self.trainer.predict_loop.inference_mode:
            raise RuntimeError("MCMC sampling needs input gradients, which torch.inference_mode forbids: set "
                               "trainer.inference_mode: false (the lit-mcmc CLI does this by default)")

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Any]:
        indices = torch.as_tensor(batch, dtype=torch.long)
        start = time.perf_counter()
        samples, info = self.sampler.sample((len(indices), *self.sample_shape), PerSampleRandom(self.seed, indices),
                                            device=self.device)
        return {
            "indices": indices.cpu(),
            "samples": samples,
            "accept_rate": info.accept_rate_per_sample,
            "nfe": info.nfe,
            "adjusted": info.adjusted,
            "accept_rate_per_level": info.accept_rate_per_level,
            "n_nonfinite": info.n_nonfinite,
            "seconds": time.perf_counter() - start,
        }
