"""Reduced precision and compiled networks: the MH arithmetic stays float32, training works in bf16-mixed, and the
networks trace without graph breaks."""

from __future__ import annotations

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
