"""Numerical precision of the network evaluations during sampling, kept apart from the MH arithmetic.

``precision`` names how network calls run: "fp32" (strict IEEE float32), "tf32" (float32 storage, TensorFloat-32
matrix products and convolutions on GPUs that have them), "bf16" or "fp16" (``torch.autocast``). Only target
evaluations are affected: :class:`AutocastTarget` returns every :class:`~lit_mcmc.targets.Evaluation` in float32,
so positions, momenta, quadrature sums, log-ratios and accept decisions are always float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Literal

import torch
from torch import Tensor

from lit_mcmc.targets import Evaluation, Target

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, key: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{key}={precision!r} is not one of {list(PRECISIONS)}")


@contextmanager
def float32_matmul(precision: Precision) -> Iterator[None]:
    """Within the block, float32 matrix products and convolutions use TF32 unless ``precision`` is "fp32" (then
    strict IEEE). The previous global settings are restored on exit."""
    allow = precision != "fp32"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9
        settings = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        saved = [s.fp32_precision for s in settings]
        try:
            for s in settings:
                s.fp32_precision = "tf32" if allow else "ieee"
            yield
        finally:
            for s, value in zip(settings, saved, strict=True):
                s.fp32_precision = value
        return
    saved_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags


class AutocastTarget(Target):
    """A target whose evaluations run under ``torch.autocast(dtype)``, returned in the chains' dtype (float32).

    The wrapped target's networks (UNets, classifiers, and the input gradients taken through them) compute in
    ``dtype``; the results are cast back to x's dtype, so every sampler sees float32 scores and log-densities.
    """

    def __init__(self, target: Target, dtype: torch.dtype) -> None:
        self.target = target
        self.dtype = dtype
        self.has_log_prob = target.has_log_prob
        self.feynman_kac = target.feynman_kac

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        with torch.autocast(x.device.type, dtype=self.dtype):
            evaluation = self.target.evaluate(x, t, with_log_prob)
        return Evaluation(**{f.name: _like(getattr(evaluation, f.name), x) for f in fields(evaluation)})

    def integrand(self, x: Tensor, t: int) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            integrand = self.target.integrand(x, t)
        return integrand.to(x.dtype)


def _like(value: Tensor | None, x: Tensor) -> Tensor | None:
    return None if value is None else value.to(x.dtype)


def with_precision(target: Target, precision: Precision) -> Target:
    """``target`` evaluated in ``precision`` (autocast for "bf16"/"fp16"; unchanged for "fp32"/"tf32", whose
    matrix-product setting :func:`float32_matmul` applies)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return target if dtype is None else AutocastTarget(target, dtype)
