"""The models a SamplingModule composes: one small loader per kind of component, all in one place.

A component is a ``lit-mcmc fit`` checkpoint, an analytic target, or a published model (``pretrained:``). Each kind's
loader turns its config into a :class:`LoadedComponent`: the network to register (so it moves to the sampling
device), the schedule it was trained on, and, for diffusion models, a factory that makes its Target on the
(possibly respaced) schedule the sampler uses. Adding a kind means adding a loader to :data:`LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from lit_mcmc.checkpoints import check_readable, read_checkpoint
from lit_mcmc.denoisers import DenoiserConfig
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.modules.classifiers import ClassifierModule, NoisyClassifierModule
from lit_mcmc.modules.diffusion import DiffusionModule
from lit_mcmc.targets import DiffusedGaussianMixture, DiffusedUniformBox, ScoreModelTarget, Target

ANALYTIC = ("toy2d_gmm", "toy2d_bar")
PRETRAINED = ("adm", "adm_classifier", "diffusers")
ROLES = ("diffusion", "classifier", "clean_classifier")
# The role each published kind plays: an ADM UNet is a diffusion model, an ADM EncoderUNet a noisy classifier.
PRETRAINED_ROLE = {"adm": "diffusion", "adm_classifier": "classifier", "diffusers": "diffusion"}
ADM_FIELDS = ("config", "use_fp16")
DIFFUSERS_FIELDS = ("subfolder", "torch_dtype", "variant", "prompts", "weights", "embeddings", "regions", "canvas",
                    "normalize", "prediction_type", "class_labels", "guidance", "micro_conditioning")


@dataclass
class ComponentConfig:
    """One model of a composition: a trained checkpoint, an analytic target, or a published model.

    ``checkpoint``: a ``lit-mcmc fit`` checkpoint of a DiffusionModule (``role: diffusion``), a
    NoisyClassifierModule (``role: classifier``, for ``classifier_guidance``) or a clean ClassifierModule
    (``role: clean_classifier``, for ``reconstruction_guidance``). ``analytic``: "toy2d_gmm" or "toy2d_bar" (the
    paper's 2D densities, diffused in closed form). ``pretrained``: "adm" (an OpenAI guided-diffusion UNet,
    ``role: diffusion``) or "adm_classifier" (its noisy classifier, ``role: classifier``), read from the file
    ``path`` and built from ``config`` (a published config name such as "256x256_diffusion_uncond", or a dict of
    constructor arguments); ``schedule`` overrides the schedule it was trained on (default: linear, T = 1000;
    cosine for the 64x64 models) and ``use_fp16`` the config's half-precision body. A class-conditional ADM UNet
    ("256x256_diffusion", …) conditions sample i on class i % num_classes, or on ``class_labels[i % len]``; under
    ``classifier_guidance`` on the guidance's labels. Relative ``checkpoint`` and ``path`` values start at the
    SamplingModule's ``checkpoint_root``.

    ``pretrained: diffusers`` (``role: diffusion``): a saved diffusers pipeline folder ``path`` (``unet/``,
    ``scheduler/``, and as needed ``vae/`` for latent models, ``tokenizer/`` + ``text_encoder/`` for prompts), or
    a bare UNet folder; ``subfolder`` names the UNet's folder inside ``path``. Read with local files only (a hub
    id is an error: download the model first). ``torch_dtype`` ("float32", "float16", "bfloat16") and
    ``variant`` (e.g. "fp16" weight files) choose the weights; ``prediction_type`` overrides the scheduler's;
    ``schedule`` replaces a missing scheduler. The target: with ``prompts`` (and ``weights``, default 1 each) the
    prompt product ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)); with ``regions`` (``{top, left, size, prompt(s), weight(s)}``) on
    a ``canvas`` [H, W] the tapestry (``normalize``: average where regions overlap); otherwise the UNet alone
    (the empty prompt for a text-conditional one). Prompts are encoded with the pipeline's tokenizer and text
    encoder at setup, or read from ``embeddings`` (a file saved with torch.save: {prompt: [L, D]}, "" included;
    relative to ``checkpoint_root``). A class-conditional UNet (``class_labels`` input) generates sample i of a
    predict run from class ``class_labels[i % len(class_labels)]`` (composition kind: single). A folder with
    ``model_index.json`` encodes prompts with its pipeline class's own ``encode_prompt``; an SDXL-type UNet also
    gets the pooled text embedding and ``micro_conditioning`` ({original_size, crops_coords_top_left,
    target_size}; default: the pipeline's, at the model's native size).

    ``denoiser`` (``role: diffusion``): a user's EDM-style network D(x, σ, **cond) named by its class (``network``)
    and weights file, with or without EDM preconditioning (:class:`~lit_mcmc.denoisers.DenoiserConfig`;
    docs/gaussian_paths.md). It has no levels of its own: ``model.schedule`` gives them (any Gaussian path, e.g.
    ``kind: karras``).

    A diffusers folder whose scheduler is ``FlowMatchEulerDiscreteScheduler`` (SD3, Flux) is read by
    ``lit_mcmc/pretrained/diffusers/flow.py``; ``guidance`` is Flux's distilled guidance input there.
    """

    checkpoint: str | None = None
    analytic: str | None = None
    pretrained: Literal["adm", "adm_classifier", "diffusers"] | None = None
    path: str | None = None
    config: str | dict[str, Any] | None = None
    schedule: ScheduleConfig | None = None
    use_fp16: bool | None = None
    role: Literal["diffusion", "classifier", "clean_classifier"] = "diffusion"
    subfolder: str | None = None
    torch_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    variant: str | None = None
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = None
    prompts: list[str] | None = None
    weights: list[float] | None = None
    embeddings: str | None = None
    regions: list[dict[str, Any]] | None = None
    canvas: list[int] | None = None
    normalize: bool | None = None
    class_labels: list[int] | None = None
    micro_conditioning: dict[str, list[int]] | None = None
    denoiser: DenoiserConfig | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.denoiser, dict):  # a config read as plain data
            self.denoiser = DenoiserConfig(**self.denoiser)
        given = [k for k in ("checkpoint", "analytic", "pretrained", "denoiser") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a component needs exactly one of 'checkpoint' (a lit-mcmc fit checkpoint), 'analytic' "
                             f"(one of {list(ANALYTIC)}), 'pretrained' (one of {list(PRETRAINED)}) or 'denoiser' "
                             f"(your own EDM-style network); got {given}")
        if self.denoiser is not None and self.role != "diffusion":
            raise ValueError(f"a denoiser component is a diffusion model: set role: diffusion (got role: {self.role})")
        if self.analytic is not None and self.analytic not in ANALYTIC:
            raise ValueError(f"analytic={self.analytic!r} is not one of {list(ANALYTIC)}")
        if self.role not in ROLES:
            raise ValueError(f"role={self.role!r} is not one of {list(ROLES)}")
        if self.pretrained is None:
            extra = [k for k in ("path", "config", "schedule", *ADM_FIELDS, *DIFFUSERS_FIELDS)
                     if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{extra[0]} applies only to pretrained components: remove it, or set pretrained")
            if self.role != "diffusion" and self.checkpoint is None:
                module = "NoisyClassifierModule" if self.role == "classifier" else "ClassifierModule"
                extra_kind = " or pretrained: adm_classifier" if self.role == "classifier" else ""
                raise ValueError(f"a component with role={self.role!r} needs a 'checkpoint' of a {module}{extra_kind}")
            return
        if self.pretrained not in PRETRAINED:
            raise ValueError(f"pretrained={self.pretrained!r} is not one of {list(PRETRAINED)}")
        if self.pretrained == "diffusers":
            self._check_diffusers()
            return
        # class_labels: a class-conditional UNet's classes per sample (adm as diffusers; not a classifier's)
        shared = ("class_labels",) if self.pretrained == "adm" else ()
        extra = [k for k in DIFFUSERS_FIELDS if k not in shared and getattr(self, k) is not None]
        if extra:
            raise ValueError(f"{extra[0]} applies only to pretrained: diffusers components (this one is "
                             f"pretrained: {self.pretrained}): remove it")
        if self.class_labels is not None and (
                not self.class_labels or any(not isinstance(y, int) or y < 0 for y in self.class_labels)):
            raise ValueError(f"model.components.<name>.class_labels must be a non-empty list of classes >= 0, got "
                             f"{self.class_labels}")
        if self.path is None or self.config is None:
            raise ValueError(f"pretrained: {self.pretrained} needs 'path' (the checkpoint file) and 'config' (a "
                             "published config name such as 256x256_diffusion_uncond, or constructor arguments)")
        if self.role != PRETRAINED_ROLE[self.pretrained]:
            raise ValueError(f"pretrained: {self.pretrained} is a "
                             f"{'noisy classifier' if self.pretrained == 'adm_classifier' else 'diffusion model'}: "
                             f"set role: {PRETRAINED_ROLE[self.pretrained]} (got role: {self.role})")
        from lit_mcmc.pretrained.adm import resolve_config

        resolve_config(self.config, self.pretrained, "config")  # a bad name is an error before any file is read

    def _check_diffusers(self) -> None:
        """The diffusers fields, checked before any file is read (errors name model.components.<name>.<field>)."""
        from lit_mcmc.pretrained.diffusers import PREDICTION_TYPES, TORCH_DTYPES

        key = "model.components.<name>"
        if self.path is None:
            raise ValueError(f"pretrained: diffusers needs 'path' ({key}.path): a local diffusers pipeline folder "
                             "(or a UNet folder)")
        extra = [k for k in ADM_FIELDS if getattr(self, k) is not None]
        if extra:
            raise ValueError(f"{key}.{extra[0]} applies only to pretrained: adm components; a diffusers folder "
                             "carries its own config (use torch_dtype / variant for half precision)")
        if self.role != "diffusion":
            raise ValueError(f"pretrained: diffusers is a diffusion model: set role: diffusion (got role: {self.role})")
        if self.torch_dtype is not None and self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(f"{key}.torch_dtype={self.torch_dtype!r} is not one of {list(TORCH_DTYPES)}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{key}.prediction_type={self.prediction_type!r} is not one of "
                             f"{list(PREDICTION_TYPES)} (null: the scheduler's)")
        if self.prompts is not None and self.regions is not None:
            raise ValueError(f"{key}: give 'prompts' (a prompt product) or 'regions' (a tapestry), not both")
        if self.prompts is not None:
            if not self.prompts:
                raise ValueError(f"{key}.prompts is empty: a prompt product needs at least one prompt (null, or no "
                                 "prompts key, samples the model alone)")
            if not all(isinstance(p, str) and p for p in self.prompts):
                raise ValueError(f"{key}.prompts must be non-empty strings (the empty prompt, the unconditional "
                                 f"part, is always included), got {self.prompts}")
            if self.weights is not None and len(self.weights) != len(self.prompts):
                raise ValueError(f"{key}.weights has {len(self.weights)} entries but {key}.prompts has "
                                 f"{len(self.prompts)}: one weight per prompt")
        elif self.weights is not None:
            raise ValueError(f"{key}.weights weighs {key}.prompts, which is not set (tapestry regions carry "
                             "their own weights)")
        if self.regions is not None:
            from lit_mcmc.pretrained.diffusers import parse_regions

            self._region_specs = parse_regions(self.regions, self.canvas, key)  # parsed once, here (not a field)
        else:
            given = [k for k in ("canvas", "normalize") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{key}.{given[0]} applies only to a tapestry ({key}.regions): remove it")
        if self.class_labels is not None:
            if not self.class_labels or any(not isinstance(y, int) or y < 0 for y in self.class_labels):
                raise ValueError(f"{key}.class_labels must be a non-empty list of classes >= 0, got "
                                 f"{self.class_labels}")
            if self.prompts is not None or self.regions is not None:
                raise ValueError(f"{key}.class_labels applies to a class-conditional UNet, not to prompts or regions")
        if self.embeddings is not None and self.prompts is None and self.regions is None:
            raise ValueError(f"{key}.embeddings holds prompt embeddings, but there are no prompts or regions")
        from lit_mcmc.pretrained.diffusers import check_micro_conditioning

        check_micro_conditioning(self.micro_conditioning, key)

    def region_specs(self) -> list[Any] | None:
        """The tapestry regions as checked :class:`~lit_mcmc.pretrained.diffusers.RegionSpec` (None without)."""
        return getattr(self, "_region_specs", None) if self.regions is not None else None

    @property
    def kind(self) -> str:
        """"checkpoint", "analytic", "denoiser", or the pretrained kind."""
        if self.pretrained is not None:
            return self.pretrained
        if self.denoiser is not None:
            return "denoiser"
        return "checkpoint" if self.checkpoint is not None else "analytic"


@dataclass
class LoadedComponent:
    """A component ready to compose: its network (None for analytic targets), the schedule it was trained on (None
    when it has no noise levels: analytic targets and clean classifiers), and for diffusion models the factory of
    its Target on a given schedule (a respacing of the training one, when the sampler respaces)."""

    module: nn.Module | None
    schedule: NoiseSchedule | None
    make_target: Callable[[NoiseSchedule], Target] | None = None
    decoder: Callable[[Tensor], Tensor] | None = None  # latent models: samples -> images in [-1, 1]


def analytic_target(name: str, schedule: NoiseSchedule) -> Target:
    """The paper's 2D densities (8-mode GMM, uniform bar), diffused exactly on ``schedule``."""
    from lit_mcmc.data import toy2d

    if name == "toy2d_gmm":
        return DiffusedGaussianMixture(toy2d.GMM_MEANS, toy2d.GMM_STD, schedule)
    return DiffusedUniformBox(toy2d.BAR_LOW, toy2d.BAR_HIGH, schedule)


def _resolve(path: str, root: Path) -> Path:
    resolved = Path(path)
    return resolved if resolved.is_absolute() else root / resolved


def load_checkpoint(name: str, spec: ComponentConfig, root: Path) -> LoadedComponent:
    """A ``lit-mcmc fit`` checkpoint of the module class the component's role names."""
    path = _resolve(spec.checkpoint, root)  # type: ignore[arg-type]
    key = f"model.components.{name}.checkpoint"
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint for component {name!r} not found: {path}. Train it with `lit-mcmc fit` (see configs/), "
            f"or set {key} (relative paths start at model.checkpoint_root)")
    module_class = {"diffusion": DiffusionModule, "classifier": NoisyClassifierModule,
                    "clean_classifier": ClassifierModule}[spec.role]
    check_readable(path, key)
    try:
        module = module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, ValueError) as err:
        raise _load_error(err, key, path, module_class.__name__, name, spec.role) from None
    module.eval().requires_grad_(False)  # sampling needs input gradients only
    schedule = None if spec.role == "clean_classifier" else module.schedule  # a clean classifier has no levels
    make_target = module.target if spec.role == "diffusion" else None
    return LoadedComponent(module, schedule, make_target)


def _load_error(err: KeyError | ValueError, key: str, path: Path, module: str, name: str, role: str) -> ValueError:
    """A readable file that is not a checkpoint of the module the role needs."""
    if isinstance(err, KeyError):
        return ValueError(f"{key}={str(path)!r} is not a `lit-mcmc fit` checkpoint of a {module} (missing {err}); "
                          "published ADM files load with pretrained: adm / adm_classifier")
    # e.g. a classifier checkpoint given the diffusion role, or the reverse
    return ValueError(f"{key}={str(path)!r} does not load as a {module} (model.components.{name}.role={role!r}; is "
                      f"the role right?): {err}")


def load_analytic(name: str, spec: ComponentConfig, root: Path) -> LoadedComponent:
    """An analytic target: nothing to read; it is diffused on whatever schedule the sampler uses."""
    return LoadedComponent(None, None, lambda schedule: analytic_target(spec.analytic, schedule))  # type: ignore[arg-type]


def load_adm(name: str, spec: ComponentConfig, root: Path) -> LoadedComponent:
    """A published guided-diffusion UNet (its ε half is the score; a learned-σ half feeds the reverse step) or
    noisy classifier."""
    from lit_mcmc.pretrained import adm

    key = f"model.components.{name}.path"
    net = adm.load_adm(_resolve(spec.path, root), spec.config, spec.pretrained, spec.use_fp16, key)  # type: ignore[arg-type]
    schedule = spec.schedule.build() if spec.schedule is not None else adm.default_schedule(spec.config)  # type: ignore[arg-type]
    if spec.pretrained == "adm_classifier":
        return LoadedComponent(net, schedule)
    if net.num_classes is not None:  # labels per batch: the sample index, class_labels, or the guidance's
        wrong = [y for y in spec.class_labels or [] if y >= net.num_classes]
        if wrong:
            raise ValueError(f"model.components.{name}.class_labels {wrong} are not classes of this model "
                             f"(num_classes={net.num_classes}: 0..{net.num_classes - 1})")
        return LoadedComponent(net, schedule, lambda s: adm.ClassConditionalTarget(net, s, spec.class_labels))
    if spec.class_labels is not None:
        raise ValueError(f"model.components.{name}.class_labels: this ADM model is unconditional (num_classes: "
                         "null in its config); remove class_labels, or load a class-conditional model")
    return LoadedComponent(net, schedule, lambda s: ScoreModelTarget(net, s, learned_variance=net.learn_sigma))


def load_diffusers(name: str, spec: ComponentConfig, root: Path) -> LoadedComponent:
    """A saved diffusers pipeline (or UNet folder): its UNet as a Target (plain, a prompt product or a tapestry) on
    the scheduler's levels, and its VAE as the decoder of a latent model."""
    from lit_mcmc.pretrained import diffusers as adapter

    key = f"model.components.{name}"
    path = _resolve(spec.path, root)  # type: ignore[arg-type]
    from lit_mcmc.pretrained.diffusers import flow

    if flow.is_flow_folder(path):  # SD3 / Flux transformers
        module, schedule, make_flow = flow.load_flow_component(path, spec.path, key, spec, root)  # type: ignore[arg-type]
        return LoadedComponent(module, schedule, make_flow, module.decode if module.vae is not None else None)
    if spec.guidance is not None:
        raise ValueError(f"{key}.guidance is Flux's distilled guidance input; {path} is not a flow-matching folder")
    pipeline, make_target = adapter.load_component(path, spec.path, key, spec, root)  # type: ignore[arg-type]
    schedule = spec.schedule.build() if spec.schedule is not None else pipeline.schedule
    if schedule is None:
        raise FileNotFoundError(f"no scheduler/ folder with a scheduler_config.json in {path} ({key}.path): add the "
                                f"pipeline's scheduler, or give the training schedule in {key}.schedule")
    component = adapter.DiffusersComponent(pipeline.unet, pipeline.vae)
    return LoadedComponent(component, schedule, make_target, component.decode if pipeline.vae is not None else None)


def network_input(module: nn.Module | None) -> tuple[str, int] | None:
    """What a component's network takes: ("vector", dim) for the 2D MLPs, ("image", channels) for UNets (ours, ADM,
    diffusers) and image classifiers; None when it cannot be told (then nothing is checked)."""
    if module is None:
        return None
    from lit_mcmc.nets.mlp import ResMLP

    for sub in module.modules():
        config = getattr(sub, "config", None)
        if isinstance(getattr(config, "in_channels", None), int):  # a diffusers UNet
            return "image", int(config.in_channels)
        if isinstance(sub, ResMLP):
            return "vector", int(sub.dim)
        channels = sub.__dict__.get("in_channels")  # ADM trunks, our UNet, else the first convolution
        if isinstance(channels, int):
            return "image", channels
    return None


def check_sample_shape(name: str, spec: ComponentConfig, module: nn.Module | None, shape: list[int]) -> None:
    """``model.sample_shape`` must fit the component's network (or the 2D analytic targets): one line before any
    sample is drawn, instead of a conv2d or matmul error inside the sampler."""
    if spec.kind == "analytic":
        expected: tuple[str, int] | None = ("vector", 2)
    else:
        expected = network_input(module)
    if expected is None:
        return
    kind, size = expected
    fits = list(shape) == [size] if kind == "vector" else (len(shape) == 3 and shape[0] == size)
    if not fits:
        takes = f"[{size}]" if kind == "vector" else f"[{size}, height, width] ({size}-channel images)"
        raise ValueError(f"model.sample_shape={list(shape)} does not fit model.components.{name}: its "
                         f"{'model' if spec.kind == 'analytic' else 'network'} takes samples of shape {takes}")


def has_exact_log_prob(spec: ComponentConfig, root: str | Path) -> bool | None:
    """Whether a diffusion component has an exact log-density, known before any network is built: analytic targets
    do, published models (score networks) do not, and a checkpoint does when its saved hyper-parameters say
    ``parameterization: energy`` (read with its tensors memory-mapped, not loaded). None when the file is missing
    or unreadable: its loader reports that."""
    if spec.kind == "analytic":
        return True
    if spec.kind != "checkpoint":
        return False
    path = _resolve(spec.checkpoint, Path(root))  # type: ignore[arg-type]
    try:
        saved = read_checkpoint(path, "checkpoint", mmap=True)
    except (ValueError, OSError):
        return None
    hparams = saved.get("hyper_parameters", {}) if isinstance(saved, dict) else {}
    return hparams.get("parameterization") == "energy"


def load_denoiser(name: str, spec: ComponentConfig, root: Path) -> LoadedComponent:
    """A user's EDM-style denoiser (``lit_mcmc/denoisers.py``): no levels of its own, a Target on any path."""
    from lit_mcmc.denoisers import DenoiserTarget, build_denoiser

    denoiser = spec.denoiser
    assert denoiser is not None
    net = build_denoiser(denoiser, root, f"model.components.{name}.denoiser")
    return LoadedComponent(net, None, lambda schedule: DenoiserTarget(net, schedule, denoiser.cond))


LOADERS: dict[str, Callable[[str, ComponentConfig, Path], LoadedComponent]] = {
    "checkpoint": load_checkpoint, "analytic": load_analytic, "adm": load_adm, "adm_classifier": load_adm,
    "diffusers": load_diffusers, "denoiser": load_denoiser,
}


def load_component(name: str, spec: ComponentConfig, root: str | Path) -> LoadedComponent:
    """Load component ``name`` (relative paths start at ``root``, the SamplingModule's ``checkpoint_root``)."""
    return LOADERS[spec.kind](name, spec, Path(root))
