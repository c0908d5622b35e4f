"""Accuracies with their binomial standard errors: the same values as the point accuracies."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.metrics.images import accuracy_estimates, r3_accuracy, topk_accuracy


def test_accuracy_estimates_are_the_accuracies_with_binomial_standard_errors() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 10, generator=generator) * 3, torch.randint(0, 10, (200,), generator=generator)
    out = accuracy_estimates(logits, labels, stratify=False)
    expected = {"r3_accuracy": r3_accuracy(logits.softmax(1), labels),
                "top1_accuracy": topk_accuracy(logits, labels, 1), "top5_accuracy": topk_accuracy(logits, labels, 5)}
    for name, value in expected.items():
        assert out[name] == pytest.approx(value)
        assert out[f"{name}_se"] == pytest.approx(math.sqrt(value * (1 - value) / 200))
        assert out[f"{name}_low"] < value < out[f"{name}_high"]
    assert "top5_accuracy" not in accuracy_estimates(logits[:, :3], labels % 3)
    stratified = accuracy_estimates(logits, labels)  # labels fixed by the sample index: per-class binomial
    hits = (logits.argmax(1) == labels).numpy()
    per_class = [(hits[labels.numpy() == c].mean(), (labels == c).sum().item()) for c in range(10)]
    expected = math.sqrt(sum(n * n / (n - 1) * p * (1 - p) for p, n in per_class if n > 1)) / 200
    assert stratified["top1_accuracy"] == out["top1_accuracy"]
    assert stratified["top1_accuracy_se"] == pytest.approx(expected)


def test_accuracy_of_particle_groups_has_the_clustered_standard_error() -> None:
    from lit_mcmc.metrics.uncertainty import proportion

    logits = torch.zeros(100, 10)
    labels = torch.zeros(100, dtype=torch.long)
    logits[:60, 0] = 10.0  # the first 6 groups of 10 right, the rest wrong: hits copied within groups
    logits[60:, 1] = 10.0
    groups = torch.arange(100) // 10
    out = accuracy_estimates(logits, labels, groups=groups)
    assert out["top1_accuracy"] == pytest.approx(0.6)
    assert out["top1_accuracy_se"] == pytest.approx(proportion((logits.argmax(1) == 0).numpy(),
                                                               groups=groups.numpy()).se)
    assert out["top1_accuracy_se"] > 3 * math.sqrt(0.6 * 0.4 / 100)
