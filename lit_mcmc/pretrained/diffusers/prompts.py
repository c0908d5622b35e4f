"""Text-prompt compositions of one diffusers UNet: prompt groups and products (ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), one
batched UNet call) and the tapestry (regions of a larger canvas, parsed once by :func:`parse_regions`). The
embeddings come from :mod:`lit_mcmc.pretrained.diffusers.text`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.pretrained.diffusers.text import PromptEncoding
from lit_mcmc.pretrained.diffusers.unet import UNetPredictor
from lit_mcmc.targets import Evaluation, ScoreModelTarget

REGION_KEYS = ("top", "left", "size", "prompt", "prompts", "weight", "weights")


@dataclass
class PromptGroup:
    """The empty prompt and k prompts with their weights: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)).

    ``embeddings``: [k+1, L, D] text-encoder outputs, row 0 the empty prompt; ``weights``: k numbers; ``pooled``:
    [k+1, P] pooled text embeddings, for UNets that take them (SDXL's ``text_embeds``), else None.
    """

    embeddings: Tensor
    weights: list[float]
    pooled: Tensor | None = None

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 3:
            raise ValueError(f"prompt embeddings must have shape [k+1, L, D] (row 0: the empty prompt), got "
                             f"{tuple(self.embeddings.shape)}")
        self.weights = [float(w) for w in self.weights]
        if len(self.weights) != self.embeddings.shape[0] - 1:
            raise ValueError(f"{len(self.weights)} weights for {self.embeddings.shape[0] - 1} prompts (embeddings "
                             "row 0 is the empty prompt; one weight per further row)")
        if self.pooled is not None and (self.pooled.dim() != 2 or self.pooled.shape[0] != self.embeddings.shape[0]):
            raise ValueError(f"pooled prompt embeddings must have shape [{self.embeddings.shape[0]}, P] (one row per "
                             f"embeddings row), got {tuple(self.pooled.shape)}")

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


class _PromptComposition(ScoreModelTarget):
    """Shared by prompt products and tapestries: several prompt groups, each on its own crop of x, evaluated with
    ONE batched UNet call (all groups' rows stacked, B samples per row). A
    :class:`~lit_mcmc.targets.ScoreModelTarget` whose ε call is the composed ε.

    ``time_ids`` [n]: SDXL's size conditioning (original size, crop, target size), shared by every row; with it,
    every group needs ``pooled`` embeddings, and both go to the UNet as ``added_cond_kwargs``.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, groups: Sequence[PromptGroup],
                 prediction_type: str = "epsilon", time_ids: Tensor | None = None) -> None:
        super().__init__(unet, schedule)
        self.predictor = UNetPredictor(unet, schedule, prediction_type)
        self.groups = list(groups)
        self.time_ids = time_ids
        if time_ids is not None and any(group.pooled is None for group in self.groups):
            raise ValueError("time_ids (SDXL size conditioning) go with pooled text embeddings: every prompt group "
                             "needs 'pooled'")

    def _group_outputs(self, crops: Sequence[Tensor], t: int) -> list[tuple[Tensor, Tensor | None, Tensor]]:
        """Each group's combined ε, learned variance and :meth:`PromptGroup.sq_norm`, from one UNet call."""
        batch = crops[0].shape[0]
        inputs = torch.cat([crop.repeat(group.size, *([1] * (crop.dim() - 1)))
                            for crop, group in zip(crops, self.groups, strict=True)])
        hidden = torch.cat([group.embeddings.to(crops[0].device).repeat_interleave(batch, dim=0)
                            for group in self.groups])
        conditioning: dict[str, Any] = {"encoder_hidden_states": hidden}
        if self.time_ids is not None:
            pooled = torch.cat([group.pooled.to(crops[0].device).repeat_interleave(batch, dim=0)  # type: ignore[union-attr]
                                for group in self.groups])
            conditioning["added_cond_kwargs"] = {"text_embeds": pooled,
                                                 "time_ids": self.time_ids.to(pooled.device).expand(len(pooled), -1)}
        eps, variance = self.predictor(inputs, t, conditioning)
        results = []
        start = 0
        for group in self.groups:
            rows = slice(start, start + group.size * batch)
            start += group.size * batch
            stacked = eps[rows].unflatten(0, (group.size, batch))
            var = None if variance is None else PromptGroup.variance(variance[rows].unflatten(0, (group.size, batch)))
            results.append((group.combine(stacked), var, group.sq_norm(stacked)))
        return results


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
        pooled: [k+1, P] pooled text embeddings (SDXL), with ``time_ids`` [n] its size conditioning.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, embeddings: Tensor, weights: Sequence[float],
                 prediction_type: str = "epsilon", pooled: Tensor | None = None,
                 time_ids: Tensor | None = None) -> None:
        super().__init__(unet, schedule, [PromptGroup(embeddings, list(weights), pooled)], prediction_type, time_ids)

    def _network(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        ((eps, variance, _),) = self._group_outputs([x], t)
        return eps, variance

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        """The base evaluation plus Σ w‖s‖² of the densities the product combines (from the same UNet call)."""
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        ((eps, variance, eps_sq_norm),) = self._group_outputs([x], t)
        sigma = float(self.schedule.marginal_std[t])
        score = -eps / sigma
        return Evaluation(score, score, x.new_zeros(x.shape[0]), None, variance, eps_sq_norm / sigma**2)


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
        time_ids: SDXL's size conditioning, with pooled embeddings in every region's group.
    """

    feynman_kac = False

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, regions: Sequence[Region], canvas: Sequence[int],
                 prediction_type: str = "epsilon", normalize: bool = False, resolution: int | None = None,
                 time_ids: Tensor | None = None) -> None:
        super().__init__(unet, schedule, [region.group for region in regions], prediction_type, time_ids)
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

    def _network(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        if tuple(x.shape[-2:]) != self.canvas:
            raise ValueError(f"the tapestry canvas is {self.canvas[0]}x{self.canvas[1]}, but samples are "
                             f"{x.shape[-2]}x{x.shape[-1]}: set model.sample_shape to [C, {self.canvas[0]}, "
                             f"{self.canvas[1]}]")
        results = self._group_outputs([self._crop(x, region) for region in self.regions], t)
        eps = self._place([eps for eps, _, _ in results], x, self.normalize)
        variances = [var for _, var, _ in results]
        # A learned variance is an interpolation fraction, so overlapping regions' values are averaged.
        variance = None if variances[0] is None else self._place(variances, x, average=True)  # type: ignore[arg-type]
        return eps, variance


def prompt_group(table: Mapping[str, PromptEncoding], prompts: Sequence[str], weights: Sequence[float]) -> PromptGroup:
    """The group of "" plus ``prompts`` from a {text: encoding} table."""
    rows = [table[text] for text in ["", *prompts]]
    pooled = None if rows[0].pooled is None else torch.stack([row.pooled for row in rows])  # type: ignore[misc]
    return PromptGroup(torch.stack([row.hidden for row in rows]), list(weights), pooled)


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

    def with_group(self, table: Mapping[str, PromptEncoding]) -> Region:
        """The region with its prompt group, from a {prompt: embedding} table."""
        return Region(self.top, self.left, self.size, prompt_group(table, self.prompts, self.weights))

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


def parse_regions(raw: Sequence[Any], canvas: Sequence[int] | None, key: str) -> list[RegionSpec]:
    """A config's ``regions`` on its ``canvas``, checked and parsed: the one place regions are read from config
    values (``key``, e.g. model.components.<name>, names them in errors). The UNet's resolution is checked later,
    when the UNet is loaded."""
    if canvas is None or len(canvas) != 2 or min(canvas) < 1:
        raise ValueError(f"{key}.canvas must be [height, width] of the tapestry (positive), got {canvas}")
    specs = [RegionSpec.parse(entry, f"{key}.regions[{i}]") for i, entry in enumerate(raw)]
    region_coverage(specs, canvas, None)
    return specs
