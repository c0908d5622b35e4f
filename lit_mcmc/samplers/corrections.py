"""How an MH kernel obtains Δ = log p̃_t(x') − log p̃_t(x): a strategy, independent of the kernel.

- :class:`EnergyDifference`: exact, from the log-densities (needs ``has_log_prob``).
- :class:`LineIntegral`: a quadrature rule along the straight line x → x' with ``n_points`` interior nodes.
- :class:`CurveIntegral`: a quadrature rule along the proposal's own path (HMC's leapfrog positions), reusing the
  gradients the proposal already computed at the segment ends, with ``n_points`` extra interior nodes per segment.

Integrals use each node's *integrand* (the part of the score that is not known exactly) and add the difference of
the exactly known part, so a classifier's log-probability in a guided target is evaluated, not integrated
(Sjöberg, Lindqvist et al., §4; docs/algorithms.md §5).

Quadrature rules (:class:`QuadratureRule`) on one segment, with h(s) = g(start + s·d)·d on s ∈ [0, 1]:

- ``trapezoid`` (default, the papers'): ``n_points`` + 2 equally spaced nodes, error O(h²).
- ``simpson``: composite Simpson on the same equally spaced nodes, error O(h⁴); needs an even number of intervals
  (``n_points`` odd). It reuses the segment ends, so ``curve`` keeps the leapfrog's gradients.
- ``gauss_legendre``: ``n_points`` Gauss–Legendre nodes, exact for polynomials of degree 2·n_points − 1. Its
  nodes exclude the segment ends, so along a ``curve`` it could not reuse the leapfrog's gradients: that
  combination is an error (use ``line``, or ``simpson`` for ``curve``).

Each integral also returns an error estimate per sample: |Q − Q_low|, the difference between the rule and a
lower-order rule on the same integrand values (no extra evaluation): trapezoid vs the one-sided rectangle rule
(an O(h) bound), Simpson vs the trapezoid, Gauss–Legendre vs the trapezoid through its nodes and the segment
ends (whose integrands the kernel has already computed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from torch import Tensor

from lit_mcmc.targets import Evaluation, Target

CorrectionName = Literal["energy", "line", "curve"]
QuadratureName = Literal["trapezoid", "simpson", "gauss_legendre"]
QUADRATURES = ("trapezoid", "simpson", "gauss_legendre")


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions, shape [B]."""
    return (a * b).flatten(1).sum(1)


@dataclass
class DeltaEstimate:
    """A correction's result: Δ [B], the extra target evaluations per sample, and (integrals only) the
    quadrature error estimate |Q − Q_low| [B]."""

    delta: Tensor
    nfe: int
    error: Tensor | None = None


class Correction(ABC):
    """Computes the MH log-density difference along a proposal path and the extra evaluations it cost."""

    needs_log_prob: bool = False

    @abstractmethod
    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        """(Δ [B], extra target evaluations per sample) for the path x = path[0] → x' = path[-1].

        ``evals[i]`` is the target's evaluation at ``path[i]``; the first and last carry ``log_prob`` when
        :attr:`needs_log_prob` is set.
        """

    def estimate(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> DeltaEstimate:
        """Like :meth:`delta`, with the quadrature error estimate where there is one (kernels call this)."""
        delta, nfe = self.delta(target, t, path, evals)
        return DeltaEstimate(delta, nfe)


class EnergyDifference(Correction):
    """Exact Δ = log p̃(x') − log p̃(x) from cached log-densities (no extra evaluation)."""

    needs_log_prob = True

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        return evals[-1].log_prob - evals[0].log_prob, 0  # type: ignore[operator]

    def __repr__(self) -> str:
        return "EnergyDifference()"


@dataclass(frozen=True)
class QuadratureRule:
    """A quadrature rule on [0, 1] over the nodes 0, ``interior``…, 1.

    The rule is Q = (end_weight·(h(0) + h(1)) + Σ_j interior_weights[j]·h(interior[j])) / divisor; written this way
    the trapezoid keeps the exact floating-point operations of the original implementation. ``low_weights`` (one per
    node, ends included, summing to 1) is the lower-order rule on the same values used for the error estimate.
    """

    name: str
    interior: tuple[float, ...]
    end_weight: float
    interior_weights: tuple[float, ...]
    divisor: float
    low_weights: tuple[float, ...]

    @property
    def uses_ends(self) -> bool:
        """Whether Q itself uses the integrand at the segment ends (Gauss–Legendre does not)."""
        return self.end_weight != 0.0


def trapezoid_rule(n_points: int) -> QuadratureRule:
    """n_points + 1 equal intervals; lower order: the left rectangle rule."""
    n_intervals = n_points + 1
    interior = tuple(j / n_intervals for j in range(1, n_points + 1))
    left = (1.0 / n_intervals, *([1.0 / n_intervals] * n_points), 0.0)
    return QuadratureRule("trapezoid", interior, 0.5, (1.0,) * n_points, n_intervals, left)


def simpson_rule(n_points: int) -> QuadratureRule:
    """Composite Simpson on n_points + 1 (even) equal intervals; lower order: the trapezoid on the same nodes."""
    n_intervals = n_points + 1
    interior = tuple(j / n_intervals for j in range(1, n_points + 1))
    weights = tuple(4.0 if j % 2 else 2.0 for j in range(1, n_points + 1))
    trapezoid = (0.5 / n_intervals, *([1.0 / n_intervals] * n_points), 0.5 / n_intervals)
    return QuadratureRule("simpson", interior, 1.0, weights, 3 * n_intervals, trapezoid)


def gauss_legendre_rule(n_points: int) -> QuadratureRule:
    """n_points Gauss–Legendre nodes mapped to [0, 1]; lower order: the trapezoid through those nodes and the ends."""
    roots, weights = np.polynomial.legendre.leggauss(n_points)
    interior = tuple(float(r) for r in (roots + 1) / 2)
    nodes = np.array([0.0, *interior, 1.0])
    gaps = np.diff(nodes)
    trapezoid = 0.5 * (np.concatenate([gaps, [0.0]]) + np.concatenate([[0.0], gaps]))
    return QuadratureRule("gauss_legendre", interior, 0.0, tuple(float(w) for w in weights / 2), 1.0,
                          tuple(float(w) for w in trapezoid))


RULES = {"trapezoid": trapezoid_rule, "simpson": simpson_rule, "gauss_legendre": gauss_legendre_rule}


def check_quadrature(quadrature: str, n_points: int, correction: str, key: str = "") -> None:
    """Fail clearly for a rule that does not exist or does not fit ``n_points`` / the correction.

    ``key`` prefixes the names in messages (e.g. "sampler." for config errors).
    """
    if quadrature not in QUADRATURES:
        raise ValueError(f"{key}quadrature={quadrature!r} is not one of {list(QUADRATURES)}")
    if int(n_points) != n_points or n_points < 0:
        raise ValueError(f"{key}n_points={n_points} must be a non-negative integer (interior quadrature nodes)")
    if quadrature == "simpson" and n_points % 2 == 0:
        raise ValueError(f"{key}quadrature='simpson' needs an even number of intervals per segment, i.e. "
                         f"{key}n_points odd (1, 3, 5, ...); got {key}n_points={n_points}")
    if quadrature == "gauss_legendre":
        if n_points < 1:
            raise ValueError(f"{key}quadrature='gauss_legendre' evaluates {key}n_points nodes inside each segment "
                             f"(not its ends): {key}n_points must be >= 1, got {n_points}")
        if correction == "curve":
            raise ValueError(f"{key}correction='curve' with {key}quadrature='gauss_legendre' is not supported: the "
                             "curve reuses the gradients the leapfrog computed at the segment ends, and "
                             "Gauss–Legendre nodes exclude the ends, so none could be reused. Use "
                             f"{key}quadrature='simpson' (odd {key}n_points) or 'trapezoid' with 'curve', or "
                             f"{key}correction='line' with 'gauss_legendre'")


class _Quadrature(Correction):
    correction_name: CorrectionName

    def __init__(self, n_points: int = 0, quadrature: QuadratureName = "trapezoid") -> None:
        check_quadrature(quadrature, n_points, self.correction_name)
        self.n_points = int(n_points)
        self.quadrature = quadrature

    @cached_property
    def rule(self) -> QuadratureRule:
        return RULES[self.quadrature](self.n_points)

    def segment(self, target: Target, t: int, start: Tensor, end: Tensor,
                start_integrand: Tensor, end_integrand: Tensor) -> tuple[Tensor, Tensor]:
        """(∫ g·dr along start → end by the rule, Q − Q_low), both of shape [B]; evaluates the interior nodes."""
        rule, step = self.rule, end - start
        h_start, h_end = dot(start_integrand, step), dot(end_integrand, step)
        total = rule.end_weight * (h_start + h_end) if rule.uses_ends else None
        low = rule.low_weights[0] * h_start + rule.low_weights[-1] * h_end
        for s, weight, low_weight in zip(rule.interior, rule.interior_weights, rule.low_weights[1:-1], strict=True):
            h = dot(target.integrand(start + s * step, t), step)
            total = weight * h if total is None else total + weight * h
            low = low + low_weight * h
        integral = total / rule.divisor  # type: ignore[operator]
        return integral, integral - low

    def __repr__(self) -> str:
        rule = "" if self.quadrature == "trapezoid" else f", quadrature={self.quadrature!r}"
        return f"{type(self).__name__}(n_points={self.n_points}{rule})"


class LineIntegral(_Quadrature):
    """Δ̂ = exact(x') − exact(x) + ∫ g along the straight line x → x' (``n_points`` interior nodes)."""

    correction_name = "line"

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        result = self.estimate(target, t, path, evals)
        return result.delta, result.nfe

    def estimate(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> DeltaEstimate:
        start, end = evals[0], evals[-1]
        integral, difference = self.segment(target, t, path[0], path[-1], start.integrand, end.integrand)
        return DeltaEstimate(end.exact - start.exact + integral, self.n_points, difference.abs())


class CurveIntegral(_Quadrature):
    """Δ̂ = exact(x') − exact(x) + Σ_segments ∫ g along the proposal's polyline (``n_points`` per segment)."""

    correction_name = "curve"

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        result = self.estimate(target, t, path, evals)
        return result.delta, result.nfe

    def estimate(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> DeltaEstimate:
        pieces = [self.segment(target, t, path[i], path[i + 1], evals[i].integrand, evals[i + 1].integrand)
                  for i in range(len(path) - 1)]
        integral = sum(piece[0] for piece in pieces)
        difference = sum(piece[1] for piece in pieces)  # the composite rules' difference over the whole path
        delta = evals[-1].exact - evals[0].exact + integral
        return DeltaEstimate(delta, self.n_points * (len(path) - 1), difference.abs())  # type: ignore[union-attr,arg-type]


def make_correction(correction: CorrectionName | Correction | None, n_points: int = 0,
                    quadrature: QuadratureName = "trapezoid") -> Correction | None:
    """A correction from its config name ("energy", "line", "curve") or pass an instance / None through."""
    if correction is None or isinstance(correction, Correction):
        return correction
    if correction == "energy":
        if n_points:
            raise ValueError("n_points applies to correction='line' or 'curve', not 'energy'")
        if quadrature != "trapezoid":
            raise ValueError(f"quadrature={quadrature!r} applies to correction='line' or 'curve', not 'energy' "
                             "(which needs no integral)")
        return EnergyDifference()
    if correction == "line":
        return LineIntegral(n_points, quadrature)
    if correction == "curve":
        return CurveIntegral(n_points, quadrature)
    raise ValueError(f"correction={correction!r} is not one of ['energy', 'line', 'curve']")
