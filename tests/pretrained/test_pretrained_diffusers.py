"""diffusers models as components: the adapter's score for every prediction type, the scheduler's levels, prompt
products and tapestries (formula and one batched UNet call each), loading pipeline folders with clear errors, and
both configs/diffusers end to end on tiny random-weight pipelines written here (the same code path as the real ones).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytest.importorskip("diffusers", reason="the [pretrained] extra (diffusers, transformers) is not installed")
pytest.importorskip("transformers", reason="the [pretrained] extra (diffusers, transformers) is not installed")

from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel, UNet2DModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from lit_mcmc.compose import ClassifierFreeGuidance  # noqa: E402
from lit_mcmc.diffusion import ScheduleConfig  # noqa: E402
from lit_mcmc.experiments.jobs import evaluations_per_level  # noqa: E402
from lit_mcmc.modules import ComponentConfig, CompositionConfig, SamplingModule  # noqa: E402
from lit_mcmc.pretrained.diffusers import (  # noqa: E402
    DiffusersTarget,
    PromptGroup,
    PromptProduct,
    Region,
    Tapestry,
    encode_prompts,
    schedule_from_scheduler,
)
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "diffusers"
RESOLUTION, TEXT_DIM, TEXT_LEN = 8, 16, 8


# ----- tiny random-weight parts --------------------------------------------------------------------------------


def tiny_text_unet(in_channels: int, out_channels: int, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=in_channels, out_channels=out_channels, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM, attention_head_dim=4,
        norm_num_groups=8).eval()


def tiny_pixel_unet(out_channels: int = 3, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=RESOLUTION, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).eval()


def write_text_parts(folder: Path) -> None:
    """A CLIP tokenizer (letters as tokens) and a one-layer CLIP text encoder, saved like a pipeline's."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TEXT_LEN)
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(1)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=TEXT_LEN, projection_dim=TEXT_DIM,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    return write_pipelines(tmp_path_factory.mktemp("diffusers"))


def write_pipelines(root: Path) -> Path:
    """root/sd: a latent text-to-image pipeline (SD layout: PNDM scheduler, VAE); root/if: a pixel one with a
    learned variance (IF stage I layout: DDPM cosine scheduler, learned_range)."""
    sd = root / "sd"
    tiny_text_unet(4, 4).save_pretrained(sd / "unet")
    PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  skip_prk_steps=True).save_pretrained(sd / "scheduler")
    torch.manual_seed(2)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=8, sample_size=2 * RESOLUTION, layers_per_block=1).save_pretrained(sd / "vae")
    write_text_parts(sd)
    stage_1 = root / "if"
    tiny_text_unet(3, 6, seed=3).save_pretrained(stage_1 / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                  variance_type="learned_range").save_pretrained(stage_1 / "scheduler")
    write_text_parts(stage_1)
    return root


def count_calls(module: torch.nn.Module) -> list[int]:
    """A list that grows by one batch size per forward call of ``module``."""
    calls: list[int] = []
    module.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


# ----- schedule and the adapter's score -------------------------------------------------------------------------


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_has_the_schedulers_alphas_cumprod(beta_schedule: str):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    schedule = schedule_from_scheduler(scheduler)
    assert schedule.T == 1000
    torch.testing.assert_close(schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=2e-6, atol=1e-8)
    torch.testing.assert_close(schedule.betas.float(), scheduler.betas, rtol=0, atol=0)
    assert schedule.model_timesteps.tolist() == list(range(1000))


def test_schedule_refuses_a_scheduler_without_discrete_levels():
    with pytest.raises(ValueError, match="no betas/alphas_cumprod"):
        schedule_from_scheduler(object())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("learned_variance", [False, True], ids=["fixed", "learned"])
def test_score_is_minus_eps_over_sigma_for_every_prediction_type(prediction_type: str, learned_variance: bool):
    """ε̂ as diffusers' own DDPMScheduler.step reads it (through its x̂₀ estimate), so the conversion is checked
    against an independent implementation."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False,
                              variance_type="learned_range" if learned_variance else "fixed_small")
    unet = tiny_pixel_unet(6 if learned_variance else 3)
    target = DiffusersTarget(unet, schedule_from_scheduler(scheduler), prediction_type)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    level = 700
    evaluation = target.evaluate(x, level)
    with torch.no_grad():
        out = unet(x, torch.tensor([level, level])).sample
        x0 = scheduler.step(out, level, x).pred_original_sample
    abar = float(scheduler.alphas_cumprod[level])
    eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
    torch.testing.assert_close(evaluation.score, -eps / math.sqrt(1 - abar), rtol=0, atol=1e-5)
    if learned_variance:
        torch.testing.assert_close(evaluation.variance_output, out[:, 3:])
    else:
        assert evaluation.variance_output is None
    assert not target.has_log_prob


def test_conditioning_of_batch_one_is_shared_and_of_batch_b_per_sample():
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    x = torch.randn(3, 3, RESOLUTION, RESOLUTION)
    hidden = torch.randn(3, TEXT_LEN, TEXT_DIM)
    with torch.no_grad():
        per_sample = unet(x, torch.full((3,), 500), encoder_hidden_states=hidden).sample
        shared = unet(x, torch.full((3,), 500), encoder_hidden_states=hidden[:1].expand(3, -1, -1)).sample
    sigma = float(schedule.marginal_std[500])
    torch.testing.assert_close(DiffusersTarget(unet, schedule, encoder_hidden_states=hidden).score(x, 500),
                               -per_sample / sigma)
    torch.testing.assert_close(DiffusersTarget(unet, schedule, encoder_hidden_states=hidden[:1]).score(x, 500),
                               -shared / sigma)
    with pytest.raises(ValueError, match="batch 2, but x has a batch of 3"):
        DiffusersTarget(unet, schedule, encoder_hidden_states=hidden[:2]).score(x, 500)


# ----- prompt products and tapestries ---------------------------------------------------------------------------


def direct_eps(unet: torch.nn.Module, x: torch.Tensor, hidden: torch.Tensor, level: int) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, torch.full((x.shape[0],), level), encoder_hidden_states=hidden.expand(x.shape[0], -1, -1)).sample


def test_prompt_product_is_its_formula_in_one_unet_call():
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    embeddings = torch.randn(3, TEXT_LEN, TEXT_DIM)
    weights = [2.0, -0.5]  # a product with one prompt and a negation of the other
    target = PromptProduct(unet, schedule, embeddings, weights)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    calls = count_calls(unet)
    score = target.score(x, 300)
    assert calls == [6]  # (k+1)·B in one call
    eps = [direct_eps(unet, x, embeddings[i:i + 1], 300) for i in range(3)]
    expected = eps[0] + 2.0 * (eps[1] - eps[0]) - 0.5 * (eps[2] - eps[0])
    torch.testing.assert_close(score, -expected / float(schedule.marginal_std[300]), rtol=0, atol=1e-5)


def test_prompt_product_feynman_kac_gap_is_its_formula():
    """‖S‖² − Σ w‖s‖² over the densities the product combines: p(∅)^{1−Σw} Πᵢ p(cᵢ)^{wᵢ}, s = −ε/σ (particle
    weights), from the same single UNet call."""
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    embeddings, weights = torch.randn(3, TEXT_LEN, TEXT_DIM), [2.0, -0.5]
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    evaluation = PromptProduct(unet, schedule, embeddings, weights).evaluate(x, 300)
    sigma = float(schedule.marginal_std[300])
    scores = [-direct_eps(unet, x, embeddings[i:i + 1], 300) / sigma for i in range(3)]
    sq = [s.flatten(1).pow(2).sum(1) for s in scores]
    expected = evaluation.score.flatten(1).pow(2).sum(1) - ((1 - 1.5) * sq[0] + 2.0 * sq[1] - 0.5 * sq[2])
    torch.testing.assert_close(evaluation.sq_norm_gap(), expected, rtol=1e-4, atol=1e-2)


def test_one_prompt_is_classifier_free_guidance():
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    embeddings = torch.randn(2, TEXT_LEN, TEXT_DIM)
    cfg = ClassifierFreeGuidance(DiffusersTarget(unet, schedule, encoder_hidden_states=embeddings[1:]),
                                 DiffusersTarget(unet, schedule, encoder_hidden_states=embeddings[:1]), 7.5)
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    torch.testing.assert_close(PromptProduct(unet, schedule, embeddings, [7.5]).score(x, 100), cfg.score(x, 100),
                               rtol=0, atol=1e-4)


def test_mh_line_correction_integrates_the_composed_score_with_one_call_per_evaluation():
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000)).respace(3)
    target = PromptProduct(unet, schedule, torch.randn(3, TEXT_LEN, TEXT_DIM), [1.5, 1.5])
    sampler = SamplerConfig(kernel="mala", n_steps=2, step_a=0.5, correction="line", n_points=3).build(schedule)
    calls = count_calls(unet)
    samples, info = sampler.sample(target, (2, 3, RESOLUTION, RESOLUTION), PerSampleRandom(0, torch.arange(2)))
    assert torch.isfinite(samples).all() and info.adjusted
    assert len(calls) == info.nfe and set(calls) == {6}  # every evaluation is one UNet call of (k+1)·B


@pytest.mark.parametrize("normalize", [False, True])
def test_tapestry_score_is_the_regions_scores_placed_back(normalize: bool):
    """Two 8x8 regions on an 8x12 canvas overlapping in columns 4..7."""
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    left, right = torch.randn(2, TEXT_LEN, TEXT_DIM), torch.randn(3, TEXT_LEN, TEXT_DIM)
    regions = [Region(0, 0, 8, PromptGroup(left, [3.0])), Region(0, 4, 8, PromptGroup(right, [2.0, -1.0]))]
    tapestry = Tapestry(unet, schedule, regions, (8, 12), normalize=normalize, resolution=RESOLUTION)
    x = torch.randn(2, 3, 8, 12)
    calls = count_calls(unet)
    score = tapestry.score(x, 400)
    assert calls == [10]  # (2 + 3) rows x B = 2, one call
    expected = torch.zeros_like(x)
    expected[..., 0:8] += PromptProduct(unet, schedule, left, [3.0]).score(x[..., 0:8], 400)
    expected[..., 4:12] += PromptProduct(unet, schedule, right, [2.0, -1.0]).score(x[..., 4:12], 400)
    if normalize:
        expected[..., 4:8] /= 2
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-5)


def test_tapestry_regions_must_fit_cover_and_match_the_resolution():
    unet = tiny_text_unet(3, 3)
    schedule = schedule_from_scheduler(DDPMScheduler(num_train_timesteps=1000))
    group = PromptGroup(torch.randn(2, TEXT_LEN, TEXT_DIM), [1.0])
    with pytest.raises(ValueError, match="size 4, but the UNet's resolution is 8"):
        Tapestry(unet, schedule, [Region(0, 0, 4, group)], (4, 4), resolution=RESOLUTION)
    with pytest.raises(ValueError, match="does not fit the 8x12 canvas"):
        Tapestry(unet, schedule, [Region(0, 6, 8, group)], (8, 12), resolution=RESOLUTION)
    with pytest.raises(ValueError, match="leave 32 pixels .* uncovered"):
        Tapestry(unet, schedule, [Region(0, 0, 8, group)], (8, 12), resolution=RESOLUTION)


# ----- loading pipelines through component configs ---------------------------------------------------------------


def sd_component(**changes) -> ComponentConfig:
    return ComponentConfig(**{"pretrained": "diffusers", "path": "sd", "prompts": ["a cat", "a dog"],
                              "weights": [3.0, 2.0], **changes})


def test_sd_layout_loads_as_a_prompt_product_with_its_own_encoder_and_vae(pipelines: Path):
    module = SamplingModule({"sd": sd_component()}, CompositionConfig(kind="prompt_product", parts=["sd"]),
                            SamplerConfig(kernel="reverse"), [4, RESOLUTION, RESOLUTION],
                            checkpoint_root=str(pipelines), respace=3)
    target = module.target
    assert isinstance(target, PromptProduct) and target.groups[0].weights == [3.0, 2.0]
    tokenizer = CLIPTokenizer.from_pretrained(pipelines / "sd" / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(pipelines / "sd" / "text_encoder", local_files_only=True)
    ids = tokenizer(["", "a cat", "a dog"], padding="max_length", max_length=TEXT_LEN, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(target.groups[0].embeddings, encoder(ids)[0])
    # the levels are the PNDM scheduler's (scaled_linear), respaced; the network sees training timesteps
    scheduler = PNDMScheduler.from_pretrained(pipelines / "sd" / "scheduler", local_files_only=True)
    torch.testing.assert_close(module.schedule.alphas_cumprod.float(), scheduler.alphas_cumprod[[0, 500, 999]])
    out = module.predict_step(torch.tensor([0, 1]), 0)
    assert out["samples"].shape == (2, 4, RESOLUTION, RESOLUTION)
    assert out["images"].shape == (2, 3, 2 * RESOLUTION, 2 * RESOLUTION)  # decoded by the VAE
    assert out["images"].abs().max() <= 1


def test_saved_embeddings_replace_the_text_encoder(pipelines: Path, tmp_path: Path):
    tokenizer = CLIPTokenizer.from_pretrained(pipelines / "sd" / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(pipelines / "sd" / "text_encoder", local_files_only=True)
    table = encode_prompts(tokenizer, encoder, ["a cat", "a dog"])
    table = {text: 2 * value for text, value in table.items()}  # distinguishable from a fresh encoding
    torch.save(table, tmp_path / "prompts.pt")
    module = SamplingModule({"sd": sd_component(path=str(pipelines / "sd"), embeddings="prompts.pt")},
                            CompositionConfig(kind="prompt_product"), SamplerConfig(kernel="reverse"),
                            [4, RESOLUTION, RESOLUTION], checkpoint_root=str(tmp_path))
    expected = torch.stack([table[""], table["a cat"], table["a dog"]])
    torch.testing.assert_close(module.target.groups[0].embeddings, expected)
    with pytest.raises(ValueError, match=r"no embedding for prompts \['a bird'\]"):
        SamplingModule({"sd": sd_component(path=str(pipelines / "sd"), embeddings="prompts.pt", prompts=["a bird"],
                                           weights=None)},
                       CompositionConfig(kind="prompt_product"), SamplerConfig(kernel="reverse"),
                       [4, RESOLUTION, RESOLUTION], checkpoint_root=str(tmp_path))


def test_bare_unet_folder_with_subfolder_and_a_configured_schedule(tmp_path: Path):
    tiny_pixel_unet().save_pretrained(tmp_path / "model" / "weights")
    component = ComponentConfig(pretrained="diffusers", path="model", subfolder="weights",
                                schedule=ScheduleConfig(kind="linear", T=1000))
    module = SamplingModule({"pixel": component}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                            [3, RESOLUTION, RESOLUTION], checkpoint_root=str(tmp_path), respace=2)
    assert isinstance(module.target, DiffusersTarget) and module.decoder is None
    with pytest.raises(FileNotFoundError, match="no scheduler/ folder .*model.components.pixel.schedule"):
        SamplingModule({"pixel": ComponentConfig(pretrained="diffusers", path="model", subfolder="weights")},
                       CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                       [3, RESOLUTION, RESOLUTION], checkpoint_root=str(tmp_path))


def test_class_conditional_unet_follows_the_sample_index(tmp_path: Path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=5)
    unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    component = ComponentConfig(pretrained="diffusers", path=str(tmp_path), class_labels=[3, 1])
    module = SamplingModule({"net": component}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                            [3, RESOLUTION, RESOLUTION], respace=2)
    labels = module.labels_for(torch.tensor([0, 1, 2]))
    assert labels.tolist() == [3, 1, 3]
    x = torch.randn(3, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        direct = unet(x, torch.full((3,), 999), class_labels=labels).sample
    per_batch = module.target_for(labels)
    torch.testing.assert_close(per_batch.score(x, 1), -direct / float(module.schedule.marginal_std[1]))
    assert module.predict_step(torch.tensor([4, 5]), 0)["labels"].tolist() == [3, 1]
    with pytest.raises(ValueError, match="class_labels .* needs model.composition.kind: single"):
        SamplingModule({"net": component}, CompositionConfig(kind="product"), SamplerConfig(kernel="reverse"),
                       [3, RESOLUTION, RESOLUTION])


def test_class_conditional_unet_without_class_labels_takes_the_index_modulo_its_classes(tmp_path: Path):
    torch.manual_seed(0)
    UNet2DModel(sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                num_class_embeds=5).save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    module = SamplingModule({"net": ComponentConfig(pretrained="diffusers", path=str(tmp_path))},
                            CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                            [3, RESOLUTION, RESOLUTION], respace=2)
    assert module.labels_for(torch.tensor([0, 4, 7])).tolist() == [0, 4, 2]
    assert torch.isfinite(module.predict_step(torch.tensor([0, 6]), 0)["samples"]).all()
    with pytest.raises(ValueError, match=r"class_labels \[5\] are not classes of this UNet \(num_class_embeds=5"):
        SamplingModule({"net": ComponentConfig(pretrained="diffusers", path=str(tmp_path), class_labels=[5])},
                       CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"), [3, RESOLUTION, RESOLUTION])


def test_half_precision_variant_weights(tmp_path: Path):
    tiny_pixel_unet().half().save_pretrained(tmp_path / "unet", variant="fp16")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "scheduler")
    component = ComponentConfig(pretrained="diffusers", path=str(tmp_path), torch_dtype="float16", variant="fp16")
    module = SamplingModule({"pixel": component}, CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"),
                            [3, RESOLUTION, RESOLUTION], respace=2)
    assert next(module.models["pixel"].parameters()).dtype == torch.float16
    out = module.predict_step(torch.tensor([0, 1]), 0)
    assert out["samples"].dtype == torch.float32 and torch.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match=r"variant=None; weight files there: \['diffusion_pytorch_model.fp16"):
        SamplingModule({"pixel": ComponentConfig(pretrained="diffusers", path=str(tmp_path))},
                       CompositionConfig(kind="single"), SamplerConfig(kernel="reverse"), [3, RESOLUTION, RESOLUTION])


@pytest.mark.parametrize("path,message", [
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "looks like a Hugging Face hub id"),
    ("missing_folder", "diffusers model folder not found"),
])
def test_missing_model_says_it_must_be_downloaded_first(tmp_path: Path, path: str, message: str):
    with pytest.raises(FileNotFoundError) as error:
        SamplingModule({"sd": sd_component(path=path)}, CompositionConfig(kind="prompt_product"),
                       SamplerConfig(kernel="reverse"), [4, RESOLUTION, RESOLUTION], checkpoint_root=str(tmp_path))
    text = str(error.value)
    for part in (message, "model.components.sd.path", "huggingface-cli download", "save_pretrained",
                 "nothing is downloaded at run time"):
        assert part in text


@pytest.mark.parametrize("changes,message", [
    ({"weights": [1.0]}, "weights has 1 entries but .*prompts has 2"),
    ({"prompts": None, "weights": None, "regions": [{"top": 0, "left": 0, "size": 8, "prompt": "a"}]},
     "canvas must be"),
    ({"prompts": None, "weights": None, "canvas": [8, 8], "regions": [{"top": 0, "left": 0, "size": 8}]},
     r"regions\[0\] needs 'prompt'"),
    ({"prompts": None, "weights": None, "canvas": [8, 8],
      "regions": [{"top": 0, "left": 0, "size": 8, "prompt": "a", "colour": 1}]}, "unknown keys"),
    ({"prompts": None, "weights": None, "canvas": [8, 12],
      "regions": [{"top": 0, "left": 0, "size": 8, "prompt": "a"}]}, "uncovered"),
    ({"normalize": True}, "normalize applies only to a tapestry"),
    ({"config": "256x256_diffusion_uncond"}, "config applies only to pretrained: adm"),
    ({"prediction_type": "flow"}, "prediction_type='flow' is not one of"),
    ({"role": "classifier"}, "set role: diffusion"),
    ({"class_labels": [1]}, "class_labels applies to a class-conditional UNet, not to prompts"),
    ({"prompts": None, "weights": None, "class_labels": [-1]}, "non-empty list of classes >= 0"),
])
def test_diffusers_config_errors_come_before_any_file_is_read(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        sd_component(**changes)


def test_diffusers_fields_are_refused_on_other_kinds():
    with pytest.raises(ValueError, match="prompts applies only to pretrained components"):
        ComponentConfig(checkpoint="a.ckpt", prompts=["a cat"])
    with pytest.raises(ValueError, match="variant applies only to pretrained: diffusers"):
        ComponentConfig(pretrained="adm", path="x.pt", config="256x256_diffusion_uncond", variant="fp16")


def test_prompt_composition_kinds_need_a_diffusers_part_with_prompts(pipelines: Path):
    with pytest.raises(ValueError, match="kind='tapestry' needs one part, a pretrained: diffusers component with "
                                         "'regions'"):
        SamplingModule({"sd": sd_component()}, CompositionConfig(kind="tapestry"), SamplerConfig(kernel="reverse"),
                       [4, RESOLUTION, RESOLUTION], checkpoint_root=str(pipelines))


# ----- the configs, end to end on CPU ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample_sd15_prompt_product_hmc", "sample_if_tapestry_la",
                                  "sample_sdxl_prompt_product_hmc"])
def test_configs_parse(name: str, capsys, restore_environ):
    from lit_mcmc.cli import main

    with pytest.raises(SystemExit) as done:
        main(["predict", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert done.value.code == 0
    assert "pretrained: diffusers" in capsys.readouterr().out


def tiny_config(name: str, pipelines: Path, tmp_path: Path) -> tuple[dict, Path]:
    """configs/diffusers/<name>.yaml on the tiny pipelines: float32, 3 levels, 3 samples (2 per batch)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config["trainer"].update(default_root_dir=str(tmp_path / name), enable_progress_bar=False, accelerator="cpu",
                             devices=1)
    init = config["model"]["init_args"]
    init.update(checkpoint_root=str(pipelines), respace=3)
    (component,) = init["components"].values()
    component.update(torch_dtype="float32", variant=None)
    if name.startswith("sample_sd15"):
        assert component["path"] == "stable-diffusion-v1-5" and init["sample_shape"] == [4, 64, 64]
        component["path"] = "sd"
        init["sample_shape"] = [4, RESOLUTION, RESOLUTION]
    else:
        assert component["path"] == "IF-I-XL-v1.0" and component["canvas"] == [128, 128]
        assert init["respace"] == 3 and init["seed"] == 13
        component.update(path="if", canvas=[2 * RESOLUTION, 2 * RESOLUTION])
        for region in component["regions"]:  # the same layout at an eighth of the size
            region.update(top=region["top"] // 8, left=region["left"] // 8, size=RESOLUTION)
        init["sample_shape"] = [3, 2 * RESOLUTION, 2 * RESOLUTION]
        init["sampler"]["n_steps"] = 2
    config["data"]["init_args"].update(n_samples=3, batch_size=2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def predict(name: str, pipelines: Path, tmp_path: Path) -> tuple[dict, Path, np.lib.npyio.NpzFile]:
    """``lit-mcmc predict`` on the tiny version of configs/diffusers/<name>.yaml: (config, run dir, samples.npz)."""
    from lit_mcmc.cli import main

    config, path = tiny_config(name, pipelines, tmp_path)
    main(["predict", "--config", str(path)])
    out = Path(config["trainer"]["default_root_dir"])
    return config, out, np.load(out / "samples.npz")


@pytest.mark.slow
def test_latent_prompt_product_config_writes_decoded_images(pipelines: Path, tmp_path: Path, restore_environ):
    config, out, merged = predict("sample_sd15_prompt_product_hmc", pipelines, tmp_path)
    assert merged["samples"].shape == (3, 4, RESOLUTION, RESOLUTION) and np.isfinite(merged["samples"]).all()
    assert merged["images"].shape == (3, 3, 2 * RESOLUTION, 2 * RESOLUTION)
    assert np.abs(merged["images"]).max() <= 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sampler"] == "HMC-2-curve" and stats["hparams"]["composition"] == "prompt_product"
    events = sorted(out.glob("lightning_logs/version_*"))[-1]
    tensorboard = EventAccumulator(str(events), size_guidance={"images": 0})
    tensorboard.Reload()
    (grid,) = tensorboard.Images("samples")
    assert grid.height == 2 * RESOLUTION + 4  # the decoded images (make_grid pads by 2), not the latents


@pytest.mark.slow
def test_if_tapestry_config_runs_with_learned_variance(pipelines: Path, tmp_path: Path, restore_environ):
    config, out, merged = predict("sample_if_tapestry_la", pipelines, tmp_path)
    assert merged["samples"].shape == (3, 3, 2 * RESOLUTION, 2 * RESOLUTION) and np.isfinite(merged["samples"]).all()
    assert "images" not in merged.files  # a pixel model: the samples are the images
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sampler"] == "LA-3-line"
    # the first reverse step's evaluation, then per level one at the new point and 1 + 3 per LA-3-line step
    assert stats["nfe_per_sample"] == 1 + 2 * evaluations_per_level(config["model"]["init_args"]["sampler"])
    assert evaluations_per_level(config["model"]["init_args"]["sampler"]) == 1 + 2 * (1 + 3)


@pytest.mark.slow
def test_prompt_product_samples_do_not_depend_on_the_process_count(pipelines: Path, tmp_path: Path,
                                                                     restore_environ):
    from tests.e2e.test_distributed import one_and_two_process_samples

    _, path = tiny_config("sample_sd15_prompt_product_hmc", pipelines, tmp_path)
    reference, split = one_and_two_process_samples(path, tmp_path)
    assert split["indices"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(split["samples"], reference["samples"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(split["images"], reference["images"], rtol=0, atol=1e-5)
