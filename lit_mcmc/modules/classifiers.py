"""Classifier training: time-conditioned ("noisy") classifiers for guidance, and clean evaluation classifiers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mcmc.checkpoints import check_readable
from lit_mcmc.compilation import compile_network
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig, check_trainable_schedule
from lit_mcmc.modules.training import (
    PerRankNoise,
    StopOnDivergence,
    adam_with_warmup,
    check_optimizer_args,
    net_hparams_ignore,
    validation_generator,
)


def _images_and_labels(batch: Any) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
        raise ValueError("a classifier trains on (images, labels) batches; use a labelled DataModule such as "
                         "lit_mcmc.data.images.ImageDataModule")
    return batch[0], batch[1].long()


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == labels).float().mean()


class NoisyClassifierModule(StopOnDivergence, PerRankNoise, L.LightningModule):
    """Trains p_φ(y | x_t, t) with the cross-entropy on x_t = √ᾱ_t x_0 + σ_t ε, t ~ U{0..T−1} (guidance classifiers).

    Timesteps and noise come from a per-rank stream saved in checkpoints (as in
    :class:`~lit_mcmc.modules.diffusion.DiffusionModule`). Validation logs ``val/loss`` and ``val/acc`` on noisy
    inputs with fixed noise, and ``val/acc_clean`` on the clean images at t = 0. EMA and gradient clipping come
    from the Trainer (``EMAWeightAveraging`` callback, ``trainer.gradient_clip_val``).

    Args:
        net: ``net(x_t, t) -> [B, n_classes]`` logits, e.g. :class:`lit_mcmc.nets.unet.EncoderClassifier`.
        schedule: the noise schedule; must be the diffusion model's for guidance.
        lr: Adam learning rate; ``warmup_steps`` of linear warm-up, then constant.
        weight_decay: Adam weight decay.
        seed: base seed of the timestep/noise stream (combined with the process rank).
        compile: ``torch.compile`` the network for training.
    """

    def __init__(self, net: nn.Module, schedule: ScheduleConfig | None = None, lr: float = 2e-4,
                 warmup_steps: int = 0, weight_decay: float = 0.0, seed: int = 0, compile: bool = False) -> None:
        super().__init__()
        check_optimizer_args(lr, warmup_steps, weight_decay)
        self.save_hyperparameters(ignore=net_hparams_ignore(self, net))
        self.schedule_config = schedule or ScheduleConfig()
        self.schedule: NoiseSchedule = self.schedule_config.build()
        check_trainable_schedule(self.schedule_config)
        self.net = net

    def configure_model(self) -> None:
        if self.hparams.get("compile", False):
            compile_network(self)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits [B, n_classes] for x at network time t (LongTensor [B])."""
        return self.net(x, t)

    def noisy_logits(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """Logits on x_t for levels t and noise drawn from ``generator`` (one level per image)."""
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.net(self.schedule.q_sample(x0, t, noise), self.schedule.model_timesteps.to(x0.device)[t])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _images_and_labels(batch)
        logits = self.noisy_logits(images, self.train_generator())
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", _accuracy(logits.detach(), labels))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _images_and_labels(batch)
        logits = self.noisy_logits(images, validation_generator(self.hparams.seed, batch_idx, self.device))
        loss = F.cross_entropy(logits, labels)
        clean_t = self.schedule.model_t(0, images.shape[0], images.device)
        size = images.shape[0]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val/acc", _accuracy(logits, labels), prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val/acc_clean", _accuracy(self.net(images, clean_t), labels), sync_dist=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> Any:
        return adam_with_warmup(self.parameters(), self.hparams.lr, self.hparams.warmup_steps,
                                self.hparams.weight_decay)


class ClassifierModule(StopOnDivergence, L.LightningModule):
    """A clean classifier p(y | x) on images in [−1, 1], for evaluating generated images (accuracy, feature FID).

    Logs ``train/loss``, ``train/acc``, ``val/loss`` (without label smoothing) and ``val/acc``. ``features(x)``
    (penultimate features, for classifier-feature FID) exists when the network has one, e.g.
    :func:`lit_mcmc.nets.timm_cifar.timm_cifar_classifier` or :func:`lit_mcmc.nets.resnet_cifar.resnet20`.

    Args:
        net: ``net(x) -> [B, n_classes]`` logits (timm CIFAR backbones, ResNet-20,
            ``EncoderClassifier(time_conditioned=False)``).
        lr: Adam learning rate; ``warmup_steps`` of linear warm-up, then constant.
        weight_decay: Adam weight decay.
        label_smoothing: the cross-entropy's label smoothing in training, in [0, 1).
        compile: ``torch.compile`` the network for training.
    """

    def __init__(self, net: nn.Module, lr: float = 2e-4, warmup_steps: int = 0, weight_decay: float = 0.0,
                 label_smoothing: float = 0.0, compile: bool = False) -> None:
        super().__init__()
        check_optimizer_args(lr, warmup_steps, weight_decay)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing={label_smoothing} must lie in [0, 1)")
        self.save_hyperparameters(ignore=net_hparams_ignore(self, net))
        self.net = net

    def configure_model(self) -> None:
        if self.hparams.get("compile", False):
            compile_network(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, n_classes] for images in [−1, 1]."""
        return self.net(x)

    @property
    def features(self) -> Callable[[Tensor], Tensor]:
        """The network's ``features(x)`` (penultimate features); absent (AttributeError) when the net has none."""
        features = getattr(self.net, "features", None)
        if not callable(features):
            raise AttributeError(f"{type(self.net).__name__} has no features(x) method")
        return features

    @property
    def num_features(self) -> int:
        """Width of :attr:`features` (when the network declares it as ``num_features`` or ``n_features``)."""
        for name in ("num_features", "n_features"):
            if hasattr(self.net, name):
                return int(getattr(self.net, name))
        raise AttributeError(f"{type(self.net).__name__} declares no num_features")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _images_and_labels(batch)
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", _accuracy(logits.detach(), labels))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = _images_and_labels(batch)
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        self.log("val/acc", _accuracy(logits, labels), prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        return adam_with_warmup(self.parameters(), self.hparams.lr, self.hparams.warmup_steps,
                                self.hparams.weight_decay)


def load_classifier(checkpoint: str) -> ClassifierModule:
    """A trained clean classifier from a ``lit-mcmc fit`` checkpoint of a ClassifierModule, in eval mode on CPU.

    For configs: e.g. the ``classifier`` of ``callbacks.accuracy.AccuracyCallback`` (class_path
    ``lit_mcmc.modules.classifiers.load_classifier``).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}. Train one with `lit-mcmc fit` (e.g. "
                                "configs/cifar100/train_eval_classifier.yaml) and set `checkpoint` to its last.ckpt")
    check_readable(path, "checkpoint")
    module = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return module.eval().requires_grad_(False)
