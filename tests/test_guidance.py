"""Classifier, classifier-free and reconstruction guidance: scores against closed forms, exact MH terms, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from lit_mcmc.compose import ClassifierFreeGuidance, ClassifierGuidance, Product, ReconstructionGuidance
from lit_mcmc.samplers import HMC, MALA, CurveIntegral, LineIntegral
from lit_mcmc.targets import DiffusedGaussianMixture, Evaluation, ScoreModelTarget, Target

T_LEVEL = 10
SCALE = 4.0


class ScoreOnly(Target):
    """Hides a target's log-density, as a score model would: MH corrections must integrate its score."""

    has_log_prob = False

    def __init__(self, inner: DiffusedGaussianMixture) -> None:
        self.inner = inner
        self.schedule = inner.schedule

    def evaluate(self, x, t, with_log_prob=False):
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        ev = self.inner.evaluate(x, t)
        return Evaluation(ev.score, ev.integrand, ev.exact, None)


class LinearClassifier(nn.Module):
    """logits = W x + b_t (b_t = b[t], or 0 for a clean classifier called without t); counts its forward calls."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        self.calls += 1
        logits = x @ self.weight.T
        return logits if t is None else logits + self.bias[t]

    def log_prob_and_grad(self, x: Tensor, labels: Tensor, t: int | None = None) -> tuple[Tensor, Tensor]:
        """Closed form: log softmax(Wx + b)_y and its gradient W_y − Σ_c softmax_c W_c."""
        with torch.no_grad():
            logits = x @ self.weight.T + (0 if t is None else self.bias[t])
            log_probs = torch.log_softmax(logits, 1)
            grad = self.weight[labels] - log_probs.exp() @ self.weight
            return log_probs.gather(1, labels[:, None]).squeeze(1), grad


class AffineEps(nn.Module):
    """A tiny ε-network: ε̂(x, t) = x Aᵀ + c + 0.01·t."""

    def __init__(self, a: Tensor, c: Tensor) -> None:
        super().__init__()
        self.a, self.c = a, c

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x @ self.a.T + self.c + 0.01 * t[:, None].to(x)


@pytest.fixture(scope="module")
def gaussian(cosine100):
    """A diffused Gaussian: its score is linear in x, so the trapezoid rule integrates it exactly."""
    return DiffusedGaussianMixture(torch.tensor([[0.3, -0.2]]), 0.2, cosine100)


@pytest.fixture()
def classifier(cosine100):
    g = torch.Generator().manual_seed(5)
    weight = 3.0 * torch.randn(3, 2, dtype=torch.float64, generator=g)
    bias = torch.randn(cosine100.T, 3, dtype=torch.float64, generator=g)
    return LinearClassifier(weight, bias)


def points(n: int, seed: int) -> Tensor:
    return 0.5 * torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def labels_for(n: int, seed: int = 0) -> Tensor:
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))


# --- (a) the guided score, exact part and log-density against closed forms ------------------------------------


def test_classifier_guidance_matches_the_closed_form(gaussian, classifier, cosine100):
    x, labels = points(64, 1), labels_for(64)
    guided = ClassifierGuidance(gaussian, classifier, cosine100, SCALE, labels)
    with torch.no_grad():  # as inside a sampler
        ev = guided.evaluate(x, T_LEVEL, with_log_prob=True)
    class_lp, class_grad = classifier.log_prob_and_grad(x, labels, T_LEVEL)
    inner = gaussian.evaluate(x, T_LEVEL, with_log_prob=True)
    assert torch.allclose(ev.score, inner.score + SCALE * class_grad, atol=1e-12)
    assert torch.allclose(ev.integrand, inner.score, atol=1e-12)  # the classifier term is not integrated
    assert torch.allclose(ev.exact, SCALE * class_lp, atol=1e-12)
    assert torch.allclose(ev.log_prob, inner.log_prob + SCALE * class_lp, atol=1e-12)
    assert not (ev.score.requires_grad or ev.exact.requires_grad)
    assert classifier.weight.grad is None  # only the input gradient was taken
    assert guided.has_log_prob and not ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, 1.0).has_log_prob


def test_classifier_is_called_with_the_model_time(gaussian, classifier, cosine100):
    respaced = cosine100.respace(10)  # level 3 calls the networks with the original t = 33
    x, labels = points(8, 2), labels_for(8)
    ev = ClassifierGuidance(gaussian, classifier, respaced, 1.0, labels).evaluate(x, 3)
    class_lp, _ = classifier.log_prob_and_grad(x, labels, int(respaced.model_timesteps[3]))
    assert int(respaced.model_timesteps[3]) == 33
    assert torch.allclose(ev.exact, class_lp, atol=1e-12)


# --- (b) the guided MH estimate is exact: exact classifier term + linear diffusion score ---------------------


@pytest.mark.parametrize("correction", [LineIntegral(0), LineIntegral(1), LineIntegral(6), CurveIntegral(0),
                                        CurveIntegral(2)])
def test_guided_mh_estimate_is_exact(gaussian, classifier, cosine100, correction):
    labels = labels_for(200)
    path = [points(200, seed) for seed in range(10, 14)]
    guided = ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, SCALE, labels)
    estimate, _ = correction.delta(guided, T_LEVEL, path, [guided.evaluate(p, T_LEVEL) for p in path])

    def log_target(x: Tensor) -> Tensor:
        return gaussian.log_prob(x, T_LEVEL) + SCALE * classifier.log_prob_and_grad(x, labels, T_LEVEL)[0]

    assert torch.allclose(estimate, log_target(path[-1]) - log_target(path[0]), atol=1e-6)


def test_reference_mh_scale_is_off_by_the_missing_guidance_weight(gaussian, classifier, cosine100):
    labels, x, x_new = labels_for(200), points(200, 20), points(200, 21)
    ratios = {}
    for mh_scale in (None, 1.0):
        guided = ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, SCALE, labels, mh_scale=mh_scale)
        evals = [guided.evaluate(p, T_LEVEL) for p in (x, x_new)]
        ratios[mh_scale] = LineIntegral(2).delta(guided, T_LEVEL, [x, x_new], evals)[0]
    class_diff = (classifier.log_prob_and_grad(x_new, labels, T_LEVEL)[0]
                  - classifier.log_prob_and_grad(x, labels, T_LEVEL)[0])
    assert class_diff.abs().mean() > 0.5  # the classifier term matters at these points
    assert torch.allclose(ratios[None] - ratios[1.0], (SCALE - 1.0) * class_diff, atol=1e-9)


# --- (c) integrated and exact corrections take the same decisions on the guided target ------------------------


@pytest.mark.parametrize("make_pair", [
    lambda: (MALA(0.01, "energy"), MALA(0.01, "line", 3)),
    lambda: (HMC(0.2, 3, 0.5, correction="energy"), HMC(0.2, 3, 0.5, correction="curve", n_points=1)),
])
@pytest.mark.parametrize("mh_scale", [None, 1.0])
def test_integrated_corrections_take_the_energy_decisions(gaussian, classifier, cosine100, make_pair, mh_scale):
    x0 = gaussian.sample(400, T_LEVEL, torch.Generator().manual_seed(0)).double()
    labels = labels_for(400)
    analytic = ClassifierGuidance(gaussian, classifier, cosine100, SCALE, labels, mh_scale)
    score_only = ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, SCALE, labels, mh_scale)
    exact_kernel, integrated_kernel = make_pair()
    x_exact, info_exact = exact_kernel.run(analytic, x0, T_LEVEL, 10, torch.Generator().manual_seed(7))
    x_int, info_int = integrated_kernel.run(score_only, x0, T_LEVEL, 10, torch.Generator().manual_seed(7))
    assert 0.2 < info_exact.accept_rate < 0.99  # decisions are not trivial
    assert torch.equal(info_exact.accepted_per_sample, info_int.accepted_per_sample)
    assert torch.allclose(x_exact, x_int, atol=1e-10)


# --- (d) interior quadrature nodes never evaluate the classifier ---------------------------------------------


def test_integrand_does_not_call_the_classifier(gaussian, classifier, cosine100):
    x, x_new, labels = points(16, 30), points(16, 31), labels_for(16)
    guided = ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, SCALE, labels)
    evals = [guided.evaluate(p, T_LEVEL) for p in (x, x_new)]
    assert classifier.calls == 2  # one forward per evaluation
    assert torch.allclose(guided.integrand(x, T_LEVEL), gaussian.score(x, T_LEVEL))
    _, extra_nfe = LineIntegral(5).delta(guided, T_LEVEL, [x, x_new], evals)
    assert extra_nfe == 5 and classifier.calls == 2


# --- (e) classifier-free guidance ----------------------------------------------------------------------------


def test_classifier_free_guidance_is_the_epsilon_combination(cosine100):
    g = torch.Generator().manual_seed(3)
    net_c = AffineEps(torch.randn(2, 2, generator=g, dtype=torch.float64), torch.tensor([0.5, -1.0]).double())
    net_u = AffineEps(torch.randn(2, 2, generator=g, dtype=torch.float64), torch.tensor([-0.2, 0.3]).double())
    w, x = 3.0, points(32, 40)
    cfg = ClassifierFreeGuidance(ScoreModelTarget(net_c, cosine100), ScoreModelTarget(net_u, cosine100), w)
    t_model = cosine100.model_t(T_LEVEL, 32)
    eps_c, eps_u = net_c(x, t_model), net_u(x, t_model)
    expected = -(eps_u + w * (eps_c - eps_u)) / float(cosine100.marginal_std[T_LEVEL])
    ev = cfg.evaluate(x, T_LEVEL)
    assert isinstance(cfg, Product) and not cfg.has_log_prob
    assert torch.allclose(ev.score, expected, atol=1e-12)
    assert torch.allclose(ev.integrand, expected, atol=1e-12)
    assert torch.allclose(cfg.integrand(x, T_LEVEL), expected, atol=1e-12)
    assert torch.equal(ev.exact, torch.zeros(32, dtype=torch.float64))


def test_classifier_free_guidance_log_prob_is_the_weighted_sum(gaussian, cosine100):
    other = DiffusedGaussianMixture(torch.tensor([[-0.4, 0.1]]), 0.3, cosine100)
    w, x = 2.5, points(32, 41)
    ev = ClassifierFreeGuidance(gaussian, other, w).evaluate(x, T_LEVEL, with_log_prob=True)
    expected = (1 - w) * other.log_prob(x, T_LEVEL) + w * gaussian.log_prob(x, T_LEVEL)
    assert torch.allclose(ev.log_prob, expected, atol=1e-12)


# --- (f) labels and scales: clear errors ---------------------------------------------------------------------


def test_labels_are_set_per_batch_and_checked(gaussian, classifier, cosine100):
    guided = ClassifierGuidance(gaussian, classifier, cosine100, SCALE)
    x = points(5, 50)
    with pytest.raises(ValueError, match="has no labels"):
        guided.evaluate(x, T_LEVEL)
    batch = guided.with_labels(labels_for(5))
    assert guided.labels is None and batch.classifier is guided.classifier  # a shallow copy
    assert torch.allclose(batch.evaluate(x, T_LEVEL).exact,
                          SCALE * classifier.log_prob_and_grad(x, labels_for(5), T_LEVEL)[0])
    with pytest.raises(ValueError, match="labels has 3 entries but x has a batch of 5"):
        guided.with_labels(labels_for(3)).evaluate(x, T_LEVEL)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        guided.with_labels(torch.full((5,), 3)).evaluate(x, T_LEVEL)
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape"):
        guided.with_labels(torch.zeros(5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape"):
        guided.with_labels(torch.zeros(5))


@pytest.mark.parametrize("kwargs,name", [({"scale": -1.0}, "scale"), ({"scale": 1.0, "mh_scale": -0.5}, "mh_scale"),
                                         ({"scale": math.nan}, "scale")])
def test_bad_guidance_scales_are_refused(gaussian, classifier, cosine100, kwargs, name):
    with pytest.raises(ValueError, match=f"{name}="):
        ClassifierGuidance(gaussian, classifier, cosine100, **kwargs)


def test_guidance_errors_name_what_is_missing(gaussian, classifier, cosine100):
    with pytest.raises(ValueError, match="has_log_prob=False"):
        ClassifierGuidance(ScoreOnly(gaussian), classifier, cosine100, 1.0, labels_for(4)).log_prob(points(4, 0), 3)
    with pytest.raises(TypeError, match="has no .schedule"):
        ReconstructionGuidance(Product([gaussian]), classifier, 1.0)
    with pytest.raises(ValueError, match="scale=nan"):
        ClassifierFreeGuidance(gaussian, gaussian, math.nan)


# --- (g) reconstruction guidance ------------------------------------------------------------------------------


def test_reconstruction_guidance_matches_its_formula(cosine100):
    g = torch.Generator().manual_seed(8)
    net = AffineEps(torch.randn(2, 2, generator=g, dtype=torch.float64), torch.tensor([0.1, -0.3]).double())
    clean = LinearClassifier(2.0 * torch.randn(3, 2, generator=g, dtype=torch.float64),
                             torch.zeros(1, 3, dtype=torch.float64))
    x, labels = points(32, 60), labels_for(32)
    guided = ReconstructionGuidance(ScoreModelTarget(net, cosine100), clean, SCALE, labels)
    with torch.no_grad():
        ev = guided.evaluate(x, T_LEVEL)
    sigma = float(cosine100.marginal_std[T_LEVEL])
    sqrt_abar = math.sqrt(float(cosine100.alphas_cumprod[T_LEVEL]))
    eps = net(x, cosine100.model_t(T_LEVEL, 32))
    x0_hat = (x - sigma * eps) / sqrt_abar
    class_lp, class_grad = clean.log_prob_and_grad(x0_hat, labels)
    assert torch.allclose(ev.score, -eps / sigma + SCALE / sqrt_abar * class_grad, atol=1e-10)
    assert torch.allclose(ev.integrand, -eps / sigma, atol=1e-12)
    assert torch.allclose(ev.exact, SCALE * class_lp, atol=1e-10)
    assert not guided.has_log_prob and not ev.score.requires_grad


def test_reconstruction_guidance_mh_estimate_is_exact(gaussian, cosine100):
    clean = LinearClassifier(2.0 * torch.randn(3, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
                             torch.zeros(1, 3, dtype=torch.float64))
    labels, x, x_new = labels_for(100), points(100, 70), points(100, 71)
    analytic = ReconstructionGuidance(gaussian, clean, SCALE, labels)
    score_only = ReconstructionGuidance(ScoreOnly(gaussian), clean, SCALE, labels)
    exact = analytic.log_prob(x_new, T_LEVEL) - analytic.log_prob(x, T_LEVEL)
    estimate, _ = LineIntegral(1).delta(score_only, T_LEVEL, [x, x_new],
                                        [score_only.evaluate(p, T_LEVEL) for p in (x, x_new)])
    assert analytic.has_log_prob
    assert torch.allclose(estimate, exact, atol=1e-6)
