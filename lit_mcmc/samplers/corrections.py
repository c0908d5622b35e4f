"""How an MH kernel obtains Δ = log p̃_t(x') − log p̃_t(x): a strategy, independent of the kernel.

- :class:`EnergyDifference`: exact, from the log-densities (needs ``has_log_prob``).
- :class:`LineIntegral`: the trapezoid rule along the straight line x → x' with ``n_points`` interior nodes.
- :class:`CurveIntegral`: the trapezoid rule along the proposal's own path (HMC's leapfrog positions), reusing the
  gradients the proposal already computed, with ``n_points`` extra interior nodes per segment.

Integrals use each node's *integrand* (the part of the score that is not known exactly) and add the difference of
the exactly known part, so a classifier's log-probability in a guided target is evaluated, not integrated
(Sjöberg, Lindqvist et al., §4; ALGORITHMS.md §5).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from torch import Tensor

from lit_mcmc.targets import Evaluation, Target

CorrectionName = Literal["energy", "line", "curve"]


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions, shape [B]."""
    return (a * b).flatten(1).sum(1)


class Correction(ABC):
    """Computes the MH log-density difference along a proposal path and the extra evaluations it cost."""

    needs_log_prob: bool = False

    @abstractmethod
    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        """(Δ [B], extra target evaluations per sample) for the path x = path[0] → x' = path[-1].

        ``evals[i]`` is the target's evaluation at ``path[i]``; the first and last carry ``log_prob`` when
        :attr:`needs_log_prob` is set.
        """


class EnergyDifference(Correction):
    """Exact Δ = log p̃(x') − log p̃(x) from cached log-densities (no extra evaluation)."""

    needs_log_prob = True

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        return evals[-1].log_prob - evals[0].log_prob, 0  # type: ignore[operator]

    def __repr__(self) -> str:
        return "EnergyDifference()"


class _Trapezoid(Correction):
    def __init__(self, n_points: int = 0) -> None:
        if int(n_points) != n_points or n_points < 0:
            raise ValueError(f"n_points={n_points} must be a non-negative integer (interior quadrature nodes)")
        self.n_points = int(n_points)

    def segment(self, target: Target, t: int, start: Tensor, end: Tensor,
                start_integrand: Tensor, end_integrand: Tensor) -> Tensor:
        """∫ g·dr along start → end by the trapezoid rule on n_points + 2 equally spaced nodes, shape [B]."""
        step = end - start
        total = 0.5 * (dot(start_integrand, step) + dot(end_integrand, step))
        for j in range(1, self.n_points + 1):
            node = start + (j / (self.n_points + 1)) * step
            total = total + dot(target.integrand(node, t), step)
        return total / (self.n_points + 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_points={self.n_points})"


class LineIntegral(_Trapezoid):
    """Δ̂ = exact(x') − exact(x) + ∫ g along the straight line x → x' (``n_points`` interior nodes)."""

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        start, end = evals[0], evals[-1]
        integral = self.segment(target, t, path[0], path[-1], start.integrand, end.integrand)
        return end.exact - start.exact + integral, self.n_points


class CurveIntegral(_Trapezoid):
    """Δ̂ = exact(x') − exact(x) + Σ_segments ∫ g along the proposal's polyline (``n_points`` per segment)."""

    def delta(self, target: Target, t: int, path: list[Tensor], evals: list[Evaluation]) -> tuple[Tensor, int]:
        integral = sum(
            self.segment(target, t, path[i], path[i + 1], evals[i].integrand, evals[i + 1].integrand)
            for i in range(len(path) - 1)
        )
        return evals[-1].exact - evals[0].exact + integral, self.n_points * (len(path) - 1)  # type: ignore[return-value]


def make_correction(correction: CorrectionName | Correction | None, n_points: int = 0) -> Correction | None:
    """A correction from its config name ("energy", "line", "curve") or pass an instance / None through."""
    if correction is None or isinstance(correction, Correction):
        return correction
    if correction == "energy":
        if n_points:
            raise ValueError("n_points applies to correction='line' or 'curve', not 'energy'")
        return EnergyDifference()
    if correction == "line":
        return LineIntegral(n_points)
    if correction == "curve":
        return CurveIntegral(n_points)
    raise ValueError(f"correction={correction!r} is not one of ['energy', 'line', 'curve']")
