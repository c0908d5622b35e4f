"""Seeds as trials: ``model.seeds`` runs one complete predict per seed, each the same as a run with that seed alone,
and writes their mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lit_mcmc.cli import main
from tests.e2e.test_failures import one_error_line

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "toy2d" / "sample_oracle_hmc.yaml")
SMALL = ["--data.init_args.n_samples", "32", "--data.init_args.batch_size", "16", "--trainer.enable_progress_bar",
         "false", "--model.init_args.sampler.n_steps", "1"]


def predict(root: Path, *extra: str) -> None:
    main(["predict", "--config", CONFIG, *SMALL, "--trainer.default_root_dir", str(root), *extra])


def test_each_trial_is_the_run_of_its_seed_and_the_aggregate_is_their_mean(tmp_path: Path) -> None:
    predict(tmp_path / "trials", "--model.init_args.seeds", "[3, 5]")
    predict(tmp_path / "alone", "--model.init_args.seed", "5")

    trial = np.load(tmp_path / "trials" / "seed_5" / "samples.npz")
    alone = np.load(tmp_path / "alone" / "samples.npz")
    assert np.array_equal(trial["samples"], alone["samples"])  # bitwise: a trial is the run of its seed
    other = np.load(tmp_path / "trials" / "seed_3" / "samples.npz")
    assert not np.array_equal(other["samples"], trial["samples"])

    record = json.loads((tmp_path / "trials" / "trials.json").read_text())
    assert record["seeds"] == [3, 5]
    per_seed = [json.loads((tmp_path / "trials" / f"seed_{s}" / "metrics.json").read_text()) for s in (3, 5)]
    assert all(f"{name}_se" in m and f"{name}_se" not in record["metrics"] for m in per_seed for name in ("w2", "ll"))
    for name in ("w2", "gmm", "ll", "accept_rate"):
        values = [m[name] for m in per_seed]
        assert record["metrics"][name]["values"] == values
        assert record["metrics"][name]["mean"] == pytest.approx(np.mean(values))
        assert record["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1))
        assert record["metrics"][name]["n"] == 2
    assert json.loads((tmp_path / "trials" / "seed_5" / "stats.json").read_text())["hparams"]["seed"] == 5


@pytest.mark.parametrize("seeds, message", [("[1, 1]", "repeats a seed"), ("[]", "non-empty list")])
def test_bad_seed_lists_are_one_line_naming_the_key(tmp_path: Path, capsys, seeds: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict(tmp_path, "--model.init_args.seeds", seeds)
    line = one_error_line(capsys.readouterr().err)
    assert exit_info.value.code != 0 and "model.seeds" in line and message in line
    assert not any(tmp_path.iterdir())  # nothing was written
