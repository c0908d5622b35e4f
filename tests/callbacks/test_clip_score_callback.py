"""ClipScoreCallback in a predict run of a text composition: per-prompt CLIP scores of the decoded samples (per
region for a tapestry), equal to the scorer's on the merged images, in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_mcmc.metrics.clip_score import ClipScorer
from tests.metrics.test_clip_score import clip_folder  # noqa: F401  (the tiny local CLIP, a fixture)
from tests.pretrained.test_pretrained_diffusers import tiny_config, write_pipelines


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pipelines(tmp_path_factory.mktemp("diffusers"))


def predict_with_clip(name: str, pipelines: Path, clip: Path, tmp_path: Path) -> tuple[dict, Path]:
    from lit_mcmc.cli import main

    config, path = tiny_config(name, pipelines, tmp_path)
    # before the writer: the order of the callbacks does not matter
    config["trainer"]["callbacks"].insert(0, {"class_path": "callbacks.clip_score.ClipScoreCallback",
                                              "init_args": {"clip_path": str(clip)}})
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    out = Path(config["trainer"]["default_root_dir"])
    return config, out


@pytest.mark.slow
def test_prompt_product_is_scored_per_prompt_on_the_decoded_images(pipelines: Path, clip_folder: Path,  # noqa: F811
                                                                    tmp_path: Path, restore_environ) -> None:
    config, out = predict_with_clip("sample_sd15_prompt_product_hmc", pipelines, clip_folder, tmp_path)
    (component,) = config["model"]["init_args"]["components"].values()
    metrics = json.loads((out / "metrics.json").read_text())
    images = torch.from_numpy(np.load(out / "samples.npz")["images"])
    expected = ClipScorer(clip_folder).prompt_product(images, component["prompts"], component.get("weights"))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert [f"clip_score_p{j}" in metrics for j in range(len(component["prompts"]))] == [True] * len(
        component["prompts"])
    assert metrics["clip_score_min"] == min(metrics[f"clip_score_p{j}"] for j in range(len(component["prompts"]))
                                            if (component.get("weights") or [1] * 99)[j] >= 0)


@pytest.mark.slow
def test_tapestry_is_scored_per_region_on_its_crop(pipelines: Path, clip_folder: Path,  # noqa: F811
                                                   tmp_path: Path, restore_environ) -> None:
    config, out = predict_with_clip("sample_if_tapestry_la", pipelines, clip_folder, tmp_path)
    (component,) = config["model"]["init_args"]["components"].values()
    metrics = json.loads((out / "metrics.json").read_text())
    from lit_mcmc.pretrained.diffusers import RegionSpec

    regions = [RegionSpec.parse(raw, f"regions[{i}]") for i, raw in enumerate(component["regions"])]
    samples = torch.from_numpy(np.load(out / "samples.npz")["samples"])  # a pixel model: the samples are images
    expected = ClipScorer(clip_folder).tapestry(samples, regions, [r.weights or None for r in regions])
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert all(f"clip_score_r{i}_p0_se" in metrics for i in range(len(regions)))
    assert metrics["clip_score_min"] == min(metrics[f"clip_score_r{i}_min"]
                                            for i in range(len(component["regions"])))


def test_a_model_without_prompts_is_refused_before_sampling(tmp_path: Path, capsys, restore_environ) -> None:
    from lit_mcmc.cli import main
    from tests.e2e.test_failures import SMALL, TOY2D, one_error_line

    with pytest.raises(SystemExit):
        main(["predict", "--config", str(TOY2D / "sample_oracle_hmc.yaml"), *SMALL, "--trainer.default_root_dir",
              str(tmp_path), "--trainer.callbacks+=callbacks.clip_score.ClipScoreCallback",
              "--trainer.callbacks.clip_path", str(tmp_path / "clip")])
    line = one_error_line(capsys.readouterr().err)
    assert "ClipScoreCallback" in line and "0 components with prompts or regions" in line
    assert not (tmp_path / "samples.npz").exists()
