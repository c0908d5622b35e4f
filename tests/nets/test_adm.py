"""ADM (guided-diffusion) networks: conformance with the original's outputs and published state-dict layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_mcmc.assets import shared_path
from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet

TINY_FILES = ["tiny_unet_uncond.pt", "tiny_unet_plain.pt", "tiny_classifier_attention_pool.pt"]
PUBLISHED = [
    "256x256_diffusion_uncond",
    "256x256_diffusion",
    "64x64_diffusion",
    "128x128_diffusion",
    "256x256_classifier",
    "64x64_classifier",
    "128x128_classifier",
]


def _conformance_file(name: str) -> Path:
    path = shared_path("conformance", "guided_diffusion", name)
    if not path.exists():
        pytest.skip(f"guided-diffusion conformance data not found at {path} (set LIT_MCMC_SHARED to the shared folder)")
    return path


def _build(config: dict[str, Any], classifier: bool) -> ADMUNet | ADMEncoderClassifier:
    """Build from a config that may carry the original's class name under "class"."""
    config = dict(config)
    class_name = config.pop("class", None)
    if class_name is not None:
        classifier = class_name == "EncoderUNetModel"
    return (ADMEncoderClassifier if classifier else ADMUNet)(**config)


def _load_tiny(name: str) -> tuple[dict[str, Any], ADMUNet | ADMEncoderClassifier]:
    data = torch.load(_conformance_file(name), weights_only=True)
    model = _build(data["config"], classifier="classifier" in name)
    model.load_state_dict(data["state_dict"], strict=True)
    return data, model.eval()


def _run(model: ADMUNet | ADMEncoderClassifier, data: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(model, ADMUNet):
            return model(data["x"], data["t"], y=data.get("y"))
        return model(data["x"], data["t"])


@pytest.mark.parametrize("name", TINY_FILES)
def test_reproduces_original_output(name: str) -> None:
    data, model = _load_tiny(name)
    out = _run(model, data)
    assert out.dtype == torch.float32 and out.shape == data["output"].shape
    assert (out - data["output"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_state_dict_layout(name: str) -> None:
    configs = json.loads(_conformance_file("published_configs.json").read_text())
    shapes = json.loads(_conformance_file("published_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = _build(configs[name], classifier=False)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(shapes[name].items())


def test_fp16_body_close_to_fp32() -> None:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.half), torch.ones(1, 1, 3, 3, dtype=torch.half))
    except RuntimeError as err:
        pytest.skip(f"this torch build has no float16 convolution on CPU: {err}")
    data = torch.load(_conformance_file("tiny_unet_uncond.pt"), weights_only=True)
    model = ADMUNet(**data["config"], use_fp16=True)
    model.load_state_dict(data["state_dict"], strict=True)  # float32 weights, cast on load
    model.eval()
    assert model.dtype == torch.float16
    assert model.state_dict()["input_blocks.1.0.in_layers.2.weight"].dtype == torch.float16
    assert model.state_dict()["out.2.weight"].dtype == torch.float32
    out = _run(model, data)
    assert out.dtype == torch.float32
    assert (out - data["output"]).abs().max().item() < 1e-2
    model.convert_to_fp32()
    assert model.dtype == torch.float32


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_pools(pool: str) -> None:
    model = ADMEncoderClassifier(16, 3, 32, 5, 1, [2], channel_mult=(1, 2), num_head_channels=16, pool=pool)
    assert model(torch.randn(2, 3, 16, 16), torch.tensor([0, 999])).shape == (2, 5)


def test_class_conditional_labels() -> None:
    model = ADMUNet(16, 3, 32, 6, 1, [2], channel_mult=(1, 2), num_classes=3)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    assert model.learn_sigma
    assert model(x, t, y=torch.tensor([0, 2])).shape == (2, 6, 16, 16)
    with pytest.raises(ValueError, match="class labels y are required"):
        model(x, t)
    unconditional = ADMUNet(16, 3, 32, 3, 1, [2], channel_mult=(1, 2))
    with pytest.raises(ValueError, match="must be omitted"):
        unconditional(x, t, y=torch.tensor([0, 2]))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="unknown pool"):
        ADMEncoderClassifier(16, 3, 32, 5, 1, [2], pool="max")
    with pytest.raises(ValueError, match="dims=2"):
        ADMUNet(16, 3, 32, 3, 1, [2], dims=3)
