"""timm backbones with a CIFAR stem (3x3 stride-1 first conv, no max-pool) for 32x32 classifiers."""

from __future__ import annotations

import timm
from timm.models.resnet import ResNet
from torch import Tensor, nn


def _cifar_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A 3x3 stride-1 replacement for an ImageNet stem conv (same output width and bias setting)."""
    new = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # timm's ResNet conv init
    return new


def _patch_resnet_stem(model: ResNet, in_channels: int) -> None:
    # Plain stem: conv1 is a 7x7/2 conv. Deep stems (resnet*d) are a Sequential whose first conv has stride 2.
    if isinstance(model.conv1, nn.Conv2d):
        model.conv1 = _cifar_conv(model.conv1, in_channels)
    else:
        model.conv1[0] = _cifar_conv(model.conv1[0], in_channels)
    model.maxpool = nn.Identity()


class TimmCifarClassifier(nn.Module):
    """A timm classifier whose stem keeps the input resolution; ``forward(x) -> [B, n_classes]`` logits."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def n_features(self) -> int:
        """Width of the penultimate features returned by :meth:`features`."""
        return self.backbone.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate (pooled, pre-logit) features [B, n_features]."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)


def timm_cifar_classifier(name: str = "resnet18", n_classes: int = 10, in_channels: int = 3) -> TimmCifarClassifier:
    """Build timm model ``name`` with random weights (never downloads) and patch its stem for CIFAR sizes.

    Only ResNet-family models (``timm.models.resnet.ResNet``: resnet18/34/50, resnet18d, ...) are supported;
    other architectures raise a ``ValueError`` because their stems differ.
    """
    if not timm.is_model(name):
        raise ValueError(
            f"timm has no model named {name!r} (see timm.list_models('resnet*')); use e.g. name='resnet18'"
        )
    backbone = timm.create_model(name, pretrained=False, num_classes=n_classes, in_chans=in_channels)
    if not isinstance(backbone, ResNet):
        raise ValueError(
            f"timm_cifar_classifier cannot patch the stem of {name!r} ({type(backbone).__name__}); only "
            "ResNet-family models (timm.models.resnet.ResNet, e.g. 'resnet18', 'resnet50', 'resnet18d') "
            "are supported"
        )
    _patch_resnet_stem(backbone, in_channels)
    return TimmCifarClassifier(backbone)
