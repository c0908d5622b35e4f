"""Published OpenAI guided-diffusion (ADM) checkpoints: their network configs, schedules and strict loading.

The networks themselves are :mod:`lit_mcmc.nets.adm`. A checkpoint file (``256x256_diffusion_uncond.pt``,
``256x256_classifier.pt``, …) is a plain state dict; it is read with ``torch.load(weights_only=True)`` (no pickled
code runs) and loaded with ``strict=True`` into the network built from its published config, so a file that does
not fit is an error naming the first missing and unexpected keys instead of a silently half-loaded model.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.checkpoints import read_checkpoint
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet
from lit_mcmc.targets import ScoreModelTarget

_UNET = {"class": "UNetModel", "in_channels": 3, "num_res_blocks": 2, "num_heads": 1, "num_head_channels": 64,
         "num_heads_upsample": -1, "use_fp16": True, "use_scale_shift_norm": True, "resblock_updown": True,
         "use_new_attention_order": False, "dropout": 0.0, "out_channels": 6}
_CLASSIFIER = {"class": "EncoderUNetModel", "in_channels": 3, "model_channels": 128, "out_channels": 1000,
               "num_res_blocks": 2, "use_fp16": True, "num_head_channels": 64, "use_scale_shift_norm": True,
               "resblock_updown": True, "pool": "attention"}
# The constructor arguments behind each published checkpoint (guided-diffusion's README flags, as its script_util
# turns them into UNetModel/EncoderUNetModel arguments: attention_resolutions are downsampling rates).
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "256x256_diffusion_uncond": {**_UNET, "image_size": 256, "model_channels": 256,
                                 "attention_resolutions": [8, 16, 32], "channel_mult": [1, 1, 2, 2, 4, 4],
                                 "num_classes": None},
    "256x256_diffusion": {**_UNET, "image_size": 256, "model_channels": 256, "attention_resolutions": [8, 16, 32],
                          "channel_mult": [1, 1, 2, 2, 4, 4], "num_classes": 1000},
    "64x64_diffusion": {**_UNET, "image_size": 64, "model_channels": 192, "num_res_blocks": 3, "dropout": 0.1,
                        "attention_resolutions": [2, 4, 8], "channel_mult": [1, 2, 3, 4], "num_classes": 1000,
                        "use_new_attention_order": True},
    "128x128_diffusion": {**_UNET, "image_size": 128, "model_channels": 256, "attention_resolutions": [4, 8, 16],
                          "channel_mult": [1, 1, 2, 3, 4], "num_classes": 1000, "num_heads": 4,
                          "num_head_channels": -1},
    "256x256_classifier": {**_CLASSIFIER, "image_size": 256, "attention_resolutions": [8, 16, 32],
                           "channel_mult": [1, 1, 2, 2, 4, 4]},
    "64x64_classifier": {**_CLASSIFIER, "image_size": 64, "num_res_blocks": 4, "attention_resolutions": [2, 4, 8],
                         "channel_mult": [1, 2, 3, 4]},
    "128x128_classifier": {**_CLASSIFIER, "image_size": 128, "attention_resolutions": [4, 8, 16],
                           "channel_mult": [1, 1, 2, 3, 4]},
}
# guided-diffusion trained the 64x64 models on the cosine schedule, the others on the linear one; all T = 1000.
COSINE_MODELS = ("64x64_diffusion", "64x64_classifier")
NETWORKS: dict[str, type[nn.Module]] = {"UNetModel": ADMUNet, "EncoderUNetModel": ADMEncoderClassifier}
CLASS_OF_KIND = {"adm": "UNetModel", "adm_classifier": "EncoderUNetModel"}


def resolve_config(config: str | dict[str, Any], kind: str, key: str) -> dict[str, Any]:
    """The constructor arguments (without ``class``) for a published config name or a dict of arguments.

    ``kind`` is "adm" (a UNetModel) or "adm_classifier" (an EncoderUNetModel); ``key`` names the config entry in
    error messages.
    """
    expected = CLASS_OF_KIND[kind]
    if isinstance(config, str):
        if config not in PUBLISHED_CONFIGS:
            names = [n for n, c in PUBLISHED_CONFIGS.items() if c["class"] == expected]
            raise ValueError(f"{key}={config!r} is not a published ADM config; use one of {names} or a dict of "
                             f"{expected} constructor arguments")
        arguments = dict(PUBLISHED_CONFIGS[config])
    else:
        arguments = dict(config)
    network = arguments.pop("class", expected)
    if network != expected:
        raise ValueError(f"{key} describes a {network}, but pretrained: {kind} needs a {expected}"
                         + (" (use pretrained: adm_classifier)" if network == "EncoderUNetModel" else
                            " (use pretrained: adm)"))
    return arguments


def default_schedule(config: str | dict[str, Any]) -> NoiseSchedule:
    """The schedule a published model was trained on (T = 1000; cosine for the 64x64 models, else linear)."""
    if isinstance(config, str) and config in COSINE_MODELS:
        return NoiseSchedule.cosine(1000)
    return NoiseSchedule.linear(1000)


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file (a plain state dict, or a dict holding one under ``state_dict``)."""
    loaded = read_checkpoint(path, key)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{key}={str(path)!r} holds no state dict of tensors (got {type(loaded).__name__})")
    return state


def check_keys(net: nn.Module, state: dict[str, torch.Tensor], description: str) -> None:
    """A clear error when ``state`` does not fit ``net`` exactly (keys, then shapes)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{description}: missing keys {missing[:3]}{' …' if len(missing) > 3 else ''} "
                         f"({len(missing)} in all), unexpected keys {unexpected[:3]}"
                         f"{' …' if len(unexpected) > 3 else ''} ({len(unexpected)} in all)")
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{description}: {len(wrong)} tensors have the wrong shape, e.g. {k} is {got} in the file "
                         f"but {want} in the network")


def load_adm(path: str | Path, config: str | dict[str, Any], kind: str = "adm", use_fp16: bool | None = None,
             key: str = "path") -> nn.Module:
    """An ADM network (``kind`` "adm" or "adm_classifier") built from ``config`` with the file's weights, in eval mode.

    ``use_fp16`` overrides the config's (the published ones run their body in float16, which needs a GPU to pay off).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}={str(path)!r}: ADM checkpoint not found. The published files (e.g. 256x256_diffusion_uncond.pt, "
            "256x256_classifier.pt) come from the openai/guided-diffusion release; download them on a machine with "
            f"internet access, copy them here and point {key} at the file (relative paths start at "
            "model.checkpoint_root)")
    arguments = resolve_config(config, kind, key.rsplit(".", 1)[0] + ".config")
    if use_fp16 is not None:
        arguments["use_fp16"] = use_fp16
    net = NETWORKS[CLASS_OF_KIND[kind]](**arguments)
    state = read_state_dict(path, key)
    name = config if isinstance(config, str) else "the given config dict"
    check_keys(net, state, f"{key}={str(path)!r} does not fit ADM config {name}")
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


class ClassConditionalTarget(ScoreModelTarget):
    """A class-conditional ADM UNet (``num_classes`` set: guided-diffusion's ``256x256_diffusion``, …) as a Target:
    score = −ε̂(x, t, y)/σ_t, the label embedding added to the time embedding inside the network.

    The labels are set per batch by :meth:`with_labels` (one per sample), as the classifier guidances' are; a
    predict run gives sample i the class ``label_cycle[i % len(label_cycle)]`` (the config's ``class_labels``, else
    every class in turn: i % num_classes, as guidance does). Only the ε call differs from
    :class:`~lit_mcmc.targets.ScoreModelTarget`: the network is called with ``y``.
    """

    def __init__(self, net: ADMUNet, schedule: NoiseSchedule, label_cycle: Sequence[int] | None = None,
                 labels: Tensor | None = None) -> None:
        if net.num_classes is None:
            raise ValueError("ClassConditionalTarget needs a class-conditional ADM UNet (num_classes set)")
        super().__init__(net, schedule, learned_variance=net.learn_sigma)
        self.label_cycle = list(range(net.num_classes)) if label_cycle is None else list(label_cycle)
        wrong = [y for y in self.label_cycle if not 0 <= y < net.num_classes]
        if wrong:
            raise ValueError(f"class_labels {wrong} are not classes of this model (0..{net.num_classes - 1})")
        self.unet = net
        self.labels = labels
        if labels is not None:
            self.net = functools.partial(net, y=labels)

    def with_labels(self, labels: Tensor) -> ClassConditionalTarget:
        """A copy conditioned on ``labels`` (LongTensor [B], one per sample); the network is shared."""
        labelled = copy.copy(self)
        labelled.labels = labels
        labelled.net = functools.partial(self.unet, y=labels)
        return labelled

    def _network(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        if self.labels is None:
            raise ValueError("a class-conditional ADM model needs class labels: set them per batch with "
                             ".with_labels(labels) (predict runs do, from the sample index or class_labels)")
        if self.labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels has {self.labels.shape[0]} entries but x has a batch of {x.shape[0]}: give one "
                             "label per sample")
        return super()._network(x, t)
