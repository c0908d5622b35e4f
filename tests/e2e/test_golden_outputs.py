"""Nothing changes for users: `lit-mcmc predict` on a fixed set of configs, at a small size, writes bitwise the same
samples.npz arrays and the same stats.json and metrics.json values as recorded in golden/outputs.json.

The set: every configs/toy2d/sample_*.yaml (score and energy rows on tiny models trained here by `lit-mcmc fit`,
oracle rows as they are), two MNIST rows (tiny score model and noisy classifier trained here), both ImageNet configs
(tiny random ADM checkpoints) and both diffusers configs (tiny random pipelines). Timings are left out.

The record is for this machine's CPU with one thread. To write it anew (only when a change of the outputs is
intended, and say so in the commit):

    LIT_MCMC_WRITE_GOLDEN=1 OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/e2e/test_golden_outputs.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "outputs.json"
WRITE = os.environ.get("LIT_MCMC_WRITE_GOLDEN") == "1"
TOY2D = sorted(p.stem for p in (REPO / "configs" / "toy2d").glob("sample_*.yaml"))
MNIST = ["sample_score_hmc", "sample_score_la"]
IMAGENET = ["sample_guided_reverse", "sample_guided_hmc"]
DIFFUSERS = ["sample_sd15_prompt_product_hmc", "sample_if_tapestry_la"]
NAMES = ([f"toy2d/{n}" for n in TOY2D] + [f"mnist/{n}" for n in MNIST] + [f"imagenet/{n}" for n in IMAGENET]
         + [f"diffusers/{n}" for n in DIFFUSERS])
# values that measure the machine, not the samples
TIMING = ("wall", "seconds", "per_second")


def array_digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def record(run_dir: Path) -> dict:
    with np.load(run_dir / "samples.npz") as arrays:
        digests = {key: array_digest(arrays[key]) for key in sorted(arrays.files)}
    out = {"samples.npz": digests, "stats.json": without_timings(json.loads((run_dir / "stats.json").read_text()))}
    if (run_dir / "metrics.json").is_file():
        out["metrics.json"] = without_timings(json.loads((run_dir / "metrics.json").read_text()))
    return out


def small_toy2d(name: str, checkpoints: Path, out: Path) -> dict:
    """configs/toy2d/<name>.yaml: 12 samples in batches of 8 (groups of 4 with particles), 2 MCMC steps."""
    config = yaml.safe_load((REPO / "configs" / "toy2d" / f"{name}.yaml").read_text())
    config["trainer"].update(default_root_dir=str(out), enable_progress_bar=False)
    init = config["model"]["init_args"]
    init["checkpoint_root"] = str(checkpoints)
    sampler = init["sampler"]
    if "n_steps" in sampler:
        sampler["n_steps"] = 2
    n_samples, batch_size = 12, 8
    if sampler.get("resample"):
        sampler["resample"]["group_size"] = 4
        n_samples = 16
    config["data"]["init_args"].update(n_samples=n_samples, batch_size=batch_size)
    return config


def small_mnist(name: str, checkpoints: Path, out: Path) -> dict:
    """configs/mnist/<name>.yaml on the tiny 8x8 models: 6 samples in batches of 4, the writer only."""
    config = yaml.safe_load((REPO / "configs" / "mnist" / f"{name}.yaml").read_text())
    config["trainer"].update(default_root_dir=str(out), enable_progress_bar=False, logger=False)
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][:1]
    config["model"]["init_args"].update(checkpoint_root=str(checkpoints), sample_shape=[1, 8, 8])
    config["data"]["init_args"].update(n_samples=6, batch_size=4)
    return config


def predict(config: dict, path: Path) -> Path:
    from lit_mcmc.cli import main

    path.write_text(yaml.safe_dump(config))
    torch.set_num_threads(1)
    main(["predict", "--config", str(path)])
    return Path(config["trainer"]["default_root_dir"])


def fit(args: list[str]) -> None:
    from lit_mcmc.cli import main

    torch.set_num_threads(1)
    main(args)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, dict]:
    """Every config's record, each run in this process on models written or trained here."""
    from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet
    from tests.e2e.test_cli import tiny_fit_args
    from tests.modules.test_image_modules import tiny_fit_config, write_image_folder, write_yaml
    from tests.pretrained.test_pretrained_adm import TINY_CLASSIFIER, TINY_UNET, save_random, tiny_imagenet_config
    from tests.pretrained.test_pretrained_diffusers import tiny_config, write_pipelines

    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("golden")
    records: dict[str, dict] = {}
    try:
        toy = root / "toy2d_train"
        for model in ("gmm_score", "bar_score", "gmm_energy", "bar_energy"):
            fit(tiny_fit_args(model, toy))
        for name in TOY2D:
            out = predict(small_toy2d(name, toy, root / "toy2d" / name), root / f"toy2d_{name}.yaml")
            records[f"toy2d/{name}"] = record(out)

        images, mnist = root / "images", root / "mnist_train"
        write_image_folder(images)
        for name, run in [("train_score", "score"), ("train_noisy_classifier", "noisy_classifier")]:
            fit(["fit", "--config", write_yaml(tiny_fit_config(name, images, mnist / run), root / f"{name}.yaml")])
        for name in MNIST:
            out = predict(small_mnist(name, mnist, root / "mnist" / name), root / f"mnist_{name}.yaml")
            records[f"mnist/{name}"] = record(out)

        adm = root / "guided_diffusion"
        adm.mkdir()
        save_random(ADMUNet(**TINY_UNET), adm / "unet.pt")
        save_random(ADMEncoderClassifier(**TINY_CLASSIFIER), adm / "classifier.pt", seed=1)
        (root / "imagenet").mkdir()
        for name in IMAGENET:
            torch.manual_seed(0)  # the evaluation RegNet's random weights
            config, path = tiny_imagenet_config(name, adm, root / "imagenet")
            records[f"imagenet/{name}"] = record(predict(config, path))

        pipelines = write_pipelines(root / "pipelines")
        (root / "diffusers").mkdir()
        for name in DIFFUSERS:
            config, path = tiny_config(name, pipelines, root / "diffusers")
            records[f"diffusers/{name}"] = record(predict(config, path))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if WRITE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return records


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_predict_outputs_are_bitwise_the_recorded_ones(outputs: dict[str, dict], name: str):
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == set(NAMES)
    got, want = outputs[name], golden[name]
    assert got["samples.npz"] == want["samples.npz"]
    assert got["stats.json"] == want["stats.json"]
    assert got.get("metrics.json") == want.get("metrics.json")
