"""A run directory is one run, through the real `lit-mcmc predict`: run.json records the settings that determine the
samples; a matching rerun resumes, a differing one is refused with one line and nothing written, --overwrite moves
the old run aside, more samples extend the run bit for bit, fewer are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lit_mcmc.cli import main
from lit_mcmc.data.shards import shard_name
from tests.e2e.test_failures import SMALL, TOY2D, one_error_line, run_cli

ORACLE = TOY2D / "sample_oracle_hmc.yaml"
SAMPLER = "--model.init_args.sampler."


def predict(root: Path, *extra: str, config: Path = ORACLE) -> list[str]:
    return ["predict", "--config", str(config), "--trainer.default_root_dir", str(root), *SMALL, *extra]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: equal snapshots, nothing written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("change,shown", [
    ([f"{SAMPLER}step_size", "0.3", f"{SAMPLER}n_leapfrog", "2"],
     "model.sampler.step_size was 0.03, now 0.3; model.sampler.n_leapfrog was 3, now 2"),
    ([f"{SAMPLER.removesuffix('.')}", '{"kernel": "uhmc", "step_size": 0.3, "n_leapfrog": 2, "correction": null}'],
     'model.sampler.kernel was "hmc", now "uhmc"'),
    (["--model.init_args.seed", "7"], "model.seed was 0, now 7"),
    (["--model.init_args.components.bar.analytic", "toy2d_gmm"],
     'model.components.bar.analytic was "toy2d_bar", now "toy2d_gmm"'),
], ids=["step-and-leapfrog", "kernel", "seed", "component"])
def test_a_rerun_with_other_settings_is_refused_and_writes_nothing(tmp_path, capsys, restore_environ, change, shown):
    root = tmp_path / "run"
    main(predict(root))
    before = snapshot(root)
    code, err = run_cli(predict(root, *change), capsys)
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"lit-mcmc: error: {root} holds a run with other settings (")
    assert shown in line
    assert line.endswith("its samples are not mixed with these: sample into another --trainer.default_root_dir, or "
                         f"pass --overwrite to move the old run aside to {root}.old-<timestamp>")
    assert snapshot(root) == before  # not a log, not a shard, not a new run.json


def test_run_json_records_what_determines_the_samples(tmp_path, restore_environ):
    main(predict(tmp_path))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["format"] == "lit_mcmc.run/1" and record["n_samples"] == 16
    settings = record["settings"]
    assert settings["model.sampler.kernel"] == "hmc" and settings["model.sampler.n_steps"] == 1
    assert settings["model.sample_shape"] == [2] and settings["model.seed"] == 0
    assert settings["model.schedule.kind"] == "cosine" and settings["model.precision"] == "tf32"
    assert settings["data.class_path"] == "lit_mcmc.data.indices.SampleIndexDataModule"
    # what does not change a sample is not compared: batch size, paths that only locate files, trainer, callbacks
    assert not [key for key in settings if key.startswith(("trainer.", "data.batch_size", "data.output_dir"))]
    assert "model.checkpoint_root" not in settings and "model.checkpoint_root" in record["locations"]


def test_batch_size_callbacks_and_logger_do_not_block_a_resume(tmp_path, capsys, restore_environ):
    """A killed run rerun with another batch size, without the metrics callback and without a logger: it resumes,
    draws only what is missing, and gives the uninterrupted samples."""
    main(predict(tmp_path / "whole", "--data.init_args.batch_size", "8"))
    root = tmp_path / "run"
    main(predict(root, "--data.init_args.batch_size", "8"))
    (root / "shards" / shard_name(np.arange(8, 16))).unlink()  # as if killed before the second shard
    (root / "samples.npz").unlink()
    kept = (root / "shards" / shard_name(np.arange(8))).read_bytes()
    main(predict(root, "--data.init_args.batch_size", "4", "--trainer.logger", "false", "--trainer.callbacks",
                 "callbacks.sample_writer.SampleWriter"))
    assert (root / "shards" / shard_name(np.arange(8))).read_bytes() == kept
    assert sorted(p.name for p in (root / "shards").glob("shard_*.npz")) == [
        shard_name(np.arange(8)), shard_name(np.arange(8, 12)), shard_name(np.arange(12, 16))]
    np.testing.assert_array_equal(np.load(root / "samples.npz")["samples"],
                                  np.load(tmp_path / "whole" / "samples.npz")["samples"])
    assert "lit-mcmc: error" not in capsys.readouterr().err


def test_overwrite_moves_the_old_run_aside_and_starts_afresh(tmp_path, capsys, restore_environ):
    root = tmp_path / "run"
    main(predict(root))
    old = (root / "samples.npz").read_bytes()
    capsys.readouterr()
    main(predict(root, "--model.init_args.seed", "7", "--overwrite"))
    err = capsys.readouterr().err
    (aside,) = tmp_path.glob("run.old-*")
    assert f"lit-mcmc: --overwrite: moved the earlier run in {root} to {aside}; sampling afresh" in err
    assert (aside / "samples.npz").read_bytes() == old  # the old run is kept whole, beside the new one
    assert json.loads((aside / "run.json").read_text())["settings"]["model.seed"] == 0
    assert json.loads((root / "run.json").read_text())["settings"]["model.seed"] == 7
    assert not np.array_equal(np.load(root / "samples.npz")["samples"], np.load(aside / "samples.npz")["samples"])
    assert json.loads((root / "stats.json").read_text())["hparams"]["seed"] == 7


def test_more_samples_extend_the_run_and_fewer_are_refused(tmp_path, capsys, restore_environ):
    root = tmp_path / "run"
    main(predict(root, "--data.init_args.batch_size", "8"))
    shards = {p.name: p.read_bytes() for p in (root / "shards").glob("shard_*.npz")}
    first = np.load(root / "samples.npz")["samples"]
    capsys.readouterr()
    main(predict(root, "--data.init_args.batch_size", "8", "--data.init_args.n_samples", "24"))
    assert (f"lit-mcmc: extending the run in {root} from data.n_samples=16 to 24: its 16 samples are kept as they "
            "are and only the new indices are drawn") in capsys.readouterr().err
    for name, data in shards.items():
        assert (root / "shards" / name).read_bytes() == data  # bit for bit: not even rewritten
    extended = np.load(root / "samples.npz")
    assert extended["indices"].tolist() == list(range(24))
    np.testing.assert_array_equal(extended["samples"][:16], first)
    main(predict(tmp_path / "at_once", "--data.init_args.n_samples", "24"))  # as if 24 had been asked at first
    np.testing.assert_array_equal(extended["samples"], np.load(tmp_path / "at_once" / "samples.npz")["samples"])
    assert json.loads((root / "run.json").read_text())["n_samples"] == 24

    before = snapshot(root)
    code, err = run_cli(predict(root, "--data.init_args.n_samples", "8"), capsys)
    assert code == 2 and one_error_line(err) == (
        f"lit-mcmc: error: data.n_samples=8 is smaller than the 24 samples of the run in {root}; a run is never cut "
        "short: read the first 8 of its samples.npz, or sample into another --trainer.default_root_dir, or pass "
        f"--overwrite to move the old run aside to {root}.old-<timestamp>")
    assert snapshot(root) == before


def test_samples_without_run_json_are_not_resumed(tmp_path, capsys, restore_environ):
    """Shards of an older lit-mcmc (no run.json): their settings are unknown, so they are neither used nor lost."""
    main(predict(tmp_path))
    (tmp_path / "run.json").unlink()
    before = snapshot(tmp_path)
    code, err = run_cli(predict(tmp_path), capsys)
    assert code == 2 and f"{tmp_path} holds samples but no run.json" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_the_readme_tuning_example_does_not_share_the_untuned_run(tmp_path, capsys, restore_environ):
    """README: the oracle run, then the same config with sampler.target_accept 0.8. In one directory the second
    is refused before it tunes (it used to tune, draw nothing, and report the first run's acceptance)."""
    main(predict(tmp_path))
    code, err = run_cli(predict(tmp_path, f"{SAMPLER}target_accept", "0.8", f"{SAMPLER}tune_samples", "8"), capsys)
    assert code == 2 and "model.sampler.target_accept was null, now 0.8" in one_error_line(err)
    assert not (tmp_path / "step_sizes.json").exists()


@pytest.mark.slow
def test_a_moved_checkpoint_resumes_and_a_changed_one_is_refused(tmp_path, score_checkpoints, capsys,
                                                                  restore_environ):
    config = TOY2D / "sample_score_uhmc.yaml"
    root = tmp_path / "run"
    main(predict(root, "--model.init_args.checkpoint_root", str(score_checkpoints), config=config))
    moved = tmp_path / "moved"
    shutil.copytree(score_checkpoints, moved)
    shards = snapshot(root / "shards")
    main(predict(root, "--model.init_args.checkpoint_root", str(moved), config=config))  # the same files: resumes
    assert snapshot(root / "shards") == shards
    assert json.loads((root / "run.json").read_text())["locations"]["model.components.gmm.checkpoint"] == str(
        (score_checkpoints / "gmm_score" / "checkpoints" / "last.ckpt").resolve())  # run.json was not rewritten
    shutil.copy(moved / "bar_score" / "checkpoints" / "last.ckpt", moved / "gmm_score" / "checkpoints" / "last.ckpt")
    code, err = run_cli(predict(root, "--model.init_args.checkpoint_root", str(moved), config=config), capsys)
    assert code == 2 and ("(model.components.gmm.checkpoint: another file (size and SHA-256 differ))"
                          in one_error_line(err))


def test_settings_added_since_a_run_count_as_unchanged_at_the_value_the_run_had():
    from lit_mcmc.runs import differences

    old = {"settings": {"model.seed": 0, "model.sampler.kernel": "hmc"}, "files": {}}

    def new(**added):
        return {"settings": {"model.seed": 0, "model.sampler.kernel": "hmc", **added}, "files": {}}

    # optional settings added unset, and later settings at the value that does what the old code did: the same run
    assert differences(old, new(**{"model.seeds": None, "model.components.gmm.guidance": None,
                                   "model.sampler.reverse_eta": 1.0, "model.sampler.step_scaling": "none"})) == []
    # the same settings at another value: another run
    assert differences(old, new(**{"model.sampler.reverse_eta": 0.0})) == ["model.sampler.reverse_eta was not set, "
                                                                           "now 0.0"]
    assert len(differences(old, new(**{"model.sampler.step_scaling": "path"}))) == 1


def test_step_tables_record_later_settings_only_away_from_what_earlier_tables_assumed():
    from lit_mcmc.samplers import SamplerConfig

    plain = SamplerConfig(kernel="hmc", step_size=0.1, correction="energy").tuning_settings()
    assert "step_scaling" not in plain and "reverse_eta" not in plain  # tables tuned before them stay valid
    scaled = SamplerConfig(kernel="hmc", step_size=0.1, correction="energy", step_scaling="path").tuning_settings()
    assert scaled["step_scaling"] == "path"
