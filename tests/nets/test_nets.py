"""Tests for the plain networks: ResMLP, DDPM UNet, encoder classifier and timm CIFAR classifiers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_mcmc.nets.mlp import ResMLP
from lit_mcmc.nets.timm_cifar import timm_cifar_classifier
from lit_mcmc.nets.unet import EncoderClassifier, SelfAttention, UNet

TINY_UNET = dict(ch=16, ch_mult=(1, 2), n_res_blocks=1, attn_resolutions=(8,), image_size=16, n_steps=10)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _t(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _energy_grad(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """∇x of E = ‖f(x, t) − x‖² summed over the batch (the energy parameterisation of docs/algorithms.md §3)."""
    x = x.clone().requires_grad_(True)
    energy = (net(x, t) - x).pow(2).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return grad


# ---------------------------------------------------------------- ResMLP


def test_resmlp_is_exactly_zero_at_init_and_energy_gradient_is_2x() -> None:
    net = ResMLP(n_steps=100)
    x, t = torch.randn(5, 2), _t(0, 1, 50, 98, 99)
    out = net(x, t)
    assert out.shape == (5, 2)
    assert torch.equal(out, torch.zeros(5, 2))
    # f ≡ 0 at init, so E = ‖x‖² and ε̂ = ∇E = 2x exactly.
    torch.testing.assert_close(_energy_grad(net, x, t), 2 * x)


def test_resmlp_blocks_are_identity_at_init() -> None:
    net = ResMLP(dim=3, hidden=16, widen=2, n_blocks=3, emb_dim=8, n_steps=7, zero_init_last=False)
    x, t = torch.randn(4, 3), _t(0, 2, 4, 6)
    # Each block's last Linear is zero-initialised, so the net is out_proj ∘ in_proj.
    torch.testing.assert_close(net(x, t), net.out_proj(net.in_proj(x)))
    assert net(x, t).abs().max() > 1e-3


def test_resmlp_layer_sizes_follow_the_paper_config() -> None:
    net = ResMLP()
    assert net.time_embedding.weight.shape == (100, 32)
    assert len(net.blocks) == 4
    block = net.blocks[0]
    assert (block.in_proj.in_features, block.in_proj.out_features) == (128, 256)
    assert (block.emb_proj.in_features, block.emb_proj.out_features) == (32, 256)
    assert (block.mid.in_features, block.mid.out_features) == (256, 256)
    assert (block.out_proj.in_features, block.out_proj.out_features) == (256, 128)
    assert (net.out_proj.in_features, net.out_proj.out_features) == (128, 2)


def test_resmlp_output_depends_on_t_once_trained_away_from_zero() -> None:
    net = ResMLP(hidden=16, n_blocks=2, emb_dim=8, n_steps=10)
    for block in net.blocks:
        nn.init.normal_(block.out_proj.weight)
    nn.init.normal_(net.out_proj.weight)
    x = torch.randn(1, 2).expand(2, 2)
    out = net(x, _t(0, 9))
    assert (out[0] - out[1]).abs().max() > 1e-2


def test_resmlp_gradient_reaches_input_and_parameters() -> None:
    net = ResMLP(hidden=16, n_blocks=2, emb_dim=8, n_steps=10)
    x = torch.randn(3, 2, requires_grad=True)
    (net(x, _t(1, 2, 3)) - x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert net.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("t", "error", "match"),
    [
        (_t(0, 10), ValueError, r"n_steps=10"),
        (_t(-1, 0), ValueError, r"n_steps=10"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (_t(0), ValueError, r"shape \[B\] = \[2\]"),
    ],
)
def test_resmlp_rejects_bad_timesteps(t: torch.Tensor, error: type[Exception], match: str) -> None:
    net = ResMLP(hidden=8, n_blocks=1, emb_dim=4, n_steps=10)
    with pytest.raises(error, match=match):
        net(torch.randn(2, 2), t)


def test_resmlp_rejects_wrong_input_dim() -> None:
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        ResMLP(hidden=8, n_blocks=1, n_steps=10)(torch.randn(2, 3), _t(0, 1))


# ---------------------------------------------------------------- UNet


def test_unet_paper_config_has_35_75m_parameters() -> None:
    with torch.device("meta"):
        net = UNet()
    n_params = sum(p.numel() for p in net.parameters())
    assert round(n_params / 1e6, 2) == 35.75  # pytorch-ddpm CIFAR-10 / Ho et al. 35.7M
    # Attention at 16x16: 2 down blocks + 1 middle block + 3 up blocks.
    assert sum(isinstance(m, SelfAttention) for m in net.modules()) == 6
    assert all(m.num_groups == 32 for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_unet_tiny_forward_shape_and_near_zero_output() -> None:
    net = UNet(**TINY_UNET)
    out = net(torch.randn(2, 3, 16, 16), _t(0, 9))
    assert out.shape == (2, 3, 16, 16)
    assert out.abs().max() < 1e-3  # tail conv has xavier gain 1e-5
    # Tiny widths still get >= 2 channels per group, so GroupNorm keeps the per-channel time shift.
    assert all(m.num_channels // m.num_groups >= 2 for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_unet_energy_gradient_is_about_2x_at_init() -> None:
    net = UNet(**TINY_UNET, dropout=0.0)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(_energy_grad(net, x, _t(3, 4)), 2 * x, atol=1e-3, rtol=0)


def test_unet_out_channels_and_gradient_to_input() -> None:
    net = UNet(**TINY_UNET, out_channels=6)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = net(x, _t(1, 2))
    assert out.shape == (2, 6, 16, 16)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert net.encoder.time_embedding.mlp[0].weight.grad.abs().sum() > 0


def test_unet_output_depends_on_t() -> None:
    net = UNet(**TINY_UNET, dropout=0.0)
    # Undo the near-zero init of the residual/output convs so the time signal is visible.
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    out = net(x, _t(0, 9))
    assert (out[0] - out[1]).abs().max() > 1e-2


def test_sinusoidal_table_values() -> None:
    table = UNet(**TINY_UNET).encoder.time_embedding.table
    assert table.shape == (10, 16)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * 8))
    # Entry (t, 2i) = sin(t / 10000^(2i/16)), (t, 2i+1) = cos(...).
    torch.testing.assert_close(table[3, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 16))))
    torch.testing.assert_close(table[3, 3], torch.tensor(math.cos(3 / 10000 ** (2 / 16))))


def test_self_attention_matches_softmax_formula() -> None:
    attn = SelfAttention(8)
    nn.init.xavier_uniform_(attn.proj.weight)
    x = torch.randn(2, 8, 3, 3)
    h = attn.norm(x)
    q, k, v = (conv(h).flatten(2) for conv in attn.qkv)  # [B, C, HW]
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(8), dim=-1)
    expected = x + attn.proj(torch.einsum("bij,bcj->bci", w, v).reshape(2, 8, 3, 3))
    torch.testing.assert_close(attn(x), expected)


def test_unet_mnist_size() -> None:
    net = UNet(in_channels=1, ch=16, ch_mult=(1, 2, 2), n_res_blocks=1, attn_resolutions=(14,), image_size=28)
    out = net(torch.randn(2, 1, 28, 28), _t(0, 999))
    assert out.shape == (2, 1, 28, 28)
    assert net.encoder.out_size == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image_size=30, ch_mult=(1, 2, 2)), r"image_size=30 must be divisible by .* = 4"),
        (dict(attn_resolutions=(12,)), r"attn_resolutions=\(12,\) contains \[12\].*\[16, 8\]"),
        (dict(ch=15), r"even width, got ch=15"),
        (dict(ch_mult=()), "ch_mult"),
    ],
)
def test_unet_rejects_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY_UNET, **kwargs})


def test_unet_rejects_bad_input_and_timesteps() -> None:
    net = UNet(**TINY_UNET)
    with pytest.raises(ValueError, match="square"):
        net(torch.randn(2, 3, 16, 8), _t(0, 1))
    with pytest.raises(ValueError, match=r"n_steps=10"):
        net(torch.randn(2, 3, 16, 16), _t(0, 10))


# ---------------------------------------------------------------- EncoderClassifier


def test_encoder_classifier_paper_config_head() -> None:
    with torch.device("meta"):
        clf = EncoderClassifier()
    assert clf.head.in_features == 256 * 4 * 4
    assert clf.head.out_features == 100


def test_encoder_classifier_tiny_forward_and_time_gradient() -> None:
    clf = EncoderClassifier(**TINY_UNET, n_classes=7)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    logits = clf(x, _t(0, 5))
    assert logits.shape == (2, 7)
    assert clf.head.in_features == 32 * 8 * 8
    torch.log_softmax(logits, -1)[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert clf.encoder.time_embedding.mlp[0].weight.grad.abs().sum() > 0


def test_clean_encoder_classifier_has_no_time_embedding() -> None:
    clf = EncoderClassifier(**TINY_UNET, n_classes=4, time_conditioned=False)
    assert clf.encoder.time_embedding is None
    assert not any("temb" in name or "time" in name for name, _ in clf.named_parameters())
    assert clf(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ValueError, match="time_conditioned=False"):
        clf(torch.randn(2, 3, 16, 16), _t(0, 1))


def test_noisy_encoder_classifier_requires_t() -> None:
    clf = EncoderClassifier(**TINY_UNET, n_classes=4)
    with pytest.raises(ValueError, match=r"net\(x, t\)"):
        clf(torch.randn(2, 3, 16, 16))


def test_encoder_classifier_mnist_size() -> None:
    clf = EncoderClassifier(
        in_channels=1, ch=16, ch_mult=(1, 2, 2), n_res_blocks=1, attn_resolutions=(14,), image_size=28, n_classes=10
    )
    assert clf(torch.randn(2, 1, 28, 28), _t(3, 4)).shape == (2, 10)
    assert clf.head.in_features == 32 * 7 * 7


def test_encoder_classifier_features_are_the_head_input() -> None:
    x = torch.randn(3, 3, 16, 16)
    for pool, width in [(False, 32 * 8 * 8), (True, 32)]:
        clf = EncoderClassifier(**TINY_UNET, n_classes=5, time_conditioned=False, pool=pool).eval()
        features = clf.features(x)
        assert clf.num_features == width and features.shape == (3, width)
        torch.testing.assert_close(clf.head(features), clf(x))
    h, _, _ = clf.encoder(x, None)  # pooled: the spatial mean of the bottleneck
    torch.testing.assert_close(features, h.mean(dim=(2, 3)))


# ---------------------------------------------------------------- timm CIFAR classifiers


def test_timm_resnet18_cifar_stem_keeps_resolution() -> None:
    clf = timm_cifar_classifier("resnet18", n_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    conv1 = clf.backbone.conv1
    assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(clf.backbone.maxpool, nn.Identity)
    assert conv1(x).shape == (2, 64, 32, 32)
    # Three stride-2 stages after a resolution-keeping stem: 32 -> 4 (an ImageNet stem would give 1).
    assert clf.backbone.forward_features(x).shape == (2, 512, 4, 4)
    logits = clf(x)
    assert logits.shape == (2, 10)
    features = clf.features(x)
    assert features.shape == (2, clf.n_features) == (2, 512)
    torch.testing.assert_close(clf.backbone.fc(features), logits)


def test_timm_grayscale_and_deep_stem() -> None:
    clf = timm_cifar_classifier("resnet18d", n_classes=5, in_channels=1).eval()
    assert clf.backbone.conv1[0].stride == (1, 1)
    assert clf.backbone.conv1[0].in_channels == 1
    x = torch.randn(2, 1, 28, 28)
    assert clf.backbone.forward_features(x).shape[-2:] == (4, 4)  # 28 -> 14 -> 7 -> 4
    assert clf(x).shape == (2, 5)


def test_timm_rejects_unknown_and_unsupported_models() -> None:
    with pytest.raises(ValueError, match="no model named 'not_a_model'"):
        timm_cifar_classifier("not_a_model")
    with pytest.raises(ValueError, match="only ResNet-family"):
        timm_cifar_classifier("mobilenetv3_small_050")
