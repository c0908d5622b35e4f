"""Distributed guarantees on CPU (gloo): sampling does not depend on the process count or the batch size, and DDP
training gives each rank its own noise stream, works for energy models, and is reproducible and resumable."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_mcmc.data.indices import IndexBatches, SampleIndexDataModule
from lit_mcmc.data.shards import shard_name

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / "configs" / "toy2d" / "sample_oracle_hmc.yaml"
N_SAMPLES, BATCH = 37, 8  # 37 = 4 full blocks of 8 + one of 5: odd for one process and for two


def predict_args(root: Path, n_samples: int = N_SAMPLES, batch_size: int = BATCH, *extra: str) -> list[str]:
    return ["predict", "--config", str(ORACLE), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.init_args.n_samples", str(n_samples),
            "--data.init_args.batch_size", str(batch_size), "--model.init_args.sampler.n_steps", "1", *extra]


def run_python(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """A fresh interpreter (DDP launches its second process by re-running this command line). SLURM_* variables
    are dropped: inside a SLURM job, Lightning would otherwise expect one task per device from srun."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_and_two_process_samples(config: Path, root: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """samples.npz of the same predict config, run in this process and in two DDP processes (CPU, gloo)."""
    from lit_mcmc.cli import main

    one, two = root / "one", root / "two"
    main(["predict", "--config", str(config), "--trainer.default_root_dir", str(one)])
    result = run_python("-m", "lit_mcmc.cli", "predict", "--config", str(config), "--trainer.default_root_dir",
                        str(two), "--trainer.devices", "2", "--trainer.strategy", "ddp", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(np.load(one / "samples.npz")), dict(np.load(two / "samples.npz"))


def ddp_predict(root: Path, n_samples: int, *extra: str) -> subprocess.CompletedProcess:
    return run_python("-m", "lit_mcmc.cli", *predict_args(root, n_samples, BATCH, *extra), "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", timeout=300)


def predict_in_process(root: Path, batch_size: int) -> dict[str, np.ndarray]:
    from lit_mcmc.cli import main

    main(predict_args(root, N_SAMPLES, batch_size))
    return dict(np.load(root / "samples.npz"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """One process, batch 8: the samples every other split must reproduce."""
    saved = dict(os.environ)
    try:
        return predict_in_process(tmp_path_factory.mktemp("reference"), BATCH)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def assert_same_samples(result: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert result["indices"].tolist() == list(range(len(reference["indices"])))
    np.testing.assert_allclose(result["samples"], reference["samples"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["accept_rate"], reference["accept_rate"], rtol=0, atol=1e-6)


# ----- index blocks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_samples", [1, 7, 37, 64])
@pytest.mark.parametrize("batch_size", [1, 5, 8, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_rank_blocks_cover_every_index_exactly_once(n_samples: int, batch_size: int, world_size: int):
    per_rank = [IndexBatches(np.arange(n_samples), batch_size, rank, world_size).blocks for rank in range(world_size)]
    everything = np.concatenate([block for blocks in per_rank for block in blocks])
    assert sorted(everything.tolist()) == list(range(n_samples))  # no padding, no duplicates, nothing missing
    for rank, blocks in enumerate(per_rank):
        for block in blocks:  # contiguous blocks of batch_size (the last may be short), block b on rank b % world
            assert block.tolist() == list(range(block[0], block[0] + len(block)))
            assert len(block) == min(batch_size, n_samples - block[0])
            assert (block[0] // batch_size) % world_size == rank


def test_remaining_indices_are_read_once_at_setup(tmp_path: Path):
    """Every rank reads the disk in setup (before Lightning's post-setup barrier), so a shard that another rank
    writes afterwards cannot change this rank's blocks."""
    shards = tmp_path / "shards"
    shards.mkdir()
    np.savez(shards / shard_name(np.arange(0, 8)), indices=np.arange(0, 8))
    data = SampleIndexDataModule(n_samples=20, batch_size=8, output_dir=str(tmp_path))
    data.setup("predict")
    np.savez(shards / shard_name(np.arange(8, 16)), indices=np.arange(8, 16))
    assert [b.tolist() for b in data.predict_dataloader()] == [list(range(8, 16)), list(range(16, 20))]
    assert data.remaining_indices().tolist() == list(range(16, 20))  # a new setup sees the new shard


def test_predict_step_has_no_collectives():
    """A rank may have fewer batches than another (or none), so predict_step must never wait for the others."""
    from lit_mcmc.modules.sampling import SamplingModule

    source = inspect.getsource(SamplingModule.predict_step)
    for collective in ("all_gather", "all_reduce", "barrier", "broadcast", "reduce(", "sync_dist"):
        assert collective not in source


# ----- sampling: the split does not change the samples ---------------------------------------------------------------

def test_batch_size_does_not_change_samples(tmp_path: Path, reference, restore_environ):
    assert_same_samples(predict_in_process(tmp_path, batch_size=16), reference)


@pytest.mark.slow
def test_two_processes_give_the_one_process_samples(tmp_path: Path, reference):
    result = ddp_predict(tmp_path, N_SAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert_same_samples(dict(np.load(tmp_path / "samples.npz")), reference)
    # rank 0 wrote blocks 0, 2, 4 and rank 1 blocks 1, 3: one shard per block, none padded or repeated
    expected = [shard_name(np.arange(start, min(start + BATCH, N_SAMPLES))) for start in range(0, N_SAMPLES, BATCH)]
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard_*.npz")) == expected
    assert json.loads((tmp_path / "stats.json").read_text())["n_samples"] == N_SAMPLES


@pytest.mark.slow
def test_fewer_samples_than_processes(tmp_path: Path, reference):
    """N=1 on 2 processes: rank 1 has no block at all but still reaches the writer's barrier (no hang, no error).
    Only the writer runs: the 2D metrics fit a 2-component GMM, which one sample cannot give."""
    result = ddp_predict(tmp_path, 1, "--trainer.callbacks", '[{"class_path": "callbacks.sample_writer.SampleWriter"}]')
    assert result.returncode == 0, result.stderr[-3000:]
    samples = np.load(tmp_path / "samples.npz")
    assert samples["indices"].tolist() == [0]
    np.testing.assert_allclose(samples["samples"], reference["samples"][:1], rtol=0, atol=1e-6)


# ----- training: DDP on two CPU processes ----------------------------------------------------------------------------

DDP_FIT_SCRIPT = textwrap.dedent('''
    """Tiny DDP fits (2 CPU processes); each rank saves what it drew and its final weights to <out>/<run>_rank<r>.pt."""
    import sys
    from pathlib import Path

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_mcmc.data.toy2d import Toy2DDataModule
    from lit_mcmc.modules import DiffusionModule
    from lit_mcmc.nets.mlp import ResMLP

    out = Path(sys.argv[1])


    class RecordDraws(L.Callback):
        """Keeps the timesteps and noise of every training step (they reach q_sample) and the losses."""

        def on_train_start(self, trainer, pl_module):
            self.draws, self.losses = {}, []
            q_sample = pl_module.schedule.q_sample

            def recording(x0, t, noise):
                self.draws[trainer.global_step] = (t.clone(), noise.clone())
                return q_sample(x0, t, noise)

            pl_module.schedule.q_sample = recording

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))


    def fit(run, parameterization, max_steps, resume=None, checkpoint_every=None):
        L.seed_everything(0)
        net = ResMLP(dim=2, hidden=16, widen=1, n_blocks=1, emb_dim=8, n_steps=100)
        module = DiffusionModule(net, parameterization=parameterization, sample_shape=[2], seed=1)
        data = Toy2DDataModule("gmm", batch_size=64, steps_per_epoch=10, val_batches=1, seed=1)
        recorder = RecordDraws()
        callbacks = [recorder]
        if checkpoint_every:
            callbacks.append(ModelCheckpoint(dirpath=out, filename=run, every_n_train_steps=checkpoint_every))
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, limit_val_batches=0,
                            logger=False, enable_checkpointing=bool(checkpoint_every), enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks)
        trainer.fit(module, datamodule=data, ckpt_path=resume)
        torch.save({"draws": recorder.draws, "losses": recorder.losses, "global_step": trainer.global_step,
                    "weights": module.state_dict()}, out / f"{run}_rank{trainer.global_rank}.pt")


    fit("score", "score", max_steps=12, checkpoint_every=10)
    fit("score_resumed", "score", max_steps=12, resume=out / "score.ckpt")
    fit("energy", "energy", max_steps=10)
    fit("energy_again", "energy", max_steps=10)
''')


@pytest.fixture(scope="module")
def ddp_fits(tmp_path_factory) -> dict[str, list[dict]]:
    """run name -> [rank 0 record, rank 1 record] of the DDP_FIT_SCRIPT runs."""
    out = tmp_path_factory.mktemp("ddp_fit")
    script = out / "ddp_fit.py"
    script.write_text(DDP_FIT_SCRIPT)
    result = run_python(str(script), str(out), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = ("score", "score_resumed", "energy", "energy_again")
    return {run: [torch.load(out / f"{run}_rank{rank}.pt", weights_only=True) for rank in (0, 1)] for run in runs}


@pytest.mark.slow
def test_ranks_draw_different_timesteps_and_noise(ddp_fits):
    for run in ("score", "energy"):
        rank0, rank1 = ddp_fits[run]
        for step in range(10):
            (t0, noise0), (t1, noise1) = rank0["draws"][step], rank1["draws"][step]
            assert not torch.equal(t0, t1) and not torch.equal(noise0, noise1)


@pytest.mark.slow
def test_energy_model_trains_under_ddp(ddp_fits):
    """Double backpropagation (ε̂ = ∇ₓE inside the loss) through DDP: all steps run, losses are finite, and the
    ranks end with the same weights although they saw different data (gradients were averaged)."""
    rank0, rank1 = ddp_fits["energy"]
    assert rank0["global_step"] == rank1["global_step"] == 10
    assert len(rank0["losses"]) == 10 and np.isfinite(rank0["losses"] + rank1["losses"]).all()
    assert rank0["losses"] != rank1["losses"]
    for name, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][name]), name


@pytest.mark.slow
def test_identical_ddp_runs_give_identical_weights(ddp_fits):
    for rank in (0, 1):
        first, again = ddp_fits["energy"][rank], ddp_fits["energy_again"][rank]
        assert first["losses"] == again["losses"]
        for name, value in first["weights"].items():
            assert torch.equal(value, again["weights"][name]), name


@pytest.mark.slow
def test_resumed_ddp_run_continues_each_ranks_noise_stream(ddp_fits):
    """Resuming from the step-10 checkpoint draws, on every rank, what the uninterrupted run drew at step 10."""
    for rank in (0, 1):
        uninterrupted, resumed = ddp_fits["score"][rank], ddp_fits["score_resumed"][rank]
        assert sorted(resumed["draws"]) == [10, 11]
        for step in (10, 11):
            for drawn, expected in zip(resumed["draws"][step], uninterrupted["draws"][step], strict=True):
                assert torch.equal(drawn, expected), (rank, step)
