"""Text-prompt compositions of one diffusers UNet: prompt groups and products (ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), one
batched UNet call), the tapestry (regions of a larger canvas, parsed once into :class:`RegionSpec`), and the
prompts' embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.checkpoints import read_checkpoint
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.pretrained.diffusers.unet import REGION_KEYS, UNetPredictor
from lit_mcmc.targets import DensityTarget, Evaluation


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
    (docs/algorithms.md §9) merges the regions' ε with a weighted average (edge fall-off weights), i.e. normalised;
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


