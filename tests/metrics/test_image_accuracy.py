"""Accuracies with their binomial standard errors: the same values as the point accuracies."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.metrics.images import accuracy_estimates, r3_accuracy, topk_accuracy


def test_accuracy_estimates_are_the_accuracies_with_binomial_standard_errors() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 10, generator=generator) * 3, torch.randint(0, 10, (200,), generator=generator)
    out = accuracy_estimates(logits, labels)
    expected = {"r3_accuracy": r3_accuracy(logits.softmax(1), labels),
                "top1_accuracy": topk_accuracy(logits, labels, 1), "top5_accuracy": topk_accuracy(logits, labels, 5)}
    for name, value in expected.items():
        assert out[name] == pytest.approx(value)
        assert out[f"{name}_se"] == pytest.approx(math.sqrt(value * (1 - value) / 200))
        assert out[f"{name}_low"] < value < out[f"{name}_high"]
    assert "top5_accuracy" not in accuracy_estimates(logits[:, :3], labels % 3)
