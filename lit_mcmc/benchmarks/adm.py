"""Throughput of classifier-guided sampling with published-size ADM networks (the ImageNet 256x256 rows).

Random weights (no published file is needed): the 256x256_diffusion_uncond UNet and the 256x256_classifier, composed
as configs/imagenet/*.yaml compose them (λ = 20), sampled with those configs' samplers (Reverse and HMC-6-curve),
with the body in float16 (``use_fp16``, as published) and in float32. For each setting it finds the largest batch
that fits (doubling until CUDA runs out of memory, or ``--batch`` when given), times ``--levels`` levels of the
1000-level schedule after one warm-up level, and reports seconds per level and the samples per second of a full
1000-level run. ``--small`` swaps in tiny networks (a CPU smoke test in seconds).

Run ``python -m lit_mcmc.benchmarks.adm --out runs/bench/adm`` on a GPU. The table goes to stdout.
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

from lit_mcmc.compose import ClassifierGuidance
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.nets.adm import ADMEncoderClassifier, ADMUNet
from lit_mcmc.pretrained.adm import PUBLISHED_CONFIGS, resolve_config
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.targets import ScoreModelTarget

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "imagenet"
ROWS = {"Reverse": "sample_guided_reverse", "HMC-6-curve": "sample_guided_hmc"}
SMALL_UNET = {"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
              "attention_resolutions": [2], "channel_mult": [1, 2], "num_head_channels": 16,
              "use_scale_shift_norm": True, "resblock_updown": True}
SMALL_CLASSIFIER = {**SMALL_UNET, "out_channels": 1000, "pool": "attention"}
T_FULL = 1000


def build_networks(small: bool, use_fp16: bool, device: torch.device) -> tuple[ADMUNet, ADMEncoderClassifier]:
    """Random-weight networks (the output layers too: the published init zeroes them, which no trained model has)."""
    unet_args = dict(SMALL_UNET) if small else resolve_config("256x256_diffusion_uncond", "adm", "config")
    classifier_args = dict(SMALL_CLASSIFIER) if small else resolve_config("256x256_classifier", "adm_classifier",
                                                                          "config")
    generator = torch.Generator().manual_seed(0)
    networks = []
    for network, arguments in ((ADMUNet, unet_args), (ADMEncoderClassifier, classifier_args)):
        net = network(**{**arguments, "use_fp16": False})
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
        if use_fp16:
            net.convert_to_fp16()
        networks.append(net.to(device).eval().requires_grad_(False))
    return networks[0], networks[1]


def sampler_for(row: str) -> SamplerConfig:
    """The sampler of the ImageNet config behind ``row``."""
    config = yaml.safe_load((CONFIGS / f"{ROWS[row]}.yaml").read_text())
    return SamplerConfig(**config["model"]["init_args"]["sampler"])


def time_levels(row: str, unet: ADMUNet, classifier: ADMEncoderClassifier, batch: int, levels: int,
                device: torch.device) -> tuple[float, float]:
    """(seconds per level, NFE per level), timed over ``levels`` levels (a level costs the same wherever it lies: the
    sampler is run on an evenly respaced ``levels + 1``-level schedule, the networks seeing the original timesteps)."""
    window = NoiseSchedule.linear(T_FULL).respace(levels + 1)
    target = ClassifierGuidance(ScoreModelTarget(unet, window, learned_variance=unet.learn_sigma), classifier,
                                window, 20.0, labels=torch.arange(batch, device=device) % 1000)
    sampler = sampler_for(row).build(window)
    shape = (batch, unet.in_channels, unet.image_size, unet.image_size)
    x = torch.randn(shape, device=device)
    rng = PerSampleRandom(0, torch.arange(batch))
    sampler_for(row).build(NoiseSchedule.linear(T_FULL).respace(2)).run(target, x, rng)  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    _, info = sampler.run(target, x, rng)
    _synchronize(device)
    seconds = time.perf_counter() - start
    # the first level is a bare reverse step (no MCMC before it): count the levels after it
    return seconds / levels, (info.nfe - 1) / levels


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def largest_batch(row: str, unet: ADMUNet, classifier: ADMEncoderClassifier, device: torch.device,
                  limit: int = 1024) -> int:
    """The largest power-of-two batch whose level fits in memory (CUDA); 1 is assumed to fit."""
    batch = 1
    while batch * 2 <= limit:
        try:
            time_levels(row, unet, classifier, batch * 2, 1, device)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch *= 2
    return batch


def run(small: bool, levels: int, batch: int | None, rows: Sequence[str], device: torch.device) -> list[dict[str, Any]]:
    results = []
    for use_fp16 in (True, False):
        unet, classifier = build_networks(small, use_fp16, device)
        for row in rows:
            size = batch or (largest_batch(row, unet, classifier, device) if device.type == "cuda" else 2)
            seconds, nfe = time_levels(row, unet, classifier, size, levels, device)
            results.append({
                "sampler": row, "use_fp16": use_fp16, "batch": size, "s_per_level": seconds,
                "nfe_per_level": nfe, "samples_per_s_full_run": size / (seconds * T_FULL),
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            })
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| sampler | use_fp16 | batch | NFE/level | s/level | samples/s (1000 levels) | peak GiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        peak = "–" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        lines.append(f"| {r['sampler']} | {r['use_fp16']} | {r['batch']} | {r['nfe_per_level']:.0f} | "
                     f"{r['s_per_level']:.3f} | {r['samples_per_s_full_run']:.4f} | {peak} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny networks: a CPU smoke test")
    parser.add_argument("--levels", type=int, default=5, help="levels timed per setting (after one warm-up)")
    parser.add_argument("--batch", type=int, default=None, help="fixed batch (default: the largest that fits)")
    parser.add_argument("--samplers", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    rows = args.samplers.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown or args.levels < 1:
        parser.error(f"unknown samplers {unknown}; choose from {list(ROWS)}" if unknown else "--levels must be >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = run(args.small, args.levels, args.batch, rows, device)
    text = table(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "small": args.small, "levels": args.levels, "published": None if args.small else
                {name: PUBLISHED_CONFIGS[name] for name in ("256x256_diffusion_uncond", "256x256_classifier")}}
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": results}, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
