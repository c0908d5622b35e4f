"""Image evaluation: uint8 conversion, R3/top-k accuracy, FID (metric and callback), the CIFAR ResNet-20."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from callbacks.accuracy import AccuracyCallback
from callbacks.fid import ClassifierFeatures, FIDCallback, InceptionFeatures
from lit_mcmc.assets import shared_path
from lit_mcmc.metrics.images import quantize, r3_accuracy, to_uint8, topk_accuracy
from lit_mcmc.nets.resnet_cifar import RESNET20_WEIGHTS_FILE, load_resnet20, resnet20

IMAGE_SHAPE = (3, 8, 8)


# ---------------------------------------------------------------- helpers


class LinearFeatures(nn.Module):
    """A fixed random linear map of flattened 3x8x8 images to 16 features."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.randn(16, math.prod(IMAGE_SHAPE), generator=generator) / 8)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T


def _images(n: int, seed: int, shape: tuple[int, ...] = IMAGE_SHAPE) -> Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _reference_fid(real_features: Tensor, fake_features: Tensor) -> float:
    """The FID formula with scipy's matrix square root, in float64."""
    a, b = real_features.double().numpy(), fake_features.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


class SamplesModule(LightningModule):
    """predict_step returns given samples and labels for a batch of indices; generate_samples draws noise."""

    def __init__(self, samples: Tensor, labels: Tensor) -> None:
        super().__init__()
        self.samples, self.labels = samples, labels
        self.weight = nn.Parameter(torch.zeros(()))
        self.grad_enabled_in_generation: bool | None = None

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return {"samples": self.samples[batch], "labels": self.labels[batch]}

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self.weight**2

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def generate_samples(self, n: int, generator: torch.Generator) -> tuple[Tensor, None]:
        x = torch.rand(n, *IMAGE_SHAPE, generator=generator, device=self.device).requires_grad_(True)
        # Samplers differentiate with respect to the images: this must work inside validation.
        (grad,) = torch.autograd.grad((x * self.weight).sum(), x)
        self.grad_enabled_in_generation = bool(torch.is_grad_enabled())
        return (x + grad).detach() * 2 - 1, None


class RecordingLogger(Logger):
    """A logger whose experiment records add_scalar calls."""

    class Experiment:
        def __init__(self) -> None:
            self.scalars: dict[str, float] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = value

    def __init__(self) -> None:
        super().__init__()
        self._experiment = self.Experiment()

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> Experiment:
        return self._experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_hyperparams(self, params: object) -> None:
        return None


def _trainer(**kwargs: object) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    defaults.update(enable_model_summary=False, enable_checkpointing=False)
    return Trainer(**{**defaults, **kwargs})


def _predict(callback: object, samples: Tensor, labels: Tensor, batch_size: int, **kwargs: object) -> None:
    loader = DataLoader(torch.arange(len(samples)), batch_size=batch_size)
    _trainer(callbacks=[callback], **kwargs).predict(SamplesModule(samples, labels), loader)


# ---------------------------------------------------------------- metric helpers


def test_to_uint8_exact_values_and_round_trip() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, -3.0, 2.0, 1 / 127.5 - 1 + 0.003])
    assert to_uint8(x).tolist() == [0, 255, 128, 0, 255, 1]  # 127.5 rounds (half to even) to 128
    assert to_uint8(x).dtype == torch.uint8
    pixels = torch.arange(256)
    assert torch.equal(to_uint8(pixels / 127.5 - 1), pixels.to(torch.uint8))


def test_quantize_is_the_saved_8bit_image_in_model_range() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.0041, 1.0, 5.0])
    # the uint8 pixels 0, 0, 64 (63.75 rounded), 128 (127.5 rounded half to even), 128, 255, 255
    assert quantize(x).tolist() == pytest.approx([-1.0, -1.0, 64 / 127.5 - 1, 128 / 127.5 - 1, 128 / 127.5 - 1,
                                                  1.0, 1.0], abs=1e-6)
    torch.testing.assert_close(quantize(quantize(x)), quantize(x))


def test_r3_accuracy_is_strict_and_topk_counts_rank() -> None:
    probs = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    assert r3_accuracy(probs, labels) == 0.5  # the 0.5 of sample 1 does not count
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([1, 1, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0
    with pytest.raises(ValueError, match="k=4"):
        topk_accuracy(logits, labels, 4)


# ---------------------------------------------------------------- FID


def test_fid_with_custom_features_matches_analytic_and_scipy_values() -> None:
    extractor = LinearFeatures()
    real = _images(200, seed=1)

    def fid(fake: Tensor) -> float:
        metric = FrechetInceptionDistance(feature=extractor, normalize=True, input_img_size=IMAGE_SHAPE)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        return float(metric.compute())

    assert abs(fid(real)) < 1e-3
    # A shift leaves the covariance unchanged: FID = |W shift|^2 exactly.
    shift = 0.2
    expected = (extractor(torch.full((1, *IMAGE_SHAPE), shift)) ** 2).sum().item()
    assert fid(real + shift) == pytest.approx(expected, rel=1e-4)
    other = _images(200, seed=2) * 0.7
    assert fid(other) == pytest.approx(_reference_fid(extractor(real), extractor(other)), rel=1e-4)


def test_fid_callback_in_predict_matches_metric_and_reuses_cached_real_stats(tmp_path) -> None:
    real, fake = _images(150, seed=3), _images(120, seed=4) * 0.8 + 0.1
    labels = torch.zeros(len(fake), dtype=torch.long)
    stats_path = tmp_path / "stats" / "linear16_toy.pt"
    options = dict(feature_name="linear16", dataset_name="toy", real_stats_path=str(stats_path))
    options["image_shape"] = IMAGE_SHAPE
    fake[0, 0, 0, 0] = 7.0  # out of range: scored as the saved image would be, at 1.0
    direct = FrechetInceptionDistance(feature=LinearFeatures(), normalize=True, input_img_size=IMAGE_SHAPE)
    direct.update(quantize(real), real=True)  # the callback scores 8-bit images
    direct.update(quantize(fake), real=False)
    expected = float(direct.compute())
    assert quantize(fake)[0, 0, 0, 0] == 1.0

    callback = FIDCallback(feature_extractor=LinearFeatures(), real_data=real, real_batch_size=64, **options)
    logger = RecordingLogger()
    _predict(callback, fake, labels, batch_size=50, logger=logger)
    assert callback.last_value == pytest.approx(expected, rel=1e-5)
    assert logger.experiment.scalars["predict/fid"] == pytest.approx(expected, rel=1e-5)
    assert torch.load(stats_path, weights_only=True)["num_samples"].item() == len(real)

    # real_data=None: the statistics can only come from the cache file.
    cached = FIDCallback(feature_extractor=LinearFeatures(), real_data=None, **options)
    _predict(cached, fake, labels, batch_size=40)
    assert cached.last_value == pytest.approx(expected, rel=1e-5)

    options["dataset_name"] = "other"
    with pytest.raises(ValueError, match="linear16/toy"):
        _predict(FIDCallback(feature_extractor=LinearFeatures(), **options), fake, labels, batch_size=40)
    options["real_stats_path"] = str(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="real_data"):
        _predict(FIDCallback(feature_extractor=LinearFeatures(), **options), fake, labels, batch_size=40)


def test_fid_callback_in_fit_logs_val_fid_of_generated_samples() -> None:
    real = _images(100, seed=5)
    callback = FIDCallback(
        feature_extractor=LinearFeatures(), real_data=real, n_val_samples=64, seed=7, image_shape=IMAGE_SHAPE
    )
    module = SamplesModule(real, torch.zeros(len(real), dtype=torch.long))
    loader = DataLoader(torch.zeros(2, 1), batch_size=1)
    trainer = _trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, loader, loader)
    assert module.grad_enabled_in_generation is True

    generated, _ = module.generate_samples(64, torch.Generator().manual_seed(7))
    expected = FrechetInceptionDistance(feature=LinearFeatures(), normalize=True, input_img_size=IMAGE_SHAPE)
    expected.update(quantize(real), real=True)
    expected.update(quantize(generated), real=False)
    assert float(trainer.callback_metrics["val/fid"]) == pytest.approx(float(expected.compute()), rel=1e-5)


def test_fid_callback_arguments_and_missing_inception_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FIDCallback()
    with pytest.raises(ValueError, match="feature_name"):
        FIDCallback(feature_extractor=LinearFeatures(), real_stats_path=str(tmp_path / "s.pt"))
    with pytest.raises(FileNotFoundError, match=r"weights-inception-2015-12-05-6726825d\.pth.*inception_weights"):
        FIDCallback(inception_weights=str(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))
    with pytest.raises(TypeError, match="features"):
        ClassifierFeatures(nn.Linear(2, 2))


def test_inception_features_load_a_local_file_and_see_uint8_pixels(tmp_path, monkeypatch) -> None:
    # Stand-in weights with the real layout: torch-fidelity's network, randomly initialised.
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        random_net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_net.state_dict(), weights)

    extractor = InceptionFeatures(weights)
    assert extractor.net.features_list == ["2048"] and extractor.num_features == 2048
    # Compare at the 64-d stem features: the full network costs seconds per image on a CPU.
    extractor.net.features_list = random_net.features_list = ["64"]
    random_net.use_antialias = False  # InceptionFeatures resizes like TensorFlow 1 by default
    images = _images(2, seed=6, shape=(3, 32, 32))
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    with torch.no_grad():
        assert torch.allclose(extractor(images), random_net(pixels), atol=1e-5)


# ---------------------------------------------------------------- accuracy


def test_accuracy_callback_hand_example_over_two_batches() -> None:
    # The "images" are logits / 5; the classifier multiplies them back by 5.
    logits = torch.tensor(
        [
            [5.0, 0, 0, 0, 0, 0],  # label 0: p = 0.97  -> R3, top-1, top-5
            [0, 1.0, 0, 0, 0, 0],  # label 1: p = 0.35  -> top-1, top-5
            [0, 0, 0, 0, 0, -5.0],  # label 5: ranked last -> none
            [3.0, 2.0, 0, 0, 0, 0],  # label 1: p = 0.24, rank 2 -> top-5
        ]
    )
    labels = torch.tensor([0, 1, 5, 1])
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 6, bias=False))
    nn.init.eye_(classifier[1].weight)
    classifier[1].weight.data *= 5
    callback = AccuracyCallback(classifier, n_classes=6)
    _predict(callback, (logits / 5).view(4, 6, 1, 1), labels, batch_size=2)
    assert callback.last_values == pytest.approx({"r3_accuracy": 0.25, "top1_accuracy": 0.5, "top5_accuracy": 0.75})

    unlabelled = AccuracyCallback(classifier, n_classes=6)
    with pytest.raises(ValueError, match="labels"):
        unlabelled._update(torch.zeros(1, 6, 1, 1), None)


# ---------------------------------------------------------------- ResNet-20


def test_resnet20_architecture() -> None:
    net = resnet20()
    assert round(sum(p.numel() for p in net.parameters()) / 1e4) == 27  # "0.27M" in He et al.
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    assert net.features(x).shape == (2, 64)
    assert resnet20(n_classes=100)(x).shape == (2, 100)


def test_missing_resnet_weights_name_file_source_and_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIT_MCMC_SHARED", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        load_resnet20()
    for part in (RESNET20_WEIGHTS_FILE, "pytorch_resnet_cifar10", "Idelbayev", "weights_path"):
        assert part in str(error.value)


def _cifar10_test_subset() -> tuple[Tensor, Tensor]:
    weights, batch = shared_path("weights", RESNET20_WEIGHTS_FILE), shared_path("data", "cifar-10-batches-py")
    if not weights.is_file() or not (batch / "test_batch").is_file():
        pytest.skip(f"needs the shared assets {weights} and {batch / 'test_batch'} (see ASSETS.md)")
    with open(batch / "test_batch", "rb") as handle:
        data = pickle.load(handle, encoding="latin1")  # str keys for Python 2 and 3 pickles
    pixels = torch.from_numpy(np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return pixels.float() / 127.5 - 1, torch.tensor(data["labels"])


def test_pretrained_resnet20_classifies_cifar10_test_subset() -> None:
    images, labels = _cifar10_test_subset()
    classifier = load_resnet20()
    callback = AccuracyCallback(classifier, n_classes=10)
    _predict(callback, images, labels, batch_size=256)
    values = callback.last_values
    assert values["top1_accuracy"] > 0.88  # about 0.92 on this subset
    assert values["r3_accuracy"] <= values["top1_accuracy"]  # p > 0.5 implies the arg max
    assert values["top5_accuracy"] > values["top1_accuracy"]


def test_resnet20_features_put_real_images_closer_to_real_than_to_noise() -> None:
    images, _ = _cifar10_test_subset()
    n = 128  # > 64 features, so both covariances are non-singular
    fid = FrechetInceptionDistance(feature=ClassifierFeatures(load_resnet20()), normalize=True)
    fid.update(images[:n], real=True)
    fid.update(images[n : 2 * n], real=False)
    real_vs_real = float(fid.compute())
    fid.reset()
    fid.update(images[:n], real=True)
    fid.update(_images(n, seed=8, shape=(3, 32, 32)), real=False)
    assert real_vs_real < 0.2 * float(fid.compute())  # about 2 against 50


# ---------------------------------------------------------------- with the sample writer (resumed runs)


class Preempted(Exception):
    pass


class IndexedSamplesModule(SamplesModule):
    """Returns the full record the SampleWriter expects; can simulate a preemption after some batches."""

    def __init__(self, samples: Tensor, labels: Tensor, fail_at_batch: int | None = None) -> None:
        super().__init__(samples, labels)
        self.fail_at_batch = fail_at_batch

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, object]:
        if batch_idx == self.fail_at_batch:
            raise Preempted("simulated preemption")
        n = len(batch)
        return {"indices": batch, "samples": self.samples[batch], "labels": self.labels[batch],
                "accept_rate": torch.ones(n, dtype=torch.float64), "nfe": 1, "adjusted": False,
                "accept_rate_per_level": {0: 1.0}, "n_nonfinite": 0, "seconds": 0.01}


def test_metric_callbacks_score_every_sample_of_a_resumed_run(tmp_path) -> None:
    from callbacks.sample_writer import SampleWriter
    from lit_mcmc.data.indices import SampleIndexDataModule

    n, n_classes = 40, 4
    samples = _images(n, seed=3)
    labels = torch.arange(n) % n_classes
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(IMAGE_SHAPE), n_classes))
    torch.nn.init.normal_(classifier[1].weight, generator=torch.Generator().manual_seed(1))
    real = _images(64, seed=4)

    def run(fail_at_batch: int | None) -> tuple[SampleWriter, AccuracyCallback, FIDCallback]:
        writer = SampleWriter(str(tmp_path))
        accuracy = AccuracyCallback(classifier, n_classes=n_classes, every_n_epochs=0)
        fid = FIDCallback(feature_extractor=LinearFeatures(), feature_name="linear", real_data=real,
                          image_shape=IMAGE_SHAPE, every_n_epochs=0)
        data = SampleIndexDataModule(n_samples=n, batch_size=16, output_dir=str(tmp_path))
        # metric callbacks on either side of the writer: their order does not matter
        _trainer(callbacks=[accuracy, writer, fid]).predict(
            IndexedSamplesModule(samples, labels, fail_at_batch), datamodule=data, return_predictions=False)
        return writer, accuracy, fid

    with pytest.raises(Preempted):
        run(fail_at_batch=1)  # only the first shard reaches the disk
    assert len(list((tmp_path / "shards").glob("shard_*.npz"))) == 1
    writer, accuracy, fid = run(fail_at_batch=None)
    merged = np.load(tmp_path / "samples.npz")
    assert merged["indices"].tolist() == list(range(n)) and merged["labels"].tolist() == labels.tolist()

    with torch.no_grad():
        logits = classifier(samples)
    expected_top1 = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy.last_values["top1_accuracy"] == pytest.approx(expected_top1)
    assert json.loads((tmp_path / "metrics.json").read_text())["top1_accuracy"] == pytest.approx(expected_top1)
    features = LinearFeatures()
    assert fid.last_value == pytest.approx(_reference_fid(features(real), features(samples)), rel=1e-3)
    assert json.loads((tmp_path / "metrics.json").read_text())["fid"] == pytest.approx(fid.last_value)


def test_merged_scoring_reports_standard_errors_kid_and_precision_recall_from_one_feature_pass(tmp_path) -> None:
    from callbacks.sample_writer import SampleWriter
    from lit_mcmc.data.indices import SampleIndexDataModule
    from lit_mcmc.metrics.feature_metrics import kid, precision_recall
    from lit_mcmc.metrics.images import accuracy_estimates

    class CountingFeatures(LinearFeatures):
        def __init__(self) -> None:
            super().__init__()
            self.images_seen = 0

        def forward(self, x: Tensor) -> Tensor:
            self.images_seen += len(x)
            return super().forward(x)

    n, n_real, n_classes = 48, 80, 4
    samples, real = _images(n, seed=5), _images(n_real, seed=6) * 0.8
    labels = torch.arange(n) % n_classes
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(IMAGE_SHAPE), n_classes))
    features = CountingFeatures()
    fid = FIDCallback(feature_extractor=features, feature_name="linear", real_data=real, image_shape=IMAGE_SHAPE,
                      every_n_epochs=0, n_boot=50)
    accuracy = AccuracyCallback(classifier, n_classes=n_classes, every_n_epochs=0)
    data = SampleIndexDataModule(n_samples=n, batch_size=16, output_dir=str(tmp_path))
    _trainer(callbacks=[fid, accuracy, SampleWriter(str(tmp_path))]).predict(
        IndexedSamplesModule(samples, labels), datamodule=data, return_predictions=False)

    assert features.images_seen == n + n_real  # every image through the network once
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    fake_features, real_features = LinearFeatures()(quantize(samples)), LinearFeatures()(quantize(real))
    strata = labels.numpy()  # the standard errors count the labels as fixed, class by class
    expected_kid = kid(fake_features, real_features, seed=0, strata=strata)
    assert metrics["kid"] == pytest.approx(expected_kid.value) and metrics["kid_se"] == pytest.approx(expected_kid.se)
    for name, estimate in precision_recall(fake_features, real_features, n_real=n, seed=0, strata=strata).items():
        assert metrics[name] == pytest.approx(estimate.value) and metrics[f"{name}_se"] == pytest.approx(estimate.se)
    assert metrics["fid_se"] > 0 and metrics["fid_low"] < metrics["fid"] < metrics["fid_high"]
    with torch.no_grad():
        expected = accuracy_estimates(classifier(samples), labels)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["r3_accuracy_low"] - 1e-12 <= metrics["r3_accuracy"] <= metrics["r3_accuracy_high"]
