"""Throughput of a text-prompt product with a Stable-Diffusion-1.5-size UNet (configs/diffusers/).

A random-weight ``UNet2DConditionModel`` of SD-1.5's configuration (860 M parameters, 4x64x64 latents, CLIP-width
77x768 prompt embeddings; no download) composes two prompts and the empty one as
configs/diffusers/sample_sd15_prompt_product_hmc.yaml does, and is sampled with Reverse and that config's HMC-curve
on ``--levels`` of SD's 1000 scaled-linear levels at ``--batch`` (8), with float16 weights. Reported: samples/s,
NFE per sample, peak memory. ``--small`` swaps in a tiny UNet (a CPU smoke test).

Run ``python -m lit_mcmc.benchmarks.diffusers --out runs/bench/diffusers`` on a GPU (diffusers is the
``[pretrained]`` extra). The table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_mcmc.pretrained.diffusers import PromptProduct, schedule_from_scheduler
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "diffusers" / "sample_sd15_prompt_product_hmc.yaml"
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SMALL_UNET: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
    "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 32,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


def sampler_configs() -> dict[str, SamplerConfig]:
    """Reverse and the config's HMC-curve sampler (named as the config names it)."""
    spec = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["sampler"]
    hmc = SamplerConfig(**spec)
    return {"Reverse": SamplerConfig(kernel="reverse"), hmc.name: hmc}


def build_target(small: bool, levels: int, device: torch.device, dtype: torch.dtype) -> tuple[PromptProduct, int]:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    config = SMALL_UNET if small else SD15_UNET
    unet = UNet2DConditionModel(**config).to(device, dtype).eval().requires_grad_(False)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # SD-1.5's
    schedule = schedule_from_scheduler(scheduler).respace(levels)
    embeddings = torch.randn(3, 77, config["cross_attention_dim"], device=device, dtype=dtype)  # ∅ and 2 prompts
    return PromptProduct(unet, schedule, embeddings, [7.5, 7.5]), config["sample_size"]


def run(small: bool, levels: int, batch: int, device: torch.device) -> list[dict[str, Any]]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    target, size = build_target(small, levels, device, dtype)
    return time_samplers(target, sampler_configs(), (batch, 4, size, size), levels, dtype, device)


def time_samplers(target: Any, configs: dict[str, SamplerConfig], shape: tuple[int, ...], levels: int,
                  dtype: torch.dtype, device: torch.device) -> list[dict[str, Any]]:
    """One row per sampler config: samples/s of a timed run after a warm-up run (per-sample seeds 1 and 0), NFE
    per sample, acceptance and, on a GPU, the peak memory."""
    batch = shape[0]
    rows = []
    for name, config in configs.items():
        sampler = config.build(target.schedule)
        sampler.sample(target, shape, PerSampleRandom(0, torch.arange(batch)), device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        _, info = sampler.sample(target, shape, PerSampleRandom(1, torch.arange(batch)), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"sampler": name, "batch": batch, "levels": levels, "weights": str(dtype).removeprefix("torch."),
                     "samples_per_s": batch / seconds, "nfe_per_sample": info.nfe,
                     "accept_rate": info.accept_rate if info.adjusted else None,
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sampler | batch | levels | weights | samples/s | NFE/sample | accept | peak GiB |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        accept = "–" if r["accept_rate"] is None else f"{r['accept_rate']:.3f}"
        peak = "–" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['sampler']} | {r['batch']} | {r['levels']} | {r['weights']} | {r['samples_per_s']:.3f} | "
                     f"{r['nfe_per_sample']} | {accept} | {peak} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny UNet: a CPU smoke test")
    parser.add_argument("--levels", type=int, default=50, help="levels sampled (respaced from 1000)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.levels < 2 or args.batch < 1:
        parser.error("--levels must be >= 2 and --batch >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return report(run(args.small, args.levels, args.batch, device), args.out, device, small=args.small)


def report(rows: list[dict[str, Any]], out: Path | None, device: torch.device, **meta: Any) -> str:
    """Prints the rows' table and returns it; with ``out``, writes OUT.json (the device, ``meta`` and the rows)
    and OUT.md (the table)."""
    text = table(rows)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        out.with_suffix(".json").write_text(json.dumps({"device": device_name, **meta, "rows": rows}, indent=2))
        out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
