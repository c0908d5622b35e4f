"""Bootstrap coverage, analytic standard errors, trials, the Welch difference and the marked table cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_ind

from lit_mcmc.metrics.uncertainty import (
    Estimate,
    bootstrap,
    difference,
    marked_cells,
    paired,
    proportion,
    trials,
    welch,
)


@pytest.mark.parametrize("interval", ["percentile", "basic", "normal"])
def test_bootstrap_interval_of_a_gaussian_mean_covers_the_truth_at_its_nominal_rate(interval: str) -> None:
    rng = np.random.default_rng(0)
    truth, repetitions, n = 1.5, 400, 60
    covered = 0
    for rep in range(repetitions):
        data = rng.normal(truth, 2.0, n)
        estimate = bootstrap(lambda idx, data=data: data[idx].mean(), n, n_boot=200, seed=rep, interval=interval)
        covered += estimate.low <= truth <= estimate.high
    assert abs(covered / repetitions - 0.95) <= 0.05


def test_bootstrap_standard_error_of_a_mean_is_the_analytic_one() -> None:
    data = np.random.default_rng(1).normal(0.0, 3.0, 500)
    estimate = bootstrap(lambda idx: data[idx].mean(), len(data), n_boot=1000)
    assert estimate.value == data.mean()
    # the plug-in standard error std(ddof=0)/√n, to the Monte-Carlo accuracy of 1000 replicates (about 2 %)
    assert estimate.se == pytest.approx(data.std() / math.sqrt(len(data)), rel=0.08)


def test_bootstrap_of_a_non_finite_statistic_has_no_standard_error() -> None:
    data = np.array([0.0, 1.0, -np.inf, 2.0])
    estimate = bootstrap(lambda idx: data[idx].mean(), len(data), n_boot=20)
    assert estimate.value == -np.inf and math.isnan(estimate.se) and math.isnan(estimate.low)


def test_bootstrap_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="n_boot=1 must be >= 2"):
        bootstrap(lambda idx: 0.0, 10, n_boot=1)
    with pytest.raises(ValueError, match="interval='bca' must be one of"):
        bootstrap(lambda idx: float(idx.mean()), 10, n_boot=5, interval="bca")  # type: ignore[arg-type]


def test_proportion_has_the_binomial_standard_error_and_the_wilson_interval() -> None:
    hits = np.array([True] * 90 + [False] * 10)
    estimate = proportion(hits)
    assert estimate.value == 0.9 and estimate.se == pytest.approx(math.sqrt(0.9 * 0.1 / 100))
    wilson = binomtest(90, 100).proportion_ci(confidence_level=0.95, method="wilson")
    assert (estimate.low, estimate.high) == pytest.approx((wilson.low, wilson.high), rel=1e-4)
    assert proportion(0.9, n=100) == estimate
    assert estimate.as_metrics("r3_accuracy") == {"r3_accuracy": 0.9, "r3_accuracy_se": estimate.se,
                                                   "r3_accuracy_low": estimate.low,
                                                   "r3_accuracy_high": estimate.high}


def test_trials_and_the_welch_difference_match_scipys_welch_t() -> None:
    a, b = [7.82, 10.49, 9.10, 8.70], [6.1, 6.5, 5.9]
    summary = trials(a)
    assert (summary.mean, summary.std, summary.n) == pytest.approx((np.mean(a), np.std(a, ddof=1), 4))
    test = welch(a, b)
    t = ttest_ind(a, b, equal_var=False).statistic
    assert test.diff / test.se == pytest.approx(t)
    assert test.significant == (abs(t) > 2)
    assert math.isnan(trials([1.0]).se)


def test_difference_marks_only_beyond_two_standard_errors() -> None:
    assert difference(1.0, 0.3, 0.0, 0.4).significant is False  # 1.0 < 2·0.5
    assert difference(1.01, 0.3, 0.0, 0.4).significant is True
    assert difference(-1.1, 0.3, 0.0, 0.4).significant is True
    assert difference(5.0, float("nan"), 0.0, 0.1).significant is None


def test_marked_cells_mark_rows_that_differ_from_the_baseline_by_two_welch_standard_errors() -> None:
    rows = {"exact": [3.48, 3.49, 3.47], "far": [3.30, 3.32, 3.31], "near": [3.47, 3.50, 3.46],
            "single": [3.0], "broken": [-math.inf, 3.0, 3.1]}
    cells = marked_cells(rows, baseline="exact", fmt="%.2f")
    assert cells == {"exact": "3.48 ± 0.01", "far": "3.31 ± 0.01*", "near": "3.48 ± 0.02",
                     "single": "3.00", "broken": "-inf"}
    shown = marked_cells(rows, baseline="exact", fmt="%.2f", show_difference=True)
    assert shown["far"] == "3.31 ± 0.01 (−0.17*)" and shown["near"] == "3.48 ± 0.02 (−0.00)"
    with pytest.raises(ValueError, match="baseline row 'reverse' is not one of the rows"):
        marked_cells(rows, baseline="reverse")
    assert marked_cells(rows, baseline="exact", fmt="%.3f", ddof=0)["near"] == "3.477 ± 0.017"  # population std


def test_paired_trials_remove_the_spread_the_rows_share() -> None:
    # each trial shifts both rows alike (its own trained models): unpaired, the 0.05 gap drowns in that spread
    shared = [0.0, 0.4, -0.3, 0.2]
    base = [3.0 + s for s in shared]
    better = [3.05 + s + e for s, e in zip(shared, [0.01, -0.01, 0.0, 0.005], strict=True)]
    rows = {"base": base, "better": better}
    assert marked_cells(rows, "base", fmt="%.2f")["better"] == "3.13 ± 0.29"
    assert marked_cells(rows, "base", fmt="%.2f", pair_trials=True)["better"] == "3.13 ± 0.29*"
    test = paired(better, base)
    assert test.diff == pytest.approx(0.05125) and test.se == pytest.approx(np.std(
        np.subtract(better, base), ddof=1) / 2)
    with pytest.raises(ValueError, match="paired trials need as many values as the baseline, got 2 and 4"):
        paired([1.0, 2.0], base)


def test_estimate_is_a_plain_record() -> None:
    assert Estimate(1.0, 0.1, 0.8, 1.2).as_metrics("fid")["fid_se"] == 0.1


def test_group_bootstrap_and_clustered_proportion_see_correlated_samples() -> None:
    # 40 groups of 25 samples that share a group effect (as particles that share ancestors do)
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 25)
    data = rng.normal(0, 1, 40)[groups] + rng.normal(0, 0.1, 1000)
    group_means = data.reshape(40, 25).mean(axis=1)
    cluster_se = group_means.std(ddof=1) / math.sqrt(40)
    by_group = bootstrap(lambda idx: data[idx].mean(), 1000, n_boot=400, groups=groups)
    by_sample = bootstrap(lambda idx: data[idx].mean(), 1000, n_boot=400)
    assert by_group.se == pytest.approx(cluster_se, rel=0.15)
    assert by_sample.se < cluster_se / 3  # the sample bootstrap misses the shared part
    # hits decided per group: the clustered se is the se of the groups' hit rates
    hits = np.repeat(rng.random(40) < 0.7, 25)
    clustered = proportion(hits, groups=groups)
    rates = hits.reshape(40, 25).mean(axis=1)
    assert clustered.se == pytest.approx(math.sqrt(40 / 39) * rates.std() / math.sqrt(40))
    assert clustered.se > 4 * proportion(hits).se
    with pytest.raises(ValueError, match=r"groups must hold one label per sample \(10\)"):
        bootstrap(lambda idx: 0.0, 10, n_boot=5, groups=[0, 1])
    with pytest.raises(ValueError, match="every group must lie in one stratum"):
        bootstrap(lambda idx: 0.0, 4, n_boot=5, groups=[0, 0, 1, 1], strata=[0, 1, 0, 1])


def test_strata_keep_the_class_proportions_a_rerun_keeps() -> None:
    # two classes of 500 fixed by the sample index, with very different values: resampling across them adds the
    # spread of the class shares, which no rerun has
    rng = np.random.default_rng(3)
    strata = np.arange(1000) % 2
    data = np.where(strata == 0, 0.0, 10.0) + rng.normal(0, 1, 1000)
    within = math.sqrt(sum(data[strata == s].var(ddof=1) / 500 for s in (0, 1))) / 2  # se of the mean of the means
    stratified = bootstrap(lambda idx: data[idx].mean(), 1000, n_boot=400, strata=strata)
    assert stratified.se == pytest.approx(within, rel=0.15)
    assert bootstrap(lambda idx: data[idx].mean(), 1000, n_boot=400).se > 5 * within
    hits = np.where(strata == 0, rng.random(1000) < 0.9, rng.random(1000) < 0.5)
    rates = [hits[strata == s].mean() for s in (0, 1)]
    expected = math.sqrt(sum(500 / 499 * 500 * r * (1 - r) for r in rates)) / 1000
    assert proportion(hits, strata=strata).se == pytest.approx(expected)
