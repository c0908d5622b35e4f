"""Quadrature rules of the line/curve MH corrections: convergence orders, exactness, error estimates, NFE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_mcmc.samplers import HMC, MALA, CurveIntegral, LineIntegral, SamplerConfig
from lit_mcmc.samplers.corrections import dot, make_correction
from lit_mcmc.targets import DiffusedGaussianMixture, Evaluation, Target, sample_box_product

LEVEL = 20


class ScoreOnly(Target):
    """A target without its log-density (as a score model), counting evaluations."""

    has_log_prob = False

    def __init__(self, inner: Target) -> None:
        self.inner, self.calls = inner, 0

    def evaluate(self, x, t, with_log_prob=False):
        self.calls += 1
        ev = self.inner.evaluate(x, t)
        return Evaluation(ev.score, ev.integrand, ev.exact, None)


@pytest.fixture(scope="module")
def gaussian(cosine100):
    return DiffusedGaussianMixture(torch.tensor([[0.3, -0.2]]), 0.2, cosine100)


@pytest.fixture(scope="module")
def line_problem(gmm8):
    """200 straight moves on the diffused 8-mode GMM, where the integrand is far from polynomial."""
    g = torch.Generator().manual_seed(3)
    x = 0.6 * torch.randn(200, 2, dtype=torch.float64, generator=g)
    x_new = x + 0.3 * torch.randn(200, 2, dtype=torch.float64, generator=g)
    exact = gmm8.log_prob(x_new, LEVEL) - gmm8.log_prob(x, LEVEL)
    return x, x_new, [gmm8.evaluate(x, LEVEL), gmm8.evaluate(x_new, LEVEL)], exact


def mean_error(gmm8, line_problem, quadrature: str, n_points: int) -> float:
    x, x_new, evals, exact = line_problem
    delta, _ = LineIntegral(n_points, quadrature).delta(gmm8, LEVEL, [x, x_new], evals)
    return (delta - exact).abs().mean().item()


@pytest.mark.parametrize("quadrature,n_points,order", [
    ("trapezoid", (3, 7, 15, 31), 2), ("simpson", (3, 7, 15, 31), 4),
])
def test_convergence_order_on_the_diffused_gmm(gmm8, line_problem, quadrature, n_points, order):
    """Halving the node spacing h divides the error by ≈ 2^order: h² for the trapezoid, h⁴ for Simpson."""
    errors = [mean_error(gmm8, line_problem, quadrature, n) for n in n_points]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[0] > 1e-5, errors  # far from machine precision: the orders are measurable
    assert np.all(np.abs(orders - order) < 0.25), (errors, orders)


def test_gauss_legendre_converges_faster_than_simpson(gmm8, line_problem):
    """Its error falls super-algebraically, and from 5 nodes on it beats Simpson at equal evaluations (n interior
    nodes; Simpson also uses the two free ends, which is why it wins at n = 3)."""
    gauss = [mean_error(gmm8, line_problem, "gauss_legendre", n) for n in (3, 5, 7)]
    simpson = [mean_error(gmm8, line_problem, "simpson", n) for n in (3, 5, 7)]
    assert all(g < s for g, s in zip(gauss[1:], simpson[1:], strict=True)), (gauss, simpson)
    assert gauss[0] / gauss[2] > 300, gauss


RULES = [("trapezoid", 0), ("trapezoid", 3), ("simpson", 1), ("simpson", 3), ("gauss_legendre", 1),
         ("gauss_legendre", 4)]


@pytest.mark.parametrize("correction,quadrature,n_points",
                         [("line", *rule) for rule in RULES]
                         + [("curve", *rule) for rule in RULES if rule[0] != "gauss_legendre"])  # see the errors
def test_every_rule_is_exact_on_a_gaussian(gaussian, correction, quadrature, n_points):
    """A Gaussian's score is linear, so h(s) = g(r(s))·r′ is linear along each segment: every rule is exact."""
    g = torch.Generator().manual_seed(1)
    path = [torch.randn(50, 2, dtype=torch.float64, generator=g) for _ in range(4)]
    evals = [gaussian.evaluate(p, 10, with_log_prob=True) for p in path]
    if correction == "line":
        path, evals = [path[0], path[-1]], [evals[0], evals[-1]]
    estimate = make_correction(correction, n_points, quadrature).estimate(gaussian, 10, path, evals)
    assert torch.allclose(estimate.delta, evals[-1].log_prob - evals[0].log_prob, atol=1e-10)
    if quadrature != "trapezoid":  # the lower-order rule (a trapezoid) is exact on linear h too
        assert estimate.error.max() < 1e-10


def reference_trapezoid(target, t, start, end, h_start, h_end, n_points):
    """The trapezoid exactly as first implemented (operation for operation)."""
    step = end - start
    total = 0.5 * (dot(h_start, step) + dot(h_end, step))
    for j in range(1, n_points + 1):
        total = total + dot(target.integrand(start + (j / (n_points + 1)) * step, t), step)
    return total / (n_points + 1)


@pytest.mark.parametrize("n_points", [0, 1, 4])
def test_default_trapezoid_is_bit_identical_to_the_original(gmm8, line_problem, n_points):
    x, x_new, evals, _ = line_problem
    mid = 0.5 * (x + x_new)
    line, _ = LineIntegral(n_points).delta(gmm8, LEVEL, [x, x_new], evals)
    assert torch.equal(line, reference_trapezoid(gmm8, LEVEL, x, x_new, evals[0].integrand, evals[1].integrand,
                                                 n_points))
    path, path_evals = [x, mid, x_new], [evals[0], gmm8.evaluate(mid, LEVEL), evals[1]]
    curve, _ = CurveIntegral(n_points).delta(gmm8, LEVEL, path, path_evals)
    expected = 0
    for i in range(2):
        expected = expected + reference_trapezoid(gmm8, LEVEL, path[i], path[i + 1], path_evals[i].integrand,
                                                  path_evals[i + 1].integrand, n_points)
    assert torch.equal(curve, expected)


@pytest.mark.parametrize("quadrature,n_points", [("simpson", 3), ("simpson", 7), ("gauss_legendre", 2)])
def test_error_estimate_bounds_the_error(gmm8, line_problem, quadrature, n_points):
    """|Q − Q_low| is of the order of the lower-order rule's error, so it exceeds the higher-order rule's own."""
    x, x_new, evals, exact = line_problem
    estimate = LineIntegral(n_points, quadrature).estimate(gmm8, LEVEL, [x, x_new], evals)
    error = (estimate.delta - exact).abs()
    assert estimate.error.mean() > error.mean()
    assert (estimate.error >= error).float().mean() > 0.9


def test_simpson_estimate_is_the_trapezoid_difference(gmm8, line_problem):
    x, x_new, evals, _ = line_problem
    simpson = LineIntegral(3, "simpson").estimate(gmm8, LEVEL, [x, x_new], evals)
    trapezoid, _ = LineIntegral(3).delta(gmm8, LEVEL, [x, x_new], evals)
    assert torch.allclose(simpson.error, (simpson.delta - trapezoid).abs(), atol=1e-12)


@pytest.mark.parametrize("kernel,per_step", [
    (MALA(0.001, "line", 1, "simpson"), 1 + 1),
    (MALA(0.001, "line", 3, "gauss_legendre"), 1 + 3),
    (HMC(0.03, 3, 0.5, correction="line", n_points=3, quadrature="simpson"), 3 + 3),
    (HMC(0.03, 3, 0.5, correction="line", n_points=2, quadrature="gauss_legendre"), 3 + 2),
    (HMC(0.03, 3, 0.5, correction="curve", n_points=1, quadrature="simpson"), 3 + 3 * 1),
    (HMC(0.03, 3, 0.5, correction="curve", n_points=3, quadrature="simpson"), 3 + 3 * 3),
], ids=["MALA-1-line-simpson", "MALA-3-line-GL", "HMC-3-line-simpson", "HMC-2-line-GL", "HMC-1-curve-simpson",
        "HMC-3-curve-simpson"])
def test_nfe_accounting_per_rule(product, kernel, per_step):
    """Each rule costs its interior nodes (per segment for 'curve'); the ends are the kernel's own evaluations."""
    target = ScoreOnly(product)
    x = sample_box_product(product.parts[0], product.parts[1], 64, 0, torch.Generator().manual_seed(0))
    _, info = kernel.run(target, x, 0, 7, torch.Generator().manual_seed(1))
    assert target.calls == 1 + 7 * per_step
    assert info.nfe == target.calls


def test_chain_info_reports_the_error_estimate_per_level(product, cosine100):
    config = SamplerConfig(kernel="hmc", step_size=0.03, damping=0.5, correction="curve", n_points=1,
                           quadrature="simpson", n_steps=2, reverse=False)
    sampler = config.build(cosine100)
    _, info = sampler.sample(ScoreOnly(product), (16, 2), torch.Generator().manual_seed(0))
    assert sorted(info.levels["quadrature_error"]) == list(range(100))
    assert all(v >= 0 for v in info.levels["quadrature_error"].values())
    assert info.as_dict()["quadrature_error_mean"] > 0
    assert config.name == "HMC-1-curve (Simpson)"


@pytest.mark.parametrize("kwargs,message", [
    ({"correction": "line", "n_points": 2, "quadrature": "simpson"}, r"sampler.n_points odd .* got sampler.n_points=2"),
    ({"correction": "line", "n_points": 0, "quadrature": "gauss_legendre"}, "sampler.n_points must be >= 1"),
    ({"correction": "curve", "n_points": 2, "quadrature": "gauss_legendre"},
     "Gauss–Legendre nodes exclude the ends"),
    ({"correction": "line", "quadrature": "romberg"}, r"sampler.quadrature='romberg' is not one of"),
    ({"correction": "energy", "quadrature": "simpson"}, "sampler.quadrature='simpson' applies to correction"),
])
def test_unsupported_rules_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(kernel="hmc", step_size=0.03, **kwargs)


def test_kernel_level_errors():
    with pytest.raises(ValueError, match="quadrature='gauss_legendre' is not supported"):
        HMC(0.03, correction="curve", n_points=2, quadrature="gauss_legendre")
    with pytest.raises(ValueError, match="n_points odd"):
        MALA(0.01, "line", 0, "simpson")
