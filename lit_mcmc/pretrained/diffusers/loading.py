"""Loading a diffusers pipeline folder (``unet/``, ``scheduler/``, optional ``vae/``, ``text_encoder/``,
``tokenizer/``) with ``local_files_only=True`` (nothing is ever downloaded), and the factory that makes a
component's target from it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.pretrained.diffusers.files import (
    check_local_folder,
    class_name,
    has_safetensors,
    refuse_pickled_weights,
    weight_files,
)
from lit_mcmc.pretrained.diffusers.prompts import (
    PromptProduct,
    RegionSpec,
    Tapestry,
    prompt_group,
    region_coverage,
)
from lit_mcmc.pretrained.diffusers.text import PromptEncoding, prompt_table
from lit_mcmc.pretrained.diffusers.unet import TORCH_DTYPES, DiffusersTarget, schedule_from_scheduler
from lit_mcmc.targets import DensityTarget

# --------------------------------------------------------------------------------------------------------------
# Loading a pipeline folder
# --------------------------------------------------------------------------------------------------------------


class DiffusersComponent(nn.Module):
    """The modules a sampling run keeps from a pipeline: the UNet and, for latent models, the VAE that decodes
    samples into images (registered here so they move to the sampling device together)."""

    def __init__(self, unet: nn.Module, vae: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] from latents, as the pipelines decode them: ``vae.decode(latents / scaling_factor)``,
        or ``latents · latents_std / scaling_factor + latents_mean`` when the VAE's config gives both; clamped."""
        if self.vae is None:
            raise ValueError("this diffusers component has no VAE: its samples are images already")
        param = next(self.vae.parameters())
        config = self.vae.config
        scaled = latents.to(device=param.device, dtype=param.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            shape = (1, len(mean)) + (1,) * (scaled.dim() - 2)
            scaled = (scaled * torch.tensor(std).view(shape).to(scaled) / config.scaling_factor
                      + torch.tensor(mean).view(shape).to(scaled))
        else:
            scaled = scaled / config.scaling_factor
        images = self.vae.decode(scaled).sample
        return images.to(device=latents.device, dtype=latents.dtype).clamp(-1.0, 1.0)


@dataclass
class Pipeline:
    """What :func:`load_pipeline` read: the UNet, its scheduler's schedule and prediction type (None without a
    scheduler), and the VAE of a latent model."""

    unet: nn.Module
    schedule: NoiseSchedule | None
    prediction_type: str | None
    vae: nn.Module | None = None


def _unet_folder(path: Path, subfolder: str | None, key: str) -> Path:
    if subfolder is not None:
        folder = path / subfolder
    else:
        folder = path / "unet" if (path / "unet").is_dir() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers UNet in {folder} (no config.json; {key}): point it at a pipeline "
                                "folder with unet/, or at a UNet folder (with subfolder: for one inside it)")
    return folder


def _load_unet(folder: Path, dtype: torch.dtype | None, variant: str | None, key: str) -> nn.Module:
    import diffusers

    refuse_pickled_weights(folder, key)
    name = class_name(folder, "config.json") or "UNet2DConditionModel"
    unet_class = getattr(diffusers, name, None)
    if unet_class is None or not issubclass(unet_class, diffusers.ModelMixin):
        raise ValueError(f"{folder / 'config.json'} names model class {name!r}, which diffusers does not have "
                         f"({key})")
    try:
        unet = unet_class.from_pretrained(folder, torch_dtype=dtype, variant=variant, local_files_only=True,
                                          use_safetensors=True if has_safetensors(folder) else None)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the {name} in {folder} ({key}; variant={variant!r}; weight files there: "
                         f"{weight_files(folder)}; variant: fp16 reads *.fp16.safetensors): {err}") from None
    return unet.eval().requires_grad_(False)


def _load_scheduler(path: Path, unet_folder: Path) -> Any | None:
    """The pipeline's scheduler (its own class) from ``scheduler/``, beside the UNet or in ``path``; None if absent."""
    import diffusers

    for folder in (path / "scheduler", unet_folder.parent / "scheduler", path):
        name = class_name(folder, "scheduler_config.json")
        if name is not None:
            scheduler_class = getattr(diffusers, name, diffusers.DDPMScheduler)
            return scheduler_class.from_pretrained(folder, local_files_only=True)
    return None


def _load_vae(folder: Path, dtype: torch.dtype | None, variant: str | None, key: str) -> nn.Module:
    import diffusers

    refuse_pickled_weights(folder, key)
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, variant=variant, local_files_only=True,
                                                      use_safetensors=True if has_safetensors(folder) else None)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the VAE in {folder} ({key}; variant={variant!r}; weight files there: "
                         f"{weight_files(folder)}): {err}") from None
    return vae.eval().requires_grad_(False)


def is_text_conditional(unet: nn.Module) -> bool:
    """Whether the UNet cross-attends to text embeddings (``encoder_hidden_states``)."""
    return getattr(getattr(unet, "config", None), "cross_attention_dim", None) is not None


def load_pipeline(path: Path, given: str, key: str, subfolder: str | None = None, torch_dtype: str | None = None,
                  variant: str | None = None) -> Pipeline:
    """Read a saved diffusers pipeline (or a bare UNet folder) with ``local_files_only=True``.

    ``subfolder`` names the UNet's folder inside ``path`` (default: ``unet/`` when present, else ``path`` itself);
    the scheduler comes from ``scheduler/``; ``vae/`` (latent models) is loaded when present. The tokenizer and
    text encoder are read separately (:func:`load_text_encoder`), only when prompts must be encoded. ``given`` is
    the configured value and ``key`` its config key, for errors.
    """
    check_local_folder(path, given, key)
    dtype = TORCH_DTYPES[torch_dtype] if torch_dtype is not None else None
    unet_folder = _unet_folder(path, subfolder, key)
    unet = _load_unet(unet_folder, dtype, variant, key)
    scheduler = _load_scheduler(path, unet_folder)
    pipeline = Pipeline(unet, None if scheduler is None else schedule_from_scheduler(scheduler),
                        None if scheduler is None else scheduler.config.get("prediction_type", "epsilon"))
    if (path / "vae").is_dir():
        vae = _load_vae(path / "vae", dtype, variant, key)
        # SDXL's pipeline decodes in float32 a float16 VAE whose config says force_upcast (it overflows in float16)
        pipeline.vae = vae.float() if dtype == torch.float16 and getattr(vae.config, "force_upcast", False) else vae
    return pipeline


MICRO_CONDITIONING_KEYS = ("original_size", "crops_coords_top_left", "target_size")


def takes_time_ids(unet: nn.Module) -> bool:
    """Whether the UNet takes SDXL's pooled text embedding and size conditioning (``addition_embed_type:
    text_time``) as ``added_cond_kwargs``."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def check_micro_conditioning(values: Mapping[str, Any] | None, key: str) -> None:
    """A config's ``micro_conditioning``: known keys, each two integers (checked before any file is read)."""
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise ValueError(f"{key}.micro_conditioning must be a mapping with keys {list(MICRO_CONDITIONING_KEYS)}")
    unknown = [name for name in values if name not in MICRO_CONDITIONING_KEYS]
    if unknown:
        raise ValueError(f"{key}.micro_conditioning has unknown keys {unknown}; it takes "
                         f"{list(MICRO_CONDITIONING_KEYS)}")
    for name, value in values.items():
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ValueError(f"{key}.micro_conditioning.{name}={value!r} must be two integers >= 0 "
                             "([height, width]; crops_coords_top_left: [top, left])")


def sdxl_time_ids(unet: nn.Module, vae: nn.Module | None, pooled_dim: int, overrides: Mapping[str, Any] | None,
                  key: str) -> Tensor:
    """SDXL's ``time_ids`` [6]: original size, crop top-left, target size, as ``StableDiffusionXLPipeline`` makes
    them by default (both sizes the model's native image size, ``unet.config.sample_size`` times the VAE's scale
    factor, and crop (0, 0)); ``overrides`` ({original_size, crops_coords_top_left, target_size}) replace them."""
    check_micro_conditioning(overrides, key)
    config = unet.config
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    native = [int(config.sample_size) * scale] * 2
    values = {"original_size": native, "crops_coords_top_left": [0, 0], "target_size": native, **(overrides or {})}
    ids = [float(v) for name in MICRO_CONDITIONING_KEYS for v in values[name]]
    expected = getattr(getattr(unet, "add_embedding", None), "linear_1", None)
    given = int(config.addition_time_embed_dim) * len(ids) + pooled_dim
    if expected is not None and expected.in_features != given:
        raise ValueError(f"the UNet in {key}.path expects an added embedding of {expected.in_features} values, but "
                         f"{len(ids)} time ids and a pooled text embedding of {pooled_dim} make {given}: is this an "
                         "SDXL refiner (aesthetic-score conditioning, not supported) or a mismatched text_encoder_2?")
    return torch.tensor(ids)


def target_factory(unet: nn.Module, prediction_type: str, prompt_table: Mapping[str, PromptEncoding] | None,
                   prompts: Sequence[str] | None, weights: Sequence[float] | None,
                   regions: Sequence[RegionSpec] | None, canvas: Sequence[int] | None,
                   normalize: bool, class_labels: Sequence[int] | None = None, time_ids: Tensor | None = None,
                   ) -> Callable[[NoiseSchedule], DensityTarget]:
    """The Target maker of a loaded component: a Tapestry with ``regions``, a PromptProduct with ``prompts``, else a
    plain DiffusersTarget (the empty prompt for text-conditional UNets; ``class_labels`` cycled over the sample
    indices of predict runs for class-conditional ones). ``time_ids``: SDXL's size conditioning (with the
    table's pooled embeddings)."""
    if regions is not None:
        assert prompt_table is not None and canvas is not None
        built = [region.with_group(prompt_table) for region in regions]
        resolution = getattr(getattr(unet, "config", None), "sample_size", None)
        resolution = resolution if isinstance(resolution, int) else None
        region_coverage(built, canvas, resolution)  # region errors now, at load time, not at the first evaluation
        return lambda schedule: Tapestry(unet, schedule, built, canvas, prediction_type, normalize, resolution,
                                         time_ids)
    if prompts is not None:
        assert prompt_table is not None
        group = prompt_group(prompt_table, prompts, weights if weights is not None else [1.0] * len(prompts))
        return lambda schedule: PromptProduct(unet, schedule, group.embeddings, group.weights, prediction_type,
                                              group.pooled, time_ids)
    # A text-conditional UNet without prompts is sampled unconditionally: with the empty prompt.
    conditioning: dict[str, Any] = {}
    if prompt_table is not None:
        empty = prompt_table[""]
        conditioning["encoder_hidden_states"] = empty.hidden[None]
        if time_ids is not None:
            conditioning["added_cond_kwargs"] = {"text_embeds": empty.pooled[None],  # type: ignore[index]
                                                 "time_ids": time_ids[None]}

    def plain(schedule: NoiseSchedule) -> DiffusersTarget:
        target = DiffusersTarget(unet, schedule, prediction_type, **conditioning)
        target.label_cycle = None if class_labels is None else list(class_labels)
        return target

    return plain


def class_cycle(unet: nn.Module, class_labels: Sequence[int] | None, key: str) -> list[int] | None:
    """The classes a class-conditional UNet (``num_class_embeds``) gives sample i: ``class_labels[i % len]``, else
    i % num_class_embeds (as guidance and ADM models take them); None for a UNet without classes."""
    classes = getattr(getattr(unet, "config", None), "num_class_embeds", None)
    if not isinstance(classes, int):
        return None if class_labels is None else list(class_labels)
    wrong = [y for y in class_labels or [] if y >= classes]
    if wrong:
        raise ValueError(f"{key}.class_labels {wrong} are not classes of this UNet (num_class_embeds={classes}: "
                         f"0..{classes - 1})")
    return list(range(classes)) if class_labels is None else list(class_labels)


def load_component(path: Path, given: str, key: str, spec: Any, root: Path
                   ) -> tuple[Pipeline, Callable[[NoiseSchedule], DensityTarget]]:
    """A component config's pipeline and the maker of its Target: the UNet and scheduler (:func:`load_pipeline`),
    the prompts' embeddings (:func:`~lit_mcmc.pretrained.diffusers.text.prompt_table`) and, for SDXL-type UNets,
    the size conditioning. ``spec`` is the component's config (a ``ComponentConfig``, whose diffusers fields are
    read here); ``key`` is model.components.<name>; ``root`` resolves a relative ``embeddings`` file."""
    pipeline = load_pipeline(path, given, f"{key}.path", spec.subfolder, spec.torch_dtype, spec.variant)
    regions = spec.region_specs()
    prompts = [p for region in regions for p in region.prompts] if regions is not None else spec.prompts
    table = None
    if prompts is not None or is_text_conditional(pipeline.unet):
        embeddings = None
        if spec.embeddings is not None:
            embeddings = Path(spec.embeddings) if Path(spec.embeddings).is_absolute() else root / spec.embeddings
        table = prompt_table(path, prompts or [], key, embeddings, spec.torch_dtype, spec.variant)
    time_ids = None
    if takes_time_ids(pipeline.unet):
        pooled = None if table is None else table[""].pooled
        if pooled is None:
            raise ValueError(f"the UNet in {key}.path takes pooled text embeddings and size conditioning (SDXL), "
                             "but the prompt embeddings have no pooled part: encode them with the pipeline (a "
                             "folder with model_index.json, text_encoder_2/ and tokenizer_2/) or save "
                             "{prompt: {'hidden': ..., 'pooled': ...}} in the embeddings file")
        time_ids = sdxl_time_ids(pipeline.unet, pipeline.vae, pooled.shape[-1], spec.micro_conditioning, key)
    elif spec.micro_conditioning is not None:
        raise ValueError(f"{key}.micro_conditioning is SDXL's size conditioning, but the UNet in {key}.path does not "
                         "take it (no addition_embed_type: text_time): remove it")
    prediction_type = spec.prediction_type or pipeline.prediction_type or "epsilon"
    make_target = target_factory(pipeline.unet, prediction_type, table, spec.prompts, spec.weights, regions,
                                 spec.canvas, bool(spec.normalize), class_cycle(pipeline.unet, spec.class_labels, key),
                                 time_ids)
    return pipeline, make_target
