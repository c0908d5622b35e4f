"""The `lit-mcmc` entry point end to end: fit -> predict on tiny configs, and clear errors for bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "toy2d"


def lit_mcmc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the real console entry point (`python -m lit_mcmc.cli` is what `lit-mcmc` calls)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lit_mcmc.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def tiny_fit_args(name: str, root: Path) -> list[str]:
    return ["fit", "--config", str(CONFIGS / f"train_{name}.yaml"),
            "--trainer.default_root_dir", str(root / name), "--trainer.max_steps", "20",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "5",
            "--model.init_args.net.init_args.hidden", "16", "--model.init_args.net.init_args.n_blocks", "1",
            "--data.init_args.batch_size", "64", "--data.init_args.steps_per_epoch", "10",
            "--data.init_args.val_batches", "1"]


def tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags().get("tensors", []))
    return tags


@pytest.mark.slow
def test_fit_then_predict_round_trip(tmp_path: Path):
    for name in ("gmm_energy", "bar_energy"):
        result = lit_mcmc(*tiny_fit_args(name, tmp_path))
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / name / "checkpoints" / "last.ckpt").is_file()
    # energy-model validation ran (it needs input gradients under Lightning's evaluation loop)
    assert "val/loss" in tensorboard_tags(tmp_path / "gmm_energy")

    out = tmp_path / "samples"
    result = lit_mcmc("predict", "--config", str(CONFIGS / "sample_energy_hmc.yaml"),
                      "--model.init_args.checkpoint_root", str(tmp_path), "--trainer.default_root_dir", str(out),
                      "--trainer.enable_progress_bar", "false", "--data.init_args.n_samples", "50",
                      "--data.init_args.batch_size", "32", "--model.init_args.sampler.n_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(out / "samples.npz")
    assert samples["samples"].shape == (50, 2) and np.isfinite(samples["samples"]).all()
    assert samples["indices"].tolist() == list(range(50))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sampler"] == "HMC" and stats["n_samples"] == 50
    assert stats["nfe_per_sample"] == 100 * (1 + 1 * 3)  # per level: the initial evaluation + 1 step of L=3
    assert len(stats["accept_rate_per_level"]) == 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"ll", "w2", "gmm", "accept_rate", "nfe_per_sample"}
    assert (out / "samples.png").is_file()
    assert "metrics/w2" in tensorboard_tags(out)


@pytest.mark.parametrize("override,key", [
    (["--model.init_args.sampler.kernel", "langevin"], "sampler.kernel"),
    (["--model.init_args.sampler.step_size", "-0.1"], "sampler.step_size=-0.1 must be positive"),
    (["--model.init_args.checkpoint_root", "/nonexistent"], "model.components.gmm.checkpoint"),
    (["--model.init_args.sampler.damping", "1.5"], "sampler.damping=1.5"),
], ids=["unknown-sampler", "negative-step", "missing-checkpoint", "bad-damping"])
def test_bad_configs_exit_nonzero_naming_the_key(override, key, capsys):
    from lit_mcmc.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(CONFIGS / "sample_score_la_3_line.yaml"), *override])
    assert exit_info.value.code not in (0, None)
    assert key in capsys.readouterr().err


@pytest.mark.parametrize("args,line", [
    (["--model.init_args.sampler.reverse_variance", "beta_tilde"],
     "lit-mcmc: error: model.sampler.reverse_variance: Expected a typing.Literal['beta', 'posterior', 'learned']. "
     "Got value: beta_tilde"),
    (["--model.init_args.samplr.kernel", "hmc"], "lit-mcmc: error: model: unrecognized arguments: --samplr.kernel=hmc"),
    (["--data.init_args.batch_size", "abc"],
     "lit-mcmc: error: data.batch_size: Expected a <class 'int'>. Got value: abc"),
    (["--trainer.max_stepz", "3"], "lit-mcmc: error: unrecognized arguments: --trainer.max_stepz 3"),
], ids=["literal", "misspelt-group", "type", "unknown-key"])
def test_config_parse_errors_are_one_line_naming_the_key(args, line, capsys):
    from lit_mcmc.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(CONFIGS / "sample_score_la_3_line.yaml"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [line, "(`lit-mcmc <fit|predict|...> --help` lists every key)"]  # no usage dump


def test_concise_parse_error_of_a_missing_config_file():
    from lit_mcmc.cli import concise_parse_error

    assert concise_parse_error('Parser key "config": File does not exist: \'/x.yaml\'') == (
        "config: File does not exist: '/x.yaml'")
    assert concise_parse_error("argument subcommand: invalid choice: 'fitt'") == (
        "argument subcommand: invalid choice: 'fitt'")


def test_every_config_prints(capsys):
    """`--print_config` resolves every shipped config (catches typos in keys and class paths); in-process for speed."""
    from lit_mcmc.cli import main

    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(configs) >= 22
    for config in configs:
        text = yaml.safe_load(config.read_text())
        if not isinstance(text, dict) or "model" not in text:
            continue
        subcommand = "predict" if "SamplingModule" in text["model"].get("class_path", "") else "fit"
        with pytest.raises(SystemExit) as exit_info:
            main([subcommand, "--config", str(config), "--print_config"])
        assert exit_info.value.code in (0, None), config
        assert "class_path" in capsys.readouterr().out
