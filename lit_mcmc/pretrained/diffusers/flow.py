"""Flow-matching diffusers pipelines (Stable Diffusion 3, Flux) as Targets on their rectified-flow path.

A folder whose scheduler is ``FlowMatchEulerDiscreteScheduler`` holds a ``transformer/`` (``SD3Transformer2DModel``
or ``FluxTransformer2DModel``) that predicts the velocity u = ε − x_0 on x_σ = (1 − σ) x_0 + σ ε. The transformer
is called as its pipeline calls it (SD3: timestep 1000·σ; Flux: timestep σ, latents packed into 2×2 patches with
their image ids, text ids, and the ``guidance`` input of guidance-distilled models), and its velocity becomes the
score −ε̂/σ with ε̂ = (x + (1 − σ) u) (docs/algorithms.md §15.3). A prompt product ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)) makes
one batched transformer call per evaluation. Prompts are encoded by the pipeline's own ``encode_prompt``
(``text.py``); the levels are the scheduler's training σ with its shift (SD3) or resolution-dependent shift (Flux)
(docs/gaussian_paths.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule, resolution_shift
from lit_mcmc.diffusion.predictions import to_score
from lit_mcmc.pretrained.diffusers.files import (
    check_local_folder,
    has_safetensors,
    refuse_pickled_weights,
    weight_files,
)
from lit_mcmc.pretrained.diffusers.text import (
    PromptEncoding,
    encode_with_pipeline,
    load_text_pipeline,
    pipeline_defaults,
)
from lit_mcmc.pretrained.diffusers.unet import TORCH_DTYPES
from lit_mcmc.targets import DensityTarget, Evaluation

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
TRANSFORMERS = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
# Flux pipelines' default image: 1024² pixels, 128² latents, 64² packed tokens (the resolution shift's length).
FLUX_DEFAULT_SEQ_LEN = 4096


def is_flow_folder(path: Path) -> bool:
    """Whether ``path`` is a pipeline folder whose scheduler is a flow-matching one."""
    config = path / "scheduler" / "scheduler_config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") in FLOW_SCHEDULERS


def schedule_from_flow_scheduler(config: Mapping[str, Any], image_seq_len: int = FLUX_DEFAULT_SEQ_LEN) -> NoiseSchedule:
    """The scheduler's training levels σ_k = shift(k/N), k = 1 … N − 1 (N = ``num_train_timesteps``; σ = 1 left
    out, see :func:`~lit_mcmc.diffusion.paths.rectified_flow_levels`), the network's time 1000·σ. The shift is
    ``shift``, or with ``use_dynamic_shifting`` (Flux) e^μ for ``image_seq_len`` packed tokens."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("use_dynamic_shifting", False):
        if config.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(f"time_shift_type={config.get('time_shift_type')!r} is not supported (exponential only); "
                             "give the component a schedule: {kind: rectified_flow, shift: ...}")
        shift = resolution_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))
    else:
        shift = float(config.get("shift", 1.0))
    return NoiseSchedule.rectified_flow(n - 1, shift, 1 / n, (n - 1) / n, n)


def pack_latents(x: Tensor) -> Tensor:
    """Flux's 2×2 patches: [B, C, H, W] → [B, (H/2)(W/2), 4C] (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, channels: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`pack_latents`."""
    b = packed.shape[0]
    x = packed.view(b, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Flux's image position ids [(H/2)(W/2), 3]: (0, row, column) per packed token."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class FlowTransformerTarget(DensityTarget):
    """A flow-matching transformer with one or several prompts as a target on a rectified-flow schedule.

    Args:
        transformer: ``SD3Transformer2DModel`` or ``FluxTransformer2DModel``.
        family: "sd3" or "flux" (how the transformer is called).
        schedule: the rectified-flow levels (α_t = 1 − σ_t).
        hidden: [k+1, L, D] text hidden states, row 0 the unconditional (empty) prompt.
        pooled: [k+1, P] pooled text embeddings.
        weights: the k prompts' weights wᵢ: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)); empty: the unconditional model alone.
        guidance: Flux's distilled guidance input (models with ``guidance_embeds``); None otherwise.
        text_ids: Flux's text position ids [L, 3] (zeros, as its pipeline makes them by default).
    """

    has_log_prob = False

    def __init__(self, transformer: nn.Module, family: str, schedule: NoiseSchedule, hidden: Tensor, pooled: Tensor,
                 weights: Sequence[float] = (), guidance: float | None = None) -> None:
        if family not in ("sd3", "flux"):
            raise ValueError(f"family={family!r} is not 'sd3' or 'flux'")
        if hidden.shape[0] != len(weights) + 1 or pooled.shape[0] != hidden.shape[0]:
            raise ValueError(f"{hidden.shape[0]} prompt embeddings for {len(weights)} weights: expected one per "
                             "prompt plus the empty prompt first")
        takes_guidance = bool(getattr(getattr(transformer, "config", None), "guidance_embeds", False))
        if takes_guidance and guidance is None:
            raise ValueError("this Flux transformer is guidance-distilled (guidance_embeds): set the component's "
                             "guidance (its pipeline's guidance_scale, e.g. 3.5)")
        if guidance is not None and not takes_guidance:
            raise ValueError("guidance applies to guidance-distilled Flux transformers (guidance_embeds: true); this "
                             "one has none: remove it")
        self.transformer, self.family, self.schedule = transformer, family, schedule
        self.hidden, self.pooled = hidden, pooled
        self.weights = [float(w) for w in weights]
        self.guidance = guidance

    def velocities(self, x: Tensor, t: int) -> Tensor:
        """u for every prompt at every sample, [k+1, B, ...], from one batched transformer call."""
        rows, batch = self.hidden.shape[0], x.shape[0]
        param = next(self.transformer.parameters())
        inputs = x.to(param.dtype).repeat(rows, *([1] * (x.dim() - 1)))
        hidden = self.hidden.to(param).repeat_interleave(batch, 0)
        pooled = self.pooled.to(param).repeat_interleave(batch, 0)
        time = self.schedule.model_t(t, rows * batch, x.device)  # 1000·σ in float32, as the scheduler gives it
        if self.family == "sd3":
            out = self.transformer(hidden_states=inputs, timestep=time, encoder_hidden_states=hidden,
                                   pooled_projections=pooled, return_dict=False)[0]
        else:
            _, channels, height, width = x.shape  # FluxPipeline casts the timestep to the latents' dtype
            guidance = None
            if self.guidance is not None:
                guidance = torch.full((rows * batch,), self.guidance, device=x.device, dtype=param.dtype)
            out = self.transformer(
                hidden_states=pack_latents(inputs), timestep=time.to(param.dtype) / 1000, guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=hidden,
                txt_ids=torch.zeros(self.hidden.shape[1], 3, device=x.device, dtype=param.dtype),
                img_ids=latent_image_ids(height, width, x.device, param.dtype), return_dict=False)[0]
            out = unpack_latents(out, channels, height, width)
        return out.to(x.dtype).unflatten(0, (rows, batch))

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, None]:
        return self.evaluate(x, t).score, None

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        """The product's score and Σ_j w_j ‖s_j‖² over the densities it combines (the empty prompt with weight
        1 − Σᵢ wᵢ, prompt i with wᵢ: Feynman–Kac particle weights use it), from one transformer call."""
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        u = self.velocities(x, t)
        alpha, sigma = self.schedule.level_coefficients(t)
        combined = u[0] + sum(w * (u[i + 1] - u[0]) for i, w in enumerate(self.weights))
        score = to_score("velocity", combined, x, alpha, sigma)
        parts = [1.0 - sum(self.weights), *self.weights]
        sq_norm = sum(w * to_score("velocity", u[j], x, alpha, sigma).flatten(1).pow(2).sum(1)
                      for j, w in enumerate(parts) if w != 0.0)
        return Evaluation(score, score, x.new_zeros(x.shape[0]), None, None,
                          sq_norm if self.weights else None)  # type: ignore[arg-type]


class FlowComponent(nn.Module):
    """The modules a sampling run keeps from a flow pipeline: the transformer and the VAE that decodes latents."""

    def __init__(self, transformer: nn.Module, family: str, vae: nn.Module | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        # the samples' channels (what model.sample_shape is checked against): Flux packs 2×2 patches of them
        channels = int(transformer.config.in_channels)
        self.in_channels = channels // 4 if family == "flux" else channels

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [−1, 1] as the SD3 and Flux pipelines decode: ``vae.decode(latents / scaling_factor +
        shift_factor)``, clamped."""
        if self.vae is None:
            raise ValueError("this flow component has no VAE: its samples are not decodable latents")
        param = next(self.vae.parameters())
        config = self.vae.config
        scaled = latents.to(device=param.device, dtype=param.dtype) / config.scaling_factor
        scaled = scaled + (getattr(config, "shift_factor", None) or 0.0)
        images = self.vae.decode(scaled).sample
        return images.to(device=latents.device, dtype=latents.dtype).clamp(-1.0, 1.0)


@torch.no_grad()
def encode_flow_prompts(folder: Path, family: str, prompts: Sequence[str], key: str, torch_dtype: str | None = None,
                        variant: str | None = None) -> dict[str, PromptEncoding]:
    """{text: PromptEncoding(hidden, pooled)} for "" and ``prompts`` from the pipeline's own ``encode_prompt``.

    SD3's returns (embeds, negative, pooled, negative pooled), read by ``text.encode_with_pipeline`` (the negative
    of no negative prompt is ""'s). Flux's returns (embeds, pooled, text ids) and has no negative prompt, so "" is
    encoded as a prompt, with its ``__call__``'s defaults (e.g. ``max_sequence_length``)."""
    if family == "sd3":
        return encode_with_pipeline(folder, prompts, key, torch_dtype, variant)
    pipeline = load_text_pipeline(folder, key, torch_dtype, variant)
    texts = list(dict.fromkeys(["", *prompts]))
    embeds, pooled, _ = pipeline.encode_prompt(prompt=texts, device=torch.device("cpu"), num_images_per_prompt=1,
                                               **pipeline_defaults(pipeline))
    return {text: PromptEncoding(embeds[i].float(), pooled[i].float()) for i, text in enumerate(texts)}


@dataclass
class FlowPipeline:
    """What :func:`load_flow_pipeline` read."""

    transformer: nn.Module
    family: str
    scheduler_config: dict[str, Any]
    vae: nn.Module | None


def load_flow_pipeline(path: Path, given: str, key: str, torch_dtype: str | None = None,
                       variant: str | None = None) -> FlowPipeline:
    """The transformer (``transformer/``), scheduler config and VAE (``vae/``, when present) of a flow pipeline
    folder, with local files only; pickled weights are refused by name."""
    import diffusers

    from lit_mcmc.pretrained.diffusers.loading import _load_vae

    check_local_folder(path, given, key)
    folder = path / "transformer"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no transformer/ folder with a config.json in {path} ({key}): a flow-matching "
                                "pipeline (SD3, Flux) keeps its network there")
    name = json.loads(config_file.read_text()).get("_class_name")
    if name not in TRANSFORMERS:
        raise ValueError(f"{config_file} names {name!r}; flow-matching folders are read for {list(TRANSFORMERS)} "
                         f"({key})")
    refuse_pickled_weights(folder, key)
    dtype = TORCH_DTYPES[torch_dtype] if torch_dtype is not None else None
    try:
        transformer = getattr(diffusers, name).from_pretrained(
            folder, torch_dtype=dtype, variant=variant, local_files_only=True,
            use_safetensors=True if has_safetensors(folder) else None)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the {name} in {folder} ({key}; variant={variant!r}; weight files there: "
                         f"{weight_files(folder)}): {err}") from None
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    vae = _load_vae(path / "vae", dtype, variant, key) if (path / "vae").is_dir() else None
    return FlowPipeline(transformer.eval().requires_grad_(False), TRANSFORMERS[name], scheduler_config, vae)


def load_flow_component(path: Path, given: str, key: str, spec: Any, root: Path
                        ) -> tuple[FlowComponent, NoiseSchedule, Callable[[NoiseSchedule], FlowTransformerTarget]]:
    """A component config's flow pipeline: its module (transformer + VAE), the scheduler's levels (the component's
    ``schedule`` replaces them) and the maker of its Target (the prompt product of ``prompts`` and ``weights``, or
    the empty prompt alone). ``key`` is model.components.<name>; ``spec`` the ComponentConfig."""
    from lit_mcmc.pretrained.diffusers.text import read_prompt_embeddings

    unsupported = [k for k in ("regions", "class_labels", "micro_conditioning", "subfolder")
                   if getattr(spec, k, None) is not None]
    if unsupported:
        raise ValueError(f"{key}.{unsupported[0]} is not supported for flow-matching (SD3/Flux) folders: remove it")
    if spec.prediction_type is not None:
        raise ValueError(f"{key}.prediction_type: a flow-matching transformer predicts the velocity u = ε − x_0; "
                         "remove it")
    pipeline = load_flow_pipeline(path, given, f"{key}.path", spec.torch_dtype, spec.variant)
    prompts = list(spec.prompts or [])
    if spec.embeddings is not None:
        file = Path(spec.embeddings) if Path(spec.embeddings).is_absolute() else root / spec.embeddings
        table = read_prompt_embeddings(file, prompts, f"{key}.embeddings")
    else:
        table = encode_flow_prompts(path, pipeline.family, prompts, f"{key}.path", spec.torch_dtype, spec.variant)
    texts = ["", *dict.fromkeys(prompts)]
    missing = [text for text in texts if table[text].pooled is None]
    if missing:
        raise ValueError(f"{key}: SD3/Flux need pooled text embeddings, and the one of {missing[0]!r} has none (save "
                         "{prompt: {'hidden': ..., 'pooled': ...}} in the embeddings file)")
    hidden = torch.stack([table[text].hidden for text in ["", *prompts]])
    pooled = torch.stack([table[text].pooled for text in ["", *prompts]])  # type: ignore[misc]
    weights = list(spec.weights) if spec.weights is not None else [1.0] * len(prompts)
    schedule = spec.schedule.build() if spec.schedule is not None else schedule_from_flow_scheduler(
        pipeline.scheduler_config)
    component = FlowComponent(pipeline.transformer, pipeline.family, pipeline.vae)
    guidance = getattr(spec, "guidance", None)

    def make_target(levels: NoiseSchedule) -> FlowTransformerTarget:
        if levels.path != "rectified_flow":
            raise ValueError(f"{key} is a rectified flow: its levels must be a rectified-flow schedule (got "
                             f"{levels.path}); use its scheduler's or schedule: {{kind: rectified_flow, ...}}")
        return FlowTransformerTarget(pipeline.transformer, pipeline.family, levels, hidden, pooled, weights, guidance)

    make_target(schedule)  # guidance and embedding errors now, at load time
    return component, schedule, make_target
