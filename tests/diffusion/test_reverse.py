"""The ancestral step on every Gaussian path: with exact scores the reverse process reproduces the mixture."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.samplers import AnnealedSampler, SamplerConfig
from tests.diffusion.paths import PATHS, WEIGHTS, two_modes, upper_mode_share
from tests.samplers.test_samplers import moment_z_scores

N = 4000


@pytest.fixture(scope="module")
def reference():
    return two_modes(PATHS["ddpm_cosine"](2)).sample_data(200_000, torch.Generator().manual_seed(1)).double()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("variance", "eta"), [("beta", 1.0), ("posterior", 1.0), ("posterior", 0.0)])
def test_reverse_process_with_exact_scores_reproduces_the_mixture(path, variance, eta, reference):
    """Moments, P(y > 0) and the mode weights within Monte Carlo error (|z| < 4.5), for the DDPM posterior
    (η = 1, with either noise) and deterministic DDIM (η = 0)."""
    schedule = PATHS[path](200)
    target = two_modes(schedule)
    sampler = AnnealedSampler(schedule, None, reverse=True, reverse_variance=variance, reverse_eta=eta)
    x, info = sampler.sample(target, (N, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    assert info.nfe == schedule.T and bool(torch.isfinite(x).all())
    z = moment_z_scores(x, reference)
    assert z.max() < 4.5, z
    share, expected = upper_mode_share(x), float(WEIGHTS[1])
    assert abs(share - expected) < 4.5 * math.sqrt(expected * (1 - expected) / N), share


@pytest.mark.parametrize("path", ["rectified_flow_sd3", "ve_karras"])
def test_the_sampler_starts_from_the_paths_prior(path):
    """Starting draws are N(0, (α²+σ²) I) at the noisiest level: ≈ σ_max on VE, ≈ 1 on a rectified flow."""
    schedule = PATHS[path](50)
    sampler = AnnealedSampler(schedule, None, reverse=True)
    seen = {}

    class Probe(type(two_modes(schedule))):
        def score_and_log_prob(self, x, t, with_log_prob):
            seen.setdefault(t, x.clone())
            return super().score_and_log_prob(x, t, with_log_prob)

    probe = Probe(two_modes(schedule).means, 0.2, schedule)
    sampler.sample(probe, (20_000, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(seen[schedule.T - 1].std()) == pytest.approx(schedule.prior_std, rel=0.02)


def test_eta_is_checked_where_configs_set_it():
    with pytest.raises(ValueError, match="sampler.reverse_eta=0.5 applies to reverse steps with"):
        SamplerConfig(kernel="reverse", reverse_eta=0.5)
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        SamplerConfig(kernel="reverse", reverse_variance="posterior", reverse_eta=-1.0)
    assert SamplerConfig(kernel="reverse", reverse_variance="posterior", reverse_eta=0.0).build(
        PATHS["ve_karras"](10)).reverse_eta == 0.0
