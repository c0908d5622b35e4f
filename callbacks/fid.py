"""FID of generated images (torchmetrics), with the Inception-v3 FID network or any custom feature extractor; KID and
precision/recall on the same features, and each metric's standard error."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from callbacks.sample_metrics import SampleMetricCallback
from lit_mcmc.data.shards import atomic_torch_save
from lit_mcmc.metrics.feature_metrics import fid_bootstrap, gaussian_stats_from_sums, kid, precision_recall
from lit_mcmc.metrics.images import (
    ClassifierFeatures,  # noqa: F401  (configs name callbacks.fid.ClassifierFeatures)
    quantize,
    to_uint8,
)

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SOURCE = (
    "torch-fidelity's release v0.2.0 (https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    f"{INCEPTION_WEIGHTS_FILE})"
)
INCEPTION_FEATURE_NAME = "inception-v3-pool3"
MIN_KID_PRC_SAMPLES = 10


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d, torch-fidelity's FID network) of images in [-1, 1].

    The weights come from a local file (``inception_weights``), never from the internet. ``antialias=False``
    resizes to 299x299 like TensorFlow 1 (torch-fidelity's reference FID); True is torchmetrics' default.
    """

    num_features = 2048

    def __init__(self, weights_path: str | Path, antialias: bool = False) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception-v3 FID weights not found at {path}: the file {INCEPTION_WEIGHTS_FILE} comes from "
                f"{INCEPTION_SOURCE}. Download it on a machine with internet access and set the config key "
                "`inception_weights` to its local path (or give a custom `feature_extractor`)."
            )
        # torch-fidelity reads the file with weights_only=False; loading it once with weights_only=True first
        # refuses a file that holds anything but tensors.
        torch.load(path, map_location="cpu", weights_only=True)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(self.num_features)],
            feature_extractor_weights_path=str(path),
            antialias=antialias,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(to_uint8(x))


class FeatureRecorder(nn.Module):
    """A feature network that keeps the features of the images it sees while :attr:`kept` is a list, so that the
    bootstrap, KID and precision/recall reuse them: the network runs once per image."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.kept: list[Tensor] | None = None
        if hasattr(net, "num_features"):  # torchmetrics reads it instead of probing the network
            self.num_features = net.num_features

    def forward(self, x: Tensor) -> Tensor:
        features = self.net(x)
        if self.kept is not None:
            self.kept.append(features.detach().reshape(len(features), -1).float().cpu())
        return features

    def take(self) -> Tensor | None:
        """The kept features [N, F] (None when none were kept), and stop keeping."""
        kept, self.kept = self.kept, None
        return torch.cat(kept) if kept else None


class FIDCallback(SampleMetricCallback):
    """FID between generated images and real images (torchmetrics' FrechetInceptionDistance).

    Features: exactly one of ``inception_weights`` (a local torch-fidelity Inception-v3 weights file) or
    ``feature_extractor`` (an nn.Module mapping images [B, C, H, W] in [-1, 1] to features [B, F], e.g.
    ``ClassifierFeatures(load_resnet20())``; ``image_shape`` is the shape of one image, used to probe F when the
    module has no ``num_features``).

    Real statistics are read from ``real_stats_path`` when it holds statistics for the same
    ``feature_name``/``dataset_name``; otherwise they are computed from ``real_data`` (a tensor [N, C, H, W] in
    [-1, 1], a Dataset of images or (image, label) pairs such as ``lit_mcmc.data.images.load_images(...)``, which
    YAML can name, or an iterable of image or (images, labels) batches) in chunks of ``real_batch_size`` and
    saved there. Real and generated images are first quantized to 8 bits (rounded and clamped, as a saved image
    would be; the Inception network sees those uint8 pixels), so out-of-range samples are scored as the images
    they would be. The real statistics are kept across evaluations and held on global rank zero only (the other
    ranks hold zeros), because torchmetrics sums metric states over ranks.

    Scoring a predict run's merged samples also gives, from the same features (the network runs once per image):
    ``fid_se`` and the 95 % interval ``fid_low``/``fid_high`` (bootstrap over the generated samples, ``n_boot``
    replicates; the real statistics stay fixed), and with ``kid_precision_recall`` KID (torch-fidelity's
    estimator, subsets of min(1000, N) samples, analytic standard error) and precision/recall (k = 3, the generated
    samples against as many real ones, binomial standard errors); see :mod:`lit_mcmc.metrics.feature_metrics`.
    Those need the real features themselves: they are kept with the real statistics (``real_stats_path``), at
    most ``n_real_features`` of them. A cache written without them is used for FID, and KID and precision/recall
    are then left out with a warning (delete the cache to recompute it with them).
    """

    def __init__(
        self,
        inception_weights: str | None = None,
        feature_extractor: nn.Module | None = None,
        feature_name: str | None = None,
        real_data: Tensor | Dataset | Iterable[Any] | None = None,
        real_stats_path: str | None = None,
        dataset_name: str = "real",
        image_shape: tuple[int, int, int] = (3, 32, 32),
        real_batch_size: int = 250,
        every_n_epochs: int = 1,
        n_val_samples: int = 256,
        seed: int = 0,
        n_boot: int = 100,
        kid_precision_recall: bool = True,
        n_real_features: int = 10_000,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, n_val_samples=n_val_samples, seed=seed)
        if (inception_weights is None) == (feature_extractor is None):
            raise ValueError(
                "give exactly one of inception_weights (a local Inception-v3 weights file) and "
                f"feature_extractor (an nn.Module); got inception_weights={inception_weights!r} and "
                f"feature_extractor={type(feature_extractor).__name__ if feature_extractor is not None else None}"
            )
        if feature_extractor is None:
            feature_extractor = InceptionFeatures(inception_weights)
            feature_name = feature_name or INCEPTION_FEATURE_NAME
        elif feature_name is None and real_stats_path is not None:
            raise ValueError(
                "feature_name is required with a custom feature_extractor and real_stats_path: it keys the cached "
                "real statistics, so that statistics of another extractor are never reused"
            )
        if real_batch_size < 1:
            raise ValueError(f"real_batch_size={real_batch_size} must be >= 1")
        if n_boot < 0 or n_boot == 1:
            raise ValueError(f"n_boot={n_boot} must be 0 (no FID standard error) or at least 2")
        self.n_boot = n_boot
        self.kid_precision_recall = kid_precision_recall
        self.n_real_features = n_real_features
        self.real_features: Tensor | None = None
        self.feature_name = feature_name or type(feature_extractor).__name__
        self.dataset_name = dataset_name
        self.real_data = real_data
        self.real_stats_path = Path(real_stats_path) if real_stats_path is not None else None
        self.real_batch_size = real_batch_size
        # normalize=True: a custom extractor receives our float images unchanged (and is probed with floats).
        self.features = FeatureRecorder(feature_extractor.eval().requires_grad_(False))
        self.metric = FrechetInceptionDistance(
            feature=self.features,
            reset_real_features=False,
            normalize=True,
            input_img_size=tuple(image_shape),
        )
        self._real_ready = False

    @property
    def stats_key(self) -> str:
        """What the cached real statistics are of: ``<feature_name>/<dataset_name>``."""
        return f"{self.feature_name}/{self.dataset_name}"

    @property
    def last_value(self) -> float:
        """The most recent FID (NaN before the first evaluation)."""
        return self.last_values.get("fid", math.nan)

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # eval() again: a feature network that is also a submodule of pl_module is put in train mode by fit.
        self.metric.to(pl_module.device).inception.eval()
        if not self._real_ready:
            if trainer.is_global_zero:
                self._load_or_compute_real_stats()
            self._real_ready = True

    def _reset(self) -> None:
        self.metric.reset()
        self.features.kept = None

    def _update(self, samples: Tensor, labels: Tensor | None) -> None:
        if self.keeping and self.features.kept is None:
            self.features.kept = []  # the merged samples' features, for the standard errors, KID, precision/recall
        self.metric.update(quantize(samples.to(self.metric.device)), real=False)

    def _compute(self) -> dict[str, float]:
        return {"fid": float(self.metric.compute())}

    def _uncertainty(self) -> dict[str, float]:
        features = self.features.take()
        if features is None:
            return {}
        out: dict[str, float] = {}
        if self.n_boot:
            real_stats = gaussian_stats_from_sums(self.metric.real_features_sum, self.metric.real_features_cov_sum,
                                                  self.metric.real_features_num_samples)
            estimate = fid_bootstrap(features, *(stat.cpu() for stat in real_stats), n_boot=self.n_boot,
                                     seed=self.seed, groups=self.groups, strata=self.strata)
            out.update({k: v for k, v in estimate.as_metrics("fid").items() if k != "fid"})  # fid: torchmetrics'
        if self.kid_precision_recall:
            if self.real_features is None:
                rank_zero_warn(f"FIDCallback: no real features (the cache {self.real_stats_path} holds statistics "
                               "only), so no KID or precision/recall; delete it to recompute it with them")
            elif min(len(features), len(self.real_features)) < MIN_KID_PRC_SAMPLES:
                rank_zero_warn(f"FIDCallback: KID and precision/recall need at least {MIN_KID_PRC_SAMPLES} generated "
                               "and real samples; left out")
            else:
                n_real = min(len(features), len(self.real_features))  # equal sets: k-NN radii depend on the size
                out.update(kid(features, self.real_features, seed=self.seed, groups=self.groups,
                               strata=self.strata).as_metrics("kid"))
                for name, estimate in precision_recall(features, self.real_features, n_real=n_real, seed=self.seed,
                                                       groups=self.groups, strata=self.strata).items():
                    out.update(estimate.as_metrics(name))
        return out

    def _load_or_compute_real_stats(self) -> None:
        path = self.real_stats_path
        if path is not None and path.is_file():
            stats = torch.load(path, map_location="cpu", weights_only=True)
            if stats.get("key") != self.stats_key:
                raise ValueError(
                    f"real_stats_path={path} holds real statistics for {stats.get('key')!r}, not for "
                    f"{self.stats_key!r} (feature_name/dataset_name); point real_stats_path at another file "
                    "or delete this one to recompute it"
                )
            device = self.metric.device
            self.metric.real_features_sum = stats["features_sum"].to(device, torch.float64)
            self.metric.real_features_cov_sum = stats["features_cov_sum"].to(device, torch.float64)
            self.metric.real_features_num_samples = stats["num_samples"].to(device)
            self.real_features = stats.get("features")
            return
        if self.real_data is None:
            raise ValueError(
                f"FIDCallback has no real statistics: real_stats_path={path} does not exist and real_data is "
                "None; give real_data (real images in [-1, 1]) to compute them"
            )
        self.features.kept = []
        for images in _image_batches(self.real_data, self.real_batch_size):
            self.metric.update(quantize(images.to(self.metric.device)), real=True)
        real = self.features.take()
        self.real_features = real[:self.n_real_features] if real is not None else None
        if path is not None:
            self._save_real_stats(path)

    def _save_real_stats(self, path: Path) -> None:
        stats = {
            "key": self.stats_key,
            "features_sum": self.metric.real_features_sum.cpu(),
            "features_cov_sum": self.metric.real_features_cov_sum.cpu(),
            "num_samples": self.metric.real_features_num_samples.cpu(),
            **({"features": self.real_features} if self.real_features is not None else {}),
        }
        atomic_torch_save(path, stats)  # a crash never leaves a truncated cache behind


def _image_batches(data: Tensor | Dataset | Iterable[Any], batch_size: int) -> Iterator[Tensor]:
    """Image batches from a tensor [N, C, H, W], a Dataset of (image[, label]) items, or an iterable of batches."""
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for batch in DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data:
        yield batch if isinstance(batch, Tensor) else batch[0]
