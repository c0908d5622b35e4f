"""Prompt adherence of a text composition at the end of ``predict``: the CLIP score of the decoded samples against
each prompt of a prompt product, or of each tapestry region's crop against that region's prompts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from lit_mcmc.metrics.clip_score import ClipScorer
from lit_mcmc.modules.components import ComponentConfig
from lit_mcmc.run_report import required_report, scored_samples


class ClipScoreCallback(L.Callback):
    """Scores the merged, decoded samples with a CLIP model read from a local folder (``clip_path``: a transformers
    ``CLIPModel`` and ``CLIPProcessor`` saved there; nothing is downloaded).

    ``component`` names the ``pretrained: diffusers`` component whose ``prompts`` (a prompt product: the score per
    prompt, and the minimum over the prompts with a non-negative weight) or ``regions`` (a tapestry: per region, its
    crop against its prompts) are scored; by default the only component with prompts or regions. Keys in
    ``metrics.json`` and TensorBoard: ``clip_score_p<j>`` (prompts in the config's order) with ``_se``,
    ``clip_score_min`` and ``clip_score_min_per_image``; for tapestries with ``clip_score_r<i>_`` in front (see
    :mod:`lit_mcmc.metrics.clip_score`). Needs a ``SampleWriter`` (anywhere in the callback list).
    """

    def __init__(self, clip_path: str, component: str | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"ClipScoreCallback.batch_size={batch_size} must be >= 1")
        self.clip_path = clip_path
        self.component = component
        self.batch_size = batch_size
        self.metrics: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":  # config mistakes before any sampling
            self.prompted_component(pl_module)
            if not (Path(self.clip_path) / "config.json").is_file():
                ClipScorer(self.clip_path)  # raises the error that says how to save a CLIP model there

    def prompted_component(self, pl_module: L.LightningModule) -> ComponentConfig:
        """The component config whose prompts are scored."""
        components = dict(getattr(pl_module, "hparams", {}).get("components") or {})
        specs = {name: spec if isinstance(spec, ComponentConfig) else ComponentConfig(**spec)  # saved as dicts
                 for name, spec in components.items()}
        prompted = {name: spec for name, spec in specs.items() if spec.prompts or spec.regions}
        if self.component is not None:
            if self.component not in prompted:
                raise ValueError(f"ClipScoreCallback.component={self.component!r} is not a component with prompts or "
                                 f"regions; those are {sorted(prompted)}")
            return prompted[self.component]
        if len(prompted) != 1:
            raise ValueError(f"ClipScoreCallback scores one text composition, and the model has {len(prompted)} "
                             f"components with prompts or regions ({sorted(prompted)}): name one in "
                             "ClipScoreCallback.component")
        return next(iter(prompted.values()))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = required_report(trainer, "ClipScoreCallback")
        if not trainer.is_global_zero:
            return
        images = torch.from_numpy(scored_samples(report.merged_samples("ClipScoreCallback")))
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ClipScoreCallback scores RGB images [N, 3, H, W], got samples of shape "
                             f"{tuple(images.shape)}")
        spec = self.prompted_component(pl_module)
        scorer = ClipScorer(self.clip_path, device=pl_module.device, batch_size=self.batch_size)
        with torch.no_grad():
            if spec.regions:
                regions = spec.region_specs()
                self.metrics = scorer.tapestry(images, regions, [region.weights or None for region in regions])
            else:
                self.metrics = scorer.prompt_product(images, spec.prompts, spec.weights)
        report.add_metrics(self.metrics)
