"""Image metric helpers: [-1, 1] floats to uint8 pixels, R3 accuracy (p(y|x) > 0.5) and top-k accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] → uint8 pixels in [0, 255]: ((x + 1) · 127.5), rounded, clamped.

    This is the correct map; the reference code's FID path used (x + 1).clamp(0, 1), which saturates half of
    the intensity range (docs/algorithms.md §11.15).
    """
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def quantize(x: Tensor) -> Tensor:
    """Images in [-1, 1] as a saved 8-bit image would hold them: :func:`to_uint8` mapped back to [-1, 1]."""
    return to_uint8(x).float() / 127.5 - 1.0


def _check_class_scores(scores: Tensor, labels: Tensor, name: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{name} must have shape [B, n_classes], got {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must have shape [B] = [{scores.shape[0]}], got {tuple(labels.shape)}")


def r3_hits(probs: Tensor, labels: Tensor) -> Tensor:
    """Per sample, whether the classifier gives the true class probability strictly above 0.5 (bool, [B])."""
    _check_class_scores(probs, labels, "probs")
    return probs.gather(1, labels.long().unsqueeze(1)).squeeze(1) > 0.5


def r3_accuracy(probs: Tensor, labels: Tensor) -> float:
    """R3 accuracy: the fraction of samples with p(y_true | x) > 0.5 (strict, as in the reference code)."""
    return r3_hits(probs, labels).float().mean().item()


def topk_hits(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Per sample, whether the true class is among the k highest scores (bool, [B])."""
    _check_class_scores(logits, labels, "logits")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the number of classes ({logits.shape[1]})")
    top = logits.topk(k, dim=1).indices
    return (top == labels.long().unsqueeze(1)).any(dim=1)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """The fraction of samples whose true class is among the k highest logits (or probabilities)."""
    return topk_hits(logits, labels, k).float().mean().item()


def accuracy_estimates(logits: Tensor, labels: Tensor, groups: Tensor | None = None,
                       stratify: bool = True) -> dict[str, float]:
    """R3, top-1 and (with at least 5 classes) top-5 accuracy of logits [N, n_classes], each with its standard
    error and 95 % interval: ``r3_accuracy``, ``r3_accuracy_se``, ``r3_accuracy_low``, ``r3_accuracy_high``,
    ``top1_accuracy``, ... With ``stratify`` (default) the labels count as fixed, as they are (sample i gets class
    i % n_classes): the standard error is the per-class binomial one; ``groups`` (particle resampling groups, a
    label per sample) makes it cluster-robust; both give normal intervals. With neither: binomial √(p(1−p)/n)
    and the Wilson interval.
    Call (an accuracy callback, logits and labels of all samples gathered):
    ``report.add_metrics(accuracy_estimates(logits, labels))``; particle runs add ``groups=indices // group_size``.
    """
    from lit_mcmc.metrics.uncertainty import proportion

    hits = {"r3_accuracy": r3_hits(logits.softmax(dim=1), labels)}
    hits.update({f"top{k}_accuracy": topk_hits(logits, labels, k) for k in (1, 5) if k <= logits.shape[1]})
    group_labels = None if groups is None else np.asarray(groups.cpu() if isinstance(groups, Tensor) else groups)
    out: dict[str, float] = {}
    for name, hit in hits.items():
        strata = labels.cpu().numpy() if stratify else None
        out.update(proportion(hit.cpu().numpy(), groups=group_labels, strata=strata).as_metrics(name))
    return out


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate features (its ``features(x)`` method) as an FID feature extractor."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(classifier, "features", None)):
            raise TypeError(
                f"classifier ({type(classifier).__name__}) has no features(x) method to extract FID features "
                "from; use e.g. lit_mcmc.nets.resnet_cifar.load_resnet20()"
            )
        self.classifier = classifier
        if hasattr(classifier, "num_features"):
            self.num_features = int(classifier.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)
