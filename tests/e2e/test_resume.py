"""Preemption: sampling killed at any point resumes to exactly the uninterrupted samples, and a SLURM fit is
detected, checkpoints on the requeue signal, resumes from that checkpoint, and keeps one TensorBoard folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_mcmc.cli import LitMCMCCLI, main
from lit_mcmc.data.indices import indices_on_disk
from lit_mcmc.data.shards import read_shard, shard_name

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "toy2d"
# 10 batches of 4 (several seconds of sampling after ~10 s of start-up), so a kill lands mid-run
N_SAMPLES, BATCH = 40, 4


def predict_args(root: Path, n_samples: int = N_SAMPLES) -> list[str]:
    return ["predict", "--config", str(CONFIGS / "sample_oracle_hmc.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.init_args.n_samples", str(n_samples),
            "--data.init_args.batch_size", str(BATCH), "--model.init_args.sampler.n_steps", "1"]


def predict_command(root: Path) -> dict:
    """Keyword arguments of subprocess.run/Popen for `lit-mcmc predict` (the console script's module)."""
    return {"args": [sys.executable, "-m", "lit_mcmc.cli", *predict_args(root)], "cwd": REPO,
            "env": {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}}


def start_predict(root: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # a file, not a pipe: nobody reads the output while the run goes on
        return subprocess.Popen(**predict_command(root), stdout=out, stderr=subprocess.STDOUT)


def shard_count(root: Path) -> int:
    return len(list((root / "shards").glob("shard_*.npz"))) if (root / "shards").is_dir() else 0


def kill_when(process: subprocess.Popen, ready, timeout: float = 180.0) -> bool:
    """SIGKILL ``process`` as soon as ``ready()`` holds; True if that interrupted it (False: it had finished)."""
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None:
        assert time.monotonic() < deadline, "no shard appeared in time"
        time.sleep(0.02)
    interrupted = process.poll() is None
    process.kill()
    process.wait(timeout=30)
    return interrupted


def test_temporary_and_truncated_shards_are_ignored(tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    np.savez(shards / shard_name(np.arange(0, 4)), indices=np.arange(0, 4))
    np.savez(shards / shard_name(np.arange(4, 8)), indices=np.arange(4, 8))
    truncated = shards / shard_name(np.arange(4, 8))
    truncated.write_bytes(truncated.read_bytes()[:100])  # renamed, but its data never reached the disk
    (shards / ".tmp_k3j2h1.npz").write_bytes(b"PK\x03\x04 partial")  # a write cut short before its rename
    with pytest.warns(UserWarning, match="unreadable sample shard"):
        assert indices_on_disk(tmp_path).tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_killed_sampling_resumes_to_the_uninterrupted_samples(tmp_path: Path, restore_environ):
    main(predict_args(tmp_path / "uninterrupted"))
    reference = np.load(tmp_path / "uninterrupted" / "samples.npz")

    root = tmp_path / "preempted"
    interrupted = [kill_when(start_predict(root, tmp_path / "first.log"), lambda: shard_count(root) >= 1)]
    after_first = shard_count(root)
    interrupted.append(kill_when(start_predict(root, tmp_path / "second.log"),
                                 lambda: shard_count(root) >= after_first + 2))
    assert any(interrupted), "both runs finished before their kill: make the run longer"

    # Killed mid-shard: a temporary file that never got renamed, and a shard whose data never reached the disk.
    first_shard = root / "shards" / shard_name(np.arange(0, BATCH))
    (root / "shards" / ".tmp_interrupted.npz").write_bytes(first_shard.read_bytes()[:200])
    first_shard.write_bytes(first_shard.read_bytes()[:200])

    result = subprocess.run(**predict_command(root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unreadable sample shard" in result.stderr

    resumed = np.load(root / "samples.npz")
    assert resumed["indices"].tolist() == list(range(N_SAMPLES))  # nothing missing, nothing twice
    for key in ("samples", "accept_rate"):
        assert np.array_equal(resumed[key], reference[key]), key
    rewritten = read_shard(first_shard)  # drawn again and written over the truncated file
    assert rewritten is not None and np.array_equal(rewritten["samples"], reference["samples"][:BATCH])
    assert json.loads((root / "stats.json").read_text())["n_samples"] == N_SAMPLES
    assert json.loads((root / "run.json").read_text())["n_samples"] == N_SAMPLES  # one run, resumed twice


@pytest.mark.slow
def test_rerun_after_all_shards_only_merges(tmp_path: Path, restore_environ):
    """Killed after the last shard but before the merge: the rerun samples nothing and writes samples.npz."""
    main(predict_args(tmp_path, n_samples=3 * BATCH))
    merged = dict(np.load(tmp_path / "samples.npz"))
    shards = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    (tmp_path / "samples.npz").unlink()
    main(predict_args(tmp_path, n_samples=3 * BATCH))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == shards  # nothing resampled
    remerged = np.load(tmp_path / "samples.npz")
    for key, value in merged.items():
        assert np.array_equal(remerged[key], value), key
    # the shards of this run are not silently passed off as the samples of a smaller one
    with pytest.raises(SystemExit) as refused:
        main(predict_args(tmp_path, n_samples=BATCH))
    assert refused.value.code == 2


# ----- SLURM ---------------------------------------------------------------------------------------------------------

JOB_ID = "4242"
SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_ID": JOB_ID,
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "lit-mcmc-test",
             "SLURM_NODELIST": "localhost"}


class RequeueProbe(L.Callback):
    """Test-only: records how each fit starts, and sends SLURM's requeue signal (SIGUSR1) at ``signal_at_step``."""

    def __init__(self, signal_at_step: int | None = None) -> None:
        self.signal_at_step = signal_at_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"start_step": trainer.global_step, "log_dir": trainer.log_dir,
                  "environment": type(trainer._accelerator_connector.cluster_environment).__name__}
        with (Path(trainer.default_root_dir) / "starts.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGUSR1)


def slurm_fit_args(root: Path, signal_at_step: int | None) -> list[str]:
    probe = {"class_path": f"{__name__}.RequeueProbe", "init_args": {"signal_at_step": signal_at_step}}
    return ["fit", "--config", str(CONFIGS / "train_gmm_score.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--model.init_args.net.init_args.hidden", "16", "--model.init_args.net.init_args.n_blocks", "1",
            "--data.init_args.batch_size", "64", "--data.init_args.steps_per_epoch", "10",
            f"--trainer.callbacks+={json.dumps(probe)}"]


@pytest.mark.slow
def test_slurm_fit_is_requeued_and_resumes_from_its_hpc_checkpoint(tmp_path: Path, restore_environ):
    bin_dir = tmp_path / "bin"  # a stand-in `scontrol` that records the requeue request
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    os.environ.update(SLURM_ENV, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "run"

    main(slurm_fit_args(root, signal_at_step=3))  # SIGUSR1 at step 3: Lightning saves hpc_ckpt_1 and requeues
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]
    hpc = torch.load(root / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 3 and "noise_generator_state" in hpc

    main(slurm_fit_args(root, signal_at_step=None))  # the requeued job: same command, same directory
    starts = [json.loads(line) for line in (root / "starts.jsonl").read_text().splitlines()]
    assert [s["environment"] for s in starts] == ["SLURMEnvironment", "SLURMEnvironment"]
    assert [s["start_step"] for s in starts] == [0, 3]  # resumed from the HPC checkpoint, not from scratch
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    # one TensorBoard folder for the whole job, its saved config overwritten by the requeued run
    log_dir = root / "lightning_logs" / f"slurm_{JOB_ID}"
    assert [s["log_dir"] for s in starts] == [str(log_dir)] * 2
    assert [p.name for p in (root / "lightning_logs").iterdir()] == [log_dir.name]
    assert (log_dir / "config.yaml").is_file()


@pytest.mark.parametrize("logger_args,version", [
    ([], f"slurm_{JOB_ID}"),
    (["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "tb"],
     f"slurm_{JOB_ID}"),
    (["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "tb",
      "--trainer.logger.version", "mine"], "mine"),
], ids=["default-logger", "tensorboard-without-version", "explicit-version"])
def test_tensorboard_version_follows_the_slurm_job(tmp_path: Path, restore_environ, logger_args, version):
    os.environ.update(SLURM_ENV)
    cli = LitMCMCCLI(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False, run=False,
                     args=["--config", str(CONFIGS / "train_gmm_score.yaml"),
                           "--trainer.default_root_dir", str(tmp_path), *logger_args])
    assert cli.trainer.logger.version == version


@pytest.mark.parametrize("environment", [{}, {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "interactive"}],
                         ids=["no-slurm", "interactive-session"])
def test_tensorboard_version_is_untouched_outside_slurm_jobs(tmp_path: Path, restore_environ, environment):
    """Runs started by hand in an interactive allocation share its job id: they keep separate versions."""
    os.environ.pop("SLURM_JOB_ID", None)
    os.environ.update(environment)
    cli = LitMCMCCLI(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False, run=False,
                     args=["--config", str(CONFIGS / "train_gmm_score.yaml"), "--trainer.default_root_dir",
                           str(tmp_path)])
    assert cli.trainer.logger.version == 0
