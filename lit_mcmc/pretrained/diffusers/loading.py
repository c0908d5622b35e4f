"""Loading a diffusers pipeline folder (``unet/``, ``scheduler/``, optional ``vae/``, ``text_encoder/``,
``tokenizer/``) with ``local_files_only=True`` (nothing is ever downloaded), and the factory that makes a
component's target from it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.pretrained.diffusers.prompts import (
    PromptProduct,
    Region,
    RegionSpec,
    Tapestry,
    prompt_group,
    region_coverage,
)
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
        """Images in [−1, 1] from latents: ``vae.decode(latents / scaling_factor).sample``, clamped."""
        if self.vae is None:
            raise ValueError("this diffusers component has no VAE: its samples are images already")
        param = next(self.vae.parameters())
        scaled = latents.to(device=param.device, dtype=param.dtype) / self.vae.config.scaling_factor
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


def check_local_folder(path: Path, given: str, key: str) -> None:
    """A diffusers folder must exist locally: a hub id or a missing folder is an error saying how to get it."""
    if path.is_dir():
        return
    how = ("download it first on a machine with internet access (`huggingface-cli download {id} --local-dir DIR`, "
           "or load it there with diffusers' DiffusionPipeline and call its save_pretrained(DIR)), copy DIR here and "
           "set {key} to it (relative paths start at model.checkpoint_root); nothing is downloaded at run time")
    looks_like_hub_id = given.count("/") == 1 and not given.startswith((".", "/", "~")) and not path.exists()
    if looks_like_hub_id:
        raise FileNotFoundError(f"{key}={given!r} looks like a Hugging Face hub id, not a local folder ({path} does "
                                "not exist): " + how.format(id=given, key=key))
    raise FileNotFoundError(f"diffusers model folder not found: {path} ({key}={given!r}); "
                            + how.format(id="<org>/<model>", key=key))


def _class_name(folder: Path, config_name: str) -> str | None:
    config = folder / config_name
    return json.loads(config.read_text()).get("_class_name") if config.is_file() else None


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

    name = _class_name(folder, "config.json") or "UNet2DConditionModel"
    unet_class = getattr(diffusers, name, None)
    if unet_class is None or not issubclass(unet_class, diffusers.ModelMixin):
        raise ValueError(f"{folder / 'config.json'} names model class {name!r}, which diffusers does not have "
                         f"({key})")
    try:
        unet = unet_class.from_pretrained(folder, torch_dtype=dtype, variant=variant, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the {name} in {folder} ({key}; variant={variant!r}; weight files there: "
                         f"{_weight_files(folder)}; variant: fp16 reads *.fp16.safetensors): {err}") from None
    return unet.eval().requires_grad_(False)


def _weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def _load_scheduler(path: Path, unet_folder: Path) -> Any | None:
    """The pipeline's scheduler (its own class) from ``scheduler/``, beside the UNet or in ``path``; None if absent."""
    import diffusers

    for folder in (path / "scheduler", unet_folder.parent / "scheduler", path):
        name = _class_name(folder, "scheduler_config.json")
        if name is not None:
            scheduler_class = getattr(diffusers, name, diffusers.DDPMScheduler)
            return scheduler_class.from_pretrained(folder, local_files_only=True)
    return None


def _load_vae(folder: Path, dtype: torch.dtype | None, variant: str | None, key: str) -> nn.Module:
    import diffusers

    try:
        vae = diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, variant=variant, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the VAE in {folder} ({key}; variant={variant!r}; weight files there: "
                         f"{_weight_files(folder)}): {err}") from None
    return vae.eval().requires_grad_(False)


def is_text_conditional(unet: nn.Module) -> bool:
    """Whether the UNet cross-attends to text embeddings (``encoder_hidden_states``)."""
    return getattr(getattr(unet, "config", None), "cross_attention_dim", None) is not None


def load_text_encoder(path: Path, torch_dtype: str | None, key: str) -> tuple[Any, nn.Module]:
    """The pipeline's tokenizer and text encoder (``tokenizer/``, ``text_encoder/``), with local files only."""
    import transformers

    dtype = TORCH_DTYPES[torch_dtype] if torch_dtype is not None else None
    for part in ("tokenizer", "text_encoder"):
        if not (path / part).is_dir():
            raise FileNotFoundError(f"prompts need the pipeline's {part}/ folder, not found in {path} ({key}); or "
                                    "give precomputed prompt embeddings with the component's 'embeddings' key")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    config = json.loads((path / "text_encoder" / "config.json").read_text())
    name = (config.get("architectures") or ["AutoModel"])[0]
    encoder_class = getattr(transformers, name, transformers.AutoModel)
    encoder = encoder_class.from_pretrained(path / "text_encoder", dtype=dtype, local_files_only=True)
    return tokenizer, encoder.eval().requires_grad_(False)


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
        pipeline.vae = _load_vae(path / "vae", dtype, variant, key)
    return pipeline


def target_factory(unet: nn.Module, prediction_type: str, prompt_table: Mapping[str, Tensor] | None,
                   prompts: Sequence[str] | None, weights: Sequence[float] | None,
                   regions: Sequence[RegionSpec] | None, canvas: Sequence[int] | None,
                   normalize: bool, class_labels: Sequence[int] | None = None,
                   ) -> Callable[[NoiseSchedule], DensityTarget]:
    """The Target maker of a loaded component: a Tapestry with ``regions``, a PromptProduct with ``prompts``, else a
    plain DiffusersTarget (the empty prompt for text-conditional UNets; ``class_labels`` cycled over the sample
    indices of predict runs for class-conditional ones)."""
    if regions is not None:
        assert prompt_table is not None and canvas is not None
        built = [Region(r.top, r.left, r.size, prompt_group(prompt_table, r.prompts, r.weights)) for r in regions]
        resolution = getattr(getattr(unet, "config", None), "sample_size", None)
        resolution = resolution if isinstance(resolution, int) else None
        region_coverage(built, canvas, resolution)  # region errors now, at load time, not at the first evaluation
        return lambda schedule: Tapestry(unet, schedule, built, canvas, prediction_type, normalize, resolution)
    if prompts is not None:
        assert prompt_table is not None
        group = prompt_group(prompt_table, prompts, weights if weights is not None else [1.0] * len(prompts))
        return lambda schedule: PromptProduct(unet, schedule, group.embeddings, group.weights, prediction_type)
    # A text-conditional UNet without prompts is sampled unconditionally: with the empty prompt.
    conditioning = {} if prompt_table is None else {"encoder_hidden_states": prompt_table[""][None]}

    def plain(schedule: NoiseSchedule) -> DiffusersTarget:
        target = DiffusersTarget(unet, schedule, prediction_type, **conditioning)
        target.label_cycle = None if class_labels is None else list(class_labels)
        return target

    return plain
