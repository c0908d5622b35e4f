"""Flow-matching diffusers pipelines (SD3, Flux) as targets: tiny random-weight pipelines saved in their published
layouts, loaded through the configs; the score is −ε̂/σ from the pipeline's own transformer call and scheduler, a
prompt product is its formula, prompts are the pipeline's own encode_prompt."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

spm = pytest.importorskip("sentencepiece", reason="the [pretrained] extra (sentencepiece) is not installed")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: E402

from lit_mcmc.modules import ComponentConfig, CompositionConfig, SamplingModule  # noqa: E402
from lit_mcmc.pretrained.diffusers.flow import (  # noqa: E402
    FlowTransformerTarget,
    pack_latents,
    schedule_from_flow_scheduler,
    unpack_latents,
)
from lit_mcmc.samplers import SamplerConfig  # noqa: E402
from tests.pretrained.test_pipeline_text import CLIP_DIM, T5_VOCAB, clip_config, clip_tokenizer, t5_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "diffusers"
T5_DIM, LATENT, SIDE = 2 * CLIP_DIM, 4, 8  # latents [4, 8, 8]
PROMPTS = ["a cat sitting on a mat", "a snowy mountain peak"]
WEIGHTS = [1.5, -0.5]


def tiny_t5(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=T5_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                   pad_token_id=0, eos_token_id=1))


def flow_vae(scaling: float, shift: float) -> AutoencoderKL:
    torch.manual_seed(2)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=2 * SIDE, layers_per_block=1, scaling_factor=scaling,
                         shift_factor=shift)


def write_sd3(folder: Path) -> Path:
    """Stable Diffusion 3 layout: two CLIP encoders with projections, a T5 encoder, SD3 transformer (patch 2),
    FlowMatchEulerDiscreteScheduler with shift 3, VAE with a shift factor."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=SIDE, patch_size=2, in_channels=LATENT, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                        caption_projection_dim=16, pooled_projection_dim=2 * CLIP_DIM,
                                        out_channels=LATENT, pos_embed_max_size=16)
    clip = clip_tokenizer(folder / "vocab")
    pipeline = StableDiffusion3Pipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        flow_vae(1.5305, 0.0609), CLIPTextModelWithProjection(clip_config(1)), clip,
                                        CLIPTextModelWithProjection(clip_config(2)), clip, tiny_t5(3),
                                        t5_tokenizer(folder / "spm"))
    pipeline.save_pretrained(folder / "sd3")
    return folder / "sd3"


def write_flux(folder: Path) -> Path:
    """Flux layout: CLIP and T5 encoders, a guidance-distilled Flux transformer on packed latents, the dynamic
    (resolution-dependent) shift scheduler, VAE with a shift factor."""
    torch.manual_seed(1)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * LATENT, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                         pooled_projection_dim=CLIP_DIM, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = FluxPipeline(scheduler, flow_vae(0.3611, 0.1159), CLIPTextModel(clip_config(4)),
                            clip_tokenizer(folder / "vocab"), tiny_t5(5), t5_tokenizer(folder / "spm"), transformer)
    pipeline.save_pretrained(folder / "flux")
    return folder / "flux"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow")
    return {"sd3": write_sd3(root), "flux": write_flux(root)}


def config_module(name: str, folder: Path, prompts=None, weights=None) -> SamplingModule:
    """configs/diffusers/<name>.yaml's component pointed at ``folder`` (float32), as a SamplingModule on 3 levels."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    init = config["model"]["init_args"]
    ((part, component),) = init["components"].items()
    component.update(path=str(folder), torch_dtype="float32", variant=None)
    if prompts is not None:
        component.update(prompts=prompts, weights=weights)
    return SamplingModule({part: ComponentConfig(**component)}, CompositionConfig(**init["composition"]),
                          SamplerConfig(kernel="reverse"), [LATENT, SIDE, SIDE], respace=3)


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, LATENT, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def test_flux_packing_is_the_pipelines():
    x = latents()
    packed = FluxPipeline._pack_latents(x, 3, LATENT, SIDE, SIDE)
    torch.testing.assert_close(pack_latents(x), packed, rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, LATENT, SIDE, SIDE),
                               FluxPipeline._unpack_latents(packed, 2 * SIDE, 2 * SIDE, 2), rtol=0, atol=0)


def test_sd3_score_is_minus_eps_over_sigma_from_the_pipelines_own_call(published):
    """At every kept level: the pipeline's encode_prompt, its transformer called with timestep 1000σ (σ the
    scheduler's own training level), ε̂ = x + (1 − σ)u, score −ε̂/σ; the product of two prompts is its formula."""
    module = config_module("sample_sd3_prompt_product_hmc", published["sd3"], PROMPTS, WEIGHTS)
    target, schedule = module.target, module.schedule
    assert isinstance(target, FlowTransformerTarget) and target.family == "sd3"
    pipe = StableDiffusion3Pipeline.from_pretrained(published["sd3"], local_files_only=True)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPTS, None, None, device="cpu",
                                                                   do_classifier_free_guidance=True)
    scheduler = pipe.scheduler
    x = latents()
    for level in range(schedule.T):
        index = int((scheduler.timesteps - float(schedule.model_timesteps[level])).abs().argmin())
        sigma = float(scheduler.sigmas[index])
        assert float(schedule.marginal_std[level]) == pytest.approx(sigma, rel=1e-5)

        def velocity(hidden, pool, index=index):
            with torch.no_grad():
                return pipe.transformer(hidden_states=x, timestep=scheduler.timesteps[index].expand(3),
                                        encoder_hidden_states=hidden.expand(3, -1, -1),
                                        pooled_projections=pool.expand(3, -1), return_dict=False)[0]

        u_empty = velocity(negative[:1], negative_pooled[:1])
        u_prompts = [velocity(embeds[i:i + 1], pooled[i:i + 1]) for i in range(len(WEIGHTS))]
        u = u_empty + sum(w * (u_i - u_empty) for u_i, w in zip(u_prompts, WEIGHTS, strict=True))
        expected = -(x + (1 - sigma) * u) / sigma
        evaluation = target.evaluate(x, level)
        torch.testing.assert_close(evaluation.score, expected, rtol=2e-4, atol=2e-4 / sigma)
        # Σ_j w_j ‖s_j‖² over ∅ (weight 1 − Σ w) and the prompts: what Feynman–Kac particle weights read
        scores = [-(x + (1 - sigma) * u_j) / sigma for u_j in (u_empty, *u_prompts)]
        parts = [1 - sum(WEIGHTS), *WEIGHTS]
        sq_norm = sum(w * s_j.flatten(1).pow(2).sum(1) for w, s_j in zip(parts, scores, strict=True))
        torch.testing.assert_close(evaluation.parts_sq_norm, sq_norm, rtol=1e-3, atol=1e-3 / sigma**2)


def test_flux_score_is_minus_eps_over_sigma_from_the_pipelines_own_call(published):
    """Packed latents, image ids, text ids, timestep σ and the guidance input as FluxPipeline passes them."""
    module = config_module("sample_flux_prompt_product_hmc", published["flux"], PROMPTS, WEIGHTS)
    target, schedule = module.target, module.schedule
    assert isinstance(target, FlowTransformerTarget) and target.family == "flux"
    pipe = FluxPipeline.from_pretrained(published["flux"], local_files_only=True)
    embeds, pooled, text_ids = pipe.encode_prompt(["", *PROMPTS], device="cpu")
    x = latents(1)
    image_ids = FluxPipeline._prepare_latent_image_ids(3, SIDE // 2, SIDE // 2, "cpu", torch.float32)
    for level in range(schedule.T):
        sigma = float(schedule.marginal_std[level])

        def velocity(row: int, sigma=sigma):
            with torch.no_grad():
                out = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x, 3, LATENT, SIDE, SIDE),
                                       timestep=torch.full((3,), sigma * 1000) / 1000,
                                       guidance=torch.full((1,), target.guidance).expand(3),
                                       pooled_projections=pooled[row:row + 1].expand(3, -1),
                                       encoder_hidden_states=embeds[row:row + 1].expand(3, -1, -1), txt_ids=text_ids,
                                       img_ids=image_ids, return_dict=False)[0]
            return FluxPipeline._unpack_latents(out, 2 * SIDE, 2 * SIDE, 2)

        u = velocity(0) + sum(w * (velocity(i + 1) - velocity(0)) for i, w in enumerate(WEIGHTS))
        expected = -(x + (1 - sigma) * u) / sigma
        torch.testing.assert_close(target.score(x, level), expected, rtol=2e-4, atol=2e-4 / sigma)


def test_flux_levels_carry_the_resolution_shift(published):
    """Flux's scheduler shifts by e^μ for the packed token count: 4096 tokens (1024² images) by default."""
    config = FlowMatchEulerDiscreteScheduler.from_pretrained(published["flux"] / "scheduler").config
    schedule = schedule_from_flow_scheduler(config)
    u = torch.arange(1, 1000, dtype=torch.float64) / 1000
    expected = math.exp(1.15) * u / (1 + (math.exp(1.15) - 1) * u)
    torch.testing.assert_close(schedule.marginal_std, expected, rtol=1e-9, atol=1e-12)


def test_one_batched_transformer_call_per_evaluation(published):
    module = config_module("sample_sd3_prompt_product_hmc", published["sd3"], PROMPTS, WEIGHTS)
    calls = []
    handle = module.target.transformer.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        module.target.score(latents(), 1)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_guidance_is_required_where_distilled_and_refused_elsewhere(published):
    with pytest.raises(ValueError, match="guidance-distilled"):
        config_module_with(published["flux"], "sample_flux_prompt_product_hmc", guidance=None)
    with pytest.raises(ValueError, match="guidance applies to guidance-distilled"):
        config_module_with(published["sd3"], "sample_sd3_prompt_product_hmc", guidance=3.5)


def config_module_with(folder: Path, name: str, **changes) -> SamplingModule:
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    init = config["model"]["init_args"]
    ((part, component),) = init["components"].items()
    component.update(path=str(folder), torch_dtype="float32", variant=None, **changes)
    return SamplingModule({part: ComponentConfig(**component)}, CompositionConfig(**init["composition"]),
                          SamplerConfig(kernel="reverse"), [LATENT, SIDE, SIDE], respace=3)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_one_and_two_processes_give_the_same_samples(published, tmp_path, restore_environ, family):
    """configs/diffusers/sample_<family>_prompt_product_hmc.yaml on the tiny pipeline (3 levels, 6 samples in
    batches of 2, steps a·β^b untuned): two DDP processes on the CPU write the samples one process writes."""
    import numpy as np

    from tests.e2e.test_distributed import one_and_two_process_samples

    config = yaml.safe_load((CONFIGS / f"sample_{family}_prompt_product_hmc.yaml").read_text())
    config["trainer"].update(accelerator="cpu", devices=1, enable_progress_bar=False)
    init = config["model"]["init_args"]
    (component,) = init["components"].values()
    component.update(path=str(published[family]), torch_dtype="float32", prompts=PROMPTS, weights=WEIGHTS)
    init["sampler"].update(n_steps=1, target_accept=None, step_a=0.01)
    init.update(respace=3, sample_shape=[LATENT, SIDE, SIDE])
    config["data"]["init_args"].update(n_samples=6, batch_size=2)
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(config))
    one, two = one_and_two_process_samples(path, tmp_path)
    assert sorted(one) == sorted(two) and "images" in one
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
