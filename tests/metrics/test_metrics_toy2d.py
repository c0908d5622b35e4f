import math

import numpy as np
import pytest
import torch

from lit_mcmc.data.toy2d import sample_product
from lit_mcmc.metrics.toy2d import (
    evaluate_samples,
    gmm_variance_metric,
    log_density,
    log_likelihood,
    normalizing_constant,
    wasserstein2,
)

# log(8 · 2π · 0.03²): the GMM normaliser the reference code adds instead of subtracting.
LOG_GMM_NORMALISER = math.log(8 * 2 * math.pi * 0.03**2)


@pytest.fixture(scope="module")
def exact_product_samples() -> torch.Tensor:
    return sample_product(200_000, torch.Generator().manual_seed(0))


def test_normalizing_constant_matches_the_paper_value():
    assert normalizing_constant() == pytest.approx(0.311232, abs=1e-5)
    # Z = 1.2375 · P_GMM(bar) + 0.0024752475 · (P_GMM([-1.1, 1.1]^2) - P_GMM(bar)), P_GMM(bar) = 0.25000008.
    assert normalizing_constant() == pytest.approx(1.2375 * 0.25000008 + 0.01 / 4.04 * (1 - 0.25000008), rel=1e-6)


def test_log_density_at_hand_computed_points():
    log_z = math.log(0.311232)
    # On the mode (0, 0.5), inside the bar: the other modes contribute exp(-81) and less.
    on_mode = log_density(np.array([[0.0, 0.5]]))
    assert on_mode[0] == pytest.approx(-LOG_GMM_NORMALISER + math.log(0.99 / 0.8) - log_z, abs=1e-5)
    compat = log_density(np.array([[0.0, 0.5]]), paper_compat=True)
    assert compat[0] - on_mode[0] == pytest.approx(2 * LOG_GMM_NORMALISER, abs=1e-9)
    # On the mode (0.5, 0), off the bar but inside the 1 % extension of [-1.1, 1.1]^2.
    off_bar = log_density(np.array([[0.5, 0.0]]))
    assert off_bar[0] == pytest.approx(-LOG_GMM_NORMALISER + math.log(0.01 / (4 * 1.1**2 - 0.8)) - log_z, abs=1e-5)
    assert log_density(np.array([[1.2, 0.0]]))[0] == -np.inf


def test_log_likelihood_of_exact_product_samples(exact_product_samples):
    assert log_likelihood(exact_product_samples) == pytest.approx(3.481, abs=0.02)
    assert log_likelihood(exact_product_samples, paper_compat=True) == pytest.approx(-2.710, abs=0.02)


def test_one_sample_outside_the_extended_box_makes_the_log_likelihood_minus_infinity():
    samples = np.array([[0.0, 0.5], [0.0, -0.5], [0.0, 1.5]])
    assert log_likelihood(samples) == -np.inf


def test_metrics_reject_wrongly_shaped_samples():
    with pytest.raises(ValueError, match=r"samples must have shape \[N, 2\], got \(4, 3\)"):
        log_likelihood(np.zeros((4, 3)))


def test_wasserstein2_of_a_set_with_itself_and_a_permutation_is_zero():
    x = np.random.default_rng(0).normal(size=(60, 2))
    assert wasserstein2(x, x) == 0.0
    assert wasserstein2(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein2_of_a_translated_set_is_the_shift_length():
    x = np.random.default_rng(1).normal(size=(50, 2))
    shift = np.array([0.3, -0.4])
    assert wasserstein2(x, x + shift) == pytest.approx(0.5, abs=1e-12)


def test_paper_compat_wasserstein2_is_scaled_by_sqrt_n_over_2():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 1.0
    assert wasserstein2(x, y, paper_compat=True) == pytest.approx(math.sqrt(40 / 2) * wasserstein2(x, y), rel=1e-12)


def test_wasserstein2_requires_equal_sample_counts():
    with pytest.raises(ValueError, match="same number of samples.*10 and 12"):
        wasserstein2(np.zeros((10, 2)), np.zeros((12, 2)))


def test_wasserstein2_floor_between_two_exact_draws():
    generator = torch.Generator().manual_seed(0)
    x, y = sample_product(2000, generator), sample_product(2000, generator)
    w2 = wasserstein2(x, y)
    assert 0.05 < w2 < 0.12
    # The floor is dominated by the mode imbalance: each surplus point crosses between the modes at (0, ±0.5),
    # at a squared distance between 0.5 and 1 (the crossing points are the ones nearest the other mode).
    surplus = abs(int((x[:, 1] > 0).sum()) - int((y[:, 1] > 0).sum()))
    assert 0.5 * surplus / 2000 < w2**2 < surplus / 2000 + 1e-3


def _two_clusters(n: int, upper_std: tuple[float, float], lower_std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    upper = np.array([0.0, 0.5]) + rng.normal(size=(n // 2, 2)) * np.array(upper_std)
    lower = np.array([0.0, -0.5]) + rng.normal(size=(n // 2, 2)) * lower_std
    return np.concatenate([upper, lower])


def test_gmm_metric_of_the_target_with_itself_is_zero():
    target = sample_product(2000, torch.Generator().manual_seed(5))
    assert gmm_variance_metric(target, target) == 0.0
    assert gmm_variance_metric(target, target, match_components=True) == 0.0


def test_gmm_metric_measures_the_variance_gap_of_matched_components():
    target = _two_clusters(4000, (0.03, 0.03), 0.03, seed=0)
    wider = _two_clusters(4000, (0.06, 0.03), 0.06, seed=1)
    # Upper: ‖(0.06² - 0.03², 0)‖; lower: ‖(0.06² - 0.03²) · (1, 1)‖.
    gap = 0.06**2 - 0.03**2
    expected = (gap + gap * math.sqrt(2)) / 2
    assert gmm_variance_metric(target, wider, match_components=True) == pytest.approx(expected, rel=0.06)


def test_gmm_metric_paired_by_index_depends_on_the_arbitrary_component_order():
    target = _two_clusters(4000, (0.03, 0.03), 0.1, seed=2)
    same_law = _two_clusters(4000, (0.03, 0.03), 0.1, seed=3)
    swapped_gap = (0.1**2 - 0.03**2) * math.sqrt(2)  # ‖var_upper − var_lower‖, the same for both pairs
    matched = gmm_variance_metric(target, same_law, match_components=True)
    assert matched == pytest.approx(0.0, abs=5e-4)
    # Reversing the rows changes which cluster k-means initialises first, hence sklearn's component order.
    assert gmm_variance_metric(target, same_law[::-1], match_components=True) == pytest.approx(matched, abs=1e-12)
    assert gmm_variance_metric(target, same_law) == pytest.approx(matched, abs=1e-12)
    assert gmm_variance_metric(target, same_law[::-1]) == pytest.approx(swapped_gap, rel=0.06)


def test_evaluate_samples_combines_the_three_metrics():
    generator = torch.Generator().manual_seed(7)
    target, samples = sample_product(300, generator), sample_product(300, generator)
    for paper_compat in (False, True):
        metrics = evaluate_samples(samples, target, paper_compat)
        assert metrics == {
            "ll": log_likelihood(samples, paper_compat),
            "w2": wasserstein2(target, samples, paper_compat),
            "gmm": gmm_variance_metric(target, samples, match_components=not paper_compat),
        }


def test_bootstrap_standard_errors_of_the_2d_metrics_match_the_spread_over_fresh_sample_sets():
    from lit_mcmc.metrics.toy2d import sample_metrics, sample_metrics_uncertainty

    generator = torch.Generator().manual_seed(1)
    n = 300
    reference = sample_product(n, generator).numpy()
    draws = [sample_product(n, generator).numpy() for _ in range(30)]
    spread = {key: np.std([sample_metrics(d, reference)[key] for d in draws], ddof=1) for key in ("ll", "w2")}
    estimate = sample_metrics_uncertainty(draws[0], reference, n_boot=60)
    assert {k: estimate[k] for k in ("ll", "w2", "gmm")} == sample_metrics(draws[0], reference)
    assert set(estimate) == {f"{k}{s}" for k in ("ll", "w2", "gmm") for s in ("", "_se", "_low", "_high")}
    # LL is a mean over samples: its bootstrap se is std/√n; each se agrees with the spread over fresh sets
    assert estimate["ll_se"] == pytest.approx(log_density(draws[0]).std() / math.sqrt(n), rel=0.25)
    for key in ("ll", "w2"):
        assert 0.5 < estimate[f"{key}_se"] / spread[key] < 2.0, key
        assert estimate[f"{key}_low"] < estimate[f"{key}_high"]


def test_bootstrap_of_non_finite_2d_samples_is_nan():
    from lit_mcmc.metrics.toy2d import sample_metrics_uncertainty

    samples = np.zeros((20, 2))
    samples[3] = np.nan
    out = sample_metrics_uncertainty(samples, np.zeros((20, 2)), n_boot=5)
    assert out["ll"] == -math.inf and math.isnan(out["w2_se"]) and math.isnan(out["gmm_high"])
