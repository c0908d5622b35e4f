"""Published ADM checkpoints as components: strict loading with clear errors, the ADM target and schedule, and the
ImageNet configs end to end on CPU with tiny random-weight checkpoints written here (the same code path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mcmc.assets import shared_path
from lit_mcmc.compose import ClassifierGuidance
from lit_mcmc.experiments.jobs import evaluations_per_level
from lit_mcmc.modules import ComponentConfig, CompositionConfig, SamplingModule
from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet
from lit_mcmc.pretrained.adm import PUBLISHED_CONFIGS, default_schedule
from lit_mcmc.samplers import SamplerConfig
from lit_mcmc.targets import ScoreModelTarget

REPO = Path(__file__).resolve().parents[2]
IMAGENET = REPO / "configs" / "imagenet"
# Small networks of the published ones' kind: learned σ, scale-shift norm, resblock up/down, 64-channel heads.
TINY_UNET = {"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
             "attention_resolutions": [2], "dropout": 0.0, "channel_mult": [1, 2], "num_classes": None,
             "use_fp16": False, "num_heads": 1, "num_head_channels": 16, "num_heads_upsample": -1,
             "use_scale_shift_norm": True, "resblock_updown": True, "use_new_attention_order": False}
TINY_CLASSIFIER = {"image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 1000,
                   "num_res_blocks": 1, "attention_resolutions": [2], "channel_mult": [1, 2], "use_fp16": False,
                   "num_head_channels": 16, "use_scale_shift_norm": True, "resblock_updown": True, "pool": "attention"}


def save_random(net: torch.nn.Module, path: Path, seed: int = 0) -> Path:
    """Random weights everywhere (the published init zeroes output layers, which would make every score zero)."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.05 * torch.randn(v.shape, generator=generator) for k, v in net.state_dict().items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guided_diffusion")
    save_random(ADMUNet(**TINY_UNET), root / "unet.pt")
    save_random(ADMEncoderClassifier(**TINY_CLASSIFIER), root / "classifier.pt", seed=1)
    save_random(ADMUNet(**{**TINY_UNET, "num_classes": 1000}), root / "unet_cond.pt", seed=2)
    return root


def adm(config=None, **changes) -> ComponentConfig:
    return ComponentConfig(pretrained="adm", path="unet.pt", config=config or dict(TINY_UNET), **changes)


def test_published_configs_match_the_conformance_data():
    path = shared_path("conformance", "guided_diffusion", "published_configs.json")
    if not path.is_file():
        pytest.skip(f"conformance data not found at {path} (see ../shared/ASSETS.md)")
    assert PUBLISHED_CONFIGS == json.loads(path.read_text())


def test_default_schedules_are_the_published_ones():
    linear, cosine = default_schedule("256x256_diffusion_uncond"), default_schedule("64x64_diffusion")
    assert linear.T == cosine.T == 1000
    torch.testing.assert_close(linear.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert float(cosine.betas[-1]) == pytest.approx(0.999)


def test_adm_component_score_is_minus_eps_half_over_sigma(checkpoints: Path):
    """The target's score is −ε̂/σ_t from the first three channels; the variance half reaches the reverse step."""
    module = SamplingModule({"diffusion": adm()}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                            [3, 16, 16], checkpoint_root=str(checkpoints), respace=10)
    target = module.target
    assert isinstance(target, ScoreModelTarget) and target.learned_variance
    net = module.models["diffusion"]
    x = torch.randn(2, 3, 16, 16)
    level = 6
    t_model = module.schedule.model_t(level, 2)
    assert t_model.tolist() == [666, 666]  # respaced: the network sees the training timestep round(6·999/9)
    evaluation = target.evaluate(x, level)
    with torch.no_grad():
        out = net(x, t_model)
    sigma = float(module.schedule.marginal_std[level])
    torch.testing.assert_close(evaluation.score, -out[:, :3] / sigma)
    torch.testing.assert_close(evaluation.variance_output, out[:, 3:])


def test_guided_adm_components_through_the_module(checkpoints: Path):
    components = {"diffusion": adm(), "clf": ComponentConfig(pretrained="adm_classifier", path="classifier.pt",
                                                             config=dict(TINY_CLASSIFIER), role="classifier")}
    composition = CompositionConfig(kind="classifier_guidance", parts=["diffusion"], classifier="clf", scale=20.0)
    module = SamplingModule(components, composition, SamplerConfig(kernel="reverse", reverse_variance="learned"),
                            [3, 16, 16], checkpoint_root=str(checkpoints), respace=4)
    assert isinstance(module.target, ClassifierGuidance) and module.n_classes == 1000
    out = module.predict_step(torch.tensor([3, 1001]), 0)
    assert out["labels"].tolist() == [3, 1]
    assert out["samples"].shape == (2, 3, 16, 16) and torch.isfinite(out["samples"]).all()


def test_wrong_keys_name_the_first_missing_and_unexpected_keys_the_config_and_the_file(checkpoints: Path, tmp_path):
    state = torch.load(checkpoints / "unet.pt", weights_only=True)
    state["extra.weight"] = state.pop("out.2.weight")
    torch.save(state, tmp_path / "unet.pt")
    with pytest.raises(ValueError) as error:
        SamplingModule({"diffusion": adm()}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                       [3, 16, 16], checkpoint_root=str(tmp_path))
    message = str(error.value)
    for part in ("model.components.diffusion.path", str(tmp_path / "unet.pt"), "missing keys ['out.2.weight']",
                 "unexpected keys ['extra.weight']", "does not fit ADM config"):
        assert part in message
    # a published name is named as such; a classifier file given to the UNet fails on its keys, not later
    with pytest.raises(ValueError, match="does not fit ADM config 256x256_diffusion_uncond: missing keys"):
        SamplingModule({"diffusion": ComponentConfig(pretrained="adm", path=str(checkpoints / "classifier.pt"),
                                                     config="256x256_diffusion_uncond", use_fp16=False)},
                       CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"), [3, 256, 256])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"],
                         ids=["empty", "text", "truncated"])
def test_unreadable_file_is_one_clear_error(tmp_path, content):
    (tmp_path / "unet.pt").write_bytes(content)
    with pytest.raises(ValueError) as error:
        SamplingModule({"diffusion": adm()}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                       [3, 16, 16], checkpoint_root=str(tmp_path))
    message = str(error.value)
    assert "model.components.diffusion.path" in message and "is not a readable checkpoint" in message
    assert "weights_only=False" not in message


def test_missing_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="guided-diffusion release.*model.components.diffusion.path"):
        SamplingModule({"diffusion": adm()}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                       [3, 16, 16], checkpoint_root=str(tmp_path))


@pytest.mark.parametrize("kwargs,message", [
    ({"pretrained": "adm", "path": "x.pt", "config": "512x512_diffusion"}, "not a published ADM config"),
    ({"pretrained": "adm", "path": "x.pt", "config": "256x256_classifier"}, "use pretrained: adm_classifier"),
    ({"pretrained": "adm_classifier", "path": "x.pt", "config": "256x256_classifier"}, "set role: classifier"),
    ({"pretrained": "adm", "config": "256x256_diffusion_uncond"}, "needs 'path'"),
    ({"pretrained": "adm", "checkpoint": "a.ckpt", "path": "x.pt", "config": "256x256_diffusion_uncond"},
     "exactly one of"),
    ({"checkpoint": "a.ckpt", "use_fp16": True}, "use_fp16 applies only to pretrained components"),
])
def test_component_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ComponentConfig(**kwargs)


TINY_CONDITIONAL = {**TINY_UNET, "num_classes": 10}


def test_class_conditional_score_adds_the_label_embedding_to_the_time_embedding(tmp_path):
    """The conditional model's score against a hand computation: the same weights without the label embedding,
    with label_emb(y) added to the time embedding's output (guided-diffusion's UNetModel.forward)."""
    save_random(ADMUNet(**TINY_CONDITIONAL), tmp_path / "unet.pt")
    module = SamplingModule({"diffusion": adm(TINY_CONDITIONAL)}, CompositionConfig(kind="single"),
                            SamplerConfig(kernel="reverse"), [3, 16, 16], checkpoint_root=str(tmp_path), respace=4)
    labels = module.labels_for(torch.tensor([0, 7, 13]))
    assert labels.tolist() == [0, 7, 3]  # the sample index, modulo the model's classes
    state = torch.load(tmp_path / "unet.pt", weights_only=True)
    plain = ADMUNet(**TINY_UNET)
    plain.load_state_dict({k: v for k, v in state.items() if k != "label_emb.weight"}, strict=True)
    plain.time_embed.register_forward_hook(lambda mod, args, out: out + state["label_emb.weight"][labels])
    x = torch.randn(3, 3, 16, 16)
    level = 2
    with torch.no_grad():
        eps = plain(x, module.schedule.model_t(level, 3, x.device))[:, :3]
    evaluation = module.target_for(labels).evaluate(x, level)
    torch.testing.assert_close(evaluation.score, -eps / float(module.schedule.marginal_std[level]), rtol=0,
                               atol=1e-5)
    assert evaluation.variance_output.shape == x.shape  # the learned-σ half, for the reverse step
    other = module.target_for(torch.tensor([1, 2, 4])).evaluate(x, level).score
    assert (other - evaluation.score).abs().max() > 1e-3  # the label matters


def test_class_labels_of_a_conditional_adm_model(tmp_path):
    save_random(ADMUNet(**TINY_CONDITIONAL), tmp_path / "unet.pt")
    module = SamplingModule({"diffusion": adm(TINY_CONDITIONAL, class_labels=[5, 2])},
                            CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"), [3, 16, 16],
                            checkpoint_root=str(tmp_path), respace=4)
    assert module.labels_for(torch.tensor([0, 1, 2])).tolist() == [5, 2, 5]
    assert module.predict_step(torch.tensor([3, 4]), 0)["labels"].tolist() == [2, 5]
    with pytest.raises(ValueError, match=r"class_labels \[12\] are not classes of this model \(num_classes=10"):
        SamplingModule({"diffusion": adm(TINY_CONDITIONAL, class_labels=[12])}, CompositionConfig(kind="single"),
                       SamplerConfig(kernel="reverse"), [3, 16, 16], checkpoint_root=str(tmp_path))
    save_random(ADMUNet(**TINY_UNET), tmp_path / "uncond.pt")
    with pytest.raises(ValueError, match="this ADM model is unconditional"):
        SamplingModule({"diffusion": ComponentConfig(pretrained="adm", path="uncond.pt", config=dict(TINY_UNET),
                                                     class_labels=[1])}, CompositionConfig(kind="single"),
                       SamplerConfig(kernel="reverse"), [3, 16, 16], checkpoint_root=str(tmp_path))
    with pytest.raises(ValueError, match="class_labels applies only to pretrained: diffusers"):
        ComponentConfig(pretrained="adm_classifier", path="c.pt", config="256x256_classifier", role="classifier",
                        class_labels=[1])


def test_conditional_model_with_the_noisy_classifier_shares_its_labels(checkpoints, tmp_path):
    """Guidance's labels condition the model too; the classifier term s·log p_φ(y|x, t) stays exact (MH) and the
    integrand is the conditional model's score alone."""
    save_random(ADMUNet(**TINY_CONDITIONAL), tmp_path / "unet.pt")
    save_random(ADMEncoderClassifier(**{**TINY_CLASSIFIER, "out_channels": 10}), tmp_path / "classifier.pt", seed=1)
    components = {"diffusion": adm(TINY_CONDITIONAL),
                  "classifier": ComponentConfig(pretrained="adm_classifier", path="classifier.pt",
                                                config={**TINY_CLASSIFIER, "out_channels": 10}, role="classifier")}
    module = SamplingModule(components, CompositionConfig(kind="classifier_guidance", parts=["diffusion"],
                                                          classifier="classifier", scale=2.0, n_classes=10),
                            SamplerConfig(kernel="reverse"), [3, 16, 16], checkpoint_root=str(tmp_path), respace=4)
    labels = module.labels_for(torch.tensor([3, 14]))
    assert labels.tolist() == [3, 4]
    guided = module.target_for(labels)
    x = torch.randn(2, 3, 16, 16)
    evaluation = guided.evaluate(x, 1)
    conditional = guided.target.evaluate(x, 1)
    assert guided.target.labels.tolist() == [3, 4]
    torch.testing.assert_close(evaluation.integrand, conditional.score, rtol=0, atol=0)
    classifier = module.models["classifier"]
    with torch.no_grad():
        logits = classifier(x, module.schedule.model_t(1, 2, x.device))
    log_p = torch.log_softmax(logits, -1)[torch.arange(2), labels]
    torch.testing.assert_close(evaluation.exact, 2.0 * log_p, rtol=0, atol=1e-5)


# ----- the ImageNet configs on CPU ------------------------------------------------------------------------------


def write_real_images(root: Path, n: int = 8) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")


def tiny_imagenet_config(name: str, checkpoints: Path, tmp_path: Path) -> tuple[dict, Path]:
    """configs/imagenet/<name>.yaml with the tiny checkpoints, a small RegNet, 16x16 images and 4 of 1000 levels."""
    config = yaml.safe_load((IMAGENET / f"{name}.yaml").read_text())
    out = tmp_path / name
    config["trainer"].update(default_root_dir=str(out), enable_progress_bar=False, accelerator="cpu", devices=1)
    writer, accuracy, fid = config["trainer"]["callbacks"]
    regnet = tmp_path / "regnet.pth"
    torch.save(torchvision.models.get_model("regnet_x_400mf", weights=None).state_dict(), regnet)
    evaluation = accuracy["init_args"]["classifier"]
    assert evaluation["init_args"]["arch"] == "regnet_x_8gf"  # the paper's; a smaller one of its family here
    evaluation["init_args"].update(weights=str(regnet), arch="regnet_x_400mf", resize_size=16, crop_size=16)
    real = tmp_path / "real"
    if not real.exists():
        write_real_images(real)
    # No Inception weights here: FID on the RegNet's features, real statistics from a folder as the config does.
    fid["init_args"] = {"feature_extractor": {"class_path": "callbacks.fid.ClassifierFeatures",
                                              "init_args": {"classifier": evaluation}},
                        "real_data": {**fid["init_args"]["real_data"]}, "image_shape": [3, 16, 16]}
    fid["init_args"]["real_data"]["init_args"] = {"dataset": "folder", "root": str(real), "split": "test"}
    init = config["model"]["init_args"]
    init.update(checkpoint_root=str(checkpoints), sample_shape=[3, 16, 16], respace=4)
    published = init["components"]["diffusion"]["config"]
    assert published in ("256x256_diffusion_uncond", "256x256_diffusion")
    if published == "256x256_diffusion":  # class-conditional, over the classifier's 1000 classes
        init["components"]["diffusion"].update(path="unet_cond.pt", config={**TINY_UNET, "num_classes": 1000})
    else:
        init["components"]["diffusion"].update(path="unet.pt", config=TINY_UNET)
    init["components"]["classifier"].update(path="classifier.pt", config=TINY_CLASSIFIER)
    config["data"]["init_args"].update(n_samples=3, batch_size=2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sample_guided_reverse", "sample_guided_hmc"])
def test_imagenet_configs_run_end_to_end_on_cpu(checkpoints: Path, tmp_path: Path, name: str, restore_environ):
    from lit_mcmc.cli import main

    config, path = tiny_imagenet_config(name, checkpoints, tmp_path)
    main(["predict", "--config", str(path)])
    out = Path(config["trainer"]["default_root_dir"])
    merged = np.load(out / "samples.npz")
    assert merged["samples"].shape == (3, 3, 16, 16) and np.isfinite(merged["samples"]).all()
    assert merged["labels"].tolist() == [0, 1, 2]  # index % 1000
    stats = json.loads((out / "stats.json").read_text())
    sampler = config["model"]["init_args"]["sampler"]
    assert sampler["reverse_variance"] == "learned"
    levels = 4
    # the first reverse step's evaluation, then per level the sampler's (reverse steps reuse the chain's last one)
    assert stats["nfe_per_sample"] == 1 + (levels - 1) * (evaluations_per_level(sampler) if name.endswith("hmc")
                                                          else 1)
    assert stats["sampler"] == ("HMC-2-curve" if name.endswith("hmc") else "Reverse")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"r3_accuracy", "top1_accuracy", "top5_accuracy", "fid"} <= set(metrics)
    assert np.isfinite(metrics["fid"])
    events = sorted(out.glob("lightning_logs/version_*"))[-1]
    tensorboard = EventAccumulator(str(events), size_guidance={"images": 0})
    tensorboard.Reload()
    assert "samples" in tensorboard.Tags()["images"]  # the sample grid
    # rerunning resumes: every shard exists, nothing is sampled again, the samples are the same
    main(["predict", "--config", str(path)])
    np.testing.assert_array_equal(np.load(out / "samples.npz")["samples"], merged["samples"])


@pytest.mark.slow
def test_conditional_imagenet_config_runs_end_to_end_on_cpu(checkpoints: Path, tmp_path: Path, restore_environ):
    """configs/imagenet/sample_conditional_guided_hmc.yaml with tiny checkpoints: labels by index condition the
    model and guide the classifier."""
    from lit_mcmc.cli import main

    config, path = tiny_imagenet_config("sample_conditional_guided_hmc", checkpoints, tmp_path)
    assert config["model"]["init_args"]["composition"]["scale"] == 1.0
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # the writer: samples only
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    out = Path(config["trainer"]["default_root_dir"])
    merged = np.load(out / "samples.npz")
    assert merged["samples"].shape == (3, 3, 16, 16) and np.isfinite(merged["samples"]).all()
    assert merged["labels"].tolist() == [0, 1, 2]  # index % 1000
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sampler"] == "HMC-2-curve"


@pytest.mark.slow
def test_imagenet_hmc_samples_do_not_depend_on_the_process_count(checkpoints: Path, tmp_path: Path, restore_environ):
    from tests.e2e.test_distributed import one_and_two_process_samples

    config, path = tiny_imagenet_config("sample_guided_hmc", checkpoints, tmp_path)
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]  # the writer: samples only
    path.write_text(yaml.safe_dump(config))
    reference, split = one_and_two_process_samples(path, tmp_path)
    assert split["indices"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(split["samples"], reference["samples"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(split["labels"], reference["labels"])
