"""Accuracy of an evaluation classifier on generated images: R3 accuracy (p(y|x) > 0.5), top-1 and top-5."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from callbacks.sample_metrics import SampleMetricCallback
from lit_mcmc.metrics.images import accuracy_estimates, r3_hits


class AccuracyCallback(SampleMetricCallback):
    """Scores generated images against the labels they were generated for, with a clean classifier.

    ``classifier`` maps images [B, C, H, W] in [-1, 1] to logits [B, n_classes] (e.g.
    ``lit_mcmc.nets.resnet_cifar.load_resnet20()``). Reported: ``r3_accuracy`` (the fraction with
    p(y|x) > 0.5, strict as in the reference code), ``top1_accuracy`` and, when n_classes >= 5,
    ``top5_accuracy``. Labels come from ``outputs["labels"]`` in predict and from ``generate_samples`` in fit;
    hooks, logging and DDP behaviour are those of :class:`callbacks.sample_metrics.SampleMetricCallback`.
    """

    def __init__(
        self,
        classifier: nn.Module,
        n_classes: int,
        every_n_epochs: int = 1,
        n_val_samples: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, n_val_samples=n_val_samples, seed=seed)
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes} must be >= 2")
        self.classifier = classifier.eval().requires_grad_(False)
        self._scored: list[tuple[Tensor, Tensor]] = []  # (logits, labels) since the last reset
        self.n_classes = n_classes
        self.r3 = MeanMetric()
        self.topk = MetricCollection(
            {
                f"top{k}_accuracy": MulticlassAccuracy(num_classes=n_classes, top_k=k, average="micro")
                for k in (1, 5)
                if k <= n_classes
            }
        )

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # eval() again: a classifier that is also a submodule of pl_module is put in train mode by fit.
        self.classifier.to(pl_module.device).eval()
        self.r3.to(pl_module.device)
        self.topk.to(pl_module.device)

    def _reset(self) -> None:
        self.r3.reset()
        self.topk.reset()
        self._scored = []

    def _update(self, samples: Tensor, labels: Tensor | None) -> None:
        if labels is None:
            raise ValueError(
                "AccuracyCallback needs the target label of every sample: return 'labels' from predict_step "
                "(or labels from generate_samples), or drop this callback for unconditional generation"
            )
        with torch.no_grad():
            logits = self.classifier(samples)
        labels = labels.to(logits.device).long()
        self.r3.update(r3_hits(logits.softmax(dim=1), labels).float())
        self.topk.update(logits, labels)
        if self.keeping:  # for the standard errors of the merged samples
            self._scored.append((logits.detach().cpu(), labels.cpu()))

    def _compute(self) -> dict[str, float]:
        values = {name: float(value) for name, value in self.topk.compute().items()}
        return {"r3_accuracy": float(self.r3.compute()), **values}

    def _uncertainty(self) -> dict[str, float]:
        """Each accuracy is a share of hits: its standard error per class (the labels are fixed by the sample index,
        not drawn), cluster-robust over particle groups, and a 95 % interval (the values are torchmetrics')."""
        logits, labels = (torch.cat(parts) for parts in zip(*self._scored, strict=True))
        estimates = accuracy_estimates(logits, labels, groups=self.groups, stratify=self.strata is not None)
        return {key: value for key, value in estimates.items() if key not in self.last_values}
