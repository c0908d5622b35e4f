"""He et al.'s CIFAR ResNet-20 (option-A shortcuts) and its pretrained CIFAR-10 weights, as an evaluation classifier.

The architecture and parameter names follow the public pytorch_resnet_cifar10 project (Yerlan Idelbayev,
BSD-2-Clause), so its checkpoint ``cifar10_resnet20-12fca82f.th`` loads unchanged. That network expects images
in [0, 1] normalised with ImageNet statistics; :func:`load_resnet20` wraps it in :class:`NormalizedClassifier`
so that it takes lit_mcmc's [-1, 1] images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mcmc.assets import shared_path
from lit_mcmc.checkpoints import read_checkpoint

RESNET20_WEIGHTS_FILE = "cifar10_resnet20-12fca82f.th"
RESNET20_SOURCE = (
    "the pytorch_resnet_cifar10 project by Yerlan Idelbayev (BSD-2-Clause, "
    "https://github.com/akamaster/pytorch_resnet_cifar10)"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ChannelPadShortcut(nn.Module):
    """Option-A identity shortcut: subsample by 2 in space and zero-pad the channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, self.extra_channels - pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (option-A shortcut when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        reshapes = stride != 1 or in_channels != channels
        self.shortcut = ChannelPadShortcut(channels - in_channels) if reshapes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with 3 stages (16/32/64 channels), global average pooling and a linear head."""

    def __init__(self, blocks_per_stage: int, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, n_classes)
        self.num_features = 64
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_channels: int, channels: int, n_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, channels, stride)]
        blocks += [BasicBlock(channels, channels) for _ in range(n_blocks - 1)]
        return nn.Sequential(*blocks)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features: the globally average-pooled last stage, shape [B, 64]."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


def resnet20(n_classes: int = 10) -> CifarResNet:
    """A randomly initialised ResNet-20 (3 BasicBlocks per stage, 0.27M parameters for 10 classes)."""
    return CifarResNet(blocks_per_stage=3, n_classes=n_classes)


class NormalizedClassifier(nn.Module):
    """Maps images from ``input_range`` to [0, 1], normalises them with ``mean``/``std`` and applies ``net``.

    ``net`` must provide ``features(x)`` for :meth:`features`; ``num_features`` is taken from it when present.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        low, high = input_range
        if not high > low:
            raise ValueError(f"input_range={input_range} must be (low, high) with high > low, e.g. (-1, 1)")
        self.net = net
        self.input_range = (float(low), float(high))
        # Not persistent: the state dict stays the wrapped network's own.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if hasattr(net, "num_features"):
            self.num_features = net.num_features

    def normalize(self, x: Tensor) -> Tensor:
        """Images in ``input_range`` → the network's normalised input."""
        low, high = self.input_range
        unit = (x - low) / (high - low)
        return (unit - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """The wrapped network's penultimate features for images in ``input_range``."""
        return self.net.features(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def load_resnet20(weights_path: str | Path | None = None) -> NormalizedClassifier:
    """The pretrained CIFAR-10 ResNet-20 (about 92 % test accuracy), in eval mode, taking images in [-1, 1].

    ``weights_path`` defaults to ``<shared>/weights/cifar10_resnet20-12fca82f.th``; the file is a dict whose
    ``state_dict`` has keys prefixed ``module.`` (it was saved from a DataParallel model).
    """
    path = Path(weights_path) if weights_path is not None else shared_path("weights", RESNET20_WEIGHTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-20 weights not found at {path}: the file {RESNET20_WEIGHTS_FILE} comes from "
            f"{RESNET20_SOURCE}. Put it there or set the config key `weights_path` to its location."
        )
    checkpoint = read_checkpoint(path, "weights_path")
    state_dict = checkpoint.get("state_dict", checkpoint)
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    net = resnet20(n_classes=10)
    net.load_state_dict(state_dict)
    return NormalizedClassifier(net).eval()
