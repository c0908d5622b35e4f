"""MALA and HMC with MH keep the diffused mixture invariant at a fixed level of every Gaussian path, and step-size
tuning reaches its target acceptance on each (constant steps cannot serve a VE path, whose scale grows with σ)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.samplers import HMC, MALA
from lit_mcmc.samplers.adaptation import tune_step_sizes
from lit_mcmc.samplers.config import SamplerConfig
from tests.diffusion.paths import PATHS, two_modes
from tests.samplers.test_samplers import ScoreOnly, moment_z_scores

T = 30


def middle_level(schedule) -> int:
    """The first level whose noise-to-signal σ/α exceeds 0.3: the modes are still apart, their shapes blurred."""
    ratio = schedule.marginal_std / schedule.signal_scale
    return int((ratio > 0.3).nonzero()[0])


def component_std(schedule, t: int) -> float:
    alpha, sigma = schedule.level_coefficients(t)
    return math.sqrt(alpha**2 * 0.2**2 + sigma**2)


KERNELS = {
    "MALA-energy": lambda s: MALA(0.1 * s**2, "energy"),
    "MALA-line-3": lambda s: MALA(0.1 * s**2, "line", 3),
    "HMC-energy": lambda s: HMC(0.4 * s, 3, 0.5, correction="energy"),
    "HMC-curve-1": lambda s: HMC(0.4 * s, 3, 0.5, correction="curve", n_points=1),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(KERNELS))
def test_adjusted_kernels_keep_the_diffused_mixture_invariant(path, name):
    schedule = PATHS[path](T)
    target = two_modes(schedule)
    t = middle_level(schedule)
    g = torch.Generator().manual_seed(11)
    start, reference = target.sample(4000, t, g).double(), target.sample(100_000, t, g).double()
    kernel = KERNELS[name](component_std(schedule, t))
    chained = target if kernel.needs_log_prob else ScoreOnly(target)
    x, info = kernel.run(chained, start, t, 20, torch.Generator().manual_seed(5))
    assert 0.3 < info.accept_rate < 0.995
    z = moment_z_scores(x, reference)
    assert z.max() < 4.5, z


def test_the_invariance_test_sees_a_wrong_level():
    """The check has power: chains run at the neighbouring level (a different density) fail it on the VE path."""
    schedule = PATHS["ve_karras"](T)
    target = two_modes(schedule)
    t = middle_level(schedule)
    g = torch.Generator().manual_seed(11)
    start, reference = target.sample(4000, t, g).double(), target.sample(100_000, t, g).double()
    x, _ = MALA(0.1 * component_std(schedule, t) ** 2, "energy").run(target, start, t + 3, 20,
                                                                       torch.Generator().manual_seed(5))
    assert moment_z_scores(x, reference).max() > 4.5


@pytest.mark.parametrize("path", list(PATHS))
def test_tuning_reaches_the_target_acceptance_on_every_path(path):
    """target_accept tuning from the a·β_t^b guess scaled to the path (step_scaling: path) lands within ±0.05 of 0.65
    at every level with σ_t > 0.04, where the noise sets the scale. Below it the data's std (0.2) does, while the
    β_t rule's guess keeps falling (by ~10× a level at the bottom of the Karras and flow grids), faster than 60
    iterations follow: those levels accept more often than asked, never less."""
    schedule = PATHS[path](20)
    spec = SamplerConfig(kernel="mala", n_steps=5, step_a=0.05, step_b=1.0, step_scaling="path",
                         correction="energy", reverse=True, target_accept=0.65, tune_samples=256, tune_steps=60)
    tuning = tune_step_sizes(spec.build(schedule), two_modes(schedule), spec.initial_steps(schedule),
                             spec.target_accept, spec.tune_samples, spec.tune_steps, 0, (2,))  # type: ignore[arg-type]
    rates = tuning.accept_rate_per_level
    assert sorted(rates) == list(range(schedule.T - 1))
    noisy = [t for t in rates if float(schedule.marginal_std[t]) > 0.04]
    assert len(noisy) >= 14 and all(0.6 < rates[t] < 0.7 for t in noisy), rates
    assert all(rates[t] > 0.6 for t in rates), rates


def test_path_step_scaling_is_the_x_scale():
    """On VE, x = √(1 + σ²)·x_VP: Langevin steps scale by 1 + σ², HMC steps by its root; DDPM is untouched."""
    ve = PATHS["ve_karras"](T)
    sigma = float(ve.marginal_std[20])
    mala = SamplerConfig(kernel="mala", step_a=0.05, step_scaling="path", correction="energy").initial_steps(ve)
    hmc = SamplerConfig(kernel="hmc", step_size=0.1, step_scaling="path", correction="energy").initial_steps(ve)
    assert mala(20) == pytest.approx(0.05 * float(ve.betas[20]) * (1 + sigma**2), rel=1e-12)
    assert hmc(20) == pytest.approx(0.1 * math.sqrt(1 + sigma**2), rel=1e-12)
    ddpm = PATHS["ddpm_cosine"](T)
    scaled = SamplerConfig(kernel="mala", step_a=0.05, step_scaling="path", correction="energy").initial_steps(ddpm)
    assert scaled(20) == pytest.approx(0.05 * float(ddpm.betas[20]), rel=1e-12)


@pytest.mark.parametrize("path", ["ve", "rectified_flow"])
@pytest.mark.parametrize("sampler", [dict(kernel="reverse"), dict(kernel="mala", correction="energy", step_size=0.01,
                                                                   n_steps=1, reverse=True, step_scaling="path")])
def test_exact_particle_weights_estimate_the_normalising_constant_on_other_paths(path, sampler):
    """E[Ẑ] = Z_0 within 4 standard errors over 200 groups: the start density N(0, (α² + σ²) I), the path's forward
    step and the reverse step enter the weights correctly (a VE start taken as N(0, I) would be off by orders of
    magnitude). Paths with a last level far from pure noise (σ_max = 10, t_max = 0.95): near α = 0 the composed
    reverse step is a poor proposal and no finite run shows the weights' mean."""
    from lit_mcmc.diffusion import NoiseSchedule
    from lit_mcmc.samplers import PerSampleRandom
    from lit_mcmc.samplers.particles import ResampleConfig
    from tests.samplers.test_particles import _product

    schedule = (NoiseSchedule.karras(100, 0.01, 10.0, 7.0) if path == "ve"
                else NoiseSchedule.rectified_flow(100, 1.0, 0.01, 0.95))
    target, log_z = _product(schedule)
    config = SamplerConfig(**sampler, resample=ResampleConfig("exact", group_size=64, ess_threshold=0.5))
    n = 64 * 200
    _, info = config.build(schedule).sample(target, (n, 2), PerSampleRandom(0, torch.arange(n)))
    z_hat = info.particles.log_z.exp()
    mean, se = float(z_hat.mean()), float(z_hat.std() / math.sqrt(len(z_hat)))
    assert abs(mean - math.exp(log_z)) < 4 * se, (mean, se, math.exp(log_z))
    assert sum(info.levels["resampled_groups"].values()) > 0
