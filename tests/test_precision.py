"""Reduced precision and compiled networks: the MH arithmetic stays float32, training works in bf16-mixed, and the
networks trace without graph breaks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.modules import DiffusionModule, NoisyClassifierModule
from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet
from lit_mcmc.nets.mlp import ResMLP
from lit_mcmc.nets.unet import EncoderClassifier, UNet
from lit_mcmc.precision import AutocastTarget, float32_matmul, with_precision
from lit_mcmc.targets import ScoreModelTarget

TINY_UNET = {"in_channels": 1, "ch": 32, "ch_mult": [1, 2], "n_res_blocks": 1, "attn_resolutions": [4],
             "image_size": 8, "n_steps": 20}
TINY_ADM = {"image_size": 8, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
            "attention_resolutions": [2], "channel_mult": [1, 2], "num_head_channels": 16,
            "use_scale_shift_norm": True, "resblock_updown": True}


def test_autocast_target_returns_the_chains_dtype_and_approximates_fp32():
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(20)
    target = ScoreModelTarget(UNet(**TINY_UNET).eval(), schedule)
    x = torch.randn(4, 1, 8, 8)
    bf16 = with_precision(target, "bf16")
    assert isinstance(bf16, AutocastTarget) and with_precision(target, "tf32") is target
    reduced, exact = bf16.evaluate(x, 10), target.evaluate(x, 10)
    for name in ("score", "integrand", "exact"):
        assert getattr(reduced, name).dtype == torch.float32
    relative = (reduced.score - exact.score).norm() / exact.score.norm()
    assert 0 < relative < 3e-2  # bf16 has 8 mantissa bits: close, but really computed in bf16
    assert bf16.integrand(x, 10).dtype == torch.float32


def test_float32_matmul_restores_the_global_setting():
    before = torch.backends.cuda.matmul.fp32_precision
    with float32_matmul("fp32"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    with float32_matmul("tf32"):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == before


@pytest.mark.parametrize("build", [
    lambda: (UNet(**TINY_UNET), torch.randn(2, 1, 8, 8)),
    lambda: (EncoderClassifier(**TINY_UNET, n_classes=3), torch.randn(2, 1, 8, 8)),
    lambda: (ResMLP(n_steps=20), torch.randn(2, 2)),
    lambda: (ADMUNet(**TINY_ADM), torch.randn(2, 3, 8, 8)),
    lambda: (ADMEncoderClassifier(**{**TINY_ADM, "out_channels": 5, "pool": "attention"}), torch.randn(2, 3, 8, 8)),
], ids=["unet", "encoder-classifier", "resmlp", "adm-unet", "adm-classifier"])
def test_networks_trace_without_graph_breaks(build):
    """fullgraph=True fails on any graph break (e.g. a host read of t); the eager backend only traces."""
    net, x = build()
    net.eval()
    t = torch.tensor([3, 17])
    compiled = torch.compile(net, fullgraph=True, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(x, t), net(x, t))


def test_compile_option_compiles_the_network_and_skips_energy_training():
    score = DiffusionModule(UNet(**TINY_UNET), schedule=ScheduleConfig(T=20), compile=True)
    score.configure_model()
    assert score.net._compiled_call_impl is not None  # nn.Module.compile: in place, state-dict names unchanged
    assert list(score.state_dict()) == list(DiffusionModule(UNet(**TINY_UNET)).state_dict())
    energy = DiffusionModule(UNet(**TINY_UNET), schedule=ScheduleConfig(T=20), parameterization="energy",
                             compile=True)
    with pytest.warns(UserWarning, match="double backward"):
        energy.configure_model()
    assert energy.net.net._compiled_call_impl is None
    classifier = NoisyClassifierModule(EncoderClassifier(**TINY_UNET, n_classes=2), compile=True)
    classifier.configure_model()
    assert classifier.net._compiled_call_impl is not None


@pytest.mark.parametrize("kind", ["score", "energy", "classifier"])
def test_bf16_mixed_training(kind):
    """trainer.precision: bf16-mixed trains each model kind: its loss matches fp32's at the same weights and noise,
    and a few steps move the weights with finite losses."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 2, (32,))
    if kind == "classifier":
        module = NoisyClassifierModule(EncoderClassifier(**TINY_UNET, n_classes=2), schedule=ScheduleConfig(T=20))
        data = DataLoader(TensorDataset(x, y), batch_size=8)

        def loss(generator):
            return torch.nn.functional.cross_entropy(module.noisy_logits(x[:8], generator), y[:8])
    else:
        module = DiffusionModule(UNet(**TINY_UNET), schedule=ScheduleConfig(T=20), parameterization=kind)
        data = DataLoader(TensorDataset(x), batch_size=8)

        def loss(generator):
            return module.loss(x[:8], generator)

    exact = loss(torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = loss(torch.Generator().manual_seed(1))
    assert float((reduced - exact).abs().detach() / exact.detach()) < 5e-2
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(max_steps=3, precision="bf16-mixed", accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def trained_score_target(gmm8, schedule: NoiseSchedule) -> ScoreModelTarget:
    """A small ResMLP score model of the 8-mode GMM after a few hundred Adam steps (seconds on a CPU)."""
    torch.manual_seed(0)
    net = ResMLP(hidden=64, n_blocks=2, n_steps=schedule.T)
    module = DiffusionModule(net, schedule=ScheduleConfig(kind="cosine", T=schedule.T))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = module.loss(gmm8.sample_data(256, generator), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return ScoreModelTarget(net.eval().requires_grad_(False), schedule)


def test_bf16_quality_guard_acceptance_and_sample_statistics(gmm8, cosine100):
    """From the same seeds, bf16 and fp32 networks give the same acceptance per level (within 0.02) and the same
    sample statistics within their noise: reduced precision does not change what the MH test decides."""
    from lit_mcmc.samplers import PerSampleRandom, SamplerConfig

    schedule = cosine100.respace(20)
    target = trained_score_target(gmm8, cosine100)
    target.schedule = schedule  # the respaced levels (the network sees its training timesteps)
    config = SamplerConfig(kernel="hmc", n_steps=2, step_size=0.12, n_leapfrog=3, damping=0.5, correction="curve",
                           n_points=1, reverse=False)
    n = 1000
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = config.build(schedule).sample(with_precision(target, precision), (n, 2),
                                                        PerSampleRandom(3, torch.arange(n)))
    (x32, info32), (x16, info16) = runs["fp32"], runs["bf16"]
    assert min(info32.levels["accept_rate"].values()) < 0.9  # with teeth: some levels reject often
    for level, rate in info32.levels["accept_rate"].items():
        assert abs(info16.levels["accept_rate"][level] - rate) <= 0.02, level
    standard_error = x32.std(0) / n**0.5
    assert ((x16.mean(0) - x32.mean(0)).abs() < 4 * standard_error).all()
    assert ((x16.std(0) / x32.std(0) - 1).abs() < 0.1).all()


@pytest.mark.slow
def test_trainer_precision_does_not_reach_the_mh_arithmetic(tmp_path, restore_environ, capsys):
    """bf16-mixed in the Trainer leaves the samples exactly as 32-true (model.precision decides); bf16-true, which
    would cast the chains, is an error naming both keys."""
    import numpy as np

    from lit_mcmc.cli import main

    config = str(Path(__file__).resolve().parent.parent / "configs" / "toy2d" / "sample_oracle_hmc.yaml")
    common = ["--data.init_args.n_samples", "64", "--data.init_args.batch_size", "64",
              "--model.init_args.sampler.n_steps", "1", "--trainer.enable_progress_bar", "false"]
    for precision in ("32-true", "bf16-mixed"):
        main(["predict", "--config", config, "--trainer.default_root_dir", str(tmp_path / precision),
              "--trainer.precision", precision, *common])
    np.testing.assert_array_equal(np.load(tmp_path / "32-true" / "samples.npz")["samples"],
                                  np.load(tmp_path / "bf16-mixed" / "samples.npz")["samples"])
    with pytest.raises(SystemExit) as error:
        main(["predict", "--config", config, "--trainer.default_root_dir", str(tmp_path / "true"),
              "--trainer.precision", "bf16-true", *common])
    assert error.value.code == 2
    assert "lit-mcmc: error: trainer.precision=bf16-true would cast the chains" in capsys.readouterr().err
