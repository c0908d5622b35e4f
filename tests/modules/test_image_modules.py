"""Image models: energy-UNet scores, noisy and clean classifier modules, guidance configs, and a CLI round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.accuracy import AccuracyCallback
from lit_mcmc.compose import ReconstructionGuidance
from lit_mcmc.diffusion import ScheduleConfig
from lit_mcmc.modules import (
    ClassifierModule,
    ComponentConfig,
    CompositionConfig,
    DiffusionModule,
    NoisyClassifierModule,
    SamplingModule,
)
from lit_mcmc.nets.timm_cifar import timm_cifar_classifier
from lit_mcmc.nets.unet import EncoderClassifier, UNet
from lit_mcmc.samplers import SamplerConfig

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO / "configs" / "mnist"
TINY_NET = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2], "n_res_blocks": 1, "attn_resolutions": [],
            "image_size": 8, "n_steps": 10}
TINY_LEVELS = 20


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def two_class_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: dark 8x8 images, class 1: bright ones (separable at every noise level of a T=10 schedule)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (1.4 * labels.float() - 0.7).view(n, 1, 1, 1) + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    return images, labels


# ----- energy UNet: score = ∇ log p ----------------------------------------------------------------------------


def test_energy_unet_score_is_the_gradient_of_its_log_density():
    torch.manual_seed(0)
    net = UNet(dropout=0.0, **TINY_NET)
    with torch.no_grad():  # move away from the near-zero output initialisation, where E ≈ ‖x‖²
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    module = DiffusionModule(net, ScheduleConfig("linear", 10), parameterization="energy").double().eval()
    target = module.target()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = 6
    evaluation = target.evaluate(x, t, with_log_prob=True)

    # log p̃_t = −‖f(x, t) − x‖² / σ_t from the raw network
    f = net(x, torch.full((3,), t))
    expected = -(f - x).pow(2).flatten(1).sum(1) / module.schedule.marginal_std[t]
    torch.testing.assert_close(evaluation.log_prob, expected)

    # the score is its gradient: central differences along random directions
    h = 1e-5
    for seed in range(2):
        v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        finite_difference = (target.log_prob(x + h * v, t) - target.log_prob(x - h * v, t)) / (2 * h)
        torch.testing.assert_close((evaluation.score * v).flatten(1).sum(1), finite_difference, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(evaluation.score, -2 * x / module.schedule.marginal_std[t], atol=1e-2)


# ----- NoisyClassifierModule ------------------------------------------------------------------------------------


def fixed_noise_loss(module: NoisyClassifierModule, images: torch.Tensor, labels: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        logits = module.noisy_logits(images, torch.Generator().manual_seed(123))
    return float(F.cross_entropy(logits, labels))


def test_noisy_classifier_learns_a_separable_problem_and_its_checkpoint_reloads(tmp_path: Path):
    torch.manual_seed(0)
    images, labels = two_class_images(64)
    build = lambda: EncoderClassifier(n_classes=2, dropout=0.0, **TINY_NET)  # noqa: E731
    module = NoisyClassifierModule(build(), ScheduleConfig("linear", 10), lr=3e-3, seed=4)
    before = fixed_noise_loss(module, images, labels)
    assert abs(before - math.log(2)) < 0.3  # an untrained 2-class head is near chance

    trainer = quiet_trainer(max_steps=30)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True))
    after = fixed_noise_loss(module, images, labels)
    assert after < 0.25 * before

    metrics = trainer.validate(module, DataLoader(TensorDataset(images, labels), batch_size=16), verbose=False)[0]
    assert set(metrics) == {"val/loss", "val/acc", "val/acc_clean"}
    assert metrics["val/acc"] == 1.0 and metrics["val/acc_clean"] == 1.0

    path = tmp_path / "noisy.ckpt"
    trainer.save_checkpoint(path)
    # From Python the hparams hold the ScheduleConfig itself (the CLI saves plain config instead).
    with torch.serialization.safe_globals([ScheduleConfig]):
        checkpoint = torch.load(path, weights_only=True)
        reloaded = NoisyClassifierModule.load_from_checkpoint(path, net=build(), weights_only=True).eval()
    assert torch.equal(checkpoint["noise_generator_state"], module.train_generator().get_state())
    t = torch.full((4,), 3)
    torch.testing.assert_close(reloaded(images[:4], t), module(images[:4], t))
    assert reloaded.schedule.T == 10 and reloaded.hparams.seed == 4


def test_noisy_classifier_needs_labelled_batches():
    module = NoisyClassifierModule(EncoderClassifier(n_classes=2, **TINY_NET), ScheduleConfig("linear", 10))
    with pytest.raises(ValueError, match="labelled DataModule"):
        module.training_step(torch.zeros(2, 1, 8, 8), 0)


# ----- ClassifierModule -----------------------------------------------------------------------------------------


class SignClassifier(nn.Module):
    """logits = [−m, m] with m the image mean: predicts class 1 for bright images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([-m, m], dim=1)


def test_classifier_module_validation_logs_size_weighted_accuracy_and_loss():
    images, labels = two_class_images(7)
    labels[[0, 3]] = 1 - labels[[0, 3]]  # two of seven labels wrong for the sign classifier
    module = ClassifierModule(SignClassifier())
    # batches of 4 and 3: the epoch values must weight batches by size
    metrics = quiet_trainer().validate(module, DataLoader(TensorDataset(images, labels), batch_size=4),
                                       verbose=False)[0]
    assert metrics["val/acc"] == pytest.approx(5 / 7, abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(SignClassifier()(images), labels)), rel=1e-5)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_classifier_module_label_smoothing_and_features():
    images, labels = two_class_images(4)
    module = ClassifierModule(SignClassifier(), label_smoothing=0.2)
    logits = SignClassifier()(images)
    smoothed = 0.9 * F.cross_entropy(logits, labels) + 0.1 * F.cross_entropy(logits, 1 - labels)
    torch.testing.assert_close(module.training_step((images, labels), 0), smoothed)
    assert not hasattr(module, "features")  # the net has no features(x)

    timm_module = ClassifierModule(timm_cifar_classifier("resnet18", n_classes=3, in_channels=1))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(timm_module.features(x), timm_module.net.features(x))
    assert timm_module.num_features == 512
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassifierModule(SignClassifier(), label_smoothing=1.0)


# ----- guidance configs: errors before any checkpoint is loaded --------------------------------------------------


def guided(**changes) -> dict:
    spec = {"components": {"diffusion": ComponentConfig(checkpoint="missing.ckpt"),
                           "clf": ComponentConfig(checkpoint="missing.ckpt", role="classifier")},
            "composition": CompositionConfig(kind="classifier_guidance", parts=["diffusion"], classifier="clf",
                                             scale=20.0),
            "sampler": SamplerConfig(kernel="reverse"), "sample_shape": [1, 8, 8]}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("changes,message", [
    ({"composition": CompositionConfig(kind="classifier_guidance", parts=["nope"], classifier="clf", scale=1.0)},
     "unknown components ['nope']"),
    ({"composition": CompositionConfig(kind="classifier_guidance", parts=["diffusion"], classifier="other",
                                       scale=1.0)}, "model.composition.classifier='other' is not a component"),
    ({"composition": CompositionConfig(kind="classifier_guidance", parts=["diffusion"], classifier="diffusion",
                                       scale=1.0)}, "model.components.diffusion.role: classifier"),
    ({"composition": CompositionConfig(kind="classifier_guidance", parts=["diffusion", "clf"], classifier="clf",
                                       scale=1.0)}, "names classifier components ['clf']"),
    ({"composition": CompositionConfig(kind="product", parts=["diffusion"])}, "or change model.composition"),
    ({"composition": CompositionConfig(kind="reconstruction_guidance", parts=["diffusion"], classifier="clf",
                                       scale=1.0)}, "needs a clean classifier; set model.components.clf.role: "
                                                    "clean_classifier"),
], ids=["unknown-part", "unknown-classifier", "classifier-is-diffusion", "classifier-as-part", "unused-classifier",
        "noisy-classifier-for-reconstruction"])
def test_guidance_config_errors_name_the_key(changes, message):
    with pytest.raises(ValueError) as error:
        SamplingModule(**guided(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"kind": "classifier_guidance", "classifier": "clf"}, "model.composition.scale must be set"),
    ({"kind": "classifier_guidance", "scale": 20.0}, "model.composition.classifier must name"),
    ({"kind": "classifier_guidance", "classifier": "clf", "scale": 1.0, "labels": [0, 3], "n_classes": 3},
     "labels contains [3], outside the classifier's classes [0, 2]"),
    ({"kind": "classifier_guidance", "classifier": "clf", "scale": 1.0, "labels": [-1]}, "labels contains [-1]"),
    ({"kind": "product", "labels": [1]}, "labels applies only to kinds ['classifier_guidance', "),
    ({"kind": "reconstruction_guidance", "classifier": "clf", "scale": 1.0, "mh_scale": 1.0},
     "mh_scale applies only to kind='classifier_guidance'"),
    ({"kind": "product", "scale": 2.0}, "scale applies only to kinds"),
])
def test_composition_config_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        CompositionConfig(**kwargs)
    assert message in str(error.value)


def test_classifier_component_needs_a_checkpoint():
    with pytest.raises(ValueError, match="role='classifier' needs a 'checkpoint' of a NoisyClassifierModule"):
        ComponentConfig(analytic="toy2d_gmm", role="classifier")
    with pytest.raises(ValueError, match="role='clean_classifier' needs a 'checkpoint' of a ClassifierModule"):
        ComponentConfig(analytic="toy2d_gmm", role="clean_classifier")


def test_missing_cifar100_data_names_data_root(capsys):
    from lit_mcmc.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "cifar100" / "train_score.yaml"),
              "--model.init_args.net.init_args.ch", "8", "--trainer.max_steps", "1"])
    assert exit_info.value.code == 2
    assert "data.root is required for data.dataset='cifar100'" in capsys.readouterr().err


# ----- end to end: lit-mcmc fit (score model, noisy classifier, eval classifier) -> guided predict -------------


def write_image_folder(root: Path, n_per_class: int = 12) -> None:
    """Two classes of 8x8 grey PNGs: dark and bright."""
    rng = np.random.default_rng(0)
    for label, (name, level) in enumerate([("dark", 60), ("bright", 200)]):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = np.clip(level + rng.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{label}_{i}.png")


def tiny_fit_config(name: str, data_root: Path, run_dir: Path, steps: int = 4) -> dict:
    """configs/mnist/<name>.yaml shrunk to 8x8 images from an image folder and a few steps."""
    config = yaml.safe_load((MNIST / f"{name}.yaml").read_text())
    config["trainer"].update(max_steps=steps, default_root_dir=str(run_dir), enable_progress_bar=False,
                             enable_model_summary=False, logger=False, check_val_every_n_epoch=1,
                             limit_val_batches=1)
    config["data"]["init_args"].update(dataset="folder", root=str(data_root), batch_size=8, val_subset=None)
    net = config["model"]["init_args"]["net"]["init_args"]
    net.update(ch=8, ch_mult=[1, 2], image_size=8)
    if "schedule" in config["model"]["init_args"]:  # fewer levels, so that sampling is quick
        config["model"]["init_args"]["schedule"]["T"] = net["n_steps"] = TINY_LEVELS
    if "n_classes" in net:
        net["n_classes"] = 2
    if "sample_shape" in config["model"]["init_args"]:
        config["model"]["init_args"]["sample_shape"] = [1, 8, 8]
    return config


def write_yaml(config: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_fit_then_guided_predict_round_trip(tmp_path: Path):
    from lit_mcmc.cli import LitMCMCCLI, main

    data = tmp_path / "images"
    write_image_folder(data)
    runs = tmp_path / "runs"
    for name, run in [("train_score", "score"), ("train_noisy_classifier", "noisy_classifier"),
                      ("train_eval_classifier", "eval_classifier")]:
        main(["fit", "--config", write_yaml(tiny_fit_config(name, data, runs / run), tmp_path / f"{name}.yaml")])
        assert (runs / run / "checkpoints" / "last.ckpt").is_file()

    config = yaml.safe_load((MNIST / "sample_score_hmc.yaml").read_text())
    out = tmp_path / "samples"
    config["trainer"].update(default_root_dir=str(out), enable_progress_bar=False, logger=False)
    writer, accuracy, fid = config["trainer"]["callbacks"]
    assert fid["class_path"] == "callbacks.fid.FIDCallback"  # MNIST features: tested in test_experiment_mnist
    config["trainer"]["callbacks"] = [writer, accuracy]
    accuracy = accuracy["init_args"]
    accuracy.update(n_classes=2)
    accuracy["classifier"]["init_args"]["checkpoint"] = str(runs / "eval_classifier" / "checkpoints" / "last.ckpt")
    init = config["model"]["init_args"]
    init.update(checkpoint_root=str(runs), sample_shape=[1, 8, 8])
    config["data"]["init_args"].update(n_samples=6, batch_size=4)
    config["return_predictions"] = True  # the CLI turns them off by default (samples go to disk)
    args = ["predict", "--config", write_yaml(config, tmp_path / "predict.yaml")]
    # main()'s LitMCMCCLI, kept to read what predict_step returned
    cli = LitMCMCCLI(subclass_mode_model=True, subclass_mode_data=True, save_config_kwargs={"overwrite": True},
                     auto_configure_optimizers=False, args=args)
    predictions = cli.trainer.predict_loop.predictions

    # labels are the global index modulo the classifier's 2 classes, returned with every batch
    assert [p["indices"].tolist() for p in predictions] == [[0, 1, 2, 3], [4, 5]]
    assert [p["labels"].tolist() for p in predictions] == [[0, 1, 0, 1], [0, 1]]
    merged = np.load(out / "samples.npz")
    assert merged["samples"].shape == (6, 1, 8, 8) and np.isfinite(merged["samples"]).all()
    assert merged["indices"].tolist() == list(range(6))
    assert merged["labels"].tolist() == [0, 1, 0, 1, 0, 1]

    stats = json.loads((out / "stats.json").read_text())
    sampler = init["sampler"]
    # the config samples on model.respace of the TINY_LEVELS training levels
    levels, k, n_leapfrog = init["respace"], sampler["n_steps"], sampler["n_leapfrog"]
    assert 2 <= levels < TINY_LEVELS
    assert stats["sampler"] == "HMC-1-curve" and stats["adjusted"]
    assert stats["hparams"]["levels"] == levels and stats["hparams"]["guidance_scale"] == 20.0
    # one score evaluation for the first reverse step; then at each of the T − 1 MCMC levels one evaluation to start
    # the chain and, per step, n_leapfrog gradients plus one interior node per leapfrog segment; every later
    # reverse step reuses the chain's last score
    assert stats["nfe_per_sample"] == 1 + (levels - 1) * (1 + k * n_leapfrog * 2)
    assert len(stats["accept_rate_per_level"]) == levels - 1
    assert 0.0 <= stats["accept_rate"] <= 1.0

    # the accuracy callback read the labels: its top-1 is the evaluation classifier's on samples.npz
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, AccuracyCallback))
    with torch.no_grad():
        predicted = callback.classifier(torch.from_numpy(merged["samples"])).argmax(1)
    expected_top1 = float((predicted == torch.arange(6) % 2).float().mean())
    assert callback.last_values["top1_accuracy"] == pytest.approx(expected_top1)

    # fixed label lists cycle by index; labels beyond the classifier's classes are refused once it is loaded
    components = {"diffusion": ComponentConfig(checkpoint="score/checkpoints/last.ckpt"),
                  "clf": ComponentConfig(checkpoint="noisy_classifier/checkpoints/last.ckpt", role="classifier")}
    common = {"components": components, "sampler": SamplerConfig(kernel="reverse"), "sample_shape": [1, 8, 8],
              "checkpoint_root": str(runs)}
    module = SamplingModule(composition=CompositionConfig(kind="classifier_guidance", parts=["diffusion"],
                                                          classifier="clf", scale=20.0, labels=[1, 1, 0]), **common)
    assert module.n_classes == 2
    assert module.labels_for(torch.arange(7)).tolist() == [1, 1, 0, 1, 1, 0, 1]
    with pytest.raises(ValueError, match=r"outside the classifier's classes \[0, 1\]"):
        SamplingModule(composition=CompositionConfig(kind="classifier_guidance", parts=["diffusion"],
                                                     classifier="clf", scale=20.0, labels=[2]), **common)

    # respacing: keeping every level reproduces the samples of the full schedule; with fewer levels the networks are
    # still called with their training levels
    guidance = CompositionConfig(kind="classifier_guidance", parts=["diffusion"], classifier="clf", scale=20.0)
    batch = torch.arange(4)
    plain = SamplingModule(composition=guidance, **common).predict_step(batch, 0)["samples"]
    identity = SamplingModule(composition=guidance, respace=TINY_LEVELS, **common).predict_step(batch, 0)["samples"]
    torch.testing.assert_close(identity, plain, rtol=0, atol=0)
    respaced = SamplingModule(composition=guidance, respace=3, **common)
    seen: list[int] = []
    for name in ("diffusion", "clf"):
        respaced.models[name].net.register_forward_pre_hook(lambda _, args: seen.extend(args[1].tolist()))
    output = respaced.predict_step(batch, 0)
    assert respaced.schedule.T == 3 and output["samples"].shape == (4, 1, 8, 8)
    assert set(seen) == set(respaced.schedule.model_timesteps.tolist()) == {0, 10, 19}  # round(k * 19 / 2)
    with pytest.raises(ValueError, match=r"model.respace=1 must lie in \[2, "):
        SamplingModule(composition=guidance, respace=1, **common)

    # reconstruction guidance: the clean evaluation classifier on the Tweedie estimate, labels from the index
    clean = {"diffusion": ComponentConfig(checkpoint="score/checkpoints/last.ckpt"),
             "clf": ComponentConfig(checkpoint="eval_classifier/checkpoints/last.ckpt", role="clean_classifier")}
    reconstruction = SamplingModule(
        composition=CompositionConfig(kind="reconstruction_guidance", parts=["diffusion"], classifier="clf",
                                      scale=5.0),
        **{**common, "components": clean, "sampler": SamplerConfig(kernel="mala", n_steps=1, step_a=0.01,
                                                                    correction="line", n_points=1)})
    assert isinstance(reconstruction.target, ReconstructionGuidance) and reconstruction.n_classes == 2
    output = reconstruction.predict_step(batch, 0)
    assert output["labels"].tolist() == [0, 1, 0, 1] and torch.isfinite(output["samples"]).all()
    assert output["adjusted"] and 0.0 <= float(output["accept_rate"].mean()) <= 1.0

    # a checkpoint of the wrong kind for its role is named with the key to fix
    swapped = {"diffusion": ComponentConfig(checkpoint="noisy_classifier/checkpoints/last.ckpt"),
               "clf": ComponentConfig(checkpoint="score/checkpoints/last.ckpt", role="classifier")}
    with pytest.raises(ValueError, match=r"model.components.diffusion.role='diffusion'; is the role right"):
        SamplingModule(composition=CompositionConfig(kind="classifier_guidance", parts=["diffusion"],
                                                     classifier="clf", scale=20.0), **{**common, "components": swapped})
