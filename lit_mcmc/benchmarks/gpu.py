"""GPU benchmark: training steps and guided sampling of the paper's CIFAR networks, per precision, compiled or not.

Random-weight networks of the paper's sizes (the CIFAR UNet, 35.7 M parameters, its energy version, and the noisy
encoder classifier); samplers from configs/cifar100/ (Reverse, LA-1-line, HMC-1-curve on the score model, HMC on
the energy model), guided with λ = 20 on a respaced schedule. Reported:

- training: ms/step (forward, backward, Adam step) at batch 128 for the score, energy and noisy-classifier models;
- sampling: samples/s at batch 256 over ``--levels`` levels, the share of that time spent in the target's own
  evaluations (the same number of bare guided evaluations, timed alone, divided by the sampler's time), peak memory;
- the quality guard: from the same seeds, each precision's acceptance per level against fp32's (max difference).

Each in the precisions "fp32", "tf32", "bf16" (``SamplingModule.precision``; training uses autocast for bf16) and,
with ``--compile both``, compiled (``torch.compile``) and not. ``--small`` runs tiny networks on the CPU in seconds.
Run ``python -m lit_mcmc.benchmarks.gpu --out runs/bench/gpu`` (or ``make bench-gpu``); the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lit_mcmc.compilation import compile_network
from lit_mcmc.compose import ClassifierGuidance
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.nets.energy import EnergyNet
from lit_mcmc.nets.unet import EncoderClassifier, UNet
from lit_mcmc.precision import AUTOCAST_DTYPES, float32_matmul, with_precision
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.targets import EnergyModelTarget, ScoreModelTarget, Target

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "cifar100"
# row -> (config, parameterization, sampler overrides)
ROWS = {
    "Reverse": ("sample_score_reverse", "score", {}),
    "LA-1-line": ("sample_score_la", "score", {"n_points": 1}),
    "HMC-1-curve": ("sample_score_hmc", "score", {}),
    "HMC (energy)": ("sample_energy_hmc", "energy", {}),
}
PAPER_NET = {"in_channels": 3, "ch": 128, "ch_mult": [1, 2, 2, 2], "n_res_blocks": 2, "attn_resolutions": [16],
             "image_size": 32, "n_steps": 1000}
SMALL_NET = {"in_channels": 3, "ch": 32, "ch_mult": [1, 2], "n_res_blocks": 1, "attn_resolutions": [],
             "image_size": 8, "n_steps": 1000}


def sampler_config(row: str) -> SamplerConfig:
    config, _, overrides = ROWS[row]
    spec = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]["init_args"]["sampler"]
    return SamplerConfig(**{**spec, **overrides})


def image_shape(small: bool) -> tuple[int, int, int]:
    arch = SMALL_NET if small else PAPER_NET
    return arch["in_channels"], arch["image_size"], arch["image_size"]


def networks(small: bool, device: torch.device) -> dict[str, nn.Module]:
    """Fresh random-weight networks: the score UNet, the energy model's UNet, the noisy classifier."""
    torch.manual_seed(0)
    arch = SMALL_NET if small else PAPER_NET
    return {"score": UNet(**arch).to(device), "energy": UNet(**arch).to(device),
            "classifier": EncoderClassifier(**arch, n_classes=100, time_conditioned=True).to(device)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


# ----- training --------------------------------------------------------------------------------------------------


def training_step_fn(kind: str, net: nn.Module, shape: tuple[int, ...], precision: str,
                     device: torch.device) -> Callable[[], None]:
    """One optimiser step of the DDPM loss (score/energy) or the noisy cross-entropy (classifier) on ``shape``."""
    schedule = NoiseSchedule.linear(1000)
    batch = shape[0]
    x0 = torch.randn(shape, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)
    model = EnergyNet(net) if kind == "energy" else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    dtype = AUTOCAST_DTYPES.get(precision)

    def step() -> None:
        t = torch.randint(0, schedule.T, (batch,), device=device)
        noise = torch.randn_like(x0)
        x_t = schedule.q_sample(x0, t, noise)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x_t, t)
            loss = (torch.nn.functional.cross_entropy(out, labels) if kind == "classifier"
                    else torch.nn.functional.mse_loss(out.float(), noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(small: bool, batch: int, precisions: Sequence[str], compiled: Sequence[bool], repeats: int,
                   device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for use_compile in compiled:
        for precision in precisions:
            for kind, net in networks(small, device).items():
                if use_compile and kind == "energy":  # the double backward cannot be compiled
                    rows.append({"model": kind, "precision": precision, "compiled": True, "ms_per_step": None,
                                 "peak_gib": None})
                    continue
                if use_compile:
                    compile_network(net)
                with float32_matmul(precision):  # type: ignore[arg-type]
                    step = training_step_fn(kind, net, (batch, *image_shape(small)), precision, device)
                    seconds = timed(step, device, repeats)
                rows.append({"model": kind, "precision": precision, "compiled": use_compile,
                             "ms_per_step": 1000 * seconds, "peak_gib": peak_gib(device)})
    return rows


# ----- sampling --------------------------------------------------------------------------------------------------


def guided_target(row: str, nets: dict[str, nn.Module], schedule: NoiseSchedule, batch: int,
                  device: torch.device) -> Target:
    _, parameterization, _ = ROWS[row]
    inner = (EnergyModelTarget(EnergyNet(nets["energy"]), schedule) if parameterization == "energy"
             else ScoreModelTarget(nets["score"], schedule))
    labels = torch.arange(batch, device=device) % 100
    return ClassifierGuidance(inner, nets["classifier"], schedule, 20.0, labels=labels)


def sample_once(row: str, target: Target, schedule: NoiseSchedule, batch: int, shape: tuple[int, ...],
                device: torch.device) -> tuple[float, Any]:
    sampler = sampler_config(row).build(schedule)
    synchronize(device)
    start = time.perf_counter()
    _, info = sampler.sample(target, (batch, *shape), PerSampleRandom(0, torch.arange(batch)), device=device)
    synchronize(device)
    return time.perf_counter() - start, info


def bench_sampling(small: bool, batch: int, levels: int, precisions: Sequence[str], compiled: Sequence[bool],
                   repeats: int, device: torch.device) -> list[dict[str, Any]]:
    schedule = NoiseSchedule.linear(1000).respace(levels)
    rows = []
    reference: dict[str, dict[int, float]] = {}  # fp32 acceptance per level, per sampler
    for use_compile in compiled:
        nets = {k: v.eval().requires_grad_(False) for k, v in networks(small, device).items()}
        if use_compile:
            for net in nets.values():
                compile_network(net)
        shape = image_shape(small)
        for precision in precisions:
            for row in ROWS:
                target = with_precision(guided_target(row, nets, schedule, batch, device), precision)  # type: ignore[arg-type]
                with float32_matmul(precision):  # type: ignore[arg-type]
                    sample_once(row, target, schedule, batch, shape, device)  # warm-up (and compilation)
                    seconds, info = sample_once(row, target, schedule, batch, shape, device)
                    x = torch.randn(batch, *shape, device=device)
                    evaluation = timed(lambda target=target, x=x: target.evaluate(x, levels // 2), device, repeats)
                levels_accept = {int(k): float(v) for k, v in info.levels.get("accept_rate", {}).items()}
                if precision == "fp32" and not use_compile:
                    reference[row] = levels_accept
                drift = (max(abs(levels_accept[k] - reference[row][k]) for k in levels_accept)
                         if levels_accept and row in reference else None)
                rows.append({"sampler": row, "precision": precision, "compiled": use_compile, "batch": batch,
                             "samples_per_s": batch / seconds, "nfe_per_sample": info.nfe,
                             "network_share": min(1.0, info.nfe * evaluation / seconds),
                             "accept_rate": info.accept_rate if info.adjusted else None,
                             "max_accept_diff_vs_fp32": drift, "peak_gib": peak_gib(device)})
    return rows


def tables(training: list[dict[str, Any]], sampling: list[dict[str, Any]]) -> str:
    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    lines = ["| model | precision | compiled | ms/step | peak GiB |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['compiled']} | {cell(r['ms_per_step'], '.1f')} | "
              f"{cell(r['peak_gib'], '.2f')} |" for r in training]
    lines += ["", "| sampler | precision | compiled | batch | samples/s | NFE/sample | in network calls | accept | "
              "max Δaccept/level vs fp32 | peak GiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sampler']} | {r['precision']} | {r['compiled']} | {r['batch']} | {r['samples_per_s']:.2f} | "
              f"{r['nfe_per_sample']} | {r['network_share']:.1%} | {cell(r['accept_rate'], '.3f')} | "
              f"{cell(r['max_accept_diff_vs_fp32'], '.3f')} | {cell(r['peak_gib'], '.2f')} |" for r in sampling]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny networks and batches: a CPU run in seconds")
    parser.add_argument("--precisions", default=None, help="comma-separated (default fp32,tf32,bf16; "
                        "--small: fp32,bf16)")
    parser.add_argument("--compile", choices=["both", "on", "off"], default=None,
                        help="compiled and eager runs (default both; --small: off)")
    parser.add_argument("--levels", type=int, default=None, help="respaced levels sampled (default 20; --small: 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed training steps / evaluations (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    small = args.small
    precisions = (args.precisions or ("fp32,bf16" if small else "fp32,tf32,bf16")).split(",")
    unknown = [p for p in precisions if p not in ("fp32", "tf32", "bf16", "fp16")]
    if unknown:
        parser.error(f"unknown precisions {unknown}; choose from fp32, tf32, bf16, fp16")
    compiled = {"both": [False, True], "on": [True], "off": [False]}[args.compile or ("off" if small else "both")]
    levels = args.levels or (3 if small else 20)
    if levels < 2:
        parser.error("--levels must be >= 2")
    repeats = args.repeats or (2 if small else 10)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_batch, sample_batch = (4, 4) if small else (128, 256)
    training = bench_training(small, train_batch, precisions, compiled, repeats, device)
    sampling = bench_sampling(small, sample_batch, levels, precisions, compiled, repeats, device)
    text = tables(training, sampling)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "small": small,
                "levels": levels, "train_batch": train_batch, "sample_batch": sample_batch, "torch": torch.__version__}
        args.out.with_suffix(".json").write_text(json.dumps({**meta, "training": training, "sampling": sampling},
                                                            indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
