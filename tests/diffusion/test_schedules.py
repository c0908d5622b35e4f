"""Gaussian-path schedules: DDPM unchanged (bitwise), VP-equivalent ᾱ_t and β_t, and the rectified-flow and Karras
levels against diffusers' own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig, resolution_shift, shift_sigmas
from lit_mcmc.samplers.schedules import BetaPower
from tests.diffusion.paths import PATHS

DDPM = {"cosine100": lambda: NoiseSchedule.cosine(100), "linear1000": lambda: NoiseSchedule.linear(1000),
        "linear1000_respaced25": lambda: NoiseSchedule.linear(1000).respace(25)}


@pytest.mark.parametrize("name", list(DDPM))
def test_ddpm_levels_are_the_gaussian_path_they_always_were(name):
    """α_t, σ_t read from a DDPM schedule are bitwise what the code computed before (√ᾱ_t with math.sqrt)."""
    s = DDPM[name]()
    assert s.path == "ddpm" and s.prior_std == 1.0
    for t in range(s.T):
        assert float(s.signal_scale[t]) == math.sqrt(float(s.alphas_cumprod[t]))
        assert s.level_coefficients(t) == (math.sqrt(float(s.alphas_cumprod[t])), float(s.marginal_std[t]))
        beta = float(s.betas[t])
        assert s.transition(t) == (math.sqrt(1.0 - beta), math.sqrt(beta))
    assert torch.equal(s.transition_variance, s.betas)
    assert s.model_t(s.T - 1, 2).dtype == torch.long


@pytest.mark.parametrize("name", list(DDPM))
def test_ddpm_reverse_step_is_bitwise_todays_and_equals_the_alpha_sigma_form(name):
    """The DDPM step keeps its arithmetic, (x + β_t s)/√(1 − β_t) + std·z, bit for bit; the general step in α, σ
    and x̂_0 (DDIM with η = 1) gives the same mean and std to float64 round-off."""
    s = DDPM[name]()
    g = torch.Generator().manual_seed(0)
    x, score, noise = (torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.rand(64, 3, generator=g, dtype=torch.float64) * 2 - 1
    general = NoiseSchedule.from_levels(s.signal_scale, s.marginal_std, s.model_timesteps.double(), "ve")
    for t in (0, 1, s.T // 2, s.T - 1):
        beta = float(s.betas[t])
        legacy_mean = (x + beta * score) / math.sqrt(1.0 - beta)
        legacy_std = {"beta": math.sqrt(beta), "posterior": math.sqrt(float(s.posterior_variance[t]))}
        for variance, std in legacy_std.items():
            expected = legacy_mean if t == 0 else legacy_mean + std * noise
            assert torch.equal(s.reverse_step(x, t, score, noise, variance), expected)
            mean, std_general = general.reverse_mean_and_std(x, t, score, variance)
            torch.testing.assert_close(mean, legacy_mean, rtol=1e-10, atol=1e-12)
            assert std_general == pytest.approx(std, rel=1e-9, abs=1e-15)
        _, learned = s.reverse_mean_and_std(x, t, score, "learned", v)
        _, learned_general = general.reverse_mean_and_std(x, t, score, "learned", v)
        torch.testing.assert_close(learned_general, learned, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("path", list(PATHS))
def test_vp_equivalent_alpha_bar_and_beta(path):
    """ᾱ_t = α²/(α² + σ²), β_t = 1 − ᾱ_t/ᾱ_{t−1} in (0, 1), and β_t^b rules read them; x_t/√(α² + σ²) is the VP
    path with that ᾱ_t."""
    s = PATHS[path](30)
    alpha, sigma = s.signal_scale, s.marginal_std
    torch.testing.assert_close(s.alphas_cumprod, alpha**2 / (alpha**2 + sigma**2), rtol=1e-12, atol=0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), s.alphas_cumprod[:-1]])
    torch.testing.assert_close(s.betas, 1 - s.alphas_cumprod / abar_prev, rtol=1e-12, atol=1e-15)
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert BetaPower(s, 0.5, 2.0)(7) == 0.5 * float(s.betas[7]) ** 2
    # the forward transition x_t | x_{t-1} composes to the marginal: σ_t² = (α_t/α_{t−1})² σ_{t−1}² + σ²_{t|t−1}
    for t in (1, 15, 29):
        scale, std = s.transition(t)
        assert scale**2 * float(sigma[t - 1]) ** 2 + std**2 == pytest.approx(float(sigma[t]) ** 2, rel=1e-10)
        assert scale * float(alpha[t - 1]) == pytest.approx(float(alpha[t]), rel=1e-12)


def test_rectified_flow_levels_are_diffusers_shifted_training_sigmas():
    """shift(σ) and the network's time σ·1000 equal FlowMatchEulerDiscreteScheduler's (shift=3, SD3); T = 999
    evenly spaced levels in [0.001, 0.999] are its training levels without σ = 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    s = NoiseSchedule.rectified_flow(999, shift=3.0, t_min=1e-3, t_max=0.999)
    ours = s.marginal_std.flip(0).float()
    torch.testing.assert_close(ours, scheduler.sigmas[1:], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(s.model_timesteps.flip(0).float(), scheduler.timesteps[1:], rtol=2e-6, atol=1e-4)
    torch.testing.assert_close(s.signal_scale + s.marginal_std, torch.ones(999, dtype=torch.float64))
    assert s.model_t(5, 3).dtype == torch.float32 and float(s.model_t(5, 1)) == pytest.approx(
        1000 * float(s.marginal_std[5]), rel=1e-6)


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096])
def test_flux_resolution_shift_is_the_pipelines(image_seq_len):
    """Flux: μ = calculate_shift(tokens), sigmas shifted by the scheduler's exponential time_shift(μ) = shift e^μ."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15)
    assert resolution_shift(image_seq_len) == pytest.approx(math.exp(mu), rel=1e-12)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    u = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(u, math.exp(mu)), scheduler.time_shift(mu, 1.0, u), rtol=1e-12, atol=0)
    config = ScheduleConfig("rectified_flow", 50, resolution_shift={"image_seq_len": image_seq_len}, t_min=0.01,
                            t_max=0.99).build()
    torch.testing.assert_close(config.marginal_std, scheduler.time_shift(mu, 1.0, u), rtol=1e-12, atol=0)


def test_karras_levels_are_diffusers_edm_sigmas():
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    scheduler.set_timesteps(18)
    s = ScheduleConfig("karras", 18, sigma_min=0.002, sigma_max=80.0, rho=7.0).build()
    torch.testing.assert_close(s.marginal_std.flip(0).float(), scheduler.sigmas[:-1], rtol=1e-6, atol=0)
    assert s.path == "ve" and bool((s.signal_scale == 1).all())
    assert s.prior_std == pytest.approx(math.sqrt(1 + 80.0**2))
    assert float(s.model_t(17, 1)) == pytest.approx(80.0)


@pytest.mark.parametrize("path", ["rectified_flow_sd3", "ve_karras"])
def test_respacing_a_gaussian_path_keeps_its_levels(path):
    s = PATHS[path](100)
    r = s.respace(10)
    kept = torch.round(torch.arange(10, dtype=torch.float64) * 99 / 9).long()
    assert r.path == s.path
    assert torch.equal(r.marginal_std, s.marginal_std[kept]) and torch.equal(r.signal_scale, s.signal_scale[kept])
    assert torch.equal(r.model_timesteps, s.model_timesteps[kept])


@pytest.mark.parametrize(("config", "match"), [
    (dict(kind="karras", shift=3.0), "schedule.shift does not apply to kind='karras'"),
    (dict(kind="cosine", sigma_max=80.0), "schedule.sigma_max does not apply to kind='cosine'"),
    (dict(kind="rectified_flow", shift=3.0, resolution_shift={"image_seq_len": 4096}), "not both"),
    (dict(kind="rectified_flow", resolution_shift={"base_shift": 0.5}), "image_seq_len required"),
    (dict(kind="rectified_flow", t_max=1.0), "t_max < 1"),
    (dict(kind="karras", sigma_min=1.0, sigma_max=0.5), "sigma_min < sigma_max"),
    (dict(kind="edm"), "kind='edm' is not one of"),
])
def test_bad_path_configs_name_the_key(config, match):
    with pytest.raises(ValueError, match=match):
        ScheduleConfig(**config).build()


def test_levels_must_be_ordered_and_keep_signal():
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule.from_levels(torch.ones(3), torch.tensor([0.3, 0.2, 0.5]), torch.zeros(3), "ve")
    with pytest.raises(ValueError, match="α_t > 0"):
        NoiseSchedule.from_levels(torch.tensor([0.5, 0.0]), torch.tensor([0.5, 1.0]), torch.zeros(2), "rectified_flow")


@pytest.mark.parametrize("kind", ["rectified_flow", "karras"])
def test_training_refuses_paths_whose_network_time_is_a_float(kind):
    from lit_mcmc.modules.classifiers import NoisyClassifierModule
    from lit_mcmc.modules.diffusion import DiffusionModule
    from lit_mcmc.nets.mlp import ResMLP

    for module in (DiffusionModule, NoisyClassifierModule):
        with pytest.raises(ValueError, match=f"model.schedule.kind='{kind}': lit-mcmc fit trains on DDPM schedules"):
            module(ResMLP(), ScheduleConfig(kind, 10))
