"""FID, KID and precision/recall on given features: torchmetrics' and torch-fidelity's own values, and standard
errors that match the spread over fresh sample sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchmetrics.image.fid import _compute_fid

from lit_mcmc.metrics.feature_metrics import (
    FrechetDistance,
    fid_bootstrap,
    gaussian_stats,
    gaussian_stats_from_sums,
    kid,
    precision_recall,
    unbiased_mmd2,
)


def gaussian_features(n: int, dim: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=torch.Generator().manual_seed(99))
    return (scale * torch.randn(n, dim, generator=generator) @ mixing + shift).double()


@pytest.mark.parametrize("n", [20, 300], ids=["fewer-samples-than-dims", "more-samples-than-dims"])
def test_frechet_distance_is_torchmetrics_fid(n: int) -> None:
    real, fake = gaussian_features(500, 64, 0), gaussian_features(n, 64, 1, shift=0.2, scale=1.1)
    real_mean, real_cov = gaussian_stats(real)
    expected = float(_compute_fid(*gaussian_stats(fake), real_mean, real_cov))
    # torchmetrics takes general eigenvalues of Σ_g Σ_r, which carry ~1e-8 noise when Σ_g is rank-deficient
    assert FrechetDistance(real_mean, real_cov, fake)() == pytest.approx(expected, rel=1e-6)
    # a resampled set is the same set with duplicated rows
    idx = np.random.default_rng(0).integers(0, n, n)
    resampled = float(_compute_fid(*gaussian_stats(fake[idx]), real_mean, real_cov))
    assert FrechetDistance(real_mean, real_cov, fake)(idx) == pytest.approx(resampled, rel=1e-6)


def test_statistics_from_torchmetrics_sums_are_the_mean_and_covariance() -> None:
    x = gaussian_features(100, 8, 0)
    mean, cov = gaussian_stats_from_sums(x.sum(0), x.T @ x, torch.tensor(100))
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(cov, torch.cov(x.T))


@pytest.mark.parametrize("shift,ratio", [(1.0, (0.7, 1.5)), (0.1, (1.0, 5.0))], ids=["far", "noise-floor"])
def test_fid_bootstrap_standard_error_matches_the_spread_over_fresh_sample_sets_or_bounds_it(
        shift: float, ratio: tuple[float, float]) -> None:
    # accurate where the gap between the distributions dominates FID, conservative where FID is mostly its bias
    real_mean, real_cov = gaussian_stats(gaussian_features(4000, 16, 0))
    fids = [FrechetDistance(real_mean, real_cov, gaussian_features(200, 16, seed, shift=shift))()
            for seed in range(1, 41)]
    estimate = fid_bootstrap(gaussian_features(200, 16, 1, shift=shift), real_mean, real_cov, n_boot=100)
    assert estimate.value == fids[0]
    assert ratio[0] < estimate.se / np.std(fids, ddof=1) < ratio[1]
    assert (estimate.low, estimate.high) == pytest.approx((estimate.value - 1.96 * estimate.se,
                                                           estimate.value + 1.96 * estimate.se), rel=1e-3)


def test_kid_is_torch_fidelitys_kid() -> None:
    fake, real = gaussian_features(300, 32, 1, shift=0.3), gaussian_features(800, 32, 2)
    estimate = kid(fake, real, subset_size=200, n_subsets=10, seed=3)
    direct = kid_features_to_metric(fake, real, kid_subsets=10, kid_subset_size=200, rng_seed=3, verbose=False)
    assert estimate.value == direct["kernel_inception_distance_mean"]
    # a 1000-sample run: subsets of all 1000 generated samples; equal sets: one subset, the unbiased MMD² of all
    assert kid(fake, real).value == kid_features_to_metric(fake, real, kid_subsets=100, kid_subset_size=300,
                                                           rng_seed=0, verbose=False)["kernel_inception_distance_mean"]
    assert kid(fake, real[:300]).value == pytest.approx(unbiased_mmd2(fake, real[:300]), rel=1e-12)


@pytest.mark.parametrize("n,m,subsets", [(100, 100, None), (200, 1000, 10)], ids=["equal-sets", "more-real"])
def test_kid_standard_error_matches_the_spread_over_fresh_sample_sets(n: int, m: int, subsets: int | None) -> None:
    real = gaussian_features(m, 8, 12345)
    # against one real set (how rows are compared): the default se is the generated samples' share
    given_real = [kid(gaussian_features(n, 8, k, shift=0.15), real, n_subsets=subsets) for k in range(60)]
    spread = np.std([e.value for e in given_real], ddof=1)
    assert np.mean([e.se for e in given_real]) == pytest.approx(spread, rel=0.25)
    # fresh real sets too: real_noise adds their share (first order, so on the large side)
    both = [kid(gaussian_features(n, 8, 100 + k, shift=0.15), gaussian_features(m, 8, 500 + k), n_subsets=subsets,
                real_noise=True) for k in range(60)]
    ratio = np.mean([e.se for e in both]) / np.std([e.value for e in both], ddof=1)
    assert 0.8 < ratio < 1.6


def test_kid_of_two_sets_from_one_distribution_is_within_two_standard_errors_of_zero() -> None:
    for seed in range(5):
        estimate = kid(gaussian_features(500, 16, 10 + seed), gaussian_features(500, 16, 20 + seed), real_noise=True)
        assert abs(estimate.value) < 2 * estimate.se
    shifted = kid(gaussian_features(500, 16, 1, shift=0.3), gaussian_features(500, 16, 2))
    assert shifted.value > 2 * shifted.se


def test_precision_recall_are_torch_fidelitys() -> None:
    fake, real = gaussian_features(200, 16, 1, scale=0.7), gaussian_features(500, 16, 2)
    estimates = precision_recall(fake, real, seed=4)
    subset = real[torch.from_numpy(np.random.default_rng(4).choice(500, 200, replace=False))]
    direct = prc_features_to_metric(fake.float(), subset.float(), prc_neighborhood=3, prc_batch_size=10000,
                                    save_cpu_ram=False, verbose=False)
    assert estimates["precision"].value == direct["precision"] and estimates["recall"].value == direct["recall"]
    # a sharpened sampler (scale 0.7): precise, but it misses the real distribution's tails
    assert estimates["precision"].value > estimates["recall"].value
    p = direct["precision"]
    assert estimates["precision"].se == pytest.approx((p * (1 - p) / 200) ** 0.5)


def test_bad_feature_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="features have 8 dimensions and real_features 4"):
        kid(gaussian_features(50, 8, 0), gaussian_features(50, 4, 1))
    with pytest.raises(ValueError, match="KID subset_size=60 must be between 4 and the smaller set"):
        kid(gaussian_features(50, 8, 0), gaussian_features(50, 8, 1), subset_size=60)
    with pytest.raises(ValueError, match=r"must be a feature array \[N, F\]"):
        precision_recall(torch.zeros(10), torch.zeros(10, 2))


def test_image_feature_metrics_gathers_every_value_with_its_uncertainty() -> None:
    from lit_mcmc.metrics.feature_metrics import image_feature_metrics

    fake, real = gaussian_features(120, 8, 1, shift=0.2), gaussian_features(300, 8, 2)
    out = image_feature_metrics(fake, real, n_boot=20)
    assert set(out) == {f"{m}{s}" for m in ("fid", "kid", "precision", "recall") for s in ("", "_se", "_low", "_high")}
    assert out["fid"] == FrechetDistance(*gaussian_stats(real), fake)() and out["kid"] == kid(fake, real).value
    assert out["recall"] == precision_recall(fake, real)["recall"].value
    assert image_feature_metrics(fake, real, real_stats=gaussian_stats(real[:100]), n_boot=20)["fid"] != out["fid"]


def test_strata_and_groups_reach_kid_and_precision() -> None:
    from lit_mcmc.metrics.feature_metrics import kid_projections
    from lit_mcmc.metrics.uncertainty import mean_se, proportion

    # two classes fixed by the sample index, far apart in feature space
    labels = np.arange(200) % 2
    fake = gaussian_features(200, 8, 1) + torch.from_numpy(labels[:, None] * 3.0)
    real = gaussian_features(400, 8, 2) + torch.from_numpy((np.arange(400) % 2)[:, None] * 3.0)
    plain, stratified = kid(fake, real), kid(fake, real, strata=labels)
    a, _ = kid_projections(fake.numpy(), real.numpy())
    assert stratified.value == plain.value
    assert stratified.se == pytest.approx(2 * mean_se(a, strata=labels))
    assert plain.se == pytest.approx(2 * a.std(ddof=1) / np.sqrt(200))
    estimates = precision_recall(fake, real, strata=labels)
    subset = real[torch.from_numpy(np.random.default_rng(0).choice(400, 200, replace=False))].float()
    direct = prc_features_to_metric(fake.float(), subset, prc_neighborhood=3, prc_batch_size=10000,
                                    save_cpu_ram=False, verbose=False)
    assert estimates["precision"].value == direct["precision"]
    # a generated sample is a hit when it lies within some real sample's distance to its 3rd neighbour
    radii = torch.cdist(subset, subset).kthvalue(4, dim=1).values
    hits = (torch.cdist(fake.float(), subset) <= radii).any(dim=1).numpy()
    assert hits.mean() == pytest.approx(direct["precision"])
    assert estimates["precision"].se == pytest.approx(proportion(hits, strata=labels).se)
