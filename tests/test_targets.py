"""Targets: analytic scores/log-densities, model adapters, compositions."""

import math

import pytest
import torch
from torch import nn

from lit_mcmc.compose import Mixture, Negation, Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.nets.energy import EnergyNet
from lit_mcmc.targets import (
    DiffusedGaussianMixture,
    DiffusedUniformBox,
    EnergyModelTarget,
    ScoreModelTarget,
    sample_box_product,
)


def autograd_score(target, x, t):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(target.log_prob(x, t).sum(), x)
    return g


@pytest.mark.parametrize("t", [0, 1, 30, 99])
def test_analytic_scores_are_gradients_of_log_prob(product, gmm8, bar, t):
    x = 0.8 * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    for target in (gmm8, bar, product):
        assert torch.allclose(target.score(x, t), autograd_score(target, x, t), atol=1e-8)


def test_box_density_is_normalised(bar):
    grid = torch.linspace(-2.5, 2.5, 1001, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = float(grid[1] - grid[0]) ** 2
    for t in (0, 20):
        assert float(bar.log_prob(pts, t).exp().sum()) * cell == pytest.approx(1.0, abs=2e-3)


def test_box_log_density_is_finite_far_outside(bar):
    x = torch.tensor([[5.0, 40.0], [-3.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(bar.log_prob(x, 0)).all() and torch.isfinite(bar.score(x, 0)).all()


def test_gmm_log_prob_matches_torch_distributions(cosine100):
    means = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    gmm = DiffusedGaussianMixture(means, torch.tensor([0.5, 0.2]), cosine100, weights=torch.tensor([1.0, 3.0]))
    t = 10
    a, s = math.sqrt(float(cosine100.alphas_cumprod[t])), float(cosine100.marginal_std[t])
    stds = torch.sqrt(a**2 * torch.tensor([0.25, 0.04], dtype=torch.float64) + s**2)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.25, 0.75], dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(a * means, stds[:, None].expand(2, 2)), 1))
    x = torch.randn(20, 2, dtype=torch.float64)
    assert torch.allclose(gmm.log_prob(x, t), mix.log_prob(x))


def test_exact_samples_match_moments(gmm8, bar, cosine100):
    g = torch.Generator().manual_seed(0)
    t = 50
    x = gmm8.sample(20000, t, g)
    a, s = math.sqrt(float(cosine100.alphas_cumprod[t])), float(cosine100.marginal_std[t])
    # each coordinate: mean 0, variance a²(0.25/2 + 0.03²) + σ² (modes on a circle of radius 0.5)
    expected_var = a**2 * (0.125 + 0.03**2) + s**2
    assert x.var(0).tolist() == pytest.approx([expected_var] * 2, rel=0.05)
    prod = sample_box_product(gmm8, bar, 4000, 0, g)
    assert prod.shape == (4000, 2)
    assert (prod[:, 0].abs() < 0.2 + 4 * 0.03).all()  # only the two modes on the y-axis survive
    assert (prod[:, 1] > 0).float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_score_model_target_with_exact_epsilon():
    """For Gaussian data N(μ, s²I), ε* = (x_t − √ᾱ μ)σ_t/(ᾱ s² + σ_t²) and −ε*/σ_t is the exact score."""
    sched = NoiseSchedule.linear(50)
    mu, s2 = 0.7, 0.3

    class ExactEps(nn.Module):
        def forward(self, x, t):
            abar = sched.alphas_cumprod[t].to(x)[:, None]
            sigma = (1 - abar).sqrt()
            return (x - abar.sqrt() * mu) * sigma / (abar * s2 + sigma**2)

    target = ScoreModelTarget(ExactEps(), sched)
    oracle = DiffusedGaussianMixture(torch.tensor([[mu, mu]]), math.sqrt(s2), sched)
    x = torch.randn(10, 2, dtype=torch.float64)
    for t in (0, 25, 49):
        assert torch.allclose(target.score(x, t), oracle.score(x, t), atol=1e-10)
    assert not target.has_log_prob
    with pytest.raises(ValueError, match="score-parameterised"):
        target.log_prob(x, 0)


class Linear2D(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.tw = nn.Embedding(10, 2)

    def forward(self, x, t):
        return torch.tanh(self.lin(x)) + self.tw(t)


def test_energy_target_score_is_minus_gradient_of_log_prob_under_no_grad():
    sched = NoiseSchedule.cosine(10)
    target = EnergyModelTarget(EnergyNet(Linear2D().double()), sched)
    x = torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        ev = target.evaluate(x, 3, with_log_prob=True)
    assert ev.log_prob.shape == (7,) and not ev.score.requires_grad  # sampling keeps no graph
    # log p̃ = −‖f − x‖²/σ_t, and the score is its gradient
    xg = x.clone().requires_grad_(True)
    f = target.net.net(xg, torch.full((7,), 3))
    log_prob = -(f - xg).pow(2).sum(1) / float(sched.marginal_std[3])
    (grad,) = torch.autograd.grad(log_prob.sum(), xg)
    assert torch.allclose(ev.log_prob, log_prob.detach())
    assert torch.allclose(ev.score, grad, atol=1e-10)


def test_energy_net_forms_and_training_graph():
    torch.manual_seed(0)
    net = EnergyNet(Linear2D().double(), form="half_norm")
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    f = net.net(x, t)
    assert torch.allclose(net.energy(x, t), 0.5 * f.pow(2).sum(1))
    net.train()
    eps = net(x, t)
    eps.pow(2).sum().backward()  # the double backward reaches the parameters
    assert net.net.lin.weight.grad is not None and net.net.lin.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="energy form"):
        EnergyNet(Linear2D(), form="dot")
    with pytest.raises(TypeError, match="EnergyNet"):
        EnergyModelTarget(Linear2D(), NoiseSchedule.cosine(10))


def test_energy_autograd_quadratic():
    """E = ½xᵀAx gives ε̂ = Ax (docs/algorithms.md §12.3)."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    class Sqrt(nn.Module):  # f with ½‖f‖² = ½xᵀAx: f = Lᵀx, A = L Lᵀ
        def __init__(self):
            super().__init__()
            self.L = torch.linalg.cholesky(A)

        def forward(self, x, t):
            return x @ self.L

    net = EnergyNet(Sqrt(), form="half_norm")
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(net(x, torch.zeros(5, dtype=torch.long)), x @ A)


def test_product_and_negation_are_weighted_sums(gmm8, bar):
    x = torch.randn(6, 2, dtype=torch.float64)
    neg = Negation(gmm8, bar, alpha=0.3)
    assert neg.weights == [1.3, -0.3]
    ev = neg.evaluate(x, 5, with_log_prob=True)
    assert torch.allclose(ev.score, 1.3 * gmm8.score(x, 5) - 0.3 * bar.score(x, 5))
    assert torch.allclose(ev.log_prob, 1.3 * gmm8.log_prob(x, 5) - 0.3 * bar.log_prob(x, 5))
    assert torch.allclose(neg.integrand(x, 5), ev.score)
    with pytest.raises(ValueError, match="2 parts but 1 weights"):
        Product([gmm8, bar], [1.0])


def test_mixture_log_prob_and_score(gmm8, bar):
    mix = Mixture([gmm8, bar], [0.25, 0.75])
    x = torch.randn(6, 2, dtype=torch.float64)
    expected = torch.logsumexp(torch.stack([gmm8.log_prob(x, 3) + math.log(0.25),
                                            bar.log_prob(x, 3) + math.log(0.75)]), 0)
    assert torch.allclose(mix.log_prob(x, 3), expected)
    assert torch.allclose(mix.score(x, 3), autograd_score(mix, x, 3), atol=1e-8)


def test_mixture_refuses_score_models(gmm8):
    score_only = ScoreModelTarget(Linear2D(), NoiseSchedule.cosine(10))
    with pytest.raises(ValueError, match="Mixture part 1 .*has_log_prob=False"):
        Mixture([gmm8, score_only])
    assert not Product([gmm8, score_only]).has_log_prob


def test_bad_analytic_inputs(cosine100):
    with pytest.raises(ValueError, match="means must have shape"):
        DiffusedGaussianMixture(torch.zeros(3), 0.1, cosine100)
    with pytest.raises(ValueError, match="high > low"):
        DiffusedUniformBox([0.0], [-1.0], cosine100)
    gmm = DiffusedGaussianMixture(torch.zeros(2, 2), 0.1, cosine100)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        gmm.score(torch.zeros(3, 5), 0)
