"""Sampling that has broken down, level by level: almost every proposal rejected, non-finite MH log-ratios, or
non-finite samples (a diverged network).

A run whose steps are far too large still exits normally with its initial noise as "samples"; these checks make
that loud: the levels are reported (grouped into ranges), and ``fail_on_degenerate`` stops the run at the first
such level, before more compute is spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class DegenerateSampling(ValueError):
    """Raised at a degenerate level when the sampler is configured with ``fail_on_degenerate: true``."""


@dataclass(frozen=True)
class DegeneracyThresholds:
    """A level is degenerate when its acceptance rate is below ``min_accept_rate`` (MH kernels only), or when more
    than ``max_nonfinite_share`` of its MH log-ratios, or of its samples, are not finite."""

    min_accept_rate: float = 0.01
    max_nonfinite_share: float = 0.01

    def __post_init__(self) -> None:
        for name in ("min_accept_rate", "max_nonfinite_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"sampler.{name}={value} must lie in [0, 1]")

    def problems(self, accept_rate: float | None, nonfinite_log_ratios: float,
                 nonfinite_samples: float) -> dict[str, str]:
        """What is wrong at a level ({kind: detail}), given its acceptance rate (None for unadjusted kernels) and its
        shares of non-finite log-ratios and samples, in [0, 1]."""
        found = {}
        if accept_rate is not None and accept_rate < self.min_accept_rate:
            found["acceptance"] = f"acceptance {accept_rate:.3g} < {self.min_accept_rate:g}"
        if nonfinite_log_ratios > self.max_nonfinite_share:
            found["non-finite log-ratios"] = f"{nonfinite_log_ratios:.1%} non-finite log-ratios"
        if nonfinite_samples > self.max_nonfinite_share:
            found["non-finite samples"] = f"{nonfinite_samples:.1%} non-finite samples"
        return found


def level_ranges(levels: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs of levels as (highest, lowest), highest first (the order a sampler visits them)."""
    ranges: list[tuple[int, int]] = []
    for level in sorted(set(levels), reverse=True):
        if ranges and ranges[-1][1] == level + 1:
            ranges[-1] = (ranges[-1][0], level)
        else:
            ranges.append((level, level))
    return ranges


def degenerate_report(problems: Mapping[int, Mapping[str, str]]) -> list[str]:
    """One line per contiguous range of degenerate levels: its kinds of problem, and the details at its first level."""
    lines = []
    for high, low in level_ranges(problems):
        kinds = sorted({kind for level in range(low, high + 1) for kind in problems.get(level, {})})
        span = f"level {high}" if high == low else f"levels {high}-{low}"
        lines.append(f"{span}: {', '.join(kinds)} (at level {high}: {'; '.join(problems[high].values())})")
    return lines
