"""Failure modes a user meets, through the real `lit-mcmc` entry point: one line naming the key or file, exit 2, no
traceback, and nothing lost or silently wrong."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lit_mcmc.cli import main

REPO = Path(__file__).resolve().parents[2]
TOY2D = REPO / "configs" / "toy2d"
SMALL = ["--data.init_args.n_samples", "16", "--data.init_args.batch_size", "16", "--trainer.enable_progress_bar",
         "false", "--model.init_args.sampler.n_steps", "1"]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``lit-mcmc <args>`` run in this process."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("lit-mcmc: error:")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    return lines[0]


class Foreign:
    """Unpickling this would run code: ``torch.load(weights_only=True)`` must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def write_bad_checkpoint(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "not-a-zip":
        path.write_text("these are not the weights you are looking for\n")
    else:
        path.write_bytes(pickle.dumps({"state_dict": Foreign()}))


@pytest.mark.parametrize("kind", ["truncated", "not-a-zip", "foreign-pickle"])
def test_unreadable_checkpoint_is_one_line_naming_file_and_key(tmp_path, capsys, restore_environ, kind):
    checkpoint = tmp_path / "gmm_score" / "checkpoints" / "last.ckpt"
    write_bad_checkpoint(checkpoint, kind)
    write_bad_checkpoint(tmp_path / "bar_score" / "checkpoints" / "last.ckpt", kind)
    code, err = run_cli(["predict", "--config", str(TOY2D / "sample_score_hmc_curve.yaml"),
                         "--model.init_args.checkpoint_root", str(tmp_path), "--trainer.default_root_dir",
                         str(tmp_path / "out"), *SMALL], capsys)
    line = one_error_line(err)
    assert code == 2
    assert "model.components.gmm.checkpoint" in line and str(checkpoint) in line
    assert "weights_only" not in err
    assert not (Path.cwd() / "pwned").exists()


@pytest.mark.parametrize("args,message", [
    (["--trainer.inference_mode", "true"], "set trainer.inference_mode: false"),
    (["--trainer.accelerator", "gpu"], "trainer: "),
    (["--trainer.precision", "bf16-true"], "trainer.precision=bf16-true"),
], ids=["inference-mode", "no-gpu", "true-precision"])
def test_mistakes_found_inside_lightning_are_one_line(tmp_path, capsys, restore_environ, args, message):
    if args[1] == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: asking for one is no mistake here")
    code, err = run_cli(["predict", "--config", str(TOY2D / "sample_oracle_hmc.yaml"), "--trainer.default_root_dir",
                         str(tmp_path), *SMALL, *args], capsys)
    assert code == 2 and message in one_error_line(err)


def test_diverging_training_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                                   restore_environ):
    """lr = 1e30: the first Adam step blows the weights up, the next loss overflows. Training stops there, names the
    step, and the checkpoint written before it holds finite weights."""
    code, err = run_cli(["fit", "--config", str(TOY2D / "train_gmm_score.yaml"), "--trainer.default_root_dir",
                         str(tmp_path), "--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false",
                         "--data.init_args.batch_size", "64", "--data.init_args.steps_per_epoch", "1",
                         "--model.init_args.lr", "1e30"], capsys)
    line = one_error_line(err)
    assert code == 2 and "training diverged at step" in line and str(tmp_path / "checkpoints") in line
    step = int(line.split("training diverged at step ")[1].split(":")[0])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= checkpoint["global_step"] <= step
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def test_unwritable_output_directory_fails_before_sampling(tmp_path, capsys, restore_environ):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output directory should be")
    code, err = run_cli(["predict", "--config", str(TOY2D / "sample_oracle_hmc.yaml"), "--trainer.default_root_dir",
                         str(blocker / "run"), *SMALL], capsys)
    line = one_error_line(err)
    assert code == 2 and "cannot be written" in line and str(blocker / "run") in line


def test_a_shard_that_fails_to_write_is_not_done_and_a_rerun_completes(tmp_path, capsys, restore_environ,
                                                                       monkeypatch):
    """A full disk on the second batch: the error names the shard, no partial file remains, the first shard is kept,
    and rerunning the same command writes only what is missing."""
    import numpy as np

    from callbacks import sample_writer
    from lit_mcmc.data.shards import shard_name

    calls = {"n": 0}
    save = np.savez

    def fail_second(file, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            file.write(b"partial")
            raise OSError(28, "No space left on device")
        save(file, **arrays)

    monkeypatch.setattr(sample_writer.np, "savez", fail_second)
    args = ["predict", "--config", str(TOY2D / "sample_oracle_hmc.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--data.init_args.n_samples", "24", "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar",
            "false", "--model.init_args.sampler.n_steps", "1"]
    code, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2 and "No space left on device" in line and shard_name(np.arange(8, 16)) in line
    shards = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert shards == [shard_name(np.arange(8))]  # no temporary or partial file is left, nothing counted as done
    monkeypatch.setattr(sample_writer.np, "savez", save)
    main(args)
    merged = np.load(tmp_path / "samples.npz")
    assert merged["indices"].tolist() == list(range(24))


def test_composition_errors_come_before_any_file_is_read(tmp_path, capsys, restore_environ):
    """A mixture (or the exact-energy correction) of score models is a config error: reported before the
    checkpoints are looked for, here before the missing ADM files would be."""
    from lit_mcmc.modules import ComponentConfig, CompositionConfig, SamplingModule
    from lit_mcmc.samplers import SamplerConfig

    adm = {name: ComponentConfig(pretrained="adm", path=f"missing_{name}.pt", config="256x256_diffusion_uncond")
           for name in ("a", "b")}
    with pytest.raises(ValueError, match="model.composition.kind='mixture' needs an exact log-density"):
        SamplingModule(adm, CompositionConfig(kind="mixture"), SamplerConfig(kernel="reverse"), [3, 256, 256],
                       checkpoint_root=str(tmp_path))
    with pytest.raises(ValueError, match="model.sampler.correction='energy' needs .* or correction: line / curve"):
        SamplingModule(adm, CompositionConfig(kind="product"),
                       SamplerConfig(kernel="mala", step_size=0.1, correction="energy"), [3, 256, 256],
                       checkpoint_root=str(tmp_path))
    # a lit-mcmc checkpoint: its saved parameterization decides, still before any network is built
    main(["fit", "--config", str(TOY2D / "train_gmm_score.yaml"), "--trainer.default_root_dir",
          str(tmp_path / "gmm_energy"), "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
          "--data.init_args.batch_size", "16", "--data.init_args.steps_per_epoch", "1"])
    capsys.readouterr()
    (tmp_path / "bar_energy").symlink_to(tmp_path / "gmm_energy")  # two score checkpoints where energies belong
    code, err = run_cli(["predict", "--config", str(TOY2D / "sample_energy_mixture.yaml"),
                         "--model.init_args.checkpoint_root", str(tmp_path), "--trainer.default_root_dir",
                         str(tmp_path / "out"), *SMALL], capsys)
    line = one_error_line(err)
    assert code == 2 and "model.composition.kind='mixture' needs an exact log-density" in line
    assert "model.components.gmm is a score model" in line


def test_degenerate_sampling_is_loud(tmp_path, capsys, restore_environ):
    """step_size 1e6 on the 2D oracle: every proposal is rejected. The run warns once per range of levels, lists
    them in stats.json and TensorBoard; with fail_on_degenerate it stops at the first such level, one line."""
    import json

    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["predict", "--config", str(TOY2D / "sample_oracle_hmc.yaml"), *SMALL,
            "--model.init_args.sampler.step_size", "1e6"]
    with pytest.warns(UserWarning, match=r"sampling degenerated at levels 99-0: acceptance") as warned:
        main([*args, "--trainer.default_root_dir", str(tmp_path / "flag")])
    assert len([w for w in warned if "degenerated" in str(w.message)]) == 1  # one range, one warning
    stats = json.loads((tmp_path / "flag" / "stats.json").read_text())
    assert stats["accept_rate"] == 0.0
    assert sorted(map(int, stats["degenerate_levels"])) == list(range(100))
    assert "acceptance" in stats["degenerate_levels"]["0"]
    events = EventAccumulator(str(next((tmp_path / "flag").rglob("events.out.tfevents.*")).parent),
                              size_guidance={"scalars": 0})
    events.Reload()
    marks = [e.value for e in events.Scalars("sampler/degenerate_per_level")]
    assert len(marks) == 100 and set(marks) == {1.0}
    np.testing.assert_array_equal(np.isfinite(np.load(tmp_path / "flag" / "samples.npz")["samples"]), True)

    code, err = run_cli([*args, "--trainer.default_root_dir", str(tmp_path / "fail"),
                         "--model.init_args.sampler.fail_on_degenerate", "true"], capsys)
    line = one_error_line(err)
    assert code == 2 and "sampling degenerated at level 99 (acceptance 0 < 0.01; 100.0% non-finite" in line
    assert not (tmp_path / "fail" / "shards").exists() or not list((tmp_path / "fail" / "shards").glob("*.npz"))


def test_nonfinite_samples_are_flagged_or_refused(tmp_path, capsys, restore_environ):
    """A diverged model (here: an analytic target whose score is NaN far from the data, reached by a huge U-LA
    step) gives non-finite samples: counted and listed by default, refused with nonfinite_samples: refuse."""
    config = yaml.safe_load((TOY2D / "sample_oracle_hmc.yaml").read_text())
    config["model"]["init_args"]["sampler"] = {"kernel": "ula", "n_steps": 1, "step_size": 1e200, "reverse": False}
    (tmp_path / "ula.yaml").write_text(yaml.safe_dump(config))
    args = ["predict", "--config", str(tmp_path / "ula.yaml"), *SMALL]
    with pytest.warns(UserWarning, match="samples are not finite"):
        main([*args, "--trainer.default_root_dir", str(tmp_path / "flag")])
    stats = json.loads((tmp_path / "flag" / "stats.json").read_text())
    assert stats["n_nonfinite_samples"] > 0 and stats["nonfinite_sample_indices"]
    assert any("non-finite samples" in problems for problems in stats["degenerate_levels"].values())
    config["trainer"]["callbacks"][0]["init_args"] = {"nonfinite_samples": "refuse"}
    (tmp_path / "refuse.yaml").write_text(yaml.safe_dump(config))
    code, err = run_cli(["predict", "--config", str(tmp_path / "refuse.yaml"), *SMALL, "--trainer.default_root_dir",
                         str(tmp_path / "refuse")], capsys)
    assert code == 2 and "not written, as the SampleWriter's nonfinite_samples is 'refuse'" in one_error_line(err)
    assert not list((tmp_path / "refuse" / "shards").glob("*.npz"))


# ----- one line before any file: the remaining tracebacks and silent cases ------------------------------------

ORACLE = TOY2D / "sample_oracle_hmc.yaml"
SAMPLER = "--model.init_args.sampler."


def predict(root: Path, *extra: str) -> list[str]:
    return ["predict", "--config", str(ORACLE), "--trainer.default_root_dir", str(root), *SMALL, *extra]


@pytest.mark.slow
def test_the_study_reference_levels_row_runs(tmp_path, score_checkpoints, restore_environ):
    """`make study2d`'s U-HMC row with the reference code's levels (min_mcmc_level 1 without reverse steps), at a
    tiny size: it used to stop on an AssertionError. No MCMC at level 0: 99 levels of K steps."""
    from lit_mcmc.experiments.study2d import STUDY_ROWS, study_job
    from lit_mcmc.experiments.toy2d import PRESETS, train_dir

    row = next(r for r in STUDY_ROWS if r.key == "score_uhmc_reference_levels")
    train = train_dir(tmp_path, 0)
    shutil.copytree(score_checkpoints, train)
    job = study_job(tmp_path, 0, row, PRESETS["study"])
    args = job.command[job.command.index("lit_mcmc.cli") + 1:]
    main([*args, "--data.init_args.n_samples", "16", "--data.init_args.batch_size", "16",
          f"{SAMPLER}n_steps", "1"])
    stats = json.loads((job.run_dir / "stats.json").read_text())
    assert stats["hparams"]["min_mcmc_level"] == 1 and len(stats["accept_rate_per_level"]) == 99
    assert stats["nfe_per_sample"] == 99 * (1 + 3)  # per level: the first evaluation + 1 step of L = 3; none at t=0


def test_a_config_file_with_a_tab_names_file_line_and_column(tmp_path, capsys):
    text = ORACLE.read_text().replace("    seed: 0", "\tseed: 0")
    config = tmp_path / "tabbed.yaml"
    config.write_text(text)
    line_number = text.splitlines().index("\tseed: 0") + 1
    code, err = run_cli(["predict", "--config", str(config)], capsys)
    assert code == 2 and one_error_line(err) == (
        f"lit-mcmc: error: {config}, line {line_number}, column 1: a tab; tabs are not allowed in YAML: indent with "
        "spaces")


def sd_config(tmp_path: Path, **component) -> Path:
    config = yaml.safe_load((TOY2D.parent / "diffusers" / "sample_sd15_prompt_product_hmc.yaml").read_text())
    config["model"]["init_args"]["components"]["sd"].update(component)
    path = tmp_path / "sd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("args,line", [
    (["--model.init_args.sampler.min_mcmc_level", "100"],
     "model.sampler.min_mcmc_level=100 must lie in [0, 99] (the levels of the schedule): above it no level would run "
     "the kernel"),
    (["--model.init_args.sample_shape", "[3]"],
     "model.sample_shape=[3] does not fit model.components.gmm: its model takes samples of shape [2]"),
    (["--model.init_args.sampler.step_table", "no_such_table.json"],
     "model.sampler.step_table='no_such_table.json': no such file; point it to the step_sizes.json of a run tuned "
     "with model.sampler.target_accept (it is written into that run's trainer.default_root_dir)"),
], ids=["min-mcmc-level-above-T", "shape-of-analytic", "missing-step-table"])
def test_sampler_and_shape_mistakes_are_one_line_before_any_file(tmp_path, capsys, restore_environ, args, line):
    code, err = run_cli(predict(tmp_path / "run", *args), capsys)
    assert code == 2 and one_error_line(err) == f"lit-mcmc: error: {line}"
    assert not (tmp_path / "run").exists()


def test_min_mcmc_level_without_reverse_steps_runs(tmp_path, restore_environ):
    """The reference code's coverage (no MCMC at level 0) with reverse: false: level 0 is then left as it is."""
    main(predict(tmp_path, f"{SAMPLER}min_mcmc_level", "1"))
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert sorted(map(int, stats["accept_rate_per_level"])) == list(range(1, 100))


def test_adm_channels_that_do_not_fit_are_one_line_before_any_file(tmp_path, capsys, restore_environ):
    from lit_mcmc.nets.adm import ADMUNet
    from tests.pretrained.test_pretrained_adm import TINY_UNET, save_random

    save_random(ADMUNet(**TINY_UNET), tmp_path / "unet.pt")
    config = yaml.safe_load(ORACLE.read_text())
    config["trainer"]["callbacks"] = [{"class_path": "callbacks.sample_writer.SampleWriter"}]
    init = config["model"]["init_args"]
    init.update(checkpoint_root=str(tmp_path), sample_shape=[1, 16, 16], respace=4, schedule=None,
                components={"diffusion": {"pretrained": "adm", "path": "unet.pt", "config": TINY_UNET}},
                composition={"kind": "single"}, sampler={"kernel": "reverse"})
    (tmp_path / "adm.yaml").write_text(yaml.safe_dump(config))
    code, err = run_cli(["predict", "--config", str(tmp_path / "adm.yaml"), "--trainer.default_root_dir",
                         str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"], capsys)
    assert code == 2 and one_error_line(err) == (
        "lit-mcmc: error: model.sample_shape=[1, 16, 16] does not fit model.components.diffusion: its network takes "
        "samples of shape [3, height, width] (3-channel images)")
    assert not (tmp_path / "run").exists()


def test_an_empty_prompt_list_is_refused_naming_the_component(tmp_path, capsys, restore_environ):
    """`prompts: []` with kind: prompt_product used to sample the unconditional model without a word."""
    code, err = run_cli(["predict", "--config", str(sd_config(tmp_path, prompts=[], weights=None))], capsys)
    assert code == 2 and one_error_line(err) == (
        "lit-mcmc: error: model.components.sd.prompts is empty: a prompt product needs at least one prompt (null, or "
        "no prompts key, samples the model alone)")


@pytest.mark.parametrize("field", ["weights", "embeddings"])
def test_a_null_component_key_on_the_command_line_names_the_key(tmp_path, capsys, field):
    """jsonargparse reads `--model.init_args.components.sd.<key> null` as the text 'None': an error naming
    model.components.weights (a key that does not exist), or, for embeddings, a file called None."""
    code, err = run_cli(["predict", "--config", str(sd_config(tmp_path)),
                         f"--model.init_args.components.sd.{field}", "null"], capsys)
    assert code == 2 and one_error_line(err) == (
        f"lit-mcmc: error: model.components.sd.{field}: null cannot be given on the command line for a key of a "
        f"component (it would be read as the text 'None'): set {field}: null in the YAML file")


def test_component_messages_name_the_component(tmp_path, capsys, restore_environ):
    code, err = run_cli(["predict", "--config", str(sd_config(tmp_path, weights=[1.0]))], capsys)
    assert code == 2 and one_error_line(err) == (
        "lit-mcmc: error: model.components.sd.weights has 1 entries but model.components.sd.prompts has 2: one "
        "weight per prompt")


def test_fit_with_zero_steps_says_no_checkpoint_is_written(tmp_path, capsys, restore_environ):
    code, err = run_cli(["fit", "--config", str(TOY2D / "train_gmm_score.yaml"), "--trainer.default_root_dir",
                         str(tmp_path / "fit"), "--trainer.max_steps", "0"], capsys)
    assert code == 2 and one_error_line(err) == (
        "lit-mcmc: error: trainer.max_steps=0 trains nothing, so no checkpoint would be written (nothing was "
        "written): give the number of training steps (-1: no limit)")
    assert not (tmp_path / "fit").exists()


def test_sampler_messages_name_the_full_key(tmp_path, capsys, restore_environ):
    code, err = run_cli(predict(tmp_path, f"{SAMPLER}damping", "1.5"), capsys)
    assert code == 2 and "model.sampler.damping=1.5 must lie in [0, 1]" in one_error_line(err)
