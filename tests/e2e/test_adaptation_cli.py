"""Step-size adaptation end to end through ``lit-mcmc predict`` on the analytic 2D product: target acceptance per
level, step_sizes.json and its reuse, reproducibility, resumption, and 1 vs 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lit_mcmc.cli import main

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / "configs" / "toy2d" / "sample_oracle_hmc.yaml"
KEY = "--model.init_args.sampler."


def predict_args(root: Path, n_samples: int, *extra: str, batch_size: int | None = None) -> list[str]:
    return ["predict", "--config", str(ORACLE), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.init_args.n_samples", str(n_samples),
            "--data.init_args.batch_size", str(batch_size or n_samples), *extra]


def run(root: Path, n_samples: int, *extra: str, batch_size: int | None = None) -> dict:
    """One in-process run; returns its stats.json with the samples and the step table."""
    main(predict_args(root, n_samples, *extra, batch_size=batch_size))
    stats = json.loads((root / "stats.json").read_text())
    stats["samples"] = np.load(root / "samples.npz")["samples"]
    stats["table"] = json.loads((root / "step_sizes.json").read_text())["step_sizes"]
    return stats


def share_near(rates: dict[str, float], target: float, tolerance: float) -> float:
    return sum(abs(rate - target) <= tolerance for rate in rates.values()) / len(rates)


@pytest.mark.slow
@pytest.mark.parametrize("kernel,target", [("hmc", 0.8), ("mala", 0.65)])
def test_cli_tuning_reaches_the_target_acceptance(tmp_path: Path, restore_environ, kernel, target):
    """The issue's check: within ±0.1 on at least 80 % of the levels (here: measured on 200 samples)."""
    stats = run(tmp_path, 200, f"{KEY}kernel", kernel, f"{KEY}target_accept", str(target), f"{KEY}tune_samples", "128")
    assert len(stats["accept_rate_per_level"]) == 100
    assert share_near(stats["accept_rate_per_level"], target, 0.1) >= 0.8, stats["accept_rate_per_level"]
    steps = np.array(list(stats["table"].values()))
    assert steps.max() / steps.min() > 10  # the levels need very different steps; the cap does not bind them
    assert stats["step_sizes"] == stats["table"] and stats["step_tuning"]["tuned_with"]["target_accept"] == target
    assert stats["hparams"]["target_accept"] == target


FAST_TUNING = (f"{KEY}target_accept", "0.8", f"{KEY}tune_samples", "32", f"{KEY}tune_steps", "20", f"{KEY}n_steps",
               "2")


@pytest.mark.slow
def test_the_saved_table_decides_the_samples(tmp_path: Path, restore_environ):
    """Rerunning with the table reproduces the samples exactly (here through sampler.step_table, as for an
    unadjusted twin); changing the table changes them."""
    tuned = run(tmp_path / "tuned", 16, *FAST_TUNING)
    table = tmp_path / "tuned" / "step_sizes.json"
    reused = run(tmp_path / "reused", 16, f"{KEY}step_table", str(table), f"{KEY}n_steps", "2")
    np.testing.assert_array_equal(reused["samples"], tuned["samples"])
    assert reused["step_tuning"]["copied_from"] == str(table.resolve())
    record = json.loads(table.read_text())
    record["step_sizes"] = {level: 1.2 * step for level, step in record["step_sizes"].items()}
    changed_table = tmp_path / "changed.json"
    changed_table.write_text(json.dumps(record))
    changed = run(tmp_path / "changed", 16, f"{KEY}step_table", str(changed_table), f"{KEY}n_steps", "2")
    assert not np.allclose(changed["samples"], tuned["samples"])


@pytest.mark.slow
def test_a_resumed_run_reuses_its_table(tmp_path: Path, restore_environ, capsys):
    """An interrupted run (shards missing, no merge yet) reuses step_sizes.json instead of tuning again, and gives
    the uninterrupted samples; tuning again with other settings in the same directory is a clear error."""
    first = run(tmp_path, 12, *FAST_TUNING, batch_size=4)
    table = tmp_path / "step_sizes.json"
    written = table.stat().st_mtime_ns
    (tmp_path / "samples.npz").unlink()
    sorted((tmp_path / "shards").glob("shard_*.npz"))[-1].unlink()
    resumed = run(tmp_path, 12, *FAST_TUNING, batch_size=4)
    assert table.stat().st_mtime_ns == written
    np.testing.assert_array_equal(resumed["samples"], first["samples"])
    with pytest.raises((SystemExit, ValueError)) as error:  # the CLI reports errors as a message and exit status 2
        main(predict_args(tmp_path, 12, *FAST_TUNING[:1], "0.7", *FAST_TUNING[2:], batch_size=4))
    # the run directory's identity check refuses it before any tuning (step_sizes.json is not touched)
    assert "model.sampler.target_accept was 0.8, now 0.7" in str(error.value) + capsys.readouterr().err
    assert table.stat().st_mtime_ns == written


@pytest.mark.slow
def test_two_processes_use_the_one_process_table_and_samples(tmp_path: Path, restore_environ):
    single = run(tmp_path / "one", 10, *FAST_TUNING, batch_size=4)
    # a fresh interpreter (DDP re-runs the command line for rank 1), without SLURM_* variables (see test_distributed)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "lit_mcmc.cli",
                             *predict_args(tmp_path / "two", 10, *FAST_TUNING, batch_size=4),
                             "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    double = json.loads((tmp_path / "two" / "step_sizes.json").read_text())["step_sizes"]
    assert double == single["table"]
    np.testing.assert_allclose(np.load(tmp_path / "two" / "samples.npz")["samples"], single["samples"], rtol=0,
                               atol=1e-6)


def test_bad_adaptation_values_are_cli_errors(tmp_path: Path, restore_environ, capsys):
    for args, message in [((f"{KEY}target_accept", "1.2"), "sampler.target_accept=1.2 must lie in (0, 1)"),
                          ((f"{KEY}target_accept", "0.8", f"{KEY}tune_samples", "0"), "sampler.tune_samples=0"),
                          ((f"{KEY}step_table", str(tmp_path / "none.json")), "none.json"),]:
        with pytest.raises((SystemExit, ValueError, FileNotFoundError)) as error:
            main(predict_args(tmp_path / "run", 4, *args))
        assert message in str(error.value) + capsys.readouterr().err


@pytest.mark.slow
def test_stats_and_tensorboard_report_steps_and_quadrature_errors(tmp_path: Path, restore_environ):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stats = run(tmp_path, 12, *FAST_TUNING, f"{KEY}correction", "curve", f"{KEY}n_points", "1", f"{KEY}quadrature",
                "simpson")
    assert stats["sampler"] == "HMC-1-curve (Simpson)"
    assert len(stats["quadrature_error_per_level"]) == len(stats["step_sizes"]) == 100
    assert stats["quadrature_error_mean"] > 0
    events = [EventAccumulator(str(path.parent)).Reload() for path in tmp_path.rglob("events.out.tfevents.*")]
    tags = {tag for accumulator in events for tag in accumulator.Tags()["scalars"]}
    assert {"sampler/accept_rate_per_level", "sampler/step_size_per_level",
            "sampler/quadrature_error_per_level"} <= tags
