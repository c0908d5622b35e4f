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
