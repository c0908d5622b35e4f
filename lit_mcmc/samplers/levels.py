"""The per-level record of a run: ``{stat: {level: value}}``, filled by the kernel and the annealed driver.

A statistic is declared once, next to the code that computes it, with :func:`level_stat`: its name and how the
values of many batches combine into the run's value (``lit_mcmc/run_stats.py`` does that, for every declared
statistic alike). ``predict_step`` returns the record whole and the writer stores every entry as it is, so a new
statistic needs no change anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LevelRecord = dict[str, dict[int, float]]
Combine = Literal["mean", "group_mean", "min", "sum"]


@dataclass(frozen=True)
class LevelStat:
    """How one per-level statistic combines over batches.

    ``combine``: "mean" (weighted by the batch's samples, non-finite values left out), "group_mean" (weighted by
    the batch's particle groups), "min" or "sum" (an integer count). ``descending``: the order of its levels in
    stats.json (the visiting order, T−1 first, for the particles' statistics). ``reported``: written to stats.json
    as ``<name>_per_level`` (else only used by the run's checks).
    """

    combine: Combine = "mean"
    descending: bool = False
    reported: bool = True


LEVEL_STATS: dict[str, LevelStat] = {}


def level_stat(name: str, combine: Combine = "mean", descending: bool = False, reported: bool = True) -> str:
    """Declare a per-level statistic (once, where it is computed); returns its name."""
    LEVEL_STATS[name] = LevelStat(combine, descending, reported)
    return name


def record(levels: LevelRecord, stat: str, level: int, value: float) -> None:
    """Set ``levels[stat][level] = value``."""
    if stat not in LEVEL_STATS:
        raise KeyError(f"per-level statistic {stat!r} is not declared (lit_mcmc.samplers.levels.level_stat)")
    levels.setdefault(stat, {})[level] = value
