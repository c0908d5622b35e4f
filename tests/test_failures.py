"""Failure modes a user meets, through the real `lit-mcmc` entry point: one line naming the key or file, exit 2, no
traceback, and nothing lost or silently wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lit_mcmc.cli import main

REPO = Path(__file__).resolve().parent.parent
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
    from lit_mcmc.data.indices import shard_name

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
    import json

    import yaml

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
