"""Particle resampling through `lit-mcmc predict`: what a run writes, and that samples do not depend on how the
groups are split between processes or on a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_mcmc.cli import main

REPO = Path(__file__).resolve().parents[2]
SMC_CONFIG = REPO / "configs" / "toy2d" / "sample_oracle_hmc_smc.yaml"
N_SAMPLES, GROUP = 64, 16


def small_config(tmp_path: Path, final: str = "weighted", batch: int = 32) -> Path:
    """The oracle SMC config at a test's size: 4 groups of 16, one MCMC step per level, final weights kept."""
    config = yaml.safe_load(SMC_CONFIG.read_text())
    sampler = config["model"]["init_args"]["sampler"]
    sampler["n_steps"] = 1
    sampler["resample"].update(group_size=GROUP, final=final)
    config["data"]["init_args"].update(n_samples=N_SAMPLES, batch_size=batch)
    config["trainer"]["enable_progress_bar"] = False
    path = tmp_path / f"smc_{final}_{batch}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weighted")
    main(["predict", "--config", str(small_config(root)), "--trainer.default_root_dir", str(root / "run")])
    return root / "run"


def test_a_particle_run_reports_weights_ess_resampling_and_log_z(weighted_run: Path):
    samples = np.load(weighted_run / "samples.npz")
    log_weight = samples["log_weight"]
    assert log_weight.shape == (N_SAMPLES,) and np.any(log_weight != 0)
    np.testing.assert_allclose(np.exp(log_weight).reshape(-1, GROUP).mean(1), 1.0, rtol=1e-5)  # normalised per group
    stats = json.loads((weighted_run / "stats.json").read_text())
    assert stats["sampler"] == "HMC+SMC" and stats["n_groups"] == N_SAMPLES // GROUP
    assert len(stats["ess_mean_per_level"]) == 100 and len(stats["resampled_groups_per_level"]) == 100
    assert all(1 <= stats["ess_min_per_level"][k] <= stats["ess_mean_per_level"][k] <= GROUP + 1e-6
               for k in stats["ess_mean_per_level"])
    assert stats["resampling_events"] == sum(stats["resampled_groups_per_level"].values()) > 0
    assert np.isfinite(stats["log_z_mean"]) and stats["log_z_se"] > 0
    assert 1 <= stats["unique_ancestors_min"] <= stats["unique_ancestors_mean"] <= GROUP
    assert stats["hparams"]["resample"] == "exact" and stats["hparams"]["resample_group_size"] == GROUP
    metrics = json.loads((weighted_run / "metrics.json").read_text())
    assert {"ll", "w2", "gmm", "ess_mean", "log_z_mean"} <= set(metrics)


def test_two_processes_and_other_batches_give_the_same_particles(weighted_run: Path, tmp_path: Path):
    """Groups are keyed by their samples: one process with batch 32, two DDP processes with batch 16."""
    from tests.e2e.test_distributed import one_and_two_process_samples

    reference = np.load(weighted_run / "samples.npz")
    one, two = one_and_two_process_samples(small_config(tmp_path, batch=GROUP), tmp_path)
    for result in (one, two):
        for key in ("samples", "log_weight", "indices"):
            np.testing.assert_array_equal(result[key], reference[key], err_msg=key)


def test_a_resumed_particle_run_gives_the_uninterrupted_samples(weighted_run: Path, tmp_path: Path):
    """An interrupted run (a shard lost, nothing merged) resumes to the same samples, weights and log Ẑ."""
    config = small_config(tmp_path)
    root = tmp_path / "run"
    main(["predict", "--config", str(config), "--trainer.default_root_dir", str(root)])
    shards = sorted((root / "shards").glob("shard_*.npz"))
    assert len(shards) == 2
    shards[1].unlink()
    for merged in ("samples.npz", "stats.json", "metrics.json"):
        (root / merged).unlink()
    main(["predict", "--config", str(config), "--trainer.default_root_dir", str(root)])
    resumed, reference = np.load(root / "samples.npz"), np.load(weighted_run / "samples.npz")
    for key in ("samples", "log_weight"):
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    stats, reference_stats = (json.loads((r / "stats.json").read_text()) for r in (root, weighted_run))
    assert stats["log_z_mean"] == reference_stats["log_z_mean"]


def test_a_batch_that_splits_a_group_is_one_line(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(small_config(tmp_path, batch=24)), "--trainer.default_root_dir",
              str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("lit-mcmc: error: data.batch_size=24 is not a multiple of model.sampler.resample.group_size=16"
            in err)
    assert not (tmp_path / "run").exists()  # found before anything was written
