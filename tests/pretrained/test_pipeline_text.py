"""Published pipeline folders as their owners run them: prompts encoded by the pipeline class's own encode_prompt
(SD, SDXL with two encoders, pooled embeddings and time_ids, DeepFloyd IF with its caption cleaning, 77 tokens and
attention masks), the composed ε against the pipeline's own UNet call, and the folder checks (pickled .bin files
refused by name, .safetensors preferred, a missing tokenizer package named). Tiny random-weight pipelines are
written here with the pipeline classes' save_pretrained, i.e. in the published layouts."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("diffusers", reason="the [pretrained] extra (diffusers, transformers) is not installed")
pytest.importorskip("transformers", reason="the [pretrained] extra (diffusers, transformers) is not installed")
spm = pytest.importorskip("sentencepiece", reason="the [pretrained] extra (sentencepiece) is not installed")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    IFPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from lit_mcmc.modules import ComponentConfig, CompositionConfig, SamplingModule  # noqa: E402
from lit_mcmc.pretrained.diffusers import PromptProduct, Tapestry, encode_with_pipeline  # noqa: E402
from lit_mcmc.samplers import SamplerConfig  # noqa: E402
from tests.pretrained.test_pretrained_diffusers import RESOLUTION, count_calls, tiny_text_unet  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "diffusers"
CLIP_LEN, CLIP_DIM, POOLED_DIM, TIME_DIM, T5_VOCAB = 8, 16, 16, 4, 48
PROMPTS = ["A Cat, Sitting!", "a DOG & a Bird..."]


# ----- tiny published-layout pipelines ---------------------------------------------------------------------------


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer whose tokens are letters (its vocab files are written in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_LEN)


def clip_config(seed: int) -> CLIPTextConfig:
    torch.manual_seed(seed)
    return CLIPTextConfig(vocab_size=54, hidden_size=CLIP_DIM, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=CLIP_LEN, projection_dim=POOLED_DIM,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(2)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=2 * RESOLUTION, layers_per_block=1)


def write_sdxl(folder: Path) -> Path:
    """SDXL layout: two CLIP encoders (the second with a projection: the pooled embedding), a text_time UNet whose
    cross-attention takes both encoders' hidden states side by side, Euler scheduler, VAE (scale factor 2)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2 * CLIP_DIM, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM, projection_class_embeddings_input_dim=6 * TIME_DIM + POOLED_DIM)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear")
    tokenizer = clip_tokenizer(folder / "vocab")
    pipeline = StableDiffusionXLPipeline(tiny_vae(), CLIPTextModel(clip_config(1)),
                                         CLIPTextModelWithProjection(clip_config(2)), tokenizer, tokenizer, unet,
                                         scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipeline.save_pretrained(folder / "sdxl")
    return folder / "sdxl"


def t5_tokenizer(folder: Path) -> T5Tokenizer:
    """A SentencePiece tokenizer trained on a few lower-case captions (``folder/spiece.model``), as IF's T5 one:
    pad 0, eos 1, unk 2, model_max_length 512."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = ["a cat sitting on a mat", "a dog and a bird", "beautiful fantasy landscape", "a snowy mountain peak",
              "a calm lake with a small boat", "a dense pine forest at dawn", "a medieval castle on a hill"] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(folder / "spiece"),
                                   vocab_size=T5_VOCAB, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, "extra_ids": 0,
                                                              "tokenizer_class": "T5Tokenizer"}))
    return T5Tokenizer.from_pretrained(folder)


def write_if(folder: Path) -> Path:
    """DeepFloyd IF stage I layout: T5 tokenizer (spiece.model, model_max_length 512) and encoder, a pixel UNet with
    a learned variance, DDPM cosine scheduler, no safety checker or watermarker."""
    torch.manual_seed(4)
    encoder = T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=CLIP_DIM, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                      pad_token_id=0, eos_token_id=1))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              variance_type="learned_range")
    tokenizer = t5_tokenizer(folder / "spm")
    pipeline = IFPipeline(tokenizer, encoder, tiny_text_unet(3, 6, seed=3), scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder / "if")
    # The published tokenizer folder holds spiece.model and no tokenizer.json (which transformers writes instead).
    shutil.copy(folder / "spm" / "spiece.model", folder / "if" / "tokenizer" / "spiece.model")
    (folder / "if" / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return folder / "if"


def write_sd(folder: Path) -> Path:
    """Stable Diffusion 1.x layout (PNDM, VAE, one CLIP encoder), no safety checker."""
    torch.manual_seed(0)
    pipeline = StableDiffusionPipeline(tiny_vae(), CLIPTextModel(clip_config(1)), clip_tokenizer(folder / "vocab"),
                                       tiny_text_unet(4, 4), PNDMScheduler(skip_prk_steps=True), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder / "sd")
    return folder / "sd"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("published")
    return {"sdxl": write_sdxl(root), "if": write_if(root), "sd": write_sd(root)}


def config_component(name: str, folder: Path, **changes) -> tuple[dict, ComponentConfig, CompositionConfig]:
    """configs/diffusers/<name>.yaml's component (float32, pointed at ``folder``, with ``changes``, applied to its
    YAML values) and composition."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    init = config["model"]["init_args"]
    ((part, component),) = init["components"].items()
    component.update(path=str(folder), torch_dtype="float32", variant=None)
    for key, change in changes.items():
        component[key] = change(component[key]) if callable(change) else change
    composition = CompositionConfig(**init["composition"])
    return init, ComponentConfig(**component), composition


def module_for(component: ComponentConfig, composition: CompositionConfig, shape: list[int]) -> SamplingModule:
    name = (composition.parts or ["model"])[0]
    return SamplingModule({name: component}, composition, SamplerConfig(kernel="reverse"), shape, respace=3)


def pipeline_eps(unet, x: torch.Tensor, level: int, hidden: torch.Tensor, **added) -> torch.Tensor:
    """The pipeline's own UNet call on every row of ``hidden`` for every sample of x: [rows, B, ...]."""
    rows, batch = hidden.shape[0], x.shape[0]
    kwargs = {}
    if added:
        kwargs["added_cond_kwargs"] = {k: v.repeat_interleave(batch, 0) for k, v in added.items()}
    with torch.no_grad():
        out = unet(x.repeat(rows, 1, 1, 1), torch.full((rows * batch,), level),
                   encoder_hidden_states=hidden.repeat_interleave(batch, 0), **kwargs).sample
    return out.unflatten(0, (rows, batch))


# ----- SDXL ----------------------------------------------------------------------------------------------------


def test_sdxl_prompt_product_is_the_pipelines_unet_call_on_its_own_encode_prompt(published: Path):
    init, component, composition = config_component("sample_sdxl_prompt_product_hmc", published["sdxl"])
    assert init["sample_shape"] == [4, 128, 128]  # SDXL's native 1024x1024 images, in latents
    module = module_for(component, composition, [4, RESOLUTION, RESOLUTION])
    target = module.target
    assert isinstance(target, PromptProduct)
    pipe = StableDiffusionXLPipeline.from_pretrained(published["sdxl"], local_files_only=True)
    prompts, weights = component.prompts, component.weights
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, device="cpu",
                                                                   do_classifier_free_guidance=True)
    assert pipe.config.force_zeros_for_empty_prompt and not negative.any() and not negative_pooled.any()
    native = RESOLUTION * pipe.vae_scale_factor  # the pipeline's default height and width
    time_ids = pipe._get_add_time_ids((native, native), (0, 0), (native, native), embeds.dtype,
                                      text_encoder_projection_dim=POOLED_DIM)
    torch.testing.assert_close(target.groups[0].embeddings, torch.cat([negative[:1], embeds]), rtol=0, atol=0)
    torch.testing.assert_close(target.groups[0].pooled, torch.cat([negative_pooled[:1], pooled]), rtol=0, atol=0)
    torch.testing.assert_close(target.time_ids, time_ids[0], rtol=0, atol=0)

    x = torch.randn(2, 4, RESOLUTION, RESOLUTION)
    level = 1  # the respaced schedule's middle level: training timestep 500
    calls = count_calls(pipe.unet)
    target.predictor.unet = pipe.unet  # the pipeline's own UNet object, so its calls are counted
    score = target.score(x, level)
    assert calls == [3 * 2]  # the empty prompt and both prompts, for both samples, in one call
    eps = pipeline_eps(pipe.unet, x, 500, torch.cat([negative[:1], embeds]),
                       text_embeds=torch.cat([negative_pooled[:1], pooled]), time_ids=time_ids.expand(3, -1))
    expected = eps[0] + sum(w * (eps[i + 1] - eps[0]) for i, w in enumerate(weights))
    torch.testing.assert_close(score, -expected / float(module.schedule.marginal_std[level]), rtol=0, atol=2e-5)


def test_sdxl_micro_conditioning_overrides_the_pipeline_defaults(published: Path):
    micro = {"original_size": [64, 48], "crops_coords_top_left": [4, 0], "target_size": [32, 32]}
    _, component, composition = config_component("sample_sdxl_prompt_product_hmc", published["sdxl"],
                                                 micro_conditioning=micro)
    target = module_for(component, composition, [4, RESOLUTION, RESOLUTION]).target
    assert target.time_ids.tolist() == [64, 48, 4, 0, 32, 32]
    with pytest.raises(ValueError, match=r"micro_conditioning has unknown keys \['aesthetic_score'\]"):
        config_component("sample_sdxl_prompt_product_hmc", published["sdxl"],
                         micro_conditioning={"aesthetic_score": [6, 0]})


def test_sdxl_without_prompts_samples_the_zeroed_empty_prompt(published: Path):
    component = ComponentConfig(pretrained="diffusers", path=str(published["sdxl"]))
    module = module_for(component, CompositionConfig(kind="single"), [4, RESOLUTION, RESOLUTION])
    conditioning = module.target.conditioning
    assert not conditioning["encoder_hidden_states"].any()
    assert not conditioning["added_cond_kwargs"]["text_embeds"].any()
    out = module.predict_step(torch.tensor([0, 1]), 0)
    assert torch.isfinite(out["samples"]).all() and out["images"].shape == (2, 3, 2 * RESOLUTION, 2 * RESOLUTION)


@pytest.mark.slow
def test_sdxl_config_runs_end_to_end(published: Path, tmp_path: Path, restore_environ):
    """``lit-mcmc predict`` on configs/diffusers/sample_sdxl_prompt_product_hmc.yaml with the tiny SDXL folder."""
    import numpy as np

    from lit_mcmc.cli import main

    config = yaml.safe_load((CONFIGS / "sample_sdxl_prompt_product_hmc.yaml").read_text())
    config["trainer"].update(default_root_dir=str(tmp_path / "run"), enable_progress_bar=False, accelerator="cpu",
                             devices=1)
    init = config["model"]["init_args"]
    init.update(checkpoint_root=str(published["sdxl"].parent), respace=3, sample_shape=[4, RESOLUTION, RESOLUTION])
    init["components"]["sdxl"].update(path="sdxl", torch_dtype="float32", variant=None)
    config["data"]["init_args"].update(n_samples=3, batch_size=2)
    (tmp_path / "sdxl.yaml").write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(tmp_path / "sdxl.yaml")])
    merged = np.load(tmp_path / "run" / "samples.npz")
    assert merged["samples"].shape == (3, 4, RESOLUTION, RESOLUTION) and np.isfinite(merged["samples"]).all()
    assert merged["images"].shape == (3, 3, 2 * RESOLUTION, 2 * RESOLUTION)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["sampler"] == "HMC-2-curve" and stats["hparams"]["composition"] == "prompt_product"


def test_sdxl_tapestry_is_its_regions_prompt_products_in_one_call(published: Path):
    regions = [{"top": 0, "left": 0, "size": RESOLUTION, "prompt": "a cat", "weight": 3.0},
               {"top": 0, "left": 4, "size": RESOLUTION, "prompts": ["a dog", "a bird"], "weights": [2.0, -1.0]}]
    component = ComponentConfig(pretrained="diffusers", path=str(published["sdxl"]), regions=regions,
                                canvas=[RESOLUTION, RESOLUTION + 4])
    module = module_for(component, CompositionConfig(kind="tapestry", parts=["sdxl"]), [4, RESOLUTION, RESOLUTION + 4])
    tapestry = module.target
    x = torch.randn(2, 4, RESOLUTION, RESOLUTION + 4)
    calls = count_calls(tapestry.predictor.unet)
    score = tapestry.score(x, 1)
    assert calls == [(2 + 3) * 2]
    expected = torch.zeros_like(x)
    for region, group in zip(tapestry.regions, tapestry.groups, strict=True):
        product = PromptProduct(tapestry.predictor.unet, module.schedule, group.embeddings, group.weights,
                                pooled=group.pooled, time_ids=tapestry.time_ids)
        window = slice(region.left, region.left + RESOLUTION)
        expected[..., window] += product.score(x[..., window], 1)
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-5)


def test_sdxl_saved_embeddings_with_pooled_parts_replace_the_encoders(published: Path, tmp_path: Path):
    """The docs' recipe: encode once, save {text: {hidden, pooled}}, and read it through ``embeddings:``."""
    prompts = ["a photo of a snowy mountain", "a lake at sunset"]
    table = encode_with_pipeline(published["sdxl"], prompts)
    torch.save({text: {"hidden": 2 * e.hidden, "pooled": 2 * e.pooled} for text, e in table.items()},
               tmp_path / "prompts.pt")
    _, component, composition = config_component("sample_sdxl_prompt_product_hmc", published["sdxl"],
                                                 embeddings=str(tmp_path / "prompts.pt"))
    group = module_for(component, composition, [4, RESOLUTION, RESOLUTION]).target.groups[0]
    torch.testing.assert_close(group.embeddings, 2 * torch.stack([table[t].hidden for t in ["", *prompts]]))
    torch.testing.assert_close(group.pooled, 2 * torch.stack([table[t].pooled for t in ["", *prompts]]))


# ----- DeepFloyd IF ------------------------------------------------------------------------------------------------


def test_if_prompts_are_the_pipelines_own_encoding(published: Path):
    pipe = IFPipeline.from_pretrained(published["if"], local_files_only=True)
    embeds, negative = pipe.encode_prompt(PROMPTS, device="cpu", clean_caption=True)  # as IFPipeline.__call__
    table = encode_with_pipeline(published["if"], PROMPTS)
    assert embeds.shape[1] == 77  # IF's max_length, not the tokenizer's model_max_length of 512
    for i, text in enumerate(PROMPTS):
        torch.testing.assert_close(table[text].hidden, embeds[i], rtol=0, atol=0)
        assert table[text].pooled is None
    torch.testing.assert_close(table[""].hidden, negative[0], rtol=0, atol=0)
    # The caption cleaning lower-cases: capitals as such would be other tokens (unknown to this vocabulary).
    raw = pipe.tokenizer(PROMPTS[0], padding="max_length", max_length=77, return_tensors="pt").input_ids
    clean = pipe.tokenizer(pipe._text_preprocessing(PROMPTS[0], clean_caption=True)[0], padding="max_length",
                           max_length=77, return_tensors="pt").input_ids
    assert not torch.equal(raw, clean)


def test_if_tapestry_config_uses_the_pipelines_encoding(published: Path):
    """configs/diffusers/sample_if_tapestry_la.yaml's regions (capitalised prompts) at an eighth of the size."""
    def smaller(regions: list[dict]) -> list[dict]:
        return [{**r, "top": r["top"] // 8, "left": r["left"] // 8, "size": RESOLUTION} for r in regions]

    _, component, composition = config_component("sample_if_tapestry_la", published["if"], canvas=[16, 16],
                                                 regions=smaller)
    target = module_for(component, composition, [3, 16, 16]).target
    assert isinstance(target, Tapestry)
    pipe = IFPipeline.from_pretrained(published["if"], local_files_only=True)
    texts = [region["prompt"] for region in component.regions]
    assert any(text != text.lower() for text in texts)
    embeds, negative = pipe.encode_prompt(texts, device="cpu", clean_caption=True)
    for region, group, row in zip(component.regions, target.groups, embeds, strict=True):
        assert group.weights == [region["weight"]]
        torch.testing.assert_close(group.embeddings, torch.stack([negative[0], row]), rtol=0, atol=0)


def test_a_missing_tokenizer_package_is_one_line_naming_it(published: Path, monkeypatch):
    import importlib.util

    from lit_mcmc.pretrained.diffusers import files

    real = importlib.util.find_spec
    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else
                        real(name, *a))
    with pytest.raises(ImportError) as error:
        encode_with_pipeline(published["if"], ["a cat"], "model.components.if_stage_1.path")
    message = str(error.value)
    assert "pip install sentencepiece" in message and "spiece.model" in message and "\n" not in message
    assert "tiktoken" not in message


def test_missing_caption_cleaners_are_one_line_naming_them(published: Path, monkeypatch):
    import importlib.util

    from lit_mcmc.pretrained.diffusers import files

    real = importlib.util.find_spec
    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name, *a: None if name == "ftfy" else
                        real(name, *a))
    with pytest.raises(ImportError, match=r"cleans captions with ftfy, not installed: pip install ftfy"):
        encode_with_pipeline(published["if"], ["a cat"], "model.components.if_stage_1.path")


def test_sdxl_in_float16_decodes_with_a_float32_vae_as_its_pipeline(published: Path):
    component = ComponentConfig(pretrained="diffusers", path=str(published["sdxl"]), torch_dtype="float16")
    loaded = module_for(component, CompositionConfig(kind="single"), [4, RESOLUTION, RESOLUTION]).models["model"]
    assert next(loaded.unet.parameters()).dtype == torch.float16
    assert loaded.vae.config.force_upcast and next(loaded.vae.parameters()).dtype == torch.float32


# ----- SD through its pipeline class ------------------------------------------------------------------------------


def test_sd_prompts_are_the_pipelines_own_encoding(published: Path):
    pipe = StableDiffusionPipeline.from_pretrained(published["sd"], local_files_only=True, safety_checker=None)
    embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    table = encode_with_pipeline(published["sd"], PROMPTS)
    torch.testing.assert_close(torch.stack([table[t].hidden for t in ["", *PROMPTS]]),
                               torch.cat([negative[:1], embeds]), rtol=0, atol=0)


def test_a_missing_variant_of_the_text_encoders_names_the_files_there(published: Path):
    with pytest.raises(ValueError, match=r"cannot load the text encoders .*variant='fp16'; weight files there: "
                                         r"\{'text_encoder': \['model.safetensors'\]\}"):
        encode_with_pipeline(published["sd"], ["a cat"], "model.components.sd.path", variant="fp16")


# ----- unsafe and preferred weight files -------------------------------------------------------------------------


class Payload:
    """Unpickling this would create the file ``marker``: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def copy_pipeline(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder"])
def test_a_pickled_bin_is_refused_by_name_and_nothing_in_it_runs(published: Path, tmp_path: Path, part: str):
    folder = copy_pipeline(published["sd"], tmp_path / "sd")
    for weights in (folder / part).glob("*.safetensors"):
        weights.unlink()
    name = "pytorch_model.bin" if part == "text_encoder" else "diffusion_pytorch_model.bin"
    marker = tmp_path / "it_ran"
    (folder / part / name).write_bytes(pickle.dumps({"weight": Payload(marker)}))
    component = ComponentConfig(pretrained="diffusers", path=str(folder), prompts=["a cat"])
    with pytest.raises(ValueError) as error:
        module_for(component, CompositionConfig(kind="prompt_product", parts=["sd"]), [4, RESOLUTION, RESOLUTION])
    message = str(error.value)
    assert str(folder / part / name) in message and "refused, nothing in it ran" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_plain_bin_weights_pass_the_check_in_either_torch_format(tmp_path: Path):
    from lit_mcmc.pretrained.diffusers import refuse_pickled_weights

    for zipped in (True, False):
        folder = tmp_path / f"zip_{zipped}"
        folder.mkdir()
        torch.save({"weight": torch.ones(3)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
        refuse_pickled_weights(folder, "model.components.x.path")


def test_safetensors_are_read_and_a_bin_beside_them_is_not(published: Path, tmp_path: Path):
    folder = copy_pipeline(published["sd"], tmp_path / "sd")
    marker = tmp_path / "it_ran"
    for part, name in [("unet", "diffusion_pytorch_model.bin"), ("text_encoder", "pytorch_model.bin")]:
        (folder / part / name).write_bytes(pickle.dumps({"weight": Payload(marker)}))
    component = ComponentConfig(pretrained="diffusers", path=str(folder), prompts=["a cat"])
    module = module_for(component, CompositionConfig(kind="prompt_product", parts=["sd"]), [4, RESOLUTION, RESOLUTION])
    assert isinstance(module.target, PromptProduct) and not marker.exists()
