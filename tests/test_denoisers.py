"""EDM-style denoisers as targets: exact denoisers give the analytic scores on every path, the preconditioning is
Karras et al.'s, and a user's network loads by class path and a plain state dict (never unpickled code)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lit_mcmc.denoisers import DenoiserConfig, DenoiserTarget, Preconditioned, edm_coefficients, ve_coefficients
from lit_mcmc.modules.components import ComponentConfig, load_component
from lit_mcmc.nets.denoisers import GaussianMixtureDenoiser
from lit_mcmc.samplers.config import SamplerConfig
from tests.diffusion.paths import MEANS, PATHS, STD, WEIGHTS, two_modes

MIXTURE = {"means": MEANS.tolist(), "std": STD, "weights": WEIGHTS.tolist()}


class RawOracle(nn.Module):
    """The raw network F that, preconditioned with ``kind``, is the mixture's exact denoiser: F = (D* − c_skip x)/c_out
    at x = y/c_in and σ read back from c_noise. Its mixture is its state dict."""

    def __init__(self, kind: str = "edm", sigma_data: float = 0.5, means=None, std=None, weights=None) -> None:
        super().__init__()
        self.kind, self.sigma_data = kind, sigma_data
        self.exact = GaussianMixtureDenoiser(means, std, weights)

    def forward(self, y: Tensor, c_noise: Tensor, scale: Tensor | None = None) -> Tensor:
        sigma = (4 * c_noise).exp() if self.kind == "edm" else 2 * c_noise.exp()
        coeffs = (edm_coefficients if self.kind == "edm" else ve_coefficients)(sigma[:, None].to(y), self.sigma_data)
        c_skip, c_out, c_in, _ = coeffs
        x = y / c_in
        out = (self.exact(x, sigma.to(y)) - c_skip * x) / c_out
        return out if scale is None else out * scale[:, None].to(out)  # scale: [B], one per sample


def test_edm_coefficients_are_table_one():
    """Karras et al. 2022, Table 1, at σ = 1 and σ_data = 0.5; Song's VE at σ = 2."""
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor(1.0), 0.5)
    assert (float(c_skip), float(c_out), float(c_in), float(c_noise)) == pytest.approx(
        (0.25 / 1.25, 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25), 0.0))
    assert [float(c) for c in ve_coefficients(torch.tensor(2.0), 0.5)] == pytest.approx([1.0, 2.0, 1.0, 0.0])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("preconditioning", ["none", "edm", "ve"])
def test_an_exact_denoiser_gives_the_analytic_score_on_every_path(path, preconditioning):
    """score = (α_t D(x/α_t, σ_t/α_t) − x)/σ_t² equals the mixture's closed-form score, whatever the path and with
    the denoiser given directly or as a preconditioned raw network."""
    schedule = PATHS[path](30)
    exact = GaussianMixtureDenoiser(**MIXTURE).double()
    net = exact if preconditioning == "none" else Preconditioned(RawOracle(preconditioning, 0.5, **MIXTURE).double(),
                                                                 preconditioning, 0.5)
    target, analytic = DenoiserTarget(net, schedule), two_modes(schedule)
    for t in (0, 10, 20, 29):
        x = analytic.sample(128, t, torch.Generator().manual_seed(t)).double()
        sigma = float(schedule.marginal_std[t])
        torch.testing.assert_close(target.score(x, t), analytic.score(x, t), rtol=1e-6, atol=1e-7 / sigma**2)


def test_constant_conditioning_reaches_every_call():
    schedule = PATHS["ve_karras"](10)
    net = Preconditioned(RawOracle("edm", 0.5, **MIXTURE).double(), "edm", 0.5)
    plain = DenoiserTarget(net, schedule)
    scaled = DenoiserTarget(net, schedule, cond={"scale": 0.0})  # F ≡ 0: D = c_skip x
    x = torch.randn(5, 2, dtype=torch.float64)
    sigma = float(schedule.marginal_std[4])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(scaled.score(x, 4), (c_skip * x - x) / sigma**2)
    assert not torch.allclose(plain.score(x, 4), scaled.score(x, 4))


def save_raw_oracle(path: Path) -> Path:
    torch.save(RawOracle("edm", 0.5, **MIXTURE).state_dict(), path)
    return path


def component(**denoiser) -> ComponentConfig:
    spec = {"network": "tests.test_denoisers.RawOracle", "network_args": {"kind": "edm", **MIXTURE},
            "weights": "raw.pt", "preconditioning": "edm", **denoiser}
    return ComponentConfig(denoiser=spec)  # type: ignore[arg-type]


def test_a_users_network_loads_by_class_path_and_state_dict(tmp_path):
    save_raw_oracle(tmp_path / "raw.pt")
    schedule = PATHS["ve_karras"](20)
    loaded = load_component("edm", component(), tmp_path)
    assert loaded.schedule is None  # the levels come from model.schedule
    target, analytic = loaded.make_target(schedule), two_modes(schedule)  # type: ignore[misc]
    x = analytic.sample(64, 12, torch.Generator().manual_seed(0))
    torch.testing.assert_close(target.score(x, 12), analytic.score(x, 12).float(), rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in loaded.module.parameters())  # type: ignore[union-attr]


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    save_file(RawOracle("edm", 0.5, **MIXTURE).state_dict(), str(tmp_path / "raw.safetensors"))
    loaded = load_component("edm", component(weights="raw.safetensors"), tmp_path)
    assert isinstance(loaded.module, Preconditioned)


def test_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path):
    """A pickled module (code) is never unpickled; a state dict of another network names what does not fit."""
    torch.save(RawOracle(), tmp_path / "raw.pt")
    with pytest.raises(ValueError, match=r"model.components.edm.denoiser.weights=.*not a plain state dict"):
        load_component("edm", component(), tmp_path)
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "raw.pt")
    with pytest.raises(ValueError, match="does not fit the network"):
        load_component("edm", component(), tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights file .*missing.pt"):
        load_component("edm", component(weights="missing.pt"), tmp_path)


@pytest.mark.parametrize(("fields", "match"), [
    ({"network": "nowhere.Net"}, "does not import"),
    ({"network": "torch.Tensor"}, "is not an nn.Module class"),
])
def test_bad_class_paths_name_the_key(tmp_path, fields, match):
    save_raw_oracle(tmp_path / "raw.pt")
    with pytest.raises(ValueError, match=f"model.components.edm.denoiser.network=.*{match}"):
        load_component("edm", component(**fields), tmp_path)


@pytest.mark.parametrize(("spec", "match"), [
    ({"network": "Net"}, "network must name"),
    ({"network": "a.Net", "preconditioning": "vp"}, "preconditioning='vp' is not one of"),
    ({"network": "a.Net", "sigma_data": 0.0}, "sigma_data=0.0 must be positive"),
])
def test_bad_denoiser_configs(spec, match):
    with pytest.raises(ValueError, match=match):
        DenoiserConfig(**spec)
    with pytest.raises(ValueError, match="exactly one of"):
        ComponentConfig(analytic="toy2d_gmm", denoiser={"network": "a.Net"})  # type: ignore[arg-type]


def test_a_denoiser_product_samples_as_the_analytic_mixture_does():
    """HMC-curve with reverse steps on the Karras path: the exact denoiser component times the bar draws the samples
    the analytic mixture times the bar draws (float64; all but the rare chain where round-off flips a decision)."""
    from lit_mcmc.compose import Product
    from lit_mcmc.modules.components import analytic_target
    from lit_mcmc.samplers import HMC, AnnealedSampler, PerSampleRandom
    from tests.samplers.test_samplers import ScoreOnly

    schedule = PATHS["ve_karras"](40)
    bar = analytic_target("toy2d_bar", schedule)
    sampler = AnnealedSampler(schedule, HMC(0.03, 3, 0.5, correction="curve"), 2, reverse=True)
    steps = SamplerConfig(kernel="hmc", step_size=0.03, step_scaling="path", correction="curve").initial_steps(schedule)
    samples = {}
    for name, gmm in (("denoiser", DenoiserTarget(GaussianMixtureDenoiser().double(), schedule)),
                      ("analytic", ScoreOnly(analytic_target("toy2d_gmm", schedule)))):
        samples[name], info = sampler.sample(Product([gmm, bar]), (400, 2), PerSampleRandom(0, torch.arange(400)),
                                             steps, dtype=torch.float64)
        assert 0.3 < info.accept_rate < 0.99
    same = torch.isclose(samples["denoiser"], samples["analytic"], atol=1e-8).all(1).double().mean()
    assert same > 0.99, same


def test_the_edm_config_runs_and_tunes(tmp_path):
    """configs/edm/sample_gmm_denoiser_hmc.yaml at a small size through the CLI: a step per level, tuned."""
    import json

    from tests.e2e.test_cli import lit_mcmc

    config = Path(__file__).resolve().parents[1] / "configs" / "edm" / "sample_gmm_denoiser_hmc.yaml"
    result = lit_mcmc("predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
                      "--data.init_args.n_samples", "200", "--data.init_args.batch_size", "200",
                      "--model.init_args.schedule.T", "20", "--model.init_args.sampler.tune_steps", "20",
                      "--model.init_args.sampler.tune_samples", "64", "--trainer.enable_progress_bar", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "step_sizes.json").read_text())
    assert sorted(map(int, table["step_sizes"])) == list(range(19))
    steps = [table["step_sizes"][str(t)] for t in (18, 0)]
    assert steps[0] > 100 * steps[1]  # σ from 80 down to 0.002: the tuned steps span orders of magnitude
