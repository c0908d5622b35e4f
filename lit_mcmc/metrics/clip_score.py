"""Prompt adherence of text compositions: the CLIP score of images against each prompt, from a local CLIP folder.

The score is torchmetrics' ``CLIPScore`` (100 · the cosine of CLIP's image and text embeddings, averaged over
images, then clamped at 0), computed per prompt: the images are embedded once, each prompt once. A prompt product
should satisfy every prompt, so the minimum over prompts is reported too; for a tapestry, each region's crop is
scored against the prompts of that region. Keys (flat, for metrics.json and TensorBoard), prompts numbered in
the config's order:

- prompt product: ``clip_score_p<j>`` and ``clip_score_p<j>_se`` (std/√N over images) per prompt,
  ``clip_score_min`` (the smallest per-prompt score) and ``clip_score_min_per_image`` (the mean over images of
  each image's smallest score: an image must satisfy all prompts at once);
- tapestry: the same with ``clip_score_r<i>_`` in front for region i, and ``clip_score_min`` over all regions.

Prompts with a negative weight (negations) are scored but left out of the minima.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from lit_mcmc.metrics.images import to_uint8

CLIP_SOURCE = ('CLIPModel.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(FOLDER) and '
               'CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(FOLDER)')


class RegionLike(Protocol):
    """A tapestry region: a square crop and its prompts (``lit_mcmc.pretrained.diffusers.RegionSpec`` is one)."""

    top: int
    left: int
    size: int
    prompts: list[str]


class ClipScorer:
    """CLIP scores of images against prompts with a CLIP model read from a local folder (never downloaded).

    ``path`` holds a transformers ``CLIPModel`` and its ``CLIPProcessor`` (``save_pretrained`` of both). Images
    are [N, C, H, W] in [-1, 1] (decoded samples); they are turned into uint8 pixels, as torchmetrics' CLIPScore
    receives them, and embedded in batches of ``batch_size`` on ``device``.
    Call: ``ClipScorer(folder).prompt_product(images, ["a cat", "a hat"])`` → ``{"clip_score_p0": ..., ...}``.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model in {folder} (config.json missing): save one there on a machine "
                                    f"with internet access, e.g. {CLIP_SOURCE.replace('FOLDER', repr(str(folder)))}")
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """Unit-norm CLIP embeddings [N, D] of images [N, C, H, W] in [-1, 1]."""
        if images.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
        out = []
        for batch in to_uint8(images.float()).cpu().split(self.batch_size):
            pixels = self.processor(images=list(batch), return_tensors="pt", padding=True)["pixel_values"]
            out.append(_unit(self.model.get_image_features(pixels.to(self.device))))
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm CLIP embeddings [P, D] of prompts (truncated to the model's text length, as torchmetrics)."""
        processed = self.processor(text=list(prompts), return_tensors="pt", padding=True)
        length = self.model.config.text_config.max_position_embeddings
        ids, mask = processed["input_ids"][..., :length], processed["attention_mask"][..., :length]
        return _unit(self.model.get_text_features(ids.to(self.device), mask.to(self.device)))

    def scores(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """100 · cos(image, prompt) for every image and prompt, [N, P] (not clamped)."""
        if not prompts:
            raise ValueError("give at least one prompt to score the images against")
        return 100 * self.image_embeddings(images) @ self.text_embeddings(prompts).T

    def prompt_product(self, images: Tensor, prompts: Sequence[str], weights: Sequence[float] | None = None,
                       prefix: str = "clip_score_") -> dict[str, float]:
        """Per-prompt CLIP scores (each equal to torchmetrics' CLIPScore of the images with that prompt), their
        standard errors, and the minima over the prompts whose weight is not negative (see the module's keys)."""
        return _summary(self.scores(images, prompts).double().cpu(), _kept(prompts, weights), prefix)

    def tapestry(self, images: Tensor, regions: Sequence[RegionLike],
                 weights: Sequence[Sequence[float] | None] | None = None) -> dict[str, float]:
        """:meth:`prompt_product` of each region's crop of the canvases [N, C, H, W] against that region's prompts
        (keys ``clip_score_r<i>_...``), and ``clip_score_min``, the smallest per-prompt score of all regions.
        ``weights``: per region its prompts' weights (None: all positive), e.g. ``[r.weights for r in regions]``."""
        out: dict[str, float] = {}
        minima = []
        for i, region in enumerate(regions):
            height, width = images.shape[-2:]
            if region.top < 0 or region.left < 0 or region.top + region.size > height \
                    or region.left + region.size > width:
                raise ValueError(f"tapestry region {i} (top {region.top}, left {region.left}, size {region.size}) "
                                 f"does not fit the {height}x{width} images")
            crop = images[..., region.top:region.top + region.size, region.left:region.left + region.size]
            region_weights = weights[i] if weights is not None else None
            scores = self.prompt_product(crop, region.prompts, region_weights or None, prefix=f"clip_score_r{i}_")
            out.update(scores)
            if f"clip_score_r{i}_min" in scores:
                minima.append(scores[f"clip_score_r{i}_min"])
        if minima:
            out["clip_score_min"] = min(minima)
        return out


def _unit(features: Tensor | Any) -> Tensor:
    # transformers >= 5 returns the projected embeddings as the output's pooler_output, older versions a tensor
    features = getattr(features, "pooler_output", features)
    return features / features.norm(p=2, dim=-1, keepdim=True)


def _kept(prompts: Sequence[str], weights: Sequence[float] | None) -> list[bool]:
    if weights is None:
        return [True] * len(prompts)
    if len(weights) != len(prompts):
        raise ValueError(f"{len(weights)} weights for {len(prompts)} prompts: give one weight per prompt")
    return [w >= 0 for w in weights]


def _summary(scores: Tensor, kept: list[bool], prefix: str) -> dict[str, float]:
    n = len(scores)
    out: dict[str, float] = {}
    for j in range(scores.shape[1]):
        out[f"{prefix}p{j}"] = max(float(scores[:, j].mean()), 0.0)  # CLIPScore clamps the mean at 0
        out[f"{prefix}p{j}_se"] = float(scores[:, j].std()) / math.sqrt(n) if n > 1 else math.nan
    positive = scores[:, torch.tensor(kept)]
    if positive.shape[1]:
        out[f"{prefix}min"] = min(out[f"{prefix}p{j}"] for j in range(scores.shape[1]) if kept[j])
        out[f"{prefix}min_per_image"] = max(float(positive.min(dim=1).values.mean()), 0.0)
    return out
