"""diffusers models as Targets: any DDPM-family UNet and scheduler, text-prompt compositions, latent models, tapestry.

A diffusers UNet predicts ε, v or x̂₀ (the scheduler's ``prediction_type``); every one of them is turned into ε̂
and the score −ε̂/σ_t, so each sampler, MH correction, composition and callback of lit_mcmc works on it unchanged.

- :func:`schedule_from_scheduler`: the scheduler's ᾱ_t as a :class:`~lit_mcmc.diffusion.NoiseSchedule` whose
  network time input is the scheduler's training timestep.
- :class:`DiffusersTarget`: one UNet with fixed conditioning (class labels, text embeddings, …).
- :class:`PromptProduct`: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), i.e. p(x|∅)·Πᵢ(p(x|cᵢ)/p(x|∅))^{wᵢ}; a negative weight is
  a negation, one prompt is classifier-free guidance. The empty prompt and all prompts share one batched UNet call.
- :class:`Tapestry`: a canvas larger than the model, covered by square regions with their own prompt products;
  the composed score is the sum of the regions' scores placed back on their crops (optionally divided by the
  number of regions covering each pixel). All regions share one batched UNet call.
- :func:`load_pipeline`: a pipeline folder saved by diffusers (``unet/``, ``scheduler/``, optional ``vae/``,
  ``text_encoder/``, ``tokenizer/``), read with ``local_files_only=True``: nothing is ever downloaded.

diffusers and transformers (the ``[pretrained]`` extra) are imported inside the functions that need them, so this
module, and the config checks that use it, import without them.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.checkpoints import read_checkpoint
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.targets import DensityTarget, Evaluation

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
REGION_KEYS = ("top", "left", "size", "prompt", "prompts", "weight", "weights")
# Zero-terminal-SNR schedules (``rescale_betas_zero_snr``) end with β = 1, i.e. ᾱ = 0, where the score −ε̂/σ_t
# still exists but x_t holds no signal and the reverse step divides by √α = 0: cap β as guided-diffusion does.
MAX_BETA = 0.999


# --------------------------------------------------------------------------------------------------------------
# Schedules and ε̂
# --------------------------------------------------------------------------------------------------------------


def schedule_from_scheduler(scheduler: Any) -> NoiseSchedule:
    """The scheduler's noise levels as a NoiseSchedule with the same ᾱ_t (DDPM/DDIM/PNDM/… family).

    Built from the scheduler's ``betas`` (any beta schedule: linear, scaled_linear, squaredcos_cap_v2, given
    ``trained_betas``), so its ᾱ_t equal the scheduler's ``alphas_cumprod`` (float64 here, float32 there). Level t
    calls the network with training timestep t (0..T−1).
    """
    betas = getattr(scheduler, "betas", None)
    if not isinstance(betas, Tensor) or not isinstance(getattr(scheduler, "alphas_cumprod", None), Tensor):
        raise ValueError(f"{type(scheduler).__name__} has no betas/alphas_cumprod: only discrete DDPM-family "
                         "schedulers (DDPMScheduler, DDIMScheduler, PNDMScheduler, …) define the noise levels "
                         "lit_mcmc samples")
    return NoiseSchedule(betas.detach().to(torch.float64).clamp(max=MAX_BETA))


def epsilon_from_output(output: Tensor, x: Tensor, alpha_bar: float, prediction_type: str) -> Tensor:
    """ε̂ from a UNet output of ``prediction_type``, with x_t = √ᾱ x₀ + σ ε.

    "epsilon": ε̂ = out; "v_prediction" (v = √ᾱ ε − σ x₀): ε̂ = √ᾱ v + σ x_t; "sample" (x̂₀): ε̂ = (x_t − √ᾱ x̂₀)/σ.
    """
    if prediction_type == "epsilon":
        return output
    scale, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return scale * output + sigma * x
    if prediction_type == "sample":
        return (x - scale * output) / sigma
    raise ValueError(f"prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


def broadcast_batch(value: Any, batch: int, name: str) -> Any:
    """A conditioning value for a batch: a tensor with batch 1 is repeated, batch ``batch`` is kept; dicts (e.g.
    ``added_cond_kwargs``) are broadcast entry by entry; anything else is passed as is."""
    if isinstance(value, Mapping):
        return {key: broadcast_batch(item, batch, f"{name}[{key!r}]") for key, item in value.items()}
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"conditioning {name} has batch {value.shape[0]}, but x has a batch of {batch}: give one "
                     "row (shared by every sample) or one per sample")


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a conditioning value to the UNet's device; floating tensors also take its dtype (fp16 weights)."""
    if isinstance(value, Mapping):
        return {key: _to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    return value


class UNetPredictor:
    """Calls a diffusers UNet at a level and returns (ε̂, learned-variance output or None) in x's dtype.

    A UNet with twice x's channels predicts a variance too (diffusers' "learned"/"learned_range"): the first half
    is the prediction, the second half v ∈ [−1, 1] is what the reverse step's ``reverse_variance: learned`` uses.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    def __call__(self, x: Tensor, t: int, conditioning: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        param = next(self.unet.parameters())
        t_model = self.schedule.model_t(t, x.shape[0], param.device)
        kwargs = {key: _to_device(value, param.device, param.dtype) for key, value in conditioning.items()}
        output = self.unet(x.to(device=param.device, dtype=param.dtype), t_model, **kwargs).sample
        output = output.to(device=x.device, dtype=x.dtype)
        variance = None
        if output.shape[1] == 2 * x.shape[1]:
            output, variance = output.chunk(2, dim=1)
        elif output.shape[1] != x.shape[1]:
            raise ValueError(f"the UNet returned {output.shape[1]} channels for an input of {x.shape[1]}: expected "
                             f"{x.shape[1]} (a prediction) or {2 * x.shape[1]} (prediction and learned variance)")
        alpha_bar = float(self.schedule.alphas_cumprod[t])
        return epsilon_from_output(output, x, alpha_bar, self.prediction_type), variance

    def score(self, eps: Tensor, t: int) -> Tensor:
        """−ε̂/σ_t."""
        return -eps / float(self.schedule.marginal_std[t])


# --------------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------------


class DiffusersTarget(DensityTarget):
    """A diffusers UNet with fixed conditioning as a Target: score = −ε̂(x, t)/σ_t (its log-density is unknown).

    Args:
        unet: a diffusers ``UNet2DModel``/``UNet2DConditionModel`` (or anything called as
            ``unet(x, t, **conditioning).sample``).
        schedule: the levels (usually :func:`schedule_from_scheduler`, possibly respaced).
        prediction_type: what the UNet predicts: "epsilon", "v_prediction" or "sample".
        **conditioning: passed to the UNet only when given (``encoder_hidden_states``, ``class_labels``,
            ``added_cond_kwargs``, …); a tensor with batch 1 is shared by the batch, one with batch B is per sample.
    """

    has_log_prob = False
    # Class labels that predict runs give sample i: label_cycle[i % len] (set from a config's ``class_labels``).
    label_cycle: list[int] | None = None

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                 **conditioning: Any) -> None:
        self.predictor = UNetPredictor(unet, schedule, prediction_type)
        self.schedule = schedule  # ReconstructionGuidance forms x̂₀ with it
        self.conditioning = conditioning

    def with_labels(self, labels: Tensor) -> DiffusersTarget:
        """A copy conditioned on ``class_labels=labels`` (LongTensor [B], one per sample); the UNet is shared."""
        labelled = copy.copy(self)
        labelled.conditioning = {**self.conditioning, "class_labels": labels}
        return labelled

    def _eps(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        batch = x.shape[0]
        conditioning = {key: broadcast_batch(value, batch, key) for key, value in self.conditioning.items()}
        return self.predictor(x, t, conditioning)

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, None]:
        return self.predictor.score(self._eps(x, t)[0], t), None

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        eps, variance = self._eps(x, t)
        score = self.predictor.score(eps, t)
        return Evaluation(score, score, x.new_zeros(x.shape[0]), None, variance)


@dataclass
class PromptGroup:
    """The empty prompt and k prompts with their weights: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)).

    ``embeddings``: [k+1, L, D] text-encoder outputs, row 0 the empty prompt; ``weights``: k numbers.
    """

    embeddings: Tensor
    weights: list[float]

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 3:
            raise ValueError(f"prompt embeddings must have shape [k+1, L, D] (row 0: the empty prompt), got "
                             f"{tuple(self.embeddings.shape)}")
        self.weights = [float(w) for w in self.weights]
        if len(self.weights) != self.embeddings.shape[0] - 1:
            raise ValueError(f"{len(self.weights)} weights for {self.embeddings.shape[0] - 1} prompts (embeddings "
                             "row 0 is the empty prompt; one weight per further row)")

    @property
    def size(self) -> int:
        """k + 1: the rows this group adds to the batched UNet call per sample."""
        return self.embeddings.shape[0]

    def combine(self, eps: Tensor) -> Tensor:
        """ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)) from ε of every row, stacked [k+1, B, ...]."""
        total = eps[0]
        for weight, eps_prompt in zip(self.weights, eps[1:], strict=True):
            total = total + weight * (eps_prompt - eps[0])
        return total

    def sq_norm(self, eps: Tensor) -> Tensor:
        """(1 − Σᵢwᵢ)‖ε(∅)‖² + Σᵢ wᵢ‖ε(cᵢ)‖² per sample, from ε stacked [k+1, B, ...]: Σ w‖s‖² times σ_t² of the
        densities the product combines (Feynman–Kac particle weights)."""
        norms = eps.flatten(2).pow(2).sum(2)  # [k+1, B]
        total = (1.0 - sum(self.weights)) * norms[0]
        for weight, norm in zip(self.weights, norms[1:], strict=True):
            total = total + weight * norm
        return total

    @staticmethod
    def variance(variances: Tensor) -> Tensor:
        """The learned variance of the first prompt (the unconditional one without prompts), as diffusers' IF
        pipeline uses the text-conditional half under classifier-free guidance."""
        return variances[1] if variances.shape[0] > 1 else variances[0]


class _PromptComposition(DensityTarget):
    """Shared by prompt products and tapestries: several prompt groups, each on its own crop of x, evaluated with
    ONE batched UNet call (all groups' rows stacked, B samples per row)."""

    has_log_prob = False

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, groups: Sequence[PromptGroup],
                 prediction_type: str = "epsilon") -> None:
        self.predictor = UNetPredictor(unet, schedule, prediction_type)
        self.schedule = schedule
        self.groups = list(groups)

    def _group_eps(self, crops: Sequence[Tensor], t: int) -> list[tuple[Tensor, Tensor | None]]:
        """Each group's combined ε (and learned variance) on its crop [B, C, h, w], from one UNet call."""
        return [(eps, variance) for eps, variance, _ in self._group_outputs(crops, t)]

    def _group_outputs(self, crops: Sequence[Tensor], t: int) -> list[tuple[Tensor, Tensor | None, Tensor]]:
        """Each group's combined ε, learned variance and :meth:`PromptGroup.sq_norm`, from one UNet call."""
        batch = crops[0].shape[0]
        inputs = torch.cat([crop.repeat(group.size, *([1] * (crop.dim() - 1)))
                            for crop, group in zip(crops, self.groups, strict=True)])
        hidden = torch.cat([group.embeddings.to(crops[0].device).repeat_interleave(batch, dim=0)
                            for group in self.groups])
        eps, variance = self.predictor(inputs, t, {"encoder_hidden_states": hidden})
        results = []
        start = 0
        for group in self.groups:
            rows = slice(start, start + group.size * batch)
            start += group.size * batch
            stacked = eps[rows].unflatten(0, (group.size, batch))
            var = None if variance is None else PromptGroup.variance(variance[rows].unflatten(0, (group.size, batch)))
            results.append((group.combine(stacked), var, group.sq_norm(stacked)))
        return results

    def _evaluation(self, eps: Tensor, variance: Tensor | None, t: int) -> Evaluation:
        score = self.predictor.score(eps, t)
        return Evaluation(score, score, eps.new_zeros(eps.shape[0]), None, variance)

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, None]:
        return self.evaluate(x, t).score, None


class PromptProduct(_PromptComposition):
    """p(x|∅)·Πᵢ(p(x|cᵢ)/p(x|∅))^{wᵢ} with a text-conditional UNet: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), score −ε/σ_t.

    A negative weight is a negation ("not cᵢ"); one prompt with weight w is classifier-free guidance. The empty
    prompt and the k prompts go through the UNet in one call of batch (k+1)·B per evaluation. Line/curve MH
    corrections integrate the composed score as a whole (has_log_prob is False).

    Args:
        unet: a text-conditional diffusers UNet (``encoder_hidden_states``).
        schedule: the levels.
        embeddings: [k+1, L, D] prompt embeddings, row 0 the empty prompt (see :func:`encode_prompts`).
        weights: k weights wᵢ.
        prediction_type: "epsilon", "v_prediction" or "sample".
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, embeddings: Tensor, weights: Sequence[float],
                 prediction_type: str = "epsilon") -> None:
        super().__init__(unet, schedule, [PromptGroup(embeddings, list(weights))], prediction_type)

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        ((eps, variance, eps_sq_norm),) = self._group_outputs([x], t)
        evaluation = self._evaluation(eps, variance, t)
        evaluation.parts_sq_norm = eps_sq_norm / float(self.schedule.marginal_std[t]) ** 2
        return evaluation


@dataclass
class Region:
    """A square window of a tapestry canvas, ``size`` pixels from (``top``, ``left``), with its prompt group."""

    top: int
    left: int
    size: int
    group: PromptGroup


def region_coverage(regions: Sequence[Region | RegionSpec], canvas: Sequence[int], resolution: int | None) -> Tensor:
    """The number of regions covering each pixel of an (H, W) canvas, after checking that every region has the
    UNet's ``resolution`` (when known), fits the canvas, and that together they cover it."""
    if not regions:
        raise ValueError("a tapestry needs at least one region")
    height, width = int(canvas[0]), int(canvas[1])
    coverage = torch.zeros(height, width)
    for i, region in enumerate(regions):
        if resolution is not None and region.size != resolution:
            raise ValueError(f"tapestry region {i} has size {region.size}, but the UNet's resolution is "
                             f"{resolution}: every region must be {resolution}x{resolution} (crops are not resized)")
        if region.top < 0 or region.left < 0 or region.top + region.size > height \
                or region.left + region.size > width:
            raise ValueError(f"tapestry region {i} (top {region.top}, left {region.left}, size {region.size}) "
                             f"does not fit the {height}x{width} canvas")
        coverage[region.top:region.top + region.size, region.left:region.left + region.size] += 1
    if not bool((coverage > 0).all()):
        uncovered = int((coverage == 0).sum())
        raise ValueError(f"the tapestry regions leave {uncovered} pixels of the {height}x{width} canvas uncovered; "
                         "an uncovered pixel has no score: add or move regions")
    return coverage


class Tapestry(_PromptComposition):
    """A canvas [C, H, W] larger than the model, covered by square regions, each a prompt product on its crop.

    The composed target is the product of the regions' targets: each region's score, computed on its crop, is
    placed back on the crop and overlaps add. With ``normalize`` the sum is divided by the number of regions
    covering each pixel (an average instead of a product where regions overlap). MCMC-corr's tapestry code
    (ALGORITHMS.md §9) merges the regions' ε with a weighted average (edge fall-off weights), i.e. normalised;
    ``normalize=True`` is its uniform-weight form. All regions' crops go through the UNet in one batched call.
    Feynman–Kac particle weights do not apply (a product of crops is not a product of diffused densities of x).

    Args:
        unet: a text-conditional diffusers UNet whose resolution is every region's ``size``.
        schedule: the levels.
        regions: the windows; together they must cover the canvas (an uncovered pixel would have no score).
        canvas: (H, W).
        prediction_type: "epsilon", "v_prediction" or "sample".
        normalize: divide by the number of regions covering each pixel.
        resolution: the UNet's input size (``unet.config.sample_size``); regions of another size are an error.
    """

    feynman_kac = False

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, regions: Sequence[Region], canvas: Sequence[int],
                 prediction_type: str = "epsilon", normalize: bool = False, resolution: int | None = None) -> None:
        super().__init__(unet, schedule, [region.group for region in regions], prediction_type)
        self.regions = list(regions)
        self.canvas = (int(canvas[0]), int(canvas[1]))
        self.normalize = normalize
        self.coverage = region_coverage(self.regions, self.canvas, resolution)

    def _crop(self, x: Tensor, region: Region) -> Tensor:
        return x[..., region.top:region.top + region.size, region.left:region.left + region.size]

    def _place(self, parts: Sequence[Tensor], like: Tensor, average: bool) -> Tensor:
        """Sum the regions' tensors on their windows of a canvas shaped like ``like`` (divide by coverage if
        ``average``)."""
        canvas = torch.zeros_like(like)
        for region, part in zip(self.regions, parts, strict=True):
            self._crop(canvas, region).add_(part)
        return canvas / self.coverage.to(canvas) if average else canvas

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        if tuple(x.shape[-2:]) != self.canvas:
            raise ValueError(f"the tapestry canvas is {self.canvas[0]}x{self.canvas[1]}, but samples are "
                             f"{x.shape[-2]}x{x.shape[-1]}: set model.sample_shape to [C, {self.canvas[0]}, "
                             f"{self.canvas[1]}]")
        results = self._group_eps([self._crop(x, region) for region in self.regions], t)
        eps = self._place([eps for eps, _ in results], x, self.normalize)
        variances = [var for _, var in results]
        # A learned variance is an interpolation fraction, so overlapping regions' values are averaged.
        variance = None if variances[0] is None else self._place(variances, x, average=True)  # type: ignore[arg-type]
        return self._evaluation(eps, variance, t)


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: nn.Module, prompts: Sequence[str]) -> dict[str, Tensor]:
    """{prompt: [L, D] embedding} for "" (the unconditional part) and ``prompts``, as the pipelines encode them:
    padded to the tokenizer's ``model_max_length``, the encoder's last hidden state (T5 encoders, as DeepFloyd IF's,
    also get the attention mask). Save the dict with ``torch.save`` to reuse it through ``embeddings:``."""
    texts = list(dict.fromkeys(["", *prompts]))
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    param = next(text_encoder.parameters())
    config = getattr(text_encoder, "config", None)
    kwargs = {}
    if getattr(config, "model_type", None) == "t5" or getattr(config, "use_attention_mask", False):
        kwargs["attention_mask"] = tokens.attention_mask.to(param.device)
    hidden = text_encoder(tokens.input_ids.to(param.device), **kwargs)[0]
    return {text: row.float().cpu() for text, row in zip(texts, hidden, strict=True)}


def read_prompt_embeddings(path: Path, prompts: Sequence[str], key: str) -> dict[str, Tensor]:
    """Prompt embeddings saved earlier: a dict {prompt: [L, D]} (as :func:`encode_prompts` returns), or a tensor
    [k+1, L, D] whose rows are "" and then ``prompts`` in order of first appearance."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt embeddings file not found: {path} ({key}); write it with "
                                "torch.save(lit_mcmc.pretrained.diffusers.encode_prompts(tokenizer, text_encoder, "
                                "prompts), path), or remove the key to encode the prompts with the pipeline's "
                                "text encoder")
    saved = read_checkpoint(path, key)
    texts = list(dict.fromkeys(["", *prompts]))
    if isinstance(saved, Tensor):
        if saved.dim() != 3 or saved.shape[0] != len(texts):
            raise ValueError(f"{key}={str(path)!r} holds a tensor of shape {tuple(saved.shape)}; expected "
                             f"[{len(texts)}, L, D]: the empty prompt, then {texts[1:]}")
        return dict(zip(texts, saved.float(), strict=True))
    if not isinstance(saved, dict):
        raise ValueError(f"{key}={str(path)!r} holds a {type(saved).__name__}; expected a dict {{prompt: [L, D]}} "
                         "or a tensor [k+1, L, D]")
    missing = [text for text in texts if text not in saved]
    if missing:
        raise ValueError(f"{key}={str(path)!r} has no embedding for prompts {missing} (the empty prompt '' is the "
                         "unconditional part and must be there too)")
    return {text: saved[text].float() for text in texts}


def prompt_group(table: Mapping[str, Tensor], prompts: Sequence[str], weights: Sequence[float]) -> PromptGroup:
    """The group of "" plus ``prompts`` from a {prompt: [L, D]} table."""
    return PromptGroup(torch.stack([table[text] for text in ["", *prompts]]), list(weights))


# --------------------------------------------------------------------------------------------------------------
# Regions as configs write them
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RegionSpec:
    """A tapestry region from a config: ``{top, left, size, prompt | prompts, weight | weights}`` (weights
    default to 1 per prompt)."""

    top: int
    left: int
    size: int
    prompts: list[str]
    weights: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], key: str) -> RegionSpec:
        """Check one region entry; ``key`` (e.g. model.components.<name>.regions[0]) names it in errors."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{key} must be a mapping {{top, left, size, prompt(s), weight(s)}}, got {raw!r}")
        unknown = [k for k in raw if k not in REGION_KEYS]
        if unknown:
            raise ValueError(f"{key} has unknown keys {unknown}; a region has {list(REGION_KEYS)}")
        for name in ("top", "left", "size"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "size" else 0):
                raise ValueError(f"{key}.{name}={value!r} must be an integer >= {1 if name == 'size' else 0}")
        prompts = cls._one_or_many(raw, "prompt", "prompts", key)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"{key} needs 'prompt' (a non-empty string) or 'prompts' (a list of them)")
        weights = cls._one_or_many(raw, "weight", "weights", key) or [1.0] * len(prompts)
        if len(weights) != len(prompts) or not all(isinstance(w, (int, float)) for w in weights):
            raise ValueError(f"{key} has {len(prompts)} prompts but weights {weights}: give one number per prompt")
        return cls(raw["top"], raw["left"], raw["size"], list(prompts), [float(w) for w in weights])

    @staticmethod
    def _one_or_many(raw: Mapping[str, Any], one: str, many: str, key: str) -> list[Any]:
        if one in raw and many in raw:
            raise ValueError(f"{key} gives both '{one}' and '{many}': use one of them")
        if one in raw:
            return [raw[one]]
        value = raw.get(many, [])
        if not isinstance(value, list):
            raise ValueError(f"{key}.{many} must be a list, got {value!r}")
        return value


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
