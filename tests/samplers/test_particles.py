"""Particle resampling (SMC): resampling, weights and the normalising-constant estimate against exact answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_mcmc.compose import ClassifierFreeGuidance, ClassifierGuidance, Mixture, Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.samplers.particles import ResampleConfig, effective_sample_size, systematic_resample
from lit_mcmc.targets import DiffusedGaussianMixture, ScoreModelTarget

# ----- resampling -------------------------------------------------------------------------------------------------


def _u_grid(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a fine grid stands in for U(0, 1)


def test_systematic_resampling_gives_each_particle_its_expected_copies():
    """E[copies of j] = G w_j (unbiasedness), and each draw gives ⌊G w_j⌋ or ⌈G w_j⌉ copies."""
    log_w = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    weights = torch.softmax(log_w, dim=1)
    u = _u_grid(4000)
    counts = torch.zeros(3, 8, dtype=torch.float64)
    for value in u:
        ancestors = systematic_resample(log_w, value.expand(3))
        draw = torch.zeros(3, 8, dtype=torch.float64).scatter_add_(1, ancestors, torch.ones(3, 8, dtype=torch.float64))
        assert bool(((draw == torch.floor(8 * weights)) | (draw == torch.ceil(8 * weights))).all())
        counts += draw
    torch.testing.assert_close(counts / len(u), 8 * weights, atol=2e-3, rtol=0)


def test_resampling_leaves_weighted_expectations_unchanged():
    gen = torch.Generator().manual_seed(1)
    log_w, values = torch.randn(2, 16, generator=gen, dtype=torch.float64), torch.randn(2, 16, generator=gen)
    weighted = (torch.softmax(log_w, dim=1) * values).sum(1)
    resampled = torch.stack([values.gather(1, systematic_resample(log_w, value.expand(2))).mean(1)
                             for value in _u_grid(4000)]).mean(0)
    torch.testing.assert_close(resampled.double(), weighted.double(), atol=1e-3, rtol=0)


def test_effective_sample_size():
    assert effective_sample_size(torch.zeros(1, 8)).item() == pytest.approx(8)
    assert effective_sample_size(torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]])).item() == pytest.approx(1)
    assert effective_sample_size(torch.full((1, 4), -math.inf)).item() == pytest.approx(4)  # dead group: uniform


# ----- the normalising constant of a product of diffused Gaussian mixtures ----------------------------------------

MEANS_A = torch.tensor([[0.6, 0.0], [-0.6, 0.2]])
MEANS_B = torch.tensor([[0.5, 0.1], [0.0, -0.7]])


def _product(schedule: NoiseSchedule) -> tuple[Product, float]:
    """GMM_a · GMM_b (both normalised) and log Z_0 = log ∫ q_a,0 q_b,0: Σ_jk π_j π_k N(a_j; b_k, (v_j + v_k) I)."""
    a = DiffusedGaussianMixture(MEANS_A, 0.15, schedule)
    b = DiffusedGaussianMixture(MEANS_B, 0.2, schedule)
    scale, sigma = a.level_coefficients(0)
    total = 0.0
    for mean_a in MEANS_A.double():
        for mean_b in MEANS_B.double():
            var = scale**2 * (0.15**2 + 0.2**2) + 2 * sigma**2
            sq = float(((scale * (mean_a - mean_b)) ** 2).sum())
            total += 0.25 * math.exp(-0.5 * sq / var) / (2 * math.pi * var)
    return Product([a, b]), math.log(total)


@pytest.mark.parametrize("sampler", [
    dict(kernel="hmc", correction="energy", step_size=0.05, n_steps=2, reverse=False),  # carried x, MCMC moves
    dict(kernel="reverse"),  # reverse steps alone: forward/backward kernel ratios
    dict(kernel="mala", correction="energy", step_size=0.01, n_steps=1, reverse=True),  # both
])
def test_exact_weights_estimate_the_normalising_constant_without_bias(sampler):
    """E[Ẑ] = Z_0: the mean of e^{log Ẑ} over 200 groups agrees with the closed form within 4 standard errors.

    (Small steps: a cosine schedule's last β = 0.999 makes the composed reverse step a poor proposal whose weights
    are so heavy-tailed that no finite run shows their mean.)"""
    schedule = NoiseSchedule.linear(100, 1e-3, 0.05)
    target, log_z = _product(schedule)
    config = SamplerConfig(**sampler, resample=ResampleConfig("exact", group_size=64, ess_threshold=0.5))
    n = 64 * 200
    _, info = config.build(schedule).sample(target, (n, 2), PerSampleRandom(0, torch.arange(n)))
    z_hat = info.particles.log_z.exp()
    mean, se = float(z_hat.mean()), float(z_hat.std() / math.sqrt(len(z_hat)))
    assert abs(mean - math.exp(log_z)) < 4 * se, (mean, se, math.exp(log_z))
    assert sum(info.levels["resampled_groups"].values()) > 0  # the test did exercise resampling


def test_resampling_costs_no_network_evaluations():
    schedule = NoiseSchedule.cosine(12)
    target, _ = _product(schedule)
    for base in (dict(kernel="hmc", correction="energy", step_size=0.05, n_steps=2, reverse=False),
                 dict(kernel="hmc", correction="curve", step_size=0.05, n_steps=2, reverse=True)):
        plain = SamplerConfig(**base).build(schedule).sample(target, (32, 2), PerSampleRandom(0, torch.arange(32)))[1]
        weights = "exact" if not base["reverse"] else "feynman_kac"
        smc = SamplerConfig(**base, resample=ResampleConfig(weights, group_size=16)).build(schedule)
        assert smc.sample(target, (32, 2), PerSampleRandom(0, torch.arange(32)))[1].nfe == plain.nfe


# ----- Feynman–Kac weights -----------------------------------------------------------------------------------------

def _gaussian(mean: float, std: float, schedule: NoiseSchedule) -> DiffusedGaussianMixture:
    return DiffusedGaussianMixture(torch.tensor([[mean]]), std, schedule)


def _feynman_kac_relative_error(T: int) -> float:
    """For a reverse step from level t, E_M[e^{exact Δa}] = ∫ γ_{t−1}(x') L(x | x') dx' / γ_t(x) (M cancels); the
    largest gap between its log and the Feynman–Kac weight ½β_t(‖S‖² − Σ‖s_i‖²), relative to the weights' spread
    (both compared between points, which removes the constant that Feynman–Kac weights leave out)."""
    schedule = NoiseSchedule.cosine(T)
    target = Product([_gaussian(0.7, 0.3, schedule), _gaussian(-0.4, 0.5, schedule)])
    t = int(0.3 * T)
    beta = float(schedule.betas[t])
    grid = torch.linspace(-4, 4, 40001, dtype=torch.float64)[:, None]
    x = torch.tensor([[-0.5], [0.0], [0.3], [0.8]], dtype=torch.float64)
    log_forward = -0.5 * (x.T - math.sqrt(1 - beta) * grid) ** 2 / beta - 0.5 * math.log(2 * math.pi * beta)
    exact = torch.logsumexp(target.log_prob(grid, t - 1)[:, None] + log_forward, dim=0) - target.log_prob(x, t)
    fk = 0.5 * beta * target.evaluate(x, t).sq_norm_gap()
    d_exact, d_fk = exact - exact[0], fk - fk[0]
    return float((d_exact - d_fk).abs().max() / d_fk.abs().max())


def test_feynman_kac_weight_matches_the_exact_weight_to_first_order():
    """The gap is second order in β_t: ten times smaller steps make it about ten times smaller relative to the
    weights (measured: 6.1 % at T = 100, 0.65 % at T = 1000)."""
    coarse, fine = _feynman_kac_relative_error(100), _feynman_kac_relative_error(1000)
    assert fine < 0.01
    assert coarse / fine > 5


def test_feynman_kac_gaps_of_the_compositions():
    """One density: 0; product of two: 2⟨s₁, s₂⟩; classifier-free guidance: w(w − 1)‖s_c − s_u‖²; classifier
    guidance on one model: λ(λ − 1)‖∇ log p(y | x)‖²."""
    schedule = NoiseSchedule.cosine(20)
    a, b = DiffusedGaussianMixture(MEANS_A, 0.2, schedule), DiffusedGaussianMixture(MEANS_B, 0.3, schedule)
    x, t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), 7
    s_a, s_b = a.score(x, t), b.score(x, t)
    torch.testing.assert_close(a.evaluate(x, t).sq_norm_gap(), torch.zeros(6))
    torch.testing.assert_close(Product([a, b]).evaluate(x, t).sq_norm_gap(), 2 * (s_a * s_b).sum(1),
                               atol=1e-4, rtol=1e-4)
    w = 3.0
    gap = ClassifierFreeGuidance(a, b, w).evaluate(x, t).sq_norm_gap()
    torch.testing.assert_close(gap, w * (w - 1) * (s_a - s_b).pow(2).sum(1), atol=1e-3, rtol=1e-4)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 3)

        def forward(self, x, t):
            return self.layer(x)

    classifier, scale = Linear(), 4.0
    labels = torch.arange(6) % 3
    guided = ClassifierGuidance(a, classifier, schedule, scale, labels)
    weight = classifier.layer.weight.detach()  # ∇ log softmax(Wx + b)_y = W_y − Σ_k p_k W_k
    grad = weight[labels] - torch.softmax(classifier.layer(x), dim=1).detach() @ weight
    torch.testing.assert_close(guided.evaluate(x, t).sq_norm_gap(), scale * (scale - 1) * grad.pow(2).sum(1),
                               atol=1e-3, rtol=1e-4)


# ----- what configs and batches may ask ----------------------------------------------------------------------------

def test_particle_settings_that_cannot_work_are_clear_errors():
    schedule = NoiseSchedule.cosine(10)
    with pytest.raises(ValueError, match="resample.weights='feynman_kac' weighs reverse steps"):
        SamplerConfig(kernel="hmc", correction="curve", step_size=0.1, reverse=False,
                      resample=ResampleConfig("feynman_kac"))
    with pytest.raises(ValueError, match="final_denoise applies to samplers without reverse steps"):
        SamplerConfig(kernel="reverse", final_denoise=True)
    with pytest.raises(ValueError, match="group_size=1 must be an integer >= 2"):
        ResampleConfig("exact", group_size=1)
    with pytest.raises(ValueError, match="ess_threshold=2"):
        ResampleConfig("exact", ess_threshold=2)
    score = ScoreModelTarget(lambda x, t: x, schedule)
    with pytest.raises(ValueError, match="weights='exact' needs log-densities"):
        SamplerConfig(kernel="reverse", resample=ResampleConfig("exact")).build(schedule).check_target(score)
    mixture = Mixture([_gaussian(0.0, 1.0, schedule), _gaussian(1.0, 1.0, schedule)])
    with pytest.raises(ValueError, match="needs a weighted product of diffused densities"):
        SamplerConfig(kernel="reverse", resample=ResampleConfig("feynman_kac")).build(schedule).check_target(mixture)
    sampler = SamplerConfig(kernel="reverse", resample=ResampleConfig("feynman_kac", group_size=8)).build(schedule)
    with pytest.raises(ValueError, match="does not hold whole groups"):
        sampler.sample(Product([_gaussian(0.0, 1.0, schedule)]), (12, 1), PerSampleRandom(0, torch.arange(12)))


def test_particles_do_not_depend_on_how_groups_are_batched():
    """Groups are independent SMC runs keyed by their indices: one batch of 4 groups or two of 2 give the same."""
    schedule = NoiseSchedule.cosine(12)
    target, _ = _product(schedule)
    config = SamplerConfig(kernel="hmc", correction="energy", step_size=0.05, n_steps=2, reverse=False,
                           resample=ResampleConfig("exact", group_size=8, final="weighted"))
    sampler = config.build(schedule)
    whole, info = sampler.sample(target, (32, 2), PerSampleRandom(5, torch.arange(32)))
    halves = [sampler.sample(target, (16, 2), PerSampleRandom(5, torch.arange(16) + start)) for start in (0, 16)]
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), whole, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([h[1].particles.log_z for h in halves]), info.particles.log_z,
                               atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([h[1].particles.log_weight for h in halves]), info.particles.log_weight,
                               atol=0, rtol=0)
    assert torch.allclose(info.particles.log_weight.view(4, 8).exp().mean(1), torch.ones(4, dtype=torch.float64))


# ----- the 2D product with exact scores --------------------------------------------------------------------------

def test_particles_empty_the_metastable_modes_of_the_2d_product():
    """Oracle HMC at the papers' settings leaves ~7 % of samples outside the bar; with exact weights and resampling
    (same NFE) fewer than 0.5 % remain, and the two modes keep equal mass (within 3 standard errors over groups)."""
    from lit_mcmc.data.toy2d import inside_bar
    from lit_mcmc.modules.components import ComponentConfig, load_component

    schedule = NoiseSchedule.cosine(100)
    target = Product([load_component(name, ComponentConfig(analytic=f"toy2d_{name}"), ".").make_target(schedule)
                      for name in ("gmm", "bar")])
    papers = dict(kernel="hmc", n_steps=10, step_size=0.03, n_leapfrog=3, damping=0.5, carry_momentum=True,
                  correction="energy", flip_on_reject=False, reverse=False)
    n, group = 1024, 64
    plain, plain_info = SamplerConfig(**papers).build(schedule).sample(target, (n, 2),
                                                                       PerSampleRandom(0, torch.arange(n)))
    smc, smc_info = SamplerConfig(**papers, resample=ResampleConfig("exact", group)).build(schedule).sample(
        target, (n, 2), PerSampleRandom(0, torch.arange(n)))
    assert smc_info.nfe == plain_info.nfe
    assert 1 - inside_bar(plain).float().mean() > 0.03  # the problem is there without particles
    assert 1 - inside_bar(smc).float().mean() < 0.005
    upper = (smc[:, 1] > 0).double().view(n // group, group).mean(1)  # groups are the independent units
    assert abs(float(upper.mean()) - 0.5) < 3 * float(upper.std() / math.sqrt(len(upper)))


def test_the_sweep_measures_mode_shares_on_the_true_product():
    """The particle sweep's grid integral gives the exact product's 50/50 mode split (the energy check's yardstick)."""
    from lit_mcmc.experiments.particle_sweep import oracle_product, upper_share

    assert upper_share(oracle_product(NoiseSchedule.cosine(100))) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.slow
def test_particle_sweep_table():
    from lit_mcmc.experiments.particle_sweep import SETTINGS, run

    table = run(n_samples=512, seeds=1)
    assert len([line for line in table.splitlines() if line.startswith("| HMC")]) == len(SETTINGS)
