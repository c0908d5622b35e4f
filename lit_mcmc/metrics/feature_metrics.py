"""FID, KID and precision/recall of already-extracted features, with their standard errors.

Every function takes feature arrays [N, F] (Inception pool3 features, or a trained classifier's penultimate
features: the extractors FID uses) and never runs a feature network, so a metric callback extracts the features
of its samples once, keeps them, and calls these:

- :func:`fid_bootstrap`: FID against fixed real statistics (mean, covariance), with a bootstrap over the
  generated samples that reuses their features (each replicate is one eigen-decomposition of a
  min(N, F)-square matrix, not a pass of the network);
- :func:`kid`: KID through torch-fidelity's own estimator (``kernel_poly`` and ``mmd2``: the unbiased MMD² of the
  cubic polynomial kernel, averaged over subsets), with an analytic standard error (the first-order variance of
  a two-sample U-statistic, :func:`kid_projections`);
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019) through torch-fidelity's
  ``calculate_precision_recall_full`` (k = 3 nearest neighbours), with binomial standard errors.

Sample sizes for 1000-sample runs (the defaults): KID uses subsets of ``min(1000, N_generated, N_real)`` samples
(torch-fidelity's default size is 1000, which a 1000-sample run cannot exceed), 100 subsets, so each subset holds
every generated sample and a fresh random draw of the real ones; precision/recall compare the N generated samples
with a seeded random subset of N real samples (k-NN radii shrink with the set size, so both sets must be equally
large for precision and recall to be comparable: Kynkäänniemi et al. use 50k vs 50k).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.metric_kid import kernel_poly, kid_features_to_metric, mmd2
from torch_fidelity.metric_prc import calc_cdist_full, calculate_precision_recall_full

from lit_mcmc.metrics.uncertainty import Estimate, Interval, bootstrap, mean_se, normal_estimate, proportion

KID_SUBSET_SIZE = 1000  # torch-fidelity's default, capped at the smaller set
KID_SUBSETS = 100  # torch-fidelity's default
PRC_NEIGHBORHOOD = 3  # k of the k-NN manifold (Kynkäänniemi et al. and torch-fidelity's default)


def _features(features: Tensor | np.ndarray, name: str) -> Tensor:
    tensor = torch.as_tensor(features)
    if tensor.dim() != 2 or len(tensor) < 2:
        raise ValueError(f"{name} must be a feature array [N, F] with N >= 2, got shape {tuple(tensor.shape)}")
    return tensor


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean [F] and covariance [F, F] (ddof=1, float64) of features [N, F], as torchmetrics' FID computes them."""
    x = _features(features, "features").double()
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def gaussian_stats_from_sums(features_sum: Tensor, features_cov_sum: Tensor, n: int | Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance from the sums torchmetrics' FrechetInceptionDistance keeps (Σx, Σxxᵀ, N), e.g. the real
    statistics that ``callbacks.fid.FIDCallback`` caches. Call: ``gaussian_stats_from_sums(metric.real_features_sum,
    metric.real_features_cov_sum, metric.real_features_num_samples)``."""
    n = int(n)
    mean = features_sum.double() / n
    cov = (features_cov_sum.double() - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


class FrechetDistance:
    """The Fréchet distance of feature sets to fixed real statistics (mean μ_r, covariance Σ_r), fast to repeat.

    FID = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r^½ Σ_g Σ_r^½)^½. With Z = X Σ_r^½ (computed once), the
    eigenvalues of Σ_r^½ Σ_g Σ_r^½ = Z_cᵀZ_c/(N−1) are those of Z_c Z_cᵀ/(N−1): one symmetric eigen-decomposition
    of the smaller of N×N and F×F per evaluation. Same value as torchmetrics' ``_compute_fid``.
    """

    def __init__(self, real_mean: Tensor, real_cov: Tensor, features: Tensor | np.ndarray) -> None:
        self.features = _features(features, "features").double().to(real_cov.device)
        if real_mean.shape != (self.features.shape[1],) or real_cov.shape != (len(real_mean), len(real_mean)):
            raise ValueError(f"real statistics of shape {tuple(real_mean.shape)}, {tuple(real_cov.shape)} do not "
                             f"match features [N, {self.features.shape[1]}]")
        self.real_mean = real_mean.double()
        eigenvalues, eigenvectors = torch.linalg.eigh(real_cov.double())
        root = eigenvectors * eigenvalues.clamp(min=0).sqrt() @ eigenvectors.T  # Σ_r^½
        self.real_trace = float(real_cov.double().trace())
        self.whitened = self.features @ root

    def __call__(self, indices: np.ndarray | Tensor | None = None) -> float:
        """The FID of the samples ``indices`` (all samples when None; repeats allowed, as in a bootstrap)."""
        x, z = self.features, self.whitened
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=x.device)
            x, z = x[idx], z[idx]
        n = len(x)
        mean = x.mean(dim=0)
        z_centred = z - z.mean(dim=0)
        gram = z_centred @ z_centred.T if n <= z.shape[1] else z_centred.T @ z_centred
        cross = torch.linalg.eigvalsh(gram / (n - 1)).clamp(min=0).sqrt().sum()
        generated_trace = (x - mean).square().sum() / (n - 1)
        return float((self.real_mean - mean).square().sum() + self.real_trace + generated_trace - 2 * cross)


def fid_bootstrap(features: Tensor | np.ndarray, real_mean: Tensor, real_cov: Tensor, n_boot: int = 200,
                  seed: int = 0, interval: Interval = "normal", groups: np.ndarray | None = None,
                  strata: np.ndarray | None = None) -> Estimate:
    """FID of generated ``features`` [N, F] against real statistics, with a bootstrap over the generated samples.

    The real statistics stay fixed (every row of a comparison uses the same). The standard error is the std of
    ``n_boot`` replicates; the interval is FID ± 1.96·se by default, because resampling with replacement
    duplicates samples, which shifts every replicate upwards (FID's small-sample bias), so percentile intervals
    would sit above the estimate. The bootstrap standard error is accurate when the gap between the
    distributions dominates FID and conservative (too large) near the noise floor, where FID is mostly its own
    bias: measured on Gaussian features (F=16, N=200) against the spread over 40 fresh sample sets, ratio 1.2 at
    FID ≈ 17, 1.4 at FID ≈ 5, 3 at FID ≈ 1 (the bootstrap of a squared distance near 0 counts the noise twice).
    A conservative se only makes the two-SE test of a difference stricter. ``strata`` (the class label of each
    sample of a conditional run) resamples within classes, ``groups`` (particle resampling groups) whole groups:
    see :func:`~lit_mcmc.metrics.uncertainty.bootstrap`.
    Cost: N=1000, F=2048, on 1 CPU core 5 s to set up and 0.4 s per replicate (85 s for 200); on a GPU, pass
    CUDA tensors.
    Call: ``fid_bootstrap(fake_features, *gaussian_stats_from_sums(...)).as_metrics("fid")``.
    """
    distance = FrechetDistance(real_mean, real_cov, features)
    return bootstrap(distance, len(distance.features), n_boot=n_boot, seed=seed, interval=interval, groups=groups,
                     strata=strata)


def kid_projections(features: np.ndarray, real_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KID's first-order (Hoeffding) projections: a(x_i) = E k(x_i, X') − E k(x_i, Y) for each generated sample
    and b(y_j) = E k(y_j, Y') − E k(y_j, X) for each real one, as plug-in means over the given features.

    KID is a two-sample U-statistic; to first order it is const + 2·mean(a) + 2·mean(b), so its variance is
    4·Var(a)/n + 4·Var(b)/M (independent sets: no covariance). Where both sets come from one distribution the
    first-order terms vanish and the plug-in keeps about the second-order variance: it errs on the large side.
    """
    n, m = len(features), len(real_features)
    kwargs = {"kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None, "kid_kernel_poly_coef0": 1}
    k_xx = kernel_poly(features, features, **kwargs)
    k_xy = kernel_poly(features, real_features, **kwargs)
    k_yy = kernel_poly(real_features, real_features, **kwargs)
    a = (k_xx.sum(axis=1) - np.diagonal(k_xx)) / (n - 1) - k_xy.mean(axis=1)
    b = (k_yy.sum(axis=1) - np.diagonal(k_yy)) / (m - 1) - k_xy.mean(axis=0)
    return a, b


def kid(features: Tensor | np.ndarray, real_features: Tensor | np.ndarray, subset_size: int | None = None,
        n_subsets: int | None = None, seed: int = 0, real_noise: bool = False,
        max_real_for_se: int = 2000, groups: np.ndarray | None = None, strata: np.ndarray | None = None) -> Estimate:
    """KID of generated ``features`` [N, F] against ``real_features`` [M, F], with its analytic standard error.

    The value is torch-fidelity's ``kid_features_to_metric`` (cubic polynomial kernel (xᵀy/F + 1)³, unbiased
    MMD², mean over ``n_subsets`` random subsets of ``subset_size`` from each set, seeded by ``seed``). Defaults:
    subset_size = min(1000, N, M); n_subsets = 100, or 1 when both sets are exactly subset_size (every subset
    would be the whole set). The standard error (:func:`kid_projections`: 2 × the standard error of mean(a)) is
    by default that of the generated samples only, given the real features: the one for comparing rows scored
    against the same real features (their real-side noise is shared). ``strata`` (class labels of a conditional
    run) and ``groups`` (particle resampling groups) make it stratified and cluster-robust
    (:func:`~lit_mcmc.metrics.uncertainty.mean_se`). ``real_noise=True`` adds the real samples' share, for an
    absolute interval (is KID above 0?). The real side uses at most ``max_real_for_se`` real samples (seeded).
    The interval is value ± 1.96·se. Cost at N=1000, F=2048, 1 CPU core: 0.35 s per subset (35 s for 100). KID is
    in torch-fidelity's units (papers often print KID × 10³).
    Call: ``kid(fake_features, real_features).as_metrics("kid")``.
    """
    x = _features(features, "features").double().cpu()
    y = _features(real_features, "real_features").double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features have {x.shape[1]} dimensions and real_features {y.shape[1]}: use one extractor")
    size = min(KID_SUBSET_SIZE, len(x), len(y)) if subset_size is None else subset_size
    if not 4 <= size <= min(len(x), len(y)):
        raise ValueError(f"KID subset_size={size} must be between 4 and the smaller set ({min(len(x), len(y))})")
    subsets = (1 if len(x) == len(y) == size else KID_SUBSETS) if n_subsets is None else n_subsets
    value = kid_features_to_metric(x, y, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed,
                                   verbose=False)["kernel_inception_distance_mean"]
    real_for_se = y.numpy()
    if len(real_for_se) > max_real_for_se:
        real_for_se = real_for_se[np.random.default_rng(seed).choice(len(y), max_real_for_se, replace=False)]
    a, b = kid_projections(x.numpy(), real_for_se)
    variance = (2 * mean_se(a, groups, strata)) ** 2 + (4 * b.var(ddof=1) / len(y) if real_noise else 0.0)
    return normal_estimate(float(value), math.sqrt(variance))


def unbiased_mmd2(features: Tensor | np.ndarray, real_features: Tensor | np.ndarray) -> float:
    """torch-fidelity's unbiased MMD² (KID's kernel) of two equally large sets, on all their samples."""
    x = _features(features, "features").double().numpy()
    y = _features(real_features, "real_features").double().numpy()
    kwargs = {"kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None, "kid_kernel_poly_coef0": 1}
    return float(mmd2(kernel_poly(x, x, **kwargs), kernel_poly(x, y, **kwargs), kernel_poly(y, y, **kwargs)))


def precision_recall(features: Tensor | np.ndarray, real_features: Tensor | np.ndarray, n_real: int | None = None,
                     neighborhood: int = PRC_NEIGHBORHOOD, seed: int = 0, groups: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> dict[str, Estimate]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated ``features`` [N, F] vs real ones.

    Precision: the share of generated samples inside the real k-NN manifold (the union of balls reaching each real
    sample's k-th neighbour); recall: the share of real samples inside the generated manifold. Computed by
    torch-fidelity's ``calculate_precision_recall_full`` (``features_1`` generated, ``features_2`` real). The real
    set is a seeded random subset of ``n_real`` samples, by default N (equal sizes: the radii depend on the set
    size). Standard errors, given the real manifold: precision's from its per-sample hits (stratified by
    ``strata``, cluster-robust over ``groups``, as :func:`~lit_mcmc.metrics.uncertainty.proportion`); recall's is
    binomial over the real samples, which leaves out how the generated manifold moves with the generated samples,
    so it is a rough lower bound.
    Call: ``{k: v for name, e in precision_recall(fake, real).items() for k, v in e.as_metrics(name).items()}``.
    """
    x = _features(features, "features").float().cpu()
    y = _features(real_features, "real_features").float().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features have {x.shape[1]} dimensions and real_features {y.shape[1]}: use one extractor")
    n_real = len(x) if n_real is None else n_real
    if not neighborhood < n_real <= len(y) or len(x) <= neighborhood:
        raise ValueError(f"precision/recall needs more than neighborhood={neighborhood} samples per set and n_real="
                         f"{n_real} at most the {len(y)} real samples")
    if n_real < len(y):
        y = y[torch.from_numpy(np.random.default_rng(seed).choice(len(y), n_real, replace=False))]
    precision, recall = calculate_precision_recall_full(x, y, neighborhood=neighborhood)
    # the per-sample precision hits, as torch-fidelity decides them, for the standard error
    real_radii = calc_cdist_full(y, y).kthvalue(neighborhood + 1).values
    hits = (calc_cdist_full(x, y) <= real_radii).any(dim=1).numpy()
    if groups is None and strata is None:
        precision_estimate = proportion(float(precision), n=len(x))
    else:
        precision_estimate = normal_estimate(float(precision), proportion(hits, groups=groups, strata=strata).se)
    return {"precision": precision_estimate, "recall": proportion(float(recall), n=len(y))}


def image_feature_metrics(features: Tensor | np.ndarray, real_features: Tensor | np.ndarray,
                          real_stats: tuple[Tensor, Tensor] | None = None, n_boot: int = 200,
                          seed: int = 0, groups: np.ndarray | None = None,
                          strata: np.ndarray | None = None) -> dict[str, float]:
    """FID (bootstrap se), KID (analytic se), precision and recall (binomial se) of generated ``features`` against
    ``real_features``, each as ``<name>``, ``<name>_se``, ``<name>_low``, ``<name>_high`` for metrics.json.

    ``real_stats`` (mean, covariance) are the real FID statistics when they are known (e.g. the FID callback's
    cache, :func:`gaussian_stats_from_sums`); otherwise they are computed from ``real_features``. ``strata``
    (class labels of a conditional run) and ``groups`` (particle resampling groups) shape every standard error
    but recall's (see :func:`precision_recall`).
    Call (an image metric callback that kept the features of its samples and of the real images):
    ``report.add_metrics(image_feature_metrics(torch.cat(fake_batches), real_features))``.
    """
    real_mean, real_cov = real_stats if real_stats is not None else gaussian_stats(real_features)
    out = fid_bootstrap(features, real_mean, real_cov, n_boot=n_boot, seed=seed, groups=groups,
                        strata=strata).as_metrics("fid")
    out.update(kid(features, real_features, seed=seed, groups=groups, strata=strata).as_metrics("kid"))
    for name, estimate in precision_recall(features, real_features, seed=seed, groups=groups, strata=strata).items():
        out.update(estimate.as_metrics(name))
    return out
