"""The 2D Table-1 driver: table formatting, job bookkeeping, and the smoke preset end to end (real lit-mcmc runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from lit_mcmc.experiments.toy2d import DASH, Preset, main, mean_std, row_cells, trained_models
from lit_mcmc.report import read_hparams_sessions


def test_mean_std_uses_population_std_and_paper_formats():
    assert mean_std([3.4567], "%.2f") == "3.46"
    # values 1 and 2: mean 1.5, population std (ddof=0) 0.5 (the sample std would be 0.71)
    assert mean_std([1.0, 2.0], "%.3f") == "1.500 ± 0.500"
    assert mean_std([0.1, 0.2, 0.3], "%.5f") == "0.20000 ± 0.08165"
    assert mean_std([-math.inf, 3.0], "%.2f") == "-inf"  # one sample off [-1.1, 1.1]^2 makes the LL -inf
    assert mean_std([], "%.2f") == DASH


def test_row_cells_dash_for_unadjusted_and_missing_numbers():
    runs = [{"ll": 3.0, "w2": 0.1, "gmm": 1e-4, "accept_rate": 0.8, "nfe_per_sample": 3100.0, "wall_seconds": 10.0},
            {"ll": 2.0, "w2": 0.3, "gmm": 3e-4, "accept_rate": 0.6, "nfe_per_sample": 3100.0, "wall_seconds": 12.0}]
    adjusted = {"model": "score", "sampler": "HMC-curve", "adjusted": True, "trials": runs}
    assert row_cells(adjusted, ["ll", "w2", "gmm"]) == [
        "score", "HMC-curve", "2.50 ± 0.50", "0.200 ± 0.100", "0.00020 ± 0.00010", "0.700", "3100", "11.0"]
    unadjusted = {**adjusted, "sampler": "U-HMC", "adjusted": False}
    assert row_cells(unadjusted, ["w2"])[3] == DASH
    exact = {"model": "exact", "sampler": "exact samples (floor)", "adjusted": False,
             "trials": [{"ll": 3.5, "w2": 0.08, "gmm": 1e-5}]}
    assert row_cells(exact, ["ll", "w2", "gmm"])[-3:] == [DASH, DASH, DASH]


def test_preset_overrides_and_reductions_read_the_paper_configs():
    preset = Preset(hidden=32, max_steps=3000, n_samples=1000)
    keys = {"hidden": "model.init_args.net.init_args.hidden", "n_samples": "data.init_args.n_samples"}
    assert preset.overrides(keys) == [f"--{keys['hidden']}", "32", f"--{keys['n_samples']}", "1000"]
    assert preset.reductions() == ("net hidden 32 (paper 128, ÷4.0), steps 3000 (paper 15001, ÷5.0), "
                                   "samples per row 1000 (paper 2000, ÷2.0)")
    assert Preset().reductions() == "none: the paper's settings"


def test_only_the_models_the_rows_load_are_trained():
    assert trained_models(["sample_score_hmc_curve", "sample_oracle_hmc"]) == ["gmm_score", "bar_score"]
    assert trained_models(["sample_energy_mixture"]) == ["gmm_energy", "bar_energy"]
    assert trained_models(["sample_oracle_hmc"]) == []


def table_body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.slow
def test_smoke_preset_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture):
    text = main(["--preset", "smoke", "--out", str(tmp_path), "--jobs", "2"])
    first_err = capsys.readouterr().err
    assert first_err.count(" done in ") == 5  # 2 score models trained, 3 rows sampled
    rows = {tuple(line.split(" | ")[:2]): line for line in table_body(text)[2:]}
    assert list(rows) == [("| score", "Reverse"), ("| score", "HMC-curve"), ("| oracle", "HMC"),
                          ("| exact", "exact samples (floor)")]
    assert rows[("| score", "Reverse")].split(" | ")[5] == DASH  # unadjusted: no acceptance

    results = json.loads((tmp_path / "results.json").read_text())
    by_key = {row["key"]: row for row in results["rows"]}
    # 100 levels; each MCMC level is 1 initial evaluation + K=1 step of 3 leapfrog evaluations.
    assert by_key["sample_score_reverse"]["mean"]["nfe_per_sample"] == 100
    assert by_key["sample_score_hmc_curve"]["mean"]["nfe_per_sample"] == 400
    for row in results["rows"]:
        assert np.isfinite([row["mean"]["w2"], row["mean"]["gmm"]]).all(), row["key"]
    for key in ("sample_oracle_hmc", "exact"):
        assert np.isfinite(list(by_key[key]["mean"].values())).all(), key
    # 64 exact samples: LL ≈ 3.481 (per-sample std ≈ 1, so the mean's std ≈ 0.13); W2 and GMM well below the oracle's
    assert by_key["exact"]["mean"]["ll"] == pytest.approx(3.481, abs=0.6)
    assert 0 < by_key["exact"]["mean"]["w2"] < by_key["sample_score_reverse"]["mean"]["w2"]
    assert (tmp_path / "train" / "trial_0" / "gmm_score" / "fit.log").is_file()
    assert (tmp_path / "samples" / "trial_0" / "sample_oracle_hmc" / "predict.log").is_file()
    # TensorBoard on OUT/samples: one HParams session per sampler row; the training runs write none
    sessions = read_hparams_sessions(tmp_path)
    assert len(sessions) == 3 and all(Path(s.run_dir).is_relative_to(tmp_path / "samples") for s in sessions)
    assert {s.hparams["model"] for s in sessions} == {"gmm_score+bar_score", "toy2d_gmm+toy2d_bar"}
    assert matplotlib.image.imread(tmp_path / "figure.png").ndim == 3
    assert (tmp_path / "table.md").read_text() == text

    again = main(["--preset", "smoke", "--out", str(tmp_path), "--jobs", "2"])
    second_err = capsys.readouterr().err
    assert second_err.count("skipped ") == 5 and " done in " not in second_err
    assert "5 lit-mcmc runs reused from an earlier invocation" in again
    assert table_body(again) == table_body(text)
