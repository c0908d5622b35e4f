"""Noise schedules against the reference values of ALGORITHMS.md §2 and §12."""

import math

import pytest
import torch

from lit_mcmc.diffusion import NoiseSchedule


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
        NoiseSchedule.from_config(**bad)


def test_level_out_of_range():
    with pytest.raises(ValueError, match="level t=100"):
        NoiseSchedule.cosine(100).model_t(100, 1)
