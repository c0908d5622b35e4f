"""The MNIST guided-sampling driver (make demo-images): config rewriting, and the smoke preset end to end."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml

from lit_mcmc.assets import shared_path
from lit_mcmc.experiments.jobs import evaluations_per_level
from lit_mcmc.experiments.mnist import PRESETS, ROWS, SMC_GROUP, Row, main, preset_rows, run_config
from lit_mcmc.modules.classifiers import load_classifier

MNIST = shared_path("data", "mnist")


def test_run_config_moves_every_path_under_out_and_applies_the_preset(tmp_path: Path):
    smoke = PRESETS["smoke"]
    for stem in ROWS:
        text = yaml.safe_dump(run_config(stem, tmp_path, smoke))
        assert "runs/mnist" not in text and str(tmp_path) in text
        config = run_config(stem, tmp_path, smoke)
        assert config["model"]["init_args"]["respace"] == smoke.respace
        assert config["data"]["init_args"]["n_samples"] == smoke.n_samples
    fit = run_config("train_energy", tmp_path, smoke)
    assert fit["trainer"]["default_root_dir"] == str(tmp_path / "train" / "energy")
    assert fit["trainer"]["max_steps"] == smoke.max_steps and fit["model"]["init_args"]["warmup_steps"] <= 3
    # the demo preset runs the configs as written
    demo = run_config("sample_score_hmc", tmp_path, PRESETS["demo"])
    assert demo["data"]["init_args"]["n_samples"] == 1000 and demo["model"]["init_args"]["respace"] == 10


def test_particle_preset_runs_each_sampler_with_and_without_particles_per_seed(tmp_path: Path):
    smc = PRESETS["smc"]
    rows = preset_rows(smc)
    assert len(rows) == len(smc.rows) * 2 * 3 and len({row.key for row in rows}) == len(rows)
    row = Row("sample_score_hmc", seed=2, particles=True)
    config = run_config(row.stem, tmp_path, smc, row)
    init = config["model"]["init_args"]
    assert init["seed"] == 2 and config["trainer"]["default_root_dir"] == str(tmp_path / "samples" / row.key)
    assert init["sampler"]["resample"] == {"weights": "feynman_kac", "group_size": SMC_GROUP}
    data = config["data"]["init_args"]
    assert data["n_samples"] % SMC_GROUP == 0 and data["batch_size"] % SMC_GROUP == 0
    plain = run_config(row.stem, tmp_path, smc, Row("sample_score_hmc", seed=2))
    assert "resample" not in plain["model"]["init_args"]["sampler"]


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the shared MNIST files are missing ({MNIST})")
def test_particle_smoke_preset_guides_each_group_to_one_digit(tmp_path: Path):
    text = main(["--preset", "smc_smoke", "--out", str(tmp_path), "--jobs", "2"])
    assert "| score | HMC-1-curve+SMC (FK) | 2 |" in text and "| score | HMC-1-curve | 2 |" in text
    with np.load(tmp_path / "samples" / "sample_score_hmc_seed1_smc" / "samples.npz") as data:
        assert data["labels"].tolist() == [0, 0, 0, 0]  # index // group size picks the digit
    stats = json.loads((tmp_path / "samples" / "sample_score_hmc_seed1_smc" / "stats.json").read_text())
    assert stats["n_groups"] == 1 and stats["hparams"]["resample"] == "feynman_kac"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the shared MNIST files are missing ({MNIST})")
def test_smoke_preset_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture):
    text = main(["--preset", "smoke", "--out", str(tmp_path), "--jobs", "2"])
    assert capsys.readouterr().err.count(" done in ") == 4 + 3  # four models trained, three rows sampled
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["key"]: row for row in results["rows"]}
    assert list(rows) == [*PRESETS["smoke"].rows, "real"]
    classifier = load_classifier(str(tmp_path / "train" / "eval_classifier" / "checkpoints" / "last.ckpt"))
    for stem in PRESETS["smoke"].rows:
        row = rows[stem]
        assert row["n_samples"] == 12 and 0.0 <= row["r3_accuracy"] <= row["top1_accuracy"] + 1e-9 <= 1.0 + 1e-9
        assert np.isfinite(row["fid"]) and row["fid"] >= 0.0
        # network evaluations: one at the noisiest level, then (1 + the kernel's) at each of the 2 later levels
        config = yaml.safe_load((tmp_path / "configs" / f"{stem}.yaml").read_text())
        assert row["nfe_per_sample"] == 1 + 2 * evaluations_per_level(config["model"]["init_args"]["sampler"])
        # the reported top-1 is the evaluation classifier's on the written samples and their guided labels
        with np.load(tmp_path / "samples" / stem / "samples.npz") as data:
            samples, labels = torch.from_numpy(data["samples"]), torch.from_numpy(data["labels"])
        assert labels.tolist() == [i % 10 for i in range(12)]
        with torch.no_grad():
            top1 = float((classifier(samples).argmax(1) == labels).float().mean())
        assert row["top1_accuracy"] == pytest.approx(top1)
    assert rows["sample_score_hmc"]["adjusted"] and not rows["sample_score_reverse"]["adjusted"]
    assert "| score | HMC-1-curve |" in text and "| energy | LA |" in text and "real t10k digits" in text
    grid = matplotlib.image.imread(tmp_path / "grid.png")
    assert grid.ndim == 3 and grid.shape[0] > 100

    # rerunning finds every run done and reproduces the numbers
    again = main(["--preset", "smoke", "--out", str(tmp_path), "--jobs", "2"])
    assert capsys.readouterr().err.count(": outputs exist") == 7
    assert [line for line in again.splitlines() if line.startswith("|")] == [
        line for line in text.splitlines() if line.startswith("|")]


def test_trials_table_marks_differences_from_reverse_beyond_two_standard_errors():
    from lit_mcmc.experiments.mnist import trials_table

    def trial(variant: str, sampler: str, fid: float, accuracy: float) -> dict:
        return {"key": variant, "variant": variant, "model": "score", "sampler": sampler, "adjusted": False,
                "r3_accuracy": accuracy, "top1_accuracy": accuracy, "fid": fid, "kid": 0.01, "precision": 0.5,
                "recall": 0.5, "nfe_per_sample": 10, "sampling_seconds": 30.0}

    rows = [trial("sample_score_reverse", "Reverse", fid, 0.9) for fid in (14.0, 14.5, 15.0)]
    rows += [trial("sample_score_hmc", "HMC", fid, acc) for fid, acc in ((4.0, 0.90), (4.5, 0.91), (5.0, 0.89))]
    lines = {line.split(" | ")[1]: line for line in trials_table(rows).splitlines()[2:]}
    assert "14.50 ± 0.50 |" in lines["Reverse"] and "*" not in lines["Reverse"]
    assert "4.50 ± 0.50* |" in lines["HMC"]  # 10 apart, Welch s.e. 0.41
    assert "0.900 ± 0.010 |" in lines["HMC"]  # accuracy: no real difference, no mark
    assert "30 ± 0 |" in lines["HMC"]  # costs are never marked
