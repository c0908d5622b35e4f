"""CLIP score per prompt of a product and per tapestry region: torchmetrics' CLIPScore, with a tiny local CLIP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from lit_mcmc.metrics.clip_score import ClipScorer
from lit_mcmc.metrics.images import to_uint8

PROMPTS = ["a red cat", "a blue hat", "no dog"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight CLIP (32x32 images, letter tokens) and its processor, saved like a downloaded one."""
    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


class TensorFeatures(torch.nn.Module):
    """The CLIP model with get_*_features returning the projected embeddings as a tensor: what torchmetrics'
    CLIPScore expects (transformers >= 5 wraps them in an output object, which torchmetrics 1.9 cannot read)."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return getattr(out := self.model.get_image_features(*args, **kwargs), "pooler_output", out)

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return getattr(out := self.model.get_text_features(*args, **kwargs), "pooler_output", out)


def torchmetrics_clip_score(folder: Path, images: torch.Tensor, prompt: str) -> float:
    model = TensorFeatures(CLIPModel.from_pretrained(folder, local_files_only=True))
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    metric.update(list(to_uint8(images)), [prompt] * len(images))
    return float(metric.compute())


def canvases(n: int, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_score_per_prompt_is_torchmetrics_clip_score(clip_folder: Path) -> None:
    images = canvases(6)
    scores = ClipScorer(clip_folder, batch_size=4).prompt_product(images, PROMPTS)
    for j, prompt in enumerate(PROMPTS):
        assert scores[f"clip_score_p{j}"] == pytest.approx(torchmetrics_clip_score(clip_folder, images, prompt),
                                                           abs=1e-4)
    per_image = ClipScorer(clip_folder).scores(images, PROMPTS)
    assert scores["clip_score_p0"] > 1 and len({round(float(v), 3) for v in per_image[0]}) == 3  # not degenerate
    assert scores["clip_score_min"] == min(scores[f"clip_score_p{j}"] for j in range(3))
    assert scores["clip_score_min_per_image"] == pytest.approx(max(float(per_image.min(1).values.mean()), 0),
                                                               abs=1e-4)
    assert scores["clip_score_p1_se"] == pytest.approx(float(per_image[:, 1].std()) / 6**0.5, abs=1e-4)


def test_negated_prompts_are_scored_but_left_out_of_the_minimum(clip_folder: Path) -> None:
    images = canvases(4)
    scorer = ClipScorer(clip_folder)
    scores = scorer.prompt_product(images, PROMPTS, weights=[1.0, 1.0, -0.5])
    assert "clip_score_p2" in scores
    assert scores["clip_score_min"] == min(scores["clip_score_p0"], scores["clip_score_p1"])
    with pytest.raises(ValueError, match="2 weights for 3 prompts"):
        scorer.prompt_product(images, PROMPTS, weights=[1.0, 1.0])


@dataclass
class Region:
    top: int
    left: int
    size: int
    prompts: list[str]


def test_tapestry_regions_are_scored_on_their_crops(clip_folder: Path) -> None:
    images = canvases(3, 32, 56)
    regions = [Region(0, 0, 32, ["a red cat", "a blue hat"]), Region(0, 24, 32, ["no dog"])]
    scores = ClipScorer(clip_folder).tapestry(images, regions)
    assert scores["clip_score_r1_p0"] == pytest.approx(
        torchmetrics_clip_score(clip_folder, images[..., 24:56], "no dog"), abs=1e-4)
    assert scores["clip_score_r0_p1"] == pytest.approx(
        torchmetrics_clip_score(clip_folder, images[..., 0:32], "a blue hat"), abs=1e-4)
    assert scores["clip_score_min"] == min(scores["clip_score_r0_min"], scores["clip_score_r1_min"])
    with pytest.raises(ValueError, match="tapestry region 0 .* does not fit the 32x56 images"):
        ClipScorer(clip_folder).tapestry(images, [Region(8, 0, 32, ["x"])])


def test_missing_clip_folder_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no CLIP model in .*save_pretrained"):
        ClipScorer(tmp_path / "clip")
