"""SamplingModule: loads component models, composes them, and runs an annealed MCMC sampler in ``predict_step``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_mcmc.compilation import compile_network
from lit_mcmc.compose import (
    LabelledGuidance,
)
from lit_mcmc.diffusion import ScheduleConfig
from lit_mcmc.modules.components import ComponentConfig, check_sample_shape, load_component
from lit_mcmc.modules.composition import (
    CLASSIFIER_ROLE,
    CompositionConfig,
    check_exact_log_probs,
    check_names,
    classifier_guidance,
    classifier_width,
    common_schedule,
    compose,
)
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
from lit_mcmc.samplers.chain import ChainInfo
from lit_mcmc.samplers.particles import ParticleInfo, ResampleConfig
from lit_mcmc.samplers.schedules import StepTable
from lit_mcmc.targets import Target


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
        seeds: several sampling seeds, each a trial of this configuration: ``lit-mcmc predict`` then runs one predict
            per seed into ``<default_root_dir>/seed_<s>/`` and writes their mean ± std to ``trials.json`` (see
            :mod:`lit_mcmc.trials`); ``seed`` is not used then. Null (default): one run with ``seed``.
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
                 compile: bool = False, seeds: list[int] | None = None) -> None:
        super().__init__()
        if seeds is not None:
            raise ValueError(f"model.seeds={seeds} is read by lit-mcmc predict, which runs one predict per seed; a "
                             "SamplingModule draws one seed: give model.seed")
        # Not to the logger: the SampleWriter logs report_hparams() (no paths, no CLI internals) with the metrics.
        self.save_hyperparameters(logger=False)
        check_names(components, composition)  # before loading anything: config errors come first
        check_exact_log_probs(components, composition, sampler, checkpoint_root)
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
        self.schedule = common_schedule(schedules, schedule)
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
            classifier = self.models[composition.classifier]  # type: ignore[index]
            self.n_classes = classifier_width(classifier, composition.classifier, self.sample_shape,  # type: ignore[arg-type]
                                              self.component_roles[composition.classifier] == "classifier",  # type: ignore[index]
                                              self.schedule, composition)
            self.target: Target = classifier_guidance(parts, composition, classifier, self.schedule)
        else:
            self.target = compose(parts, composition)
        self.sampler = sampler.build(self.schedule)
        self.sampler.check_target(self.target)
        # Tuned or reused ε per level (sampler.target_accept / step_table), set in on_predict_start.
        self.step_table: StepTable | None = None
        self.step_table_record: dict[str, Any] | None = None
        decoders = [loaded[n].decoder for n in parts if loaded[n].decoder is not None]
        self.decoder = decoders[0] if decoders else None  # latent models: predict_step also returns images

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
        images = self.decoder(samples) if self.decoder is not None else None
        return batch_output(indices, samples, info, labels, images, time.perf_counter() - start)


def batch_output(indices: Tensor, samples: Tensor, info: ChainInfo, labels: Tensor | None, images: Tensor | None,
                 seconds: float) -> dict[str, Any]:
    """What ``predict_step`` returns for a batch: the samples with their indices, per sample the acceptance, the
    batch's NFE and per-level record (whole, ``{stat: {level: value}}``), and, when there are some, the labels,
    the decoded images of a latent model and the particles."""
    output = {
        "indices": indices.cpu(),
        "samples": samples,
        "accept_rate": info.accept_rate_per_sample,
        "nfe": info.nfe,
        "adjusted": info.adjusted,
        "n_nonfinite": info.n_nonfinite,
        "levels": info.levels,
        "seconds": seconds,
    }
    if labels is not None:
        output["labels"] = labels.cpu()
    if images is not None:
        output["images"] = images
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
    and unique ancestors (their per-level ESS and resampling are in the batch's per-level record)."""
    return {"log_weight": particles.log_weight.float().cpu(),
            "group_ids": (indices[:: particles.group_size] // particles.group_size).cpu(),
            "group_log_z": particles.log_z.cpu(),
            "group_unique_ancestors": particles.unique_ancestors.cpu()}
