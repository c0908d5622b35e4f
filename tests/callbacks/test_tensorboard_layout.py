"""What TensorBoard shows for a sampler comparison, checked in the event files (the browser check is
tests/browser/screenshot_tensorboard.py): the HParams session's hyper-parameters and metrics, no placeholder, no
path, and training runs apart from sampling runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mcmc.cli import main
from lit_mcmc.experiments import mnist, toy2d
from lit_mcmc.modules.components import ComponentConfig
from lit_mcmc.report import (
    HPARAM_KEYS,
    IMAGE_METRICS,
    TOY2D_METRICS,
    checkpoint_run_name,
    hparams_session,
    metric_columns,
    model_identifier,
    read_hparams_sessions,
    sampler_hparams,
    tensorboard_name,
)
from lit_mcmc.samplers import SamplerConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "toy2d"
# The list: what tells samplers apart, and the numbers to compare them by.
SAMPLER_HPARAMS = {"sampler", "model", "kernel", "correction", "step_size", "n_steps", "n_leapfrog", "damping",
                   "mass", "carry_momentum", "flip_on_reject", "reverse", "levels", "composition", "n_samples", "seed",
                   "precision"}
SAMPLER_METRICS = ["LL ↑", "W2 ↓", "GMM ↓", "acceptance", "NFE/sample", "samples/s", "non-finite log-ratios"]


def scalar_tags(root: Path) -> set[str]:
    tags: set[str] = set()
    for events in root.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["tensors"])
    return tags


def test_predict_run_logs_what_distinguishes_samplers_and_declares_its_metrics(tmp_path: Path):
    run_dir = tmp_path / "samples" / "oracle_hmc"
    main(["predict", "--config", str(CONFIGS / "sample_oracle_hmc.yaml"), "--trainer.default_root_dir", str(run_dir),
          "--trainer.enable_progress_bar", "false", "--data.init_args.n_samples", "16",
          "--data.init_args.batch_size", "16", "--model.init_args.sampler.n_steps", "1"])
    (session,) = read_hparams_sessions(tmp_path)
    # HPARAMS' column order: names sort as the columns should appear, the display names are the plain keys
    assert session.hparam_labels == list(HPARAM_KEYS) and session.hparam_names == sorted(session.hparam_names)
    assert session.hparam_labels[:5] == ["sampler", "model", "step_size", "n_steps", "composition"]
    assert set(session.hparams) == SAMPLER_HPARAMS | {"min_mcmc_level", "final_denoise"}
    assert session.hparams["final_denoise"] is False
    assert session.hparams["sampler"] == "HMC" and session.hparams["model"] == "toy2d_gmm+toy2d_bar"
    assert session.hparams["step_size"] == 0.03 and session.hparams["n_samples"] == 16
    # no CLI internals, no paths, no unused settings (HMC with a constant step: no a, b; energy correction: no nodes)
    assert not {"_instantiator", "checkpoint_root", "components/gmm/analytic", "step_a", "n_points"} & set(
        session.hparams)
    assert not any("/" in str(value) for value in session.hparams.values())
    # the metrics in their order, each with its standard error and 95 % interval right after it
    uncertainty = (" s.e.", " 95 % low", " 95 % high")
    plain = [label for label in session.metric_labels if not label.endswith(uncertainty)]
    assert plain[:len(SAMPLER_METRICS)] == SAMPLER_METRICS
    assert session.metric_labels[:8] == ["LL ↑", "LL s.e.", "LL 95 % low", "LL 95 % high", "W2 ↓", "W2 s.e.",
                                         "W2 95 % low", "W2 95 % high"]
    assert session.metric_tags[:5] == ["metrics/ll", "metrics/ll_se", "metrics/ll_low", "metrics/ll_high",
                                       "metrics/w2"]
    tags = scalar_tags(run_dir)
    assert "hp_metric" not in tags and {"metrics/w2", "metrics/n_nonfinite_log_ratios"} <= tags
    # the per-level curves, one tag each across runs: acceptance and the MH log-ratio's mean
    assert {"sampler/accept_rate_per_level", "sampler/log_ratio_mean_per_level"} <= tags
    stats = json.loads((run_dir / "stats.json").read_text())
    assert len(stats["log_ratio_mean_per_level"]) == len(stats["accept_rate_per_level"]) == 100


def test_fit_run_writes_no_hparams_session_and_no_placeholder(tmp_path: Path):
    run_dir = tmp_path / "train" / "gmm_score"
    main(["fit", "--config", str(CONFIGS / "train_gmm_score.yaml"), "--trainer.default_root_dir", str(run_dir),
          "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
          "--model.init_args.net.init_args.hidden", "8", "--data.init_args.batch_size", "16"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert read_hparams_sessions(tmp_path) == []
    tags = scalar_tags(run_dir)
    assert tags and "hp_metric" not in tags and not any(tag.startswith("_hparams_") for tag in tags)


def test_drivers_put_training_and_sampling_runs_in_separate_folders(tmp_path: Path):
    preset = toy2d.PRESETS["smoke"]
    fit = toy2d.fit_job(tmp_path, 0, "gmm_score", preset)
    sample = toy2d.predict_job(tmp_path, 0, "sample_score_hmc_curve", preset)
    assert fit.run_dir == tmp_path / "train" / "trial_0" / "gmm_score"
    assert sample.run_dir == tmp_path / "samples" / "trial_0" / "sample_score_hmc_curve"
    checkpoint_root = sample.command[sample.command.index("--model.init_args.checkpoint_root") + 1]
    assert Path(checkpoint_root) == tmp_path / "train" / "trial_0"

    smoke = mnist.PRESETS["smoke"]
    assert mnist.fit_job(tmp_path, "score", smoke).run_dir == tmp_path / "train" / "score"
    plain_row = mnist.Row("sample_score_hmc")  # a row without seed or particles: its folder is the config name
    assert mnist.predict_job(tmp_path, plain_row, smoke).run_dir == tmp_path / "samples" / "sample_score_hmc"
    config = mnist.run_config("sample_score_hmc", tmp_path, smoke)
    assert config["model"]["init_args"]["checkpoint_root"] == str(tmp_path / "train")


@pytest.mark.parametrize("checkpoint,name", [
    ("gmm_score/checkpoints/last.ckpt", "gmm_score"),
    ("/abs/runs/toy2d/train/trial_0/bar_energy/checkpoints/epoch=3-step=9.ckpt", "bar_energy"),
    ("models/score_model.ckpt", "score_model"),
])
def test_a_checkpoint_is_named_by_its_training_run(checkpoint: str, name: str):
    assert checkpoint_run_name(checkpoint) == name


def test_model_identifier_is_short_and_has_no_path():
    components = {"diffusion": ComponentConfig(checkpoint="/abs/runs/mnist/train/score/checkpoints/last.ckpt"),
                  "classifier": ComponentConfig(checkpoint="noisy_classifier/checkpoints/last.ckpt",
                                                role="classifier")}
    assert model_identifier(components) == "score+noisy_classifier"
    assert model_identifier({"a": {"analytic": "toy2d_gmm"}, "b": {"analytic": "toy2d_bar"}}) == "toy2d_gmm+toy2d_bar"
    assert model_identifier({"unet": {"pretrained": "adm", "path": "/weights/256x256_diffusion.pt"}}) == (
        "256x256_diffusion")


def test_sampler_hparams_keep_only_what_the_kernel_uses():
    class Composition:
        kind, scale, mh_scale = "classifier_guidance", 20.0, None

    ula = SamplerConfig(kernel="ula", n_steps=2, step_a=0.5, step_b=1.5, reverse_variance="posterior")
    record = sampler_hparams(ula, Composition(), {"d": {"checkpoint": "score/checkpoints/last.ckpt"}}, levels=10,
                             seed=3, precision="fp32")
    assert record == {"sampler": "U-LA", "model": "score", "n_steps": 2, "composition": "classifier_guidance",
                      "step_a": 0.5, "step_b": 1.5, "kernel": "ula", "reverse": True, "reverse_variance": "posterior",
                      "min_mcmc_level": 0, "levels": 10, "guidance_scale": 20.0, "seed": 3, "precision": "fp32"}
    tuned = SamplerConfig(kernel="hmc", step_size=0.1, correction="curve", n_points=1, target_accept=0.8)
    record = sampler_hparams(tuned, Composition(), {}, levels=10, seed=0, precision="fp32")
    assert record["target_accept"] == 0.8 and record["n_points"] == 1 and record["quadrature"] == "trapezoid"
    reused = SamplerConfig(kernel="ula", step_size=0.1, step_table="/runs/samples/la_tuned/step_sizes.json")
    assert sampler_hparams(reused, Composition(), {}, levels=10, seed=0, precision="fp32")["step_table"] == "la_tuned"


def test_session_declares_every_column_so_all_runs_of_a_folder_agree():
    images = hparams_session({"sampler": "LA", "kernel": "mala"}, metric_columns(IMAGE_METRICS))
    points = hparams_session({"sampler": "HMC", "kernel": "hmc", "n_leapfrog": 3}, metric_columns(TOY2D_METRICS))
    assert images[0].value[0].tag == "_hparams_/experiment"
    assert tensorboard_name("sampler") == "01 sampler" and tensorboard_name("precision").endswith(" precision")
    labels = [column.label for column in metric_columns(IMAGE_METRICS, ["fid", "extra"])]
    assert labels[:5] == ["accuracy (R3) ↑", "top-1 ↑", "FID ↓", "acceptance", "NFE/sample"] and labels[-1] == "extra"
    assert points[0] != images[0]  # different families of metrics, same hyper-parameter columns
