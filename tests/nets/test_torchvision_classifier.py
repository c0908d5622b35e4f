"""The torchvision ImageNet evaluation classifier: its batched preset transform and local weights loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.transforms._presets import ImageClassification

from lit_mcmc.nets.torchvision_classifier import ImageNetClassifier, load_torchvision_classifier

SMALL_ARCH = "regnet_x_400mf"  # the RegNetX family at 5.5M parameters, fast on CPU


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.get_model(SMALL_ARCH, weights=None, num_classes=1000).eval()
    # non-trivial running statistics, so that eval-mode batch norm matters for the comparison
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def weights_file(small_net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "regnet_x_400mf-random.pth"
    torch.save(small_net.state_dict(), path)
    return path


@pytest.mark.parametrize(("height", "width"), [(256, 256), (40, 32), (232, 300), (300, 232), (225, 241)])
def test_preprocess_matches_torchvision_preset_on_batches(small_net, height: int, width: int) -> None:
    classifier = ImageNetClassifier(small_net, resize_size=232, crop_size=224)
    x = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(height + width)) * 2 - 1
    expected = ImageClassification(crop_size=224, resize_size=232)((x + 1) / 2)
    got = classifier.preprocess(x)
    assert got.shape == (3, 3, 224, 224)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_default_preset_is_regnet_x_8gf_imagenet1k_v2() -> None:
    preset = torchvision.models.RegNet_X_8GF_Weights.IMAGENET1K_V2.transforms  # metadata only: no download
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    classifier = ImageNetClassifier(net)
    assert (classifier.resize_size, classifier.crop_size) == (preset.keywords["resize_size"],
                                                              preset.keywords["crop_size"])


def test_loaded_logits_equal_bare_network_on_preset_input(small_net, weights_file: Path) -> None:
    classifier = load_torchvision_classifier(str(weights_file), arch=SMALL_ARCH)
    assert not classifier.training and not any(p.requires_grad for p in classifier.parameters())
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        logits = classifier(x)
        expected = small_net(ImageClassification(crop_size=224, resize_size=232)((x + 1) / 2))
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_features_are_the_heads_input(weights_file: Path) -> None:
    classifier = load_torchvision_classifier(weights_file, arch=SMALL_ARCH)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        features = classifier.features(x)
        logits = classifier(x)
    assert classifier.num_features == 400 and features.shape == (2, 400)
    torch.testing.assert_close(classifier.net.fc(features), logits, atol=1e-5, rtol=1e-5)
    assert not classifier.net.fc._forward_pre_hooks  # the per-call hook is removed again


def test_module_prefixed_state_dict_under_state_dict_key_loads(small_net, weights_file: Path,
                                                                tmp_path: Path) -> None:
    wrapped = {"state_dict": {f"module.{k}": v for k, v in small_net.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ddp.pth"
    torch.save(wrapped, path)
    reference = load_torchvision_classifier(weights_file, arch=SMALL_ARCH)
    classifier = load_torchvision_classifier(path, arch=SMALL_ARCH)
    for (name, value), (ref_name, ref_value) in zip(classifier.state_dict().items(), reference.state_dict().items(),
                                                    strict=True):
        assert name == ref_name and torch.equal(value, ref_value)


def test_missing_file_names_the_config_key_and_the_torchvision_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as error:
        load_torchvision_classifier(missing)
    message = str(error.value)
    for expected in [str(missing), "`weights`", "regnet_x_8gf-2b70d774.pth", "IMAGENET1K_V2"]:
        assert expected in message


def test_wrong_keys_are_named(small_net, tmp_path: Path) -> None:
    state_dict = dict(small_net.state_dict())
    state_dict["head.weight"] = state_dict.pop("fc.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError) as error:
        load_torchvision_classifier(path, arch=SMALL_ARCH)
    message = str(error.value)
    for expected in [str(path), SMALL_ARCH, "1 missing keys (first: 'fc.weight')",
                     "1 unexpected keys (first: 'head.weight')"]:
        assert expected in message


def test_wrong_num_classes_names_the_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "ten_classes.pth"
    torch.save(torchvision.models.get_model(SMALL_ARCH, weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"num_classes=1000: 'fc\.weight' has shape \(10, 400\) in the file"):
        load_torchvision_classifier(path, arch=SMALL_ARCH)
    assert load_torchvision_classifier(path, arch=SMALL_ARCH, num_classes=10).net.fc.out_features == 10


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"arch='fasterrcnn_resnet50_fpn' is not a torchvision classification"):
        load_torchvision_classifier(tmp_path / "x.pth", arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match=r"crop_size=240 must be between 1 and resize_size=232"):
        ImageNetClassifier(torch.nn.Linear(2, 2), crop_size=240)
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list\.pth is not a state dict of tensors"):
        load_torchvision_classifier(path, arch=SMALL_ARCH)


def test_regnet_x_8gf_wraps_with_1920_features_and_1000_logits() -> None:
    # built on CPU (RegNet's constructor computes widths with tensors, so the meta device cannot build it)
    torch.manual_seed(0)
    net = torchvision.models.get_model("regnet_x_8gf", weights=None, num_classes=1000)
    classifier = ImageNetClassifier(net).eval()
    expected_params = torchvision.models.RegNet_X_8GF_Weights.IMAGENET1K_V2.meta["num_params"]
    assert sum(p.numel() for p in classifier.parameters()) == expected_params
    assert classifier.num_features == 1920
    with torch.no_grad():
        x = torch.rand(1, 3, 256, 256) * 2 - 1
        assert classifier(x).shape == (1, 1000) and classifier.features(x).shape == (1, 1920)
