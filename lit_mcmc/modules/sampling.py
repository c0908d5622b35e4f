"""SamplingModule: loads component models, composes them, and runs an annealed MCMC sampler in ``predict_step``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.compilation import compile_network
from lit_mcmc.compose import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    LabelledGuidance,
    Mixture,
    Negation,
    Product,
    ReconstructionGuidance,
)
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.modules.components import ComponentConfig, check_sample_shape, has_exact_log_prob, load_component
from lit_mcmc.precision import Precision, check_precision, float32_matmul, with_precision
from lit_mcmc.report import sampler_hparams
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.samplers.adaptation import (
    StepTuning,
    check_covers,
    load_step_table,
    obtain_step_table,
    parse_step_table,
    tune_step_sizes,
    tuning_indices,
)
from lit_mcmc.samplers.particles import ParticleInfo, ResampleConfig
from lit_mcmc.samplers.schedules import StepTable
from lit_mcmc.targets import Target

COMPOSITIONS = ("single", "product", "negation", "mixture", "classifier_guidance", "classifier_free_guidance",
                "reconstruction_guidance", "prompt_product", "tapestry")
# Compositions made inside one diffusers component (its prompts / regions), with the component key that defines them.
PROMPT_COMPOSITIONS = {"prompt_product": "prompts", "tapestry": "regions"}
GUIDED = ("classifier_guidance", "classifier_free_guidance", "reconstruction_guidance")
# Compositions guided by a classifier component, with the role it must have.
CLASSIFIER_ROLE = {"classifier_guidance": "classifier", "reconstruction_guidance": "clean_classifier"}


@dataclass
class CompositionConfig:
    """How the components combine.

    ``kind``: "single" (one part), "product", "negation" (parts [p, q]: p^{1+α}/q^α), "mixture" (needs energy
    models or analytic parts), "classifier_guidance" (the product of ``parts`` times p_φ(y | x_t)^``scale``, with
    the noisy classifier component named by ``classifier``), "classifier_free_guidance" (parts
    [conditional, unconditional], weights (``scale``, 1 − ``scale``)), or "reconstruction_guidance" (one part times
    p(y | x̂_0(x_t))^``scale`` with the clean classifier named by ``classifier`` applied to the Tweedie estimate),
    "prompt_product" or "tapestry" (one ``pretrained: diffusers`` part whose ``prompts`` / ``regions`` define it).

    ``mh_scale`` (classifier guidance only) is the classifier's weight in the MH test (null: ``scale``; 1.0
    reproduces the reference code, ALGORITHMS.md §11.9). With either classifier: sample i is guided towards class
    ``labels[i % len(labels)]`` when ``labels`` is given, else ``i % n_classes``; ``n_classes`` defaults to the
    classifier's output width.
    """

    kind: Literal["single", "product", "negation", "mixture", "classifier_guidance", "classifier_free_guidance",
                  "reconstruction_guidance", "prompt_product", "tapestry"] = "product"
    parts: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    alpha: float = 0.3
    classifier: str | None = None
    scale: float | None = None
    mh_scale: float | None = None
    labels: list[int] | None = None
    n_classes: int | None = None

    def __post_init__(self) -> None:
        key = "model.composition"
        if self.kind not in COMPOSITIONS:
            raise ValueError(f"{key}.kind={self.kind!r} is not one of {list(COMPOSITIONS)}")
        if self.kind in GUIDED and self.scale is None:
            raise ValueError(f"{key}.scale must be set for kind={self.kind!r} (the guidance weight, e.g. 20)")
        if self.kind not in GUIDED and self.scale is not None:
            raise ValueError(f"{key}.scale applies only to kinds {list(GUIDED)} (kind is {self.kind!r}): remove it")
        if self.kind in PROMPT_COMPOSITIONS and self.weights is not None:
            where = (f"model.components.{self.parts[0]}.weights" if len(self.parts) == 1
                     else "the weights of the diffusers component in model.components")
            raise ValueError(f"{key}.weights does not apply to kind={self.kind!r}: the prompt weights are {where} "
                             "(or each region's)")
        if self.kind != "classifier_guidance" and self.mh_scale is not None:
            raise ValueError(f"{key}.mh_scale applies only to kind='classifier_guidance' (kind is {self.kind!r}): "
                             "remove it")
        with_classifier = {"classifier": self.classifier, "labels": self.labels, "n_classes": self.n_classes}
        if self.kind not in CLASSIFIER_ROLE:
            given = [name for name, value in with_classifier.items() if value is not None]
            if given:
                raise ValueError(f"{key}.{given[0]} applies only to kinds {list(CLASSIFIER_ROLE)} (kind is "
                                 f"{self.kind!r}): remove it")
            return
        if self.classifier is None:
            raise ValueError(f"{key}.classifier must name the component (with role: {CLASSIFIER_ROLE[self.kind]}) "
                             f"that guides the sampling, for kind={self.kind!r}")
        if self.n_classes is not None and self.n_classes < 1:
            raise ValueError(f"{key}.n_classes={self.n_classes} must be >= 1")
        if self.labels is not None:
            if len(self.labels) == 0:
                raise ValueError(f"{key}.labels=[] needs at least one class (or null for index % n_classes)")
            self.check_labels(self.n_classes)

    def check_labels(self, n_classes: int | None) -> None:
        """Labels must be classes in [0, n_classes − 1] (or >= 0 while n_classes is unknown)."""
        if self.labels is None:
            return
        bad = [y for y in self.labels if y < 0 or (n_classes is not None and y >= n_classes)]
        if bad:
            valid = f"[0, {n_classes - 1}]" if n_classes is not None else ">= 0"
            raise ValueError(f"model.composition.labels contains {bad}, outside the classifier's classes {valid}")


class SamplingModule(L.LightningModule):
    """Runs a composed, annealed sampler over batches of global sample indices (``lit-mcmc predict``).

    Every sample's randomness is keyed by (``seed``, its global index), and so is its class label under classifier
    guidance, so the samples do not depend on the batch size, the number of processes, or interruptions.
    ``predict_step`` returns a dict with ``samples``, ``indices`` and the per-sample MCMC statistics; under
    classifier guidance or with a class-conditional model's ``class_labels`` also ``labels`` (LongTensor [B], the
    class each sample was generated for), and for latent models (a diffusers pipeline with a VAE) ``images``, the
    samples decoded, in [−1, 1].

    Args:
        components: named models (checkpoints, analytic targets or published models; guidance classifiers with
            role: classifier); see :class:`~lit_mcmc.modules.components.ComponentConfig`.
        composition: how the named components combine.
        sampler: the kernel, its hyper-parameters, and the level schedule.
        sample_shape: shape of one sample, e.g. [2] or [3, 32, 32].
        seed: base seed of the per-sample random streams.
        checkpoint_root: directory that relative checkpoint (and pretrained ``path``) values are resolved against.
        schedule: noise schedule for analytic components; with checkpoints it must match theirs (or be null).
        respace: sample on this many evenly spaced levels of that schedule (improved-diffusion respacing; the
            networks still see their training levels); null samples every level.
        precision: how network calls run: "fp32" (strict IEEE), "tf32" (float32 with TensorFloat-32 products on
            GPUs that have them), "bf16" or "fp16" (autocast). Positions, momenta, quadrature sums, log-ratios and
            accept decisions are float32 in every case. ``trainer.precision``'s mixed modes do not reach the
            sampler (its autocast is switched off inside ``predict_step``: this setting decides), and its "-true"
            modes, which would cast the chains themselves, are an error.
        compile: ``torch.compile`` the component networks (fixed shapes: one compilation per batch size).
    """

    def __init__(self, components: dict[str, ComponentConfig], composition: CompositionConfig,
                 sampler: SamplerConfig, sample_shape: list[int], seed: int = 0, checkpoint_root: str = ".",
                 schedule: ScheduleConfig | None = None, respace: int | None = None, precision: Precision = "tf32",
                 compile: bool = False) -> None:
        super().__init__()
        # Not to the logger: the SampleWriter logs report_hparams() (no paths, no CLI internals) with the metrics.
        self.save_hyperparameters(logger=False)
        self._check_names(components, composition)  # before loading anything: config errors come first
        self._check_exact_log_probs(components, composition, sampler, checkpoint_root)
        check_precision(precision, "model.precision")
        self.precision: Precision = precision
        self.sampler_config = sampler
        self.composition = composition
        self.sample_shape = list(sample_shape)
        self.seed = seed
        self.models = nn.ModuleDict()
        loaded = {name: load_component(name, spec, checkpoint_root) for name, spec in components.items()}
        for name, component in loaded.items():  # before any network sees a sample
            check_sample_shape(name, components[name], component.module, self.sample_shape)
        for name, component in loaded.items():
            if component.module is not None:
                self.models[name] = component.module
                if compile:
                    compile_network(component.module)
        schedules = {name: c.schedule for name, c in loaded.items() if c.schedule is not None}
        self.schedule = self._common_schedule(schedules, schedule)
        if respace is not None:
            if not 2 <= respace <= self.schedule.T:
                raise ValueError(f"model.respace={respace} must lie in [2, {self.schedule.T}] (the schedule's T), "
                                 "or be null to sample every level")
            self.schedule = self.schedule.respace(respace)
        if sampler.kernel != "reverse" and not 0 <= sampler.min_mcmc_level <= self.schedule.T - 1:
            raise ValueError(f"model.sampler.min_mcmc_level={sampler.min_mcmc_level} must lie in [0, "
                             f"{self.schedule.T - 1}] (the levels of the schedule{', respaced' if respace else ''}): "
                             "above it no level would run the kernel")
        parts = {name: loaded[name].make_target(self.schedule)  # type: ignore[misc]
                 for name, spec in components.items() if spec.role == "diffusion"}
        self.component_roles = {name: spec.role for name, spec in components.items()}
        self.n_classes: int | None = None
        if composition.kind in CLASSIFIER_ROLE:
            self.target: Target = self._classifier_guidance(parts, composition)
        else:
            self.target = self._compose(parts, composition)
        self.sampler = sampler.build(self.schedule)
        self.sampler.check_target(self.target)
        # Tuned or reused ε per level (sampler.target_accept / step_table), set in on_predict_start.
        self.step_table: StepTable | None = None
        self.step_table_record: dict[str, Any] | None = None
        decoders = [loaded[n].decoder for n in parts if loaded[n].decoder is not None]
        self.decoder = decoders[0] if decoders else None  # latent models: predict_step also returns images

    @staticmethod
    def _check_names(components: dict[str, ComponentConfig], spec: CompositionConfig) -> None:
        diffusion = [n for n, c in components.items() if c.role == "diffusion"]
        classifiers = [n for n, c in components.items() if c.role != "diffusion"]
        unknown = [n for n in spec.parts if n not in components]
        if unknown:
            raise ValueError(f"model.composition.parts names unknown components {unknown}; known: {list(components)}")
        misused = [n for n in spec.parts if n in classifiers]
        if misused:
            raise ValueError(f"model.composition.parts names classifier components {misused}; parts are diffusion "
                             f"models ({diffusion}); name the classifier in model.composition.classifier instead")
        if not diffusion:
            raise ValueError("model.components needs at least one diffusion model (role: diffusion)")
        if spec.kind in CLASSIFIER_ROLE:
            role = CLASSIFIER_ROLE[spec.kind]
            if spec.classifier not in components:
                raise ValueError(f"model.composition.classifier={spec.classifier!r} is not a component; add it to "
                                 f"model.components with role: {role} (known: {list(components)})")
            if components[spec.classifier].role != role:
                raise ValueError(f"model.composition.classifier={spec.classifier!r} has role: "
                                 f"{components[spec.classifier].role}, but kind={spec.kind!r} needs a "
                                 f"{'noisy' if role == 'classifier' else 'clean'} classifier; set "
                                 f"model.components.{spec.classifier}.role: {role}")
            if len(classifiers) > 1:
                raise ValueError(f"model.components has several classifiers {classifiers}; keep only "
                                 f"model.composition.classifier={spec.classifier!r}")
        elif classifiers:
            raise ValueError(f"components {classifiers} are classifiers, which only kinds {list(CLASSIFIER_ROLE)} "
                             "use; remove them or change model.composition.kind")
        labelled = [n for n, c in components.items() if getattr(c, "class_labels", None) is not None]
        if labelled and (spec.kind != "single" or (spec.parts or diffusion) != labelled):
            raise ValueError(f"model.components.{labelled[0]}.class_labels (per-sample classes of a class-conditional "
                             "UNet) needs model.composition.kind: single with that component as the only part")
        if spec.kind in PROMPT_COMPOSITIONS:
            names = spec.parts or diffusion
            field = PROMPT_COMPOSITIONS[spec.kind]
            if len(names) != 1 or getattr(components[names[0]], field) is None:
                raise ValueError(f"model.composition.kind={spec.kind!r} needs one part, a pretrained: diffusers "
                                 f"component with '{field}' (model.components.{names[0] if names else 'X'}.{field}); "
                                 f"got parts {names}")

    @staticmethod
    def _check_exact_log_probs(components: dict[str, ComponentConfig], spec: CompositionConfig,
                               sampler: SamplerConfig, root: str) -> None:
        """Mixtures and the exact-energy MH correction need every diffusion part's log-density: a score model among
        them is a config error, found before any network is built."""
        parts = spec.parts or [n for n, c in components.items() if c.role == "diffusion"]
        needs = [what for what, needed in (("model.composition.kind='mixture'", spec.kind == "mixture"),
                                           ("model.sampler.correction='energy'", sampler.correction == "energy"))
                 if needed]
        for what in needs:
            for name in parts:
                if has_exact_log_prob(components[name], root) is False:
                    raise ValueError(
                        f"{what} needs an exact log-density from every part, but model.components.{name} is a score "
                        "model (its log-density is unknown): use energy models or analytic targets"
                        + (", or correction: line / curve" if "correction" in what else ""))

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
        chosen = [parts[n] for n in names]
        if spec.kind in ("single", *PROMPT_COMPOSITIONS):  # a prompt composition is its component's own target
            if len(chosen) != 1:
                raise ValueError(f"model.composition.kind='single' needs one part, got {names}")
            return chosen[0]
        if spec.kind == "product":
            return Product(chosen, spec.weights)
        if spec.kind in ("negation", "classifier_free_guidance"):
            if len(chosen) != 2:
                roles = "[keep, remove]" if spec.kind == "negation" else "[conditional, unconditional]"
                raise ValueError(f"model.composition.kind={spec.kind!r} needs two parts {roles}, got {names}")
            if spec.kind == "negation":
                return Negation(chosen[0], chosen[1], spec.alpha)
            return ClassifierFreeGuidance(chosen[0], chosen[1], spec.scale)  # type: ignore[arg-type]
        return Mixture(chosen, spec.weights)

    def _classifier_guidance(self, parts: dict[str, Target],
                             spec: CompositionConfig) -> ClassifierGuidance | ReconstructionGuidance:
        names = spec.parts or list(parts)
        if spec.kind == "reconstruction_guidance" and (len(names) != 1 or spec.weights is not None):
            raise ValueError(f"model.composition.kind='reconstruction_guidance' needs one diffusion model in "
                             f"model.composition.parts (its score forms the Tweedie estimate), got {names}")
        inner = parts[names[0]] if len(names) == 1 and spec.weights is None else Product(
            [parts[n] for n in names], spec.weights)
        classifier = self.models[spec.classifier]
        self.n_classes = self._classifier_width(classifier, spec.classifier)  # type: ignore[arg-type]
        if spec.n_classes is not None and spec.n_classes != self.n_classes:
            raise ValueError(f"model.composition.n_classes={spec.n_classes} but classifier {spec.classifier!r} "
                             f"returns {self.n_classes} logits; set it to {self.n_classes} or null")
        spec.check_labels(self.n_classes)
        if spec.kind == "reconstruction_guidance":
            return ReconstructionGuidance(inner, classifier, spec.scale)  # type: ignore[arg-type]
        return ClassifierGuidance(inner, classifier, self.schedule, spec.scale, mh_scale=spec.mh_scale)  # type: ignore[arg-type]

    def _classifier_width(self, classifier: nn.Module, name: str) -> int:
        """The number of classes, from one forward pass on a zero image of ``sample_shape`` (at the noisiest level
        for a noisy classifier)."""
        x = torch.zeros(1, *self.sample_shape)
        noisy = self.component_roles[name] == "classifier"
        args = (self.schedule.model_t(self.schedule.T - 1, 1),) if noisy else ()
        try:
            with torch.no_grad():
                logits = classifier(x, *args)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"classifier {name!r} does not accept samples of model.sample_shape="
                             f"{self.sample_shape}: {err}") from None
        if logits.dim() != 2:
            raise ValueError(f"classifier {name!r} must return logits [B, n_classes], got {tuple(logits.shape)}")
        return int(logits.shape[1])

    def labels_for(self, indices: Tensor) -> Tensor | None:
        """The class each sample is guided towards or conditioned on (None without classifier guidance or a
        class-conditional model's ``class_labels``); a function of the index. With particle resampling it is a
        function of the group (index // group size): the particles of a group share one target."""
        if self.sampler_config.resample is not None:
            indices = indices // self.sampler_config.resample.group_size
        if self.composition.kind not in CLASSIFIER_ROLE:
            cycle = getattr(self.target, "label_cycle", None)  # a class-conditional diffusers UNet
            if cycle is None:
                return None
            return torch.tensor(cycle, dtype=torch.long, device=indices.device)[indices % len(cycle)]
        if self.composition.labels is not None:
            cycle = torch.tensor(self.composition.labels, dtype=torch.long, device=indices.device)
            return cycle[indices % len(cycle)]
        return indices % self.n_classes  # type: ignore[operator]

    def on_predict_start(self) -> None:
        if self.trainer.predict_loop.inference_mode:
            raise ValueError("MCMC sampling needs input gradients, which torch.inference_mode forbids: set "
                               "trainer.inference_mode: false (the lit-mcmc CLI does this by default)")
        trainer_precision = str(self.trainer.precision)
        if trainer_precision.endswith("-true") and trainer_precision != "32-true":
            raise ValueError(f"trainer.precision={trainer_precision} would cast the chains and the MH arithmetic; "
                             "sampling keeps them float32: set trainer.precision: 32-true and model.precision (bf16, "
                             "fp16, tf32 or fp32) for the networks")
        self.check_particle_groups(getattr(self.trainer, "datamodule", None))
        self.prepare_step_table()

    def check_particle_groups(self, datamodule: Any) -> None:
        """With particle resampling, every batch must hold whole groups (a group is one SMC run), so
        ``data.batch_size`` and ``data.n_samples`` must be multiples of ``model.sampler.resample.group_size``."""
        resample = self.sampler_config.resample
        if resample is None or datamodule is None:
            return
        for key in ("batch_size", "n_samples"):
            value = getattr(datamodule, key, None)
            if value is not None and value % resample.group_size:
                raise ValueError(f"data.{key}={value} is not a multiple of model.sampler.resample.group_size="
                                 f"{resample.group_size}: particles resample within groups of consecutive samples, "
                                 f"and a batch must never split one; set data.{key} to a multiple of it")

    def check_before_sampling(self, datamodule: Any = None) -> None:
        """What can be checked before any file is written: a given ``sampler.step_table`` must be readable and
        cover every level that runs the kernel, and particle groups must fit the data's batches (the CLI calls this
        before the run directory is touched)."""
        self.check_particle_groups(datamodule)
        config = self.sampler_config
        if config.step_table is not None:
            table, _ = load_step_table(config.step_table, key="model.sampler.step_table")
            check_covers(table, self.sampler.mcmc_levels())

    def prepare_step_table(self) -> None:
        """With ``sampler.target_accept`` or ``sampler.step_table``: rank 0 tunes ε per level (or reuses the given
        table, or this run directory's ``step_sizes.json`` from an interrupted run; see
        :func:`~lit_mcmc.samplers.adaptation.obtain_step_table`) and shares it, and every rank samples with it."""
        config = self.sampler_config
        if not config.adapts_steps:
            return
        record = None
        if self.trainer.is_global_zero:
            record = obtain_step_table(config, Path(self.trainer.default_root_dir), self.seed,
                                       self.sampler.mcmc_levels(), self._tune_step_sizes)
        record = self.trainer.strategy.broadcast(record, src=0)  # one table for all ranks, computed once
        self.step_table = parse_step_table(record, "step_sizes.json")
        self.step_table_record = record

    def _tune_step_sizes(self) -> StepTuning:
        """The tuning pass: ``sampler.tune_samples`` chains on streams of their own (labels as their indices give)."""
        config = self.sampler_config
        target = self.target_for(self.labels_for(tuning_indices(config.tune_samples).to(self.device)))
        with torch.autocast(self.device.type, enabled=False), float32_matmul(self.precision):
            return tune_step_sizes(self.sampler, target, config.initial_steps(self.schedule), config.target_accept,  # type: ignore[arg-type]
                                   config.tune_samples, config.tune_steps, self.seed, tuple(self.sample_shape),
                                   self.device)

    def target_for(self, labels: Tensor | None) -> Target:
        """The target the sampler samples for these labels (None: unlabelled), at ``model.precision``."""
        if labels is None:
            return with_precision(self.target, self.precision)
        assert isinstance(self.target, LabelledGuidance) or hasattr(self.target, "with_labels")
        return with_precision(self.target.with_labels(labels), self.precision)  # type: ignore[attr-defined]

    def report_hparams(self) -> dict[str, Any]:
        """What distinguishes this run from other sampler runs (stats.json, TensorBoard's HParams view): the
        sampler's settings that its kernel uses, the composition, the levels (fewer than the models' when respaced),
        seed, precision and a short model identifier; see :func:`lit_mcmc.report.sampler_hparams`."""
        return sampler_hparams(self.sampler_config, self.composition, self.hparams["components"],
                               levels=self.schedule.T, seed=self.seed, precision=self.precision)

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Any]:
        indices = torch.as_tensor(batch, dtype=torch.long)
        labels = self.labels_for(indices.to(self.device))
        check_whole_groups(indices, self.sampler_config.resample)
        start = time.perf_counter()
        # Lightning's mixed-precision autocast stays off here: self.precision alone decides the networks' precision.
        with torch.autocast(self.device.type, enabled=False), float32_matmul(self.precision):
            samples, info = self.sampler.sample(self.target_for(labels), (len(indices), *self.sample_shape),
                                                PerSampleRandom(self.seed, indices), self.step_table,
                                                device=self.device)
        output = {
            "indices": indices.cpu(),
            "samples": samples,
            "accept_rate": info.accept_rate_per_sample,
            "nfe": info.nfe,
            "adjusted": info.adjusted,
            "accept_rate_per_level": info.accept_rate_per_level,
            "n_nonfinite": info.n_nonfinite,
            "quadrature_error_per_level": info.quadrature_error_per_level,  # line/curve corrections only
            "nonfinite_sample_share_per_level": info.nonfinite_sample_share_per_level,
            "nonfinite_log_ratio_share_per_level": info.nonfinite_log_ratio_share_per_level,
            "log_ratio_mean_per_level": info.log_ratio_mean_per_level,  # MH kernels only
            "seconds": time.perf_counter() - start,
        }
        if labels is not None:
            output["labels"] = labels.cpu()
        if self.decoder is not None:
            output["images"] = self.decoder(samples)
        if info.particles is not None:
            output["particles"] = particle_output(info.particles, indices)
        return output


def check_whole_groups(indices: Tensor, resample: ResampleConfig | None) -> None:
    """A batch of particles must be whole groups of consecutive indices (i // group_size), in order."""
    if resample is None:
        return
    size = resample.group_size
    first = int(indices[0]) if len(indices) else 0
    expected = torch.arange(first, first + len(indices))
    if len(indices) % size or first % size or not torch.equal(indices.cpu(), expected):
        raise ValueError(f"a batch of sample indices {first}..{int(indices[-1])} splits a group of "
                         f"model.sampler.resample.group_size={size}: data.batch_size and data.n_samples must be "
                         "multiples of the group size")


def particle_output(particles: ParticleInfo, indices: Tensor) -> dict[str, Any]:
    """What a batch's particles report: per sample log_weight; per group (named by first index // group size) log Ẑ
    and unique ancestors; per level the ESS (mean and min over the batch's groups) and the groups resampled."""
    return {"log_weight": particles.log_weight.float().cpu(),
            "group_ids": (indices[:: particles.group_size] // particles.group_size).cpu(),
            "group_log_z": particles.log_z.cpu(),
            "group_unique_ancestors": particles.unique_ancestors.cpu(),
            "ess_mean_per_level": particles.ess_mean_per_level,
            "ess_min_per_level": particles.ess_min_per_level,
            "resampled_groups_per_level": particles.resampled_groups_per_level}
