"""Uncertainty of metrics: bootstrap over samples, analytic standard errors, trials and the two-SE difference test.

Plain numpy, no Lightning. What a metric callback or a results table needs:

- :func:`bootstrap`: the bootstrap of any statistic of N samples, given as a function of the resampled indices, so a
  metric whose samples were already turned into features (FID, the 2D metrics) is resampled without recomputing
  them: ``bootstrap(lambda idx: statistic(features[idx]), len(features))``;
- :func:`proportion`: the analytic standard error of a fraction of hits (accuracies, precision, recall), and
  :func:`mean_se` of any per-sample mean, both optionally stratified by class and robust to particle groups;
- :func:`trials`: mean, sample std, n and standard error of one metric over trials (seeds);
- :func:`difference`: a difference to a baseline and whether it exceeds two standard errors of the difference
  (Welch: the standard errors of the two sides add in quadrature); :func:`welch` and :func:`paired` of trials;
- :func:`marked_cells`: a results table's cells "mean ± std" over trials, marked where a row differs from a
  baseline row by more than two standard errors (Welch across trials).

Every result is a :class:`Estimate`, whose :meth:`Estimate.as_metrics` gives the ``metrics.json`` /
TensorBoard keys ``<name>``, ``<name>_se``, ``<name>_low`` and ``<name>_high``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import norm

Interval = Literal["percentile", "basic", "normal"]


@dataclass(frozen=True)
class Estimate:
    """A metric's value, its standard error and a confidence interval [low, high] (NaN where unknown)."""

    value: float
    se: float
    low: float
    high: float

    def as_metrics(self, name: str) -> dict[str, float]:
        """``{name: value, name_se: se, name_low: low, name_high: high}``: the keys metrics.json and TensorBoard
        hold, and that ``lit-mcmc-compare`` reads (``<name>_se``)."""
        return {name: self.value, f"{name}_se": self.se, f"{name}_low": self.low, f"{name}_high": self.high}


def normal_estimate(value: float, se: float, level: float = 0.95) -> Estimate:
    """``value ± z·se``, the normal interval at ``level`` (z = 1.96 for 95 %)."""
    z = float(norm.ppf(0.5 + level / 2))
    return Estimate(float(value), float(se), float(value - z * se), float(value + z * se))


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 200, seed: int = 0,
              level: float = 0.95, interval: Interval = "percentile",
              groups: np.ndarray | Sequence[int] | None = None,
              strata: np.ndarray | Sequence[int] | None = None) -> Estimate:
    """The nonparametric bootstrap of ``statistic`` over ``n`` samples.

    ``statistic(indices)`` computes the metric on the samples ``indices`` (an int array of length n; the value
    itself is ``statistic(np.arange(n))``). Pass already-computed per-sample data (features, log-densities,
    points) and index it, so that nothing upstream (a feature network) runs again. The standard error is the
    std (ddof=1) of ``n_boot`` replicates drawn with a seeded generator. ``interval``: "percentile" (the
    replicates' quantiles), "basic" (2·value − quantiles, which corrects a bias the resampling adds, e.g. FID's
    upward bias from duplicated samples) or "normal" (value ± z·se). A non-finite value or replicate gives NaN
    standard error and interval (e.g. an LL of −inf).

    ``strata`` (a label per sample) resamples within each stratum, keeping its size: pass the class labels of a
    conditional run, which are fixed by the sample index (i % n_classes), not drawn; resampling them would add
    the spread of class proportions that no rerun has. ``groups`` (a group label per sample) resamples whole
    groups instead of samples (the cluster bootstrap): samples of a group are not independent when particle
    resampling copies them from common ancestors, and the sample bootstrap then understates the standard error.
    Pass the resampling groups of a particle run, e.g. ``indices // group_size``; each group must lie in one
    stratum. A stratum of one group (or one sample) contributes no spread.

    Call: ``bootstrap(lambda idx: float(log_density[idx].mean()), len(log_density)).as_metrics("ll")``.
    """
    if n < 2:
        raise ValueError(f"the bootstrap needs at least 2 samples, got n={n}")
    if n_boot < 2:
        raise ValueError(f"n_boot={n_boot} must be >= 2 (200 gives the standard error to about 5 %)")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1), e.g. 0.95")
    value = float(statistic(np.arange(n)))
    rng = np.random.default_rng(seed)
    if groups is None and strata is None:
        replicates = np.array([float(statistic(rng.integers(0, n, n))) for _ in range(n_boot)])
    else:
        plan = resampling_units(n, groups, strata)
        replicates = np.array([float(statistic(np.concatenate(
            [units[k] for units in plan for k in rng.integers(0, len(units), len(units))]))) for _ in range(n_boot)])
    if not (math.isfinite(value) and np.isfinite(replicates).all()):
        nan = float("nan")
        return Estimate(value, nan, nan, nan)
    se = float(replicates.std(ddof=1))
    if interval == "normal":
        return normal_estimate(value, se, level)
    low, high = np.quantile(replicates, [0.5 - level / 2, 0.5 + level / 2])
    if interval == "basic":
        low, high = 2 * value - high, 2 * value - low
    elif interval != "percentile":
        raise ValueError(f"interval={interval!r} must be one of 'percentile', 'basic', 'normal'")
    return Estimate(value, se, float(low), float(high))


def resampling_units(n: int, groups: np.ndarray | Sequence[int] | None = None,
                     strata: np.ndarray | Sequence[int] | None = None) -> list[list[np.ndarray]]:
    """Per stratum, its units (the sample indices of each group, or single samples without ``groups``)."""
    unit_of = np.arange(n) if groups is None else _labels(groups, n, "groups")
    stratum_of = np.zeros(n, dtype=np.int64) if strata is None else _labels(strata, n, "strata")
    plan = []
    for stratum in np.unique(stratum_of):
        in_stratum = np.flatnonzero(stratum_of == stratum)
        units = [in_stratum[unit_of[in_stratum] == unit] for unit in np.unique(unit_of[in_stratum])]
        plan.append(units)
    if groups is not None and sum(len(units) for units in plan) != len(np.unique(unit_of)):
        raise ValueError("every group must lie in one stratum (a particle group shares its label)")
    if sum(len(units) for units in plan) < 2:
        raise ValueError("resampling needs at least 2 groups")
    return plan


def _labels(values: np.ndarray | Sequence[int], n: int, name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.shape != (n,):
        raise ValueError(f"{name} must hold one label per sample ({n}), got shape {labels.shape}")
    return labels


def proportion(hits: np.ndarray | Sequence[bool] | float, n: int | None = None, level: float = 0.95,
               groups: np.ndarray | Sequence[int] | None = None,
               strata: np.ndarray | Sequence[int] | None = None) -> Estimate:
    """A fraction of hits with its analytic standard error √(p(1−p)/n) and Wilson score interval.

    ``hits`` is the per-sample bool array (accuracies: ``r3_hits(...)``), or the fraction p itself with ``n``.
    With ``strata`` (class labels fixed by the sample index) and/or ``groups`` (particle resampling groups) the
    standard error is the stratified, cluster-robust one, √(Σ_s G_s/(G_s−1) · Σ_{g∈s} (h_g − n_g·p_s)²) / n over
    the G_s groups of stratum s with h_g hits among n_g samples and hit rate p_s (single samples are groups of
    one), with the normal interval; see :func:`bootstrap` for why.
    Call: ``proportion(r3_hits(probs, labels).cpu().numpy()).as_metrics("r3_accuracy")``.
    """
    if isinstance(hits, float):
        if n is None:
            raise ValueError("give n, the number of samples, with a fraction p")
        if groups is not None or strata is not None:
            raise ValueError("groups and strata need the per-sample hits, not their fraction")
        p = hits
    else:
        array = np.asarray(hits, dtype=np.float64)
        n, p = len(array), float(array.mean()) if len(array) else float("nan")
    if not n:
        raise ValueError("a proportion needs at least one sample")
    if groups is not None or strata is not None:
        return normal_estimate(p, mean_se(array, groups, strata), level)
    se = math.sqrt(max(p * (1 - p), 0.0) / n)
    z = float(norm.ppf(0.5 + level / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, se, centre - half, centre + half)


def mean_se(values: np.ndarray | Sequence[float], groups: np.ndarray | Sequence[int] | None = None,
            strata: np.ndarray | Sequence[int] | None = None) -> float:
    """The standard error of the mean of per-sample ``values``: std/√n, or with ``strata`` and/or ``groups`` the
    stratified, cluster-robust √(Σ_s G_s/(G_s−1) · Σ_{g∈s} (V_g − n_g·v̄_s)²) / n over the G_s groups of stratum s
    (V_g the sum of a group's n_g values, v̄_s the stratum's mean; single samples are groups of one; a stratum of
    one group adds nothing). See :func:`bootstrap` for when to pass which."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if groups is None and strata is None:
        return float(array.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    variance = 0.0
    for units in resampling_units(n, groups, strata):
        if len(units) < 2:
            continue
        mean = array[np.concatenate(units)].mean()
        residuals = np.array([array[idx].sum() - len(idx) * mean for idx in units])
        variance += len(units) / (len(units) - 1) * float((residuals**2).sum())
    return math.sqrt(variance) / n


@dataclass(frozen=True)
class Trials:
    """One metric over trials (seeds): mean, sample std (ddof=1; NaN for one trial), n, and se = std/√n."""

    mean: float
    std: float
    n: int

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else float("nan")


def trials(values: Sequence[float]) -> Trials:
    """Mean, sample std and count of one metric's values over trials. Call: ``trials([7.82, 10.49, 9.1])``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"trials needs a non-empty list of numbers, got {values!r}")
    with np.errstate(invalid="ignore"):  # a non-finite value (an LL of −inf) has a NaN std, not a warning
        std = float(array.std(ddof=1)) if len(array) > 1 else float("nan")
    return Trials(float(array.mean()), std, len(array))


@dataclass(frozen=True)
class Difference:
    """value − baseline, the standard error of that difference, and whether |difference| > n_se·se."""

    diff: float
    se: float
    significant: bool | None  # None: no standard error on one side, so nothing can be said


def difference(value: float, se: float, baseline: float, baseline_se: float, n_se: float = 2.0) -> Difference:
    """The difference to a baseline, se = √(se² + baseline_se²) (Welch: independent estimates), and whether it
    exceeds ``n_se`` standard errors. Give each side's standard error: across trials ``Trials.se``, within one run
    its bootstrap/analytic ``<metric>_se``. Call: ``difference(9.1, 0.8, 7.8, 0.5).significant``."""
    diff = float(value - baseline)
    combined = math.sqrt(se * se + baseline_se * baseline_se)
    if not (math.isfinite(combined) and math.isfinite(diff)):
        return Difference(diff, float("nan"), None)
    return Difference(diff, combined, abs(diff) > n_se * combined)


def welch(values: Sequence[float], baseline_values: Sequence[float], n_se: float = 2.0) -> Difference:
    """:func:`difference` of two sets of trial values: mean difference and Welch's se √(s₁²/n₁ + s₂²/n₂)."""
    a, b = trials(values), trials(baseline_values)
    return difference(a.mean, a.se, b.mean, b.se, n_se)


def mean_std_text(values: Sequence[float], fmt: str = "%.4g", ddof: int = 1) -> str:
    """'1.23' for one value, '1.23 ± 0.04' for several (sample std, ``ddof=1``; 0 for the population std); a
    non-finite mean alone."""
    summary = trials(values)
    if summary.n == 1 or not math.isfinite(summary.mean):
        return fmt % summary.mean
    std = summary.std if ddof == 1 else float(np.std(np.asarray(values, dtype=np.float64), ddof=ddof))
    return f"{fmt % summary.mean} ± {fmt % std}"


def paired(values: Sequence[float], baseline_values: Sequence[float], n_se: float = 2.0) -> Difference:
    """:func:`difference` of trials paired by index (trial k of both rows shares its trained models or data): the
    mean of the per-trial differences and its standard error std(differences)/√n."""
    if len(values) != len(baseline_values):
        raise ValueError(f"paired trials need as many values as the baseline, got {len(values)} and "
                         f"{len(baseline_values)}")
    differences = trials(np.asarray(values, dtype=np.float64) - np.asarray(baseline_values, dtype=np.float64))
    return difference(differences.mean, differences.se, 0.0, 0.0, n_se)


MARK = "*"


def marked_cells(rows: Mapping[str, Sequence[float]], baseline: str, fmt: str = "%.4g", n_se: float = 2.0,
                 show_difference: bool = False, pair_trials: bool = False, ddof: int = 1) -> dict[str, str]:
    """Table cells of one metric: for every row its trials' "mean ± std", with ``*`` appended where the row's mean
    differs from the ``baseline`` row's by more than ``n_se`` standard errors of the difference (and, with
    ``show_difference``, the difference: "3.40 ± 0.02 (−0.08*)"). The standard error is Welch's across trials
    (:func:`welch`), or with ``pair_trials`` that of the per-trial differences (:func:`paired`: trial k of every
    row used the same trained models, as in the 2D study; pairing removes the models' share of the spread). The
    baseline's own cell is unmarked; rows with one trial, or non-finite values, are never marked (no standard
    error). ``ddof`` only sets the std shown (1: sample std; 0: population std, as the 2D tables print it).

    Call, per metric column of a study table with ``rows = {row_key: [value of trial 0, 1, ...]}``:
    ``cells = marked_cells({r["key"]: [t["w2"] for t in r["trials"]] for r in rows}, baseline="exact", fmt="%.3f")``
    and say in the caption: "* : differs from <baseline> by more than two standard errors (Welch, over trials)".
    """
    if baseline not in rows:
        raise ValueError(f"baseline row {baseline!r} is not one of the rows {list(rows)}")
    base = list(rows[baseline])
    cells = {}
    for key, values in rows.items():
        values = list(values)
        if not values:
            cells[key] = "–"
            continue
        text = mean_std_text(values, fmt, ddof)
        if key != baseline and len(values) > 1 and len(base) > 1:
            test = paired(values, base, n_se) if pair_trials else welch(values, base, n_se)
            mark = MARK if test.significant else ""
            if show_difference and math.isfinite(test.diff):
                text += f" ({'+' if test.diff >= 0 else '−'}{fmt % abs(test.diff)}{mark})"
            else:
                text += mark
        cells[key] = text
    return cells
