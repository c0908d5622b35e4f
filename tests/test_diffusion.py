"""Noise schedules against the reference values of docs/algorithms.md §2 and §12."""

import math

import pytest
import torch

from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig


def test_cosine_5_matches_reference_values():
    expected = [0.10129408, 0.27954385, 0.47363535, 0.72405237, 0.999]
    assert torch.allclose(NoiseSchedule.cosine(5).betas, torch.tensor(expected, dtype=torch.float64), atol=1e-7)


def test_cosine_100_reference_values():
    s = NoiseSchedule.cosine(100)
    assert float(s.betas[0]) == pytest.approx(6.3128e-4, rel=1e-4)
    assert float(s.betas[1]) == pytest.approx(1.11694e-3, rel=1e-4)
    assert s.betas[97:].tolist() == pytest.approx([0.55538, 0.74994, 0.999], abs=1e-5)
    assert float(s.alphas_cumprod[99]) == pytest.approx(2.43e-7, rel=1e-2)
    assert s.marginal_std[:2].tolist() == pytest.approx([0.02513, 0.04180], abs=1e-5)


def test_linear_schedules():
    assert NoiseSchedule.linear(5, 0.001, 0.02).betas.tolist() == pytest.approx(
        [0.001, 0.00575, 0.0105, 0.01525, 0.02], abs=1e-9)
    s = NoiseSchedule.linear(1000)
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    assert float(s.marginal_std[0]) == pytest.approx(0.01)  # √β_0
    assert float(s.alphas_cumprod[999]) == pytest.approx(4.04e-5, rel=1e-2)


def test_q_sample_reference():
    s = NoiseSchedule(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    x0 = torch.full((4, 1), 3.0, dtype=torch.float64)
    noise = torch.tensor([0.4199, 0.9844, 1.1147, 0.1688], dtype=torch.float64)[:, None]
    out = s.q_sample(x0, torch.tensor([2, 3, 2, 1]), noise)
    assert out.flatten().tolist() == pytest.approx([2.4255, 2.4719, 2.9148, 2.6349], abs=1e-3)


def test_respacing_identity_and_marginals():
    s = NoiseSchedule.linear(1000)
    same = s.respace(1000)
    assert torch.allclose(same.betas, s.betas) and torch.equal(same.model_timesteps, s.model_timesteps)
    r = s.respace(10)
    kept = r.model_timesteps
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 10
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[kept])  # marginals unchanged at kept levels
    assert r.model_t(3, 2).tolist() == [int(kept[3])] * 2


def test_posterior_variance_and_reverse_step():
    s = NoiseSchedule.cosine(10)
    assert float(s.posterior_variance[0]) == 0.0
    t = 4
    expected = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    assert float(s.posterior_variance[t]) == pytest.approx(float(expected))
    x = torch.ones(3, 2, dtype=torch.float64)
    score = torch.full_like(x, 0.5)
    noise = torch.ones_like(x)
    beta = float(s.betas[t])
    mean = (1 + beta * 0.5) / math.sqrt(1 - beta)
    assert s.reverse_step(x, t, score, noise, "beta")[0, 0].item() == pytest.approx(mean + math.sqrt(beta))
    post = float(s.posterior_variance[t])
    assert s.reverse_step(x, t, score, noise, "posterior")[0, 0].item() == pytest.approx(mean + math.sqrt(post))
    assert s.reverse_step(x, 0, score, noise)[0, 0].item() == pytest.approx(
        (1 + float(s.betas[0]) * 0.5) / math.sqrt(1 - float(s.betas[0])))  # no noise at t = 0


@pytest.mark.parametrize("bad", [dict(kind="quadratic"), dict(T=0)])
def test_bad_schedule_config(bad):
    with pytest.raises(ValueError, match="kind|T="):
        ScheduleConfig(**bad).build()


def test_level_out_of_range():
    with pytest.raises(ValueError, match="level t=100"):
        NoiseSchedule.cosine(100).model_t(100, 1)


def test_learned_reverse_variance_interpolates_log_beta_and_clipped_log_posterior():
    """guided-diffusion's learned σ: log s² = f log β_t + (1 − f) log β̃_t, f = (v + 1)/2, β̃ clipped at t = 0."""
    s = NoiseSchedule.linear(20)
    t = 7
    beta, post = float(s.betas[t]), float(s.posterior_variance[t])
    x = torch.zeros(3, 1, dtype=torch.float64)
    score = torch.zeros_like(x)
    noise = torch.ones_like(x)
    v = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    step = s.reverse_step(x, t, score, noise, "learned", variance_output=v)
    expected = [math.sqrt(post), (beta * post) ** 0.25, math.sqrt(beta)]  # v = 0: the geometric mean of the two
    assert step[:, 0].tolist() == pytest.approx(expected, rel=1e-12)
    assert float(s.posterior_log_variance_clipped[0]) == pytest.approx(math.log(float(s.posterior_variance[1])))
    assert s.reverse_step(x, 0, score, noise, "learned", variance_output=v).abs().max() == 0  # no noise at t = 0
    with pytest.raises(ValueError, match="needs a model that predicts its variance"):
        s.reverse_step(x, t, score, noise, "learned")


def test_learned_variance_flows_from_the_network_to_the_reverse_step():
    """A learned-σ network with v ≡ 1 (−1) gives exactly the β (β̃) reverse process; ε̂ is its first half."""
    from torch import nn

    from lit_mcmc.samplers import AnnealedSampler, PerSampleRandom
    from lit_mcmc.targets import ScoreModelTarget

    class LearnedSigma(nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.v = v

        def forward(self, x, t):
            return torch.cat([0.3 * x, torch.full_like(x, self.v)], dim=1)

    class EpsOnly(nn.Module):
        def forward(self, x, t):
            return 0.3 * x

    s = NoiseSchedule.linear(30)
    rng = lambda: PerSampleRandom(5, torch.arange(4))  # noqa: E731
    for v, variance in ((1.0, "beta"), (-1.0, "posterior")):
        learned = AnnealedSampler(s, None, reverse_variance="learned").sample(
            ScoreModelTarget(LearnedSigma(v), s, learned_variance=True), (4, 2, 3, 3), rng())[0]
        fixed = AnnealedSampler(s, None, reverse_variance=variance).sample(ScoreModelTarget(EpsOnly(), s),
                                                                             (4, 2, 3, 3), rng())[0]
        torch.testing.assert_close(learned, fixed, rtol=1e-5, atol=1e-6)
