"""Exact scores of a Gaussian mixture diffused along each path, and the ε / v / velocity / x̂_0 conversions fed the
exact prediction."""

from __future__ import annotations

import pytest
import torch

from lit_mcmc.diffusion.predictions import PREDICTION_KINDS, to_epsilon, to_sample, to_score
from tests.diffusion.paths import MEANS, PATHS, STD, WEIGHTS, two_modes

LEVELS = (0, 7, 15, 29)


def reference_log_prob(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """log p_t(x) of the mixture diffused to (α, σ), written independently with torch.distributions."""
    dist = torch.distributions
    var = alpha**2 * STD**2 + sigma**2
    comp = dist.Independent(dist.Normal(alpha * MEANS, var**0.5), 1)
    return dist.MixtureSameFamily(dist.Categorical(WEIGHTS), comp).log_prob(x)


def exact_posterior_mean(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """E[x_0 | x_t = x]: responsibilities times each component's Gaussian posterior mean."""
    var = alpha**2 * STD**2 + sigma**2
    diff = x[:, None] - alpha * MEANS[None]
    resp = torch.softmax(WEIGHTS.log() - 0.5 * diff.pow(2).sum(-1) / var, dim=1)
    return (resp[..., None] * (MEANS[None] + (alpha * STD**2 / var) * diff)).sum(1)


@pytest.mark.parametrize("path", list(PATHS))
def test_diffused_mixture_scores_are_exact_on_every_path(path):
    """The analytic target's log-density is the diffused mixture's, and its score is that density's gradient and
    Tweedie's (α x̂_0 − x)/σ² with the exact posterior mean."""
    s = PATHS[path](30)
    target = two_modes(s)
    for t in LEVELS:
        alpha, sigma = s.level_coefficients(t)
        x = target.sample(256, t, torch.Generator().manual_seed(t)).double().requires_grad_(True)
        reference = reference_log_prob(x, alpha, sigma)
        (grad,) = torch.autograd.grad(reference.sum(), x)
        x = x.detach()
        score, log_prob = target.score_and_log_prob(x, t, True)
        torch.testing.assert_close(log_prob, reference.detach(), rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
        tweedie = (alpha * exact_posterior_mean(x, alpha, sigma) - x) / sigma**2
        torch.testing.assert_close(score, tweedie, rtol=1e-8, atol=1e-8 / sigma**2)


def exact_predictions(x: torch.Tensor, alpha: float, sigma: float) -> dict[str, torch.Tensor]:
    """What a perfect network of each kind returns at x: ε̂ = E[ε|x], x̂_0 = E[x_0|x], v̂ = α ε̂ − σ x̂_0, û = ε̂ − x̂_0."""
    x0 = exact_posterior_mean(x, alpha, sigma)
    eps = (x - alpha * x0) / sigma
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0, "velocity": eps - x0}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", PREDICTION_KINDS)
def test_each_prediction_kind_gives_the_exact_score(path, kind):
    s = PATHS[path](30)
    target = two_modes(s)
    for t in LEVELS:
        alpha, sigma = s.level_coefficients(t)
        x = target.sample(256, t, torch.Generator().manual_seed(100 + t)).double()
        exact_score = target.score(x, t)
        predictions = exact_predictions(x, alpha, sigma)
        prediction = predictions[kind]
        scale = 1.0 / sigma**2  # scores grow like 1/σ²: compare at the score's own scale
        torch.testing.assert_close(to_score(kind, prediction, x, alpha, sigma), exact_score, rtol=1e-7,
                                   atol=1e-9 * scale)
        torch.testing.assert_close(to_epsilon(kind, prediction, x, alpha, sigma), predictions["epsilon"],
                                   rtol=1e-7, atol=1e-7 * (1 + abs(x).max().item()))
        torch.testing.assert_close(to_sample(kind, prediction, x, alpha, sigma), predictions["sample"],
                                   rtol=1e-6, atol=1e-6 * (1 + abs(x).max().item()) / alpha)


def test_rectified_flow_velocity_formulas_of_the_issue():
    """On x_t = (1 − t) x_0 + t ε: x̂_0 = x − t·u and ε̂ = x + (1 − t)·u."""
    s = PATHS["rectified_flow_sd3"](30)
    alpha, sigma = s.level_coefficients(12)
    x = torch.randn(8, 2, dtype=torch.float64)
    u = torch.randn(8, 2, dtype=torch.float64)
    torch.testing.assert_close(to_sample("velocity", u, x, alpha, sigma), x - sigma * u)
    torch.testing.assert_close(to_epsilon("velocity", u, x, alpha, sigma), x + (1 - sigma) * u)
    with pytest.raises(ValueError, match="not one of"):
        to_score("flow", u, x, alpha, sigma)  # type: ignore[arg-type]
