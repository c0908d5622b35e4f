"""torchvision ImageNet classifiers (e.g. RegNetX-8GF, IMAGENET1K_V2) as evaluation classifiers on [-1, 1] images.

:class:`ImageNetClassifier` does torchvision's ImageNet evaluation preset (``ImageClassification``: bilinear
antialiased resize of the shorter side, center crop, ImageNet normalisation) in torch on whole batches, so that
a classifier trained on such inputs can score generated images. :func:`load_torchvision_classifier` builds the
network and reads a local weights file; nothing is ever downloaded. In YAML (e.g. an accuracy callback)::

    classifier:
      class_path: lit_mcmc.nets.torchvision_classifier.load_torchvision_classifier
      init_args: {weights: /path/to/regnet_x_8gf-2b70d774.pth, arch: regnet_x_8gf}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lit_mcmc.checkpoints import read_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's RegNet_X_8GF_Weights.IMAGENET1K_V2 preset: ImageClassification(crop_size=224, resize_size=232)
DEFAULT_ARCH = "regnet_x_8gf"
DEFAULT_RESIZE_SIZE = 232
DEFAULT_CROP_SIZE = 224


def _final_linear_name(net: nn.Module) -> str:
    """Name of the last nn.Linear registered in ``net``: the classification head of torchvision's classifiers."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(net).__name__} has no nn.Linear classification head to take features from.")
    return names[-1]


class ImageNetClassifier(nn.Module):
    """A torchvision classifier behind its ImageNet evaluation transform, taking images in ``input_range``.

    The transform, on batches [B, C, H, W]: map ``input_range`` to [0, 1], resize so that the shorter side is
    ``resize_size`` (bilinear, antialiased, as torchvision's ``ImageClassification`` preset), center-crop
    ``crop_size`` x ``crop_size`` and normalise with ``mean``/``std``. ``forward`` returns the network's logits;
    ``features`` returns the input of its final linear layer (the pooled penultimate features, e.g. 1920 for
    RegNetX-8GF), and ``num_features`` is that layer's ``in_features``.
    """

    def __init__(
        self,
        net: nn.Module,
        resize_size: int = DEFAULT_RESIZE_SIZE,
        crop_size: int = DEFAULT_CROP_SIZE,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if not 1 <= crop_size <= resize_size:
            raise ValueError(
                f"crop_size={crop_size} must be between 1 and resize_size={resize_size} (the preset crops the "
                "resized image; e.g. crop_size 224 with resize_size 232 for RegNetX-8GF IMAGENET1K_V2)."
            )
        low, high = input_range
        if not high > low:
            raise ValueError(f"input_range={input_range} must be (low, high) with high > low, e.g. (-1, 1)")
        self.net = net
        self.resize_size = int(resize_size)
        self.crop_size = int(crop_size)
        self.input_range = (float(low), float(high))
        # Not persistent: the state dict stays the wrapped network's own (under "net.").
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # A name, not a module attribute: assigning the module would register the head twice in the state dict.
        self._head_name = _final_linear_name(net)
        self.num_features = int(self.net.get_submodule(self._head_name).in_features)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after the shorter-side resize, rounded down on the longer side as torchvision does."""
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize_size * long / short)
        return (self.resize_size, new_long) if height <= width else (new_long, self.resize_size)

    def preprocess(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in ``input_range`` → the network's input [B, C, crop_size, crop_size]."""
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        low, high = self.input_range
        x = (x - low) / (high - low)
        size = self.resized_size(x.shape[-2], x.shape[-1])
        if size != tuple(x.shape[-2:]):  # torchvision returns an image of the target size unchanged
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        # the same offsets as torchvision's center_crop (Python's round, half to even)
        top = int(round((x.shape[-2] - self.crop_size) / 2.0))
        left = int(round((x.shape[-1] - self.crop_size) / 2.0))
        x = x[..., top : top + self.crop_size, left : left + self.crop_size]
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: Tensor) -> Tensor:
        """The input of the network's final linear layer for images in ``input_range``, shape [B, num_features]."""
        captured: list[Tensor] = []

        def capture(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            captured.append(inputs[0])

        # A hook registered for this call only works for any torchvision classifier and leaves the network as is.
        handle = self.net.get_submodule(self._head_name).register_forward_pre_hook(capture)
        try:
            self.net(self.preprocess(x))
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the layer {self._head_name!r} ran {len(captured)} times, expected once per call")
        return captured[0].flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.preprocess(x))


def _weights_origin(arch: str) -> str:
    """Where the weights file for ``arch`` normally comes from (read from torchvision's metadata; no download)."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        return "the torchvision release that defines the architecture"
    weights = getattr(enum, "IMAGENET1K_V2", None) or enum.DEFAULT
    file_name = weights.url.rsplit("/", 1)[-1]
    return f"torchvision's {enum.__name__}.{weights.name} weights, the file {file_name} ({weights.url})"


def _read_state_dict(path: Path, arch: str) -> dict[str, Tensor]:
    checkpoint = read_checkpoint(path, "weights")
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(
            f"{path} is not a state dict of tensors (nor a dict with one under 'state_dict'); expected torchvision's "
            f"{arch} weights file."
        )
    # saved from DataParallel / DistributedDataParallel models, keys carry a "module." prefix
    return {str(key).removeprefix("module."): value for key, value in checkpoint.items()}


def _check_fits(state_dict: Mapping[str, Tensor], net: nn.Module, path: Path, arch: str, num_classes: int) -> None:
    expected = net.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing keys (first: {missing[0]!r})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (first: {unexpected[0]!r})"] if unexpected else []
        raise ValueError(
            f"{path} does not fit torchvision's {arch}: {' and '.join(parts)}. Check the config keys `arch` "
            "and `weights`: the file must be a state dict of that architecture."
        )
    for key, value in expected.items():
        if state_dict[key].shape != value.shape:
            raise ValueError(
                f"{path} does not fit torchvision's {arch} with num_classes={num_classes}: {key!r} has shape "
                f"{tuple(state_dict[key].shape)} in the file but {tuple(value.shape)} in the network."
            )


def load_torchvision_classifier(
    weights: str | Path,
    arch: str = DEFAULT_ARCH,
    resize_size: int = DEFAULT_RESIZE_SIZE,
    crop_size: int = DEFAULT_CROP_SIZE,
    num_classes: int = 1000,
) -> ImageNetClassifier:
    """A torchvision classifier with local weights, in eval mode without gradients, taking images in [-1, 1].

    ``arch`` is a torchvision model name (``torchvision.models.list_models()``); ``weights`` is a local file:
    a plain state dict as torchvision's own download (e.g. ``regnet_x_8gf-2b70d774.pth`` for RegNetX-8GF
    IMAGENET1K_V2), or a dict holding one under ``state_dict``, keys optionally prefixed ``module.``. The keys
    must match the network exactly. ``resize_size``/``crop_size`` are the weights' evaluation preset (232/224 for
    RegNetX-8GF IMAGENET1K_V2; see ``<Weights>.transforms``).
    """
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(
            f"arch={arch!r} is not a torchvision classification model; see torchvision.models.list_models(), "
            f"e.g. {DEFAULT_ARCH!r}."
        )
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{arch} weights not found at {path}: they are {_weights_origin(arch)}. Nothing is downloaded: fetch "
            "the file on a machine with internet access, copy it here and set the config key `weights` to its "
            "local path."
        )
    state_dict = _read_state_dict(path, arch)
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    _check_fits(state_dict, net, path, arch, num_classes)
    net.load_state_dict(state_dict, strict=True)
    classifier = ImageNetClassifier(net, resize_size=resize_size, crop_size=crop_size)
    return classifier.eval().requires_grad_(False)
