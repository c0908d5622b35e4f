"""Throughput of text-prompt products with SD3-medium- and Flux-schnell-size transformers (configs/diffusers/).

A random-weight ``SD3Transformer2DModel`` of SD3-medium's configuration (2 B parameters) or ``FluxTransformer2DModel``
of FLUX.1-schnell's (12 B), in bfloat16, composes two prompts and the empty one (random text embeddings of the
models' widths and lengths; no download) as configs/diffusers/sample_{sd3,flux}_prompt_product_hmc.yaml do, on
16x128x128 latents (1024² images), and is sampled with Reverse and the config's HMC-curve (its first-guess steps:
the benchmark times sampling, not tuning) on ``--levels`` of the scheduler's levels at ``--batch``. Reported:
samples/s, NFE per sample, acceptance, peak memory. ``--small`` swaps in tiny transformers (a CPU smoke test).

Run ``python -m lit_mcmc.benchmarks.flow --family sd3 --out runs/bench/sd3`` (and ``--family flux``) on a GPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_mcmc.benchmarks.diffusers import report, time_samplers
from lit_mcmc.pretrained.diffusers.flow import FlowTransformerTarget, schedule_from_flow_scheduler
from lit_mcmc.samplers import SamplerConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "diffusers"
# transformer/config.json of stabilityai/stable-diffusion-3-medium-diffusers and black-forest-labs/FLUX.1-schnell
PUBLISHED: dict[str, dict[str, Any]] = {
    "sd3": {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192},
    "flux": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
             "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
             "guidance_embeds": False, "axes_dims_rope": (16, 56, 56)},
}
SMALL: dict[str, dict[str, Any]] = {
    "sd3": {"sample_size": 8, "patch_size": 2, "in_channels": 16, "num_layers": 1, "attention_head_dim": 8,
            "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 16,
            "pooled_projection_dim": 32, "out_channels": 16, "pos_embed_max_size": 16},
    "flux": {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 8,
             "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 16,
             "guidance_embeds": False, "axes_dims_rope": (2, 2, 4)},
}
TEXT_LENGTH = {"sd3": 77 + 256, "flux": 256}  # CLIP + T5 tokens (SD3); schnell's max_sequence_length (Flux)
SCHEDULER = {"sd3": {"shift": 3.0}, "flux": {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                                             "base_image_seq_len": 256, "max_image_seq_len": 4096}}


def sampler_configs(family: str) -> dict[str, SamplerConfig]:
    """Reverse and the config's HMC-curve sampler at its first-guess steps (no tuning)."""
    spec = yaml.safe_load((CONFIGS / f"sample_{family}_prompt_product_hmc.yaml").read_text())
    sampler = {**spec["model"]["init_args"]["sampler"], "target_accept": None}
    hmc = SamplerConfig(**sampler)
    return {"Reverse": SamplerConfig(kernel="reverse"), hmc.name: hmc}


def build_target(family: str, small: bool, levels: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[FlowTransformerTarget, int]:
    """The random-weight transformer with ∅ and two prompts (weights of the family's config), and the latent side."""
    import diffusers

    torch.manual_seed(0)
    config = (SMALL if small else PUBLISHED)[family]
    name = "SD3Transformer2DModel" if family == "sd3" else "FluxTransformer2DModel"
    transformer = getattr(diffusers, name)(**config).to(device, dtype).eval().requires_grad_(False)
    length = 8 if small else TEXT_LENGTH[family]
    hidden = torch.randn(3, length, config["joint_attention_dim"], device=device, dtype=dtype)
    pooled = torch.randn(3, config["pooled_projection_dim"], device=device, dtype=dtype)
    side = 8 if small else 128
    schedule = schedule_from_flow_scheduler(SCHEDULER[family], image_seq_len=(side // 2) ** 2).respace(levels)
    spec = yaml.safe_load((CONFIGS / f"sample_{family}_prompt_product_hmc.yaml").read_text())
    (component,) = spec["model"]["init_args"]["components"].values()
    return FlowTransformerTarget(transformer, family, schedule, hidden, pooled, component["weights"]), side


def run(family: str, small: bool, levels: int, batch: int, device: torch.device) -> list[dict[str, Any]]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    target, side = build_target(family, small, levels, device, dtype)
    return time_samplers(target, sampler_configs(family), (batch, 16, side, side), levels, dtype, device)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd3", "flux"), default="sd3")
    parser.add_argument("--small", action="store_true", help="tiny transformers: a CPU smoke test")
    parser.add_argument("--levels", type=int, default=10, help="levels sampled (respaced from 999)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.levels < 2 or args.batch < 1:
        parser.error("--levels must be >= 2 and --batch >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return report(run(args.family, args.small, args.levels, args.batch, device), args.out, device,
                  family=args.family, small=args.small)


if __name__ == "__main__":
    main()
