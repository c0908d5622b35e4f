"""The run comparison table: run discovery, HPARAMS' columns, shared settings, missing values, sorting, formats,
seeds as trials and differences to a baseline."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_mcmc.compare import comparison, find_runs, main, to_markdown
from lit_mcmc.report import HPARAM_KEYS
from lit_mcmc.samplers.config import SamplerConfig

REPORTED = ("accept_rate", "nfe_per_sample", "samples_per_second", "wall_seconds")
HPARAM_COLUMNS = ["sampler", "step_size", "n_steps", "step_a", "step_b", "n_leapfrog", "damping", "mass", "kernel",
                  "correction", "n_points", "quadrature", "flip_on_reject", "carry_momentum", "reverse",
                  "min_mcmc_level"]
METRIC_COLUMNS = ["ll", "w2", "gmm", "r3_accuracy", "fid", *REPORTED]


def write_run(path: Path, sampler: SamplerConfig, perf: tuple[float, float, float, float],
              metrics: dict[str, float] | None) -> None:
    """A run directory as SampleWriter leaves it: stats.json, and metrics.json when metrics were computed.

    The hyper-parameters are every field of the sampler config (as older stats.json files
    hold them): the table keeps those the kernel uses."""
    path.mkdir(parents=True)
    stats = {"sampler": sampler.name, "hparams": sampler.hparams(), "n_samples": 100,
             **dict(zip(REPORTED, perf, strict=True))}
    (path / "stats.json").write_text(json.dumps(stats))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps({**metrics, **dict(zip(REPORTED, perf, strict=True))}))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_run(root / "toy" / "hmc_curve",
              SamplerConfig(kernel="hmc", n_steps=10, step_size=0.03, correction="curve", n_leapfrog=3, damping=0.5),
              (0.8125, 4001.0, 250.0, 8.0), {"w2": 0.05, "gmm": 0.011, "ll": -1.25})
    write_run(root / "toy" / "ula",
              SamplerConfig(kernel="ula", n_steps=5, step_a=0.01, step_b=0.5),
              (1.0, 501.0, 1000.0, 2.0), {"w2": 0.2, "gmm": 0.031})
    write_run(root / "toy" / "reverse", SamplerConfig(kernel="reverse"), (1.0, 100.0, 5000.0, 0.5), None)
    write_run(root / "images" / "la_3_line",
              SamplerConfig(kernel="mala", n_steps=2, step_size=1e-3, correction="line", n_points=3),
              (0.5, 1301.0, 12.5, 80.0), {"fid": 12.34567, "r3_accuracy": 0.9})
    return root


def test_finds_runs_below_directories_and_by_glob(runs: Path) -> None:
    assert [p.name for p in find_runs([str(runs)])] == ["la_3_line", "hmc_curve", "reverse", "ula"]
    assert find_runs([str(runs / "toy" / "*e*")]) == [(runs / "toy" / name).resolve() for name in ("hmc_curve",
                                                                                                   "reverse")]
    # the same run named twice, directly and through its parent, is one run
    assert len(find_runs([str(runs / "toy" / "ula"), str(runs / "toy")])) == 3


@pytest.mark.parametrize("pattern,message", [
    ("nowhere", "RUN_DIR 'nowhere' matches nothing"),
    ("empty", "no stats.json in or below"),
], ids=["missing", "no-runs"])
def test_bad_run_dirs_are_named(tmp_path: Path, pattern: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=message):
        find_runs([pattern])


def test_columns_are_hparams_in_hparams_order_then_metrics(runs: Path) -> None:
    table = comparison(find_runs([str(runs)]))
    assert table.keys == ["run", *HPARAM_COLUMNS, *METRIC_COLUMNS]
    # the same order as TensorBoard's HPARAMS columns
    assert HPARAM_COLUMNS == [key for key in HPARAM_KEYS if key in HPARAM_COLUMNS]
    # settings every run shares are said once, above the table
    assert table.shared == {"reverse_variance": "beta", "n_samples": 100}
    lines = to_markdown(table).splitlines()
    assert lines[0] == "Same in every run: reverse_variance=beta, n_samples=100"
    assert lines[2].startswith("| run | sampler | step_size | n_steps |")
    assert lines[2].endswith("| LL ↑ | W2 ↓ | GMM ↓ | accuracy (R3) ↑ | FID ↓ | acceptance | NFE/sample | samples/s "
                             "| wall s |")
    cells = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in lines[4:]}
    assert len(cells) == 4
    assert cells["toy/hmc_curve"] == ["toy/hmc_curve", "HMC-curve", "0.03", "10", "–", "–", "3", "0.5", "1", "hmc",
                                      "curve", "0", "trapezoid", "True", "False", "True", "0",
                                      "-1.25", "0.05", "0.011", "–", "–", "0.8125", "4001", "250", "8"]
    # β-power step size a·β^b; a Langevin kernel has no correction, quadrature nodes or leapfrog steps
    assert cells["toy/ula"][:17] == ["toy/ula", "U-LA", "–", "5", "0.01", "0.5", "–", "–", "–", "ula", "–", "–", "–",
                                     "–", "–", "True", "0"]
    # no metrics.json: the sampler statistics still come from stats.json; no kernel settings for Reverse
    assert cells["toy/reverse"][1:17] == ["Reverse", *["–"] * 7, "reverse", *["–"] * 7]
    assert cells["images/la_3_line"][-9:] == ["–", "–", "–", "0.9", "12.35", "0.5", "1301", "12.5", "80"]


def test_sort_puts_runs_without_the_column_last(runs: Path) -> None:
    found = find_runs([str(runs)])
    rows = comparison(found, sort="w2").rows
    assert [row["run"] for row in rows] == ["toy/hmc_curve", "toy/ula", "images/la_3_line", "toy/reverse"]
    rows = comparison(found, sort="w2", descending=True).rows
    assert [row["run"] for row in rows][:2] == ["toy/ula", "toy/hmc_curve"]
    assert [row["wall_seconds"] for row in comparison(found, sort="wall_seconds").rows] == [0.5, 2.0, 8.0, 80.0]
    with pytest.raises(ValueError, match="--sort 'fdi' is not a column; choose one of .*'fid'"):
        comparison(found, sort="fdi")


def test_csv_keeps_full_precision_every_hparam_and_empty_cells(runs: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    main([str(runs / "*" / "*"), "--format", "csv", "--sort", "fid"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["run"] for row in rows] == ["images/la_3_line", "toy/hmc_curve", "toy/reverse", "toy/ula"]
    assert rows[0]["fid"] == "12.34567" and rows[0]["w2"] == ""
    assert rows[1]["step_size"] == "0.03" and rows[3]["step_a"] == "0.01" and rows[3]["n_samples"] == "100"


def test_one_run_shows_all_its_settings(runs: Path) -> None:
    table = comparison(find_runs([str(runs / "toy" / "ula")]))
    assert table.shared == {} and "reverse_variance" in table.keys and "n_samples" in table.keys


def test_command_line_errors_name_the_problem(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(runs), "--sort", "fdi"])
    assert stop.value.code == 2
    assert "--sort 'fdi' is not a column" in capsys.readouterr().err


def test_runs_as_a_module(runs: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_mcmc.compare", str(runs / "toy" / "ula")],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].startswith("| ula | U-LA | 5 | 0.01 | 0.5 | ula |")


# ----- seeds as trials -------------------------------------------------------------------------------------------

HMC = SamplerConfig(kernel="hmc", n_steps=10, step_size=0.03, correction="curve", n_leapfrog=3, damping=0.5)


def write_trial(path: Path, seed: int, metrics: dict[str, float], sampler: SamplerConfig = HMC, n_samples: int = 100,
                checkpoint_sha: str = "aaa", run_json: bool = True) -> None:
    """A finished run: stats.json (its seed among the hparams), metrics.json, and run.json as predict writes it."""
    path.mkdir(parents=True)
    stats = {"sampler": sampler.name, "hparams": {**sampler.hparams(), "seed": seed}, "n_samples": n_samples}
    (path / "stats.json").write_text(json.dumps(stats))
    (path / "metrics.json").write_text(json.dumps(metrics))
    if run_json:
        settings = {"model.seed": seed, "model.sampler.kernel": sampler.kernel,
                    "model.sampler.step_size": sampler.step_size, "model.components.diffusion.checkpoint": None}
        record = {"format": "lit_mcmc.run/1", "n_samples": n_samples, "settings": settings,
                  "files": {"model.components.diffusion.checkpoint": {"size": 10, "sha256": checkpoint_sha}},
                  "locations": {"model.components.diffusion.checkpoint": f"/somewhere/{path.name}.ckpt"}}
        (path / "run.json").write_text(json.dumps(record))


@pytest.fixture
def trial_runs(tmp_path: Path) -> Path:
    root = tmp_path / "trials"
    for seed, fid in enumerate([1.0, 2.0, 3.0]):
        write_trial(root / f"hmc_seed{seed}", seed, {"fid": fid, "r3_accuracy": 0.9})
    for seed, fid in enumerate([5.0, 6.0, 7.0]):  # another step size: another configuration
        write_trial(root / f"hmc_small_seed{seed}", seed, {"fid": fid, "r3_accuracy": 0.8},
                    sampler=SamplerConfig(kernel="hmc", n_steps=10, step_size=0.01, correction="curve",
                                          n_leapfrog=3, damping=0.5))
    write_trial(root / "hmc_other_model_seed0", 0, {"fid": 2.0}, checkpoint_sha="bbb")  # another checkpoint file
    write_trial(root / "hmc_more_samples_seed1", 1, {"fid": 2.0}, n_samples=200)
    write_trial(root / "hmc_old_seed1", 1, {"fid": 2.0}, run_json=False)  # no run.json: nothing to compare
    return root


def test_runs_that_differ_only_in_seed_are_one_row(trial_runs: Path) -> None:
    table = comparison(find_runs([str(trial_runs)]))
    assert sorted(row["run"] for row in table.rows) == [
        "hmc_more_samples_seed1", "hmc_old_seed1", "hmc_other_model_seed0", "hmc_seed{0,1,2}",
        "hmc_small_seed{0,1,2}"]
    grouped = {row["run"]: row for row in table.rows}
    assert grouped["hmc_seed{0,1,2}"]["_runs"] == ["hmc_seed0", "hmc_seed1", "hmc_seed2"]
    assert grouped["hmc_seed{0,1,2}"]["fid"] == 2.0 and grouped["hmc_seed{0,1,2}"]["seed"] == "0,1,2"
    assert grouped["hmc_small_seed{0,1,2}"]["_trials"]["fid"] == [5.0, 6.0, 7.0]
    lines = {line.split(" | ")[0][2:]: line for line in to_markdown(table).splitlines() if line.startswith("| hmc")}
    assert "| 2 ± 1 (n=3) |" in lines["hmc_seed{0,1,2}"] and "| 0.9 ± 0 (n=3) |" in lines["hmc_seed{0,1,2}"]
    assert "| 2 |" in lines["hmc_old_seed1"]


def test_a_trial_at_minus_infinity_leaves_the_mean_without_spread(tmp_path: Path) -> None:
    for seed, ll in enumerate([1.5, float("-inf")]):
        write_trial(tmp_path / f"r{seed}", seed, {"ll": ll})
    write_trial(tmp_path / "base", 0, {"ll": 2.0}, sampler=SamplerConfig(kernel="reverse"))
    text = to_markdown(comparison(find_runs([str(tmp_path)]), baseline="base"))
    assert "| -inf (n=2), Δ−inf? |" in text


def test_ungrouped_lists_every_run(trial_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = comparison(find_runs([str(trial_runs)]), group=False)
    assert len(table.rows) == 9 and {row["run"] for row in table.rows} >= {"hmc_seed0", "hmc_seed1", "hmc_seed2"}
    main([str(trial_runs), "--ungrouped"])
    assert "| hmc_seed1 |" in capsys.readouterr().out


def test_baseline_marks_differences_beyond_two_welch_standard_errors(trial_runs: Path, tmp_path: Path) -> None:
    write_trial(trial_runs / "hmc_near_seed0", 0, {"fid": 2.5, "r3_accuracy": 0.9}, n_samples=300)
    for seed, fid in enumerate([2.6, 3.2, 4.4]):
        write_trial(trial_runs / "hmc_mid_seed" / str(seed), seed, {"fid": fid}, n_samples=400)
    table = comparison(find_runs([str(trial_runs)]), baseline="hmc_seed0")  # a member names its group
    assert table.baseline == "hmc_seed{0,1,2}"
    rows = {row["run"]: row for row in table.rows}
    far = rows["hmc_small_seed{0,1,2}"]["_diff"]["fid"]  # 6 − 2 = 4, se √(1/3 + 1/3) = 0.816
    assert (far.diff, far.se, far.significant) == pytest.approx((4.0, (2 / 3) ** 0.5, True))
    mid = rows["hmc_mid_seed/{0,1,2}"]["_diff"]["fid"]  # 3.4 − 2 = 1.4 < 2·√(0.84/3 + 1/3) = 1.57
    assert mid.significant is False and mid.diff == pytest.approx(1.4)
    assert rows["hmc_near_seed0"]["_diff"]["fid"].significant is None  # one run, no fid_se: nothing to say
    assert "_diff" not in rows["hmc_seed{0,1,2}"]
    text = to_markdown(table)
    assert "| hmc_seed{0,1,2} (baseline) |" in text and "6 ± 1 (n=3), Δ+4* |" in text
    assert "3.4 ± 0.9165 (n=3), Δ+1.4 |" in text and "2.5, Δ+0.5? |" in text
    assert "Δ: difference to hmc_seed{0,1,2}; *: larger than 2 standard errors" in text
    with pytest.raises(ValueError, match=r"--baseline 'hmc_s' matches 2 rows; give one of"):
        comparison(find_runs([str(trial_runs)]), baseline="hmc_s")
    # the end of a run's name wins over a part of another's: small_seed1 is not mid_seed/1
    assert comparison(find_runs([str(trial_runs)]), baseline="small_seed1").baseline == "hmc_small_seed{0,1,2}"
    assert comparison(find_runs([str(trial_runs)]), baseline="near").baseline == "hmc_near_seed0"


def test_a_single_runs_own_standard_error_is_shown_and_used(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_trial(tmp_path / "a", 0, {"fid": 9.0, "fid_se": 0.2, "fid_low": 8.6, "fid_high": 9.4})
    write_trial(tmp_path / "b", 0, {"fid": 10.0, "fid_se": 0.5}, sampler=SamplerConfig(kernel="reverse"))
    write_trial(tmp_path / "c", 0, {"fid": 10.2, "fid_se": 0.5}, sampler=SamplerConfig(kernel="ula", n_steps=2,
                                                                                         step_size=0.1))
    table = comparison(find_runs([str(tmp_path)]), baseline="a")
    assert [column.key for column in table.columns].count("fid") == 1 and "fid_se" not in table.keys
    rows = {row["run"]: row for row in table.rows}
    assert rows["b"]["_diff"]["fid"].significant is False  # 1.0 < 2·√(0.04 + 0.25) = 1.077
    assert rows["c"]["_diff"]["fid"].significant is True  # 1.2 > 1.077
    assert "| 9 ± 0.2 (s.e.) |" in to_markdown(table)
    main([str(tmp_path), "--baseline", "a", "--format", "csv"])
    csv_rows = {row["run"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert float(csv_rows["c"]["fid_diff"]) == pytest.approx(1.2)
    assert csv_rows["c"]["fid_significant"] == "True" and csv_rows["a"]["fid_se"] == "0.2"
    assert csv_rows["a"]["fid_n"] == "1" and csv_rows["a"]["fid_diff"] == ""


def test_new_metrics_and_their_uncertainty_have_labels() -> None:
    from lit_mcmc.report import metric_column

    assert metric_column("kid").label == "KID ↓" and metric_column("fid_se").label == "FID s.e."
    assert metric_column("recall_low").label == "recall 95 % low" and metric_column("log_z_se").label == "log Ẑ s.e."
    assert metric_column("clip_score_p0").label == "clip_score_p0"
