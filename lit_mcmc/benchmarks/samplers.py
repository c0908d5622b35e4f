"""Benchmark of the MCMC kernels on the analytic 2D product target (8-mode GMM x bar, docs/algorithms.md §7).

For each sampler it reports the target evaluations per sample (NFE), the acceptance rate, the wall time, and the
ratio of that time to the time of the same number of bare ``target.evaluate`` calls at the same batch size: the
sampler's own overhead (1.0 = free), in wall time and in this process's CPU time (steadier on a shared machine).
Two modes:

- ``--mode kernel`` (default): ``kernel.run`` for ``--steps`` steps at one level, from exact product samples;
- ``--mode annealed``: the paper's 2D sampler (T=100, no reverse step, x ~ N(0, I), K steps per level, momentum
  carried across levels). ``<sampler>+SMC`` rows add particle resampling (exact weights, groups of 64): their
  overhead over the same sampler without it is what the weights and resampling cost.

Run ``python -m lit_mcmc.benchmarks.samplers --help``. The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from lit_mcmc.compose import Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.samplers import HMC, MALA, UHMC, ULA, AnnealedSampler, Kernel
from lit_mcmc.samplers.particles import ResampleConfig
from lit_mcmc.targets import DiffusedGaussianMixture, DiffusedUniformBox, Target, sample_box_product

# The paper's 2D constants (lit_mcmc.data.toy2d holds the same numbers; importing it would pull in lightning,
# which doubles this script's start-up time).
GMM_MEANS = 0.5 * torch.tensor([[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)])
GMM_STD = 0.03
BAR_LOW, BAR_HIGH = [-0.2, -1.0], [0.2, 1.0]
T = 100
SMC = "+SMC"
SMC_GROUP = 64


def build_samplers() -> dict[str, Kernel]:
    """The paper's 2D samplers by name (docs/algorithms.md §4.6 and §7): ε=0.001 for Langevin; ε=0.03, L=3, γ=0.5, M=1
    for HMC. ``HMC-3-curve`` has 1 interior node per leapfrog segment (3 per step), the CIFAR naming."""
    hmc = {"step_size": 0.03, "n_leapfrog": 3, "damping": 0.5, "mass": 1.0, "carry_momentum": True}
    return {
        "U-LA": ULA(0.001),
        "LA-energy": MALA(0.001, "energy"),
        **{f"LA-{n}-line": MALA(0.001, "line", n) for n in (1, 3, 8)},
        "U-HMC": UHMC(**hmc),
        "HMC-energy": HMC(**hmc, correction="energy"),
        **{f"HMC-{n}-line": HMC(**hmc, correction="line", n_points=n) for n in (1, 3, 8)},
        "HMC-curve": HMC(**hmc, correction="curve", n_points=0),
        "HMC-3-curve": HMC(**hmc, correction="curve", n_points=1),
    }


def sampler_names(mode: str) -> list[str]:
    """Every sampler of the mode: the kernels, and in annealed mode each also with particle resampling."""
    names = list(build_samplers())
    return names if mode == "kernel" else [n for name in names for n in (name, name + SMC)]


def build_target(schedule: NoiseSchedule) -> tuple[Product, DiffusedGaussianMixture, DiffusedUniformBox]:
    """(GMM x bar, the GMM, the bar) diffused on ``schedule``."""
    gmm = DiffusedGaussianMixture(GMM_MEANS, GMM_STD, schedule)
    bar = DiffusedUniformBox(BAR_LOW, BAR_HIGH, schedule)
    return Product([gmm, bar]), gmm, bar


def timed(fn: Callable[[], object]) -> tuple[tuple[float, float], object]:
    """((wall, CPU) seconds fn() took, its result). This process's CPU time is what other jobs on a shared
    machine disturb least."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def bare_evaluations(target: Target, x: Tensor, levels: Sequence[int], n: int) -> None:
    """n target evaluations at batch x, cycling through ``levels``: the cost a sampler cannot avoid."""
    with torch.no_grad():
        for i in range(n):
            target.evaluate(x, levels[i % len(levels)])


def time_sampler(name: str, kernel: Kernel, target: Target, schedule: NoiseSchedule, x0: Tensor,
                 args: argparse.Namespace) -> dict[str, object]:
    """One sampler's row: NFE per sample, acceptance (None if unadjusted), its time and the bare-evaluation time."""
    if args.mode == "kernel":
        levels = [args.level]
        run = partial(kernel.run, target, x0, args.level, args.steps)
    else:
        resample = ResampleConfig("exact", SMC_GROUP) if name.endswith(SMC) else None
        annealed = AnnealedSampler(schedule, kernel, args.steps_per_level, reverse=False, resample=resample)
        levels = annealed.mcmc_levels()
        run = partial(annealed.run, target, x0)
    # Sampler and bare evaluations alternate, so a change in the machine's load hits both alike; the same seed
    # every repeat makes each repeat do identical work.
    own = bare = (math.inf, math.inf)
    for _ in range(args.repeats):
        seconds, (_, info) = timed(lambda: run(torch.Generator().manual_seed(args.seed)))  # type: ignore[misc]
        own = tuple(map(min, own, seconds))
        bare = tuple(map(min, bare, timed(partial(bare_evaluations, target, x0, levels, info.nfe))[0]))
    return {"sampler": name, "nfe": info.nfe, "accept_rate": info.accept_rate if info.adjusted else None,
            "wall_s": own[0], "cpu_s": own[1], "bare_wall_s": bare[0], "bare_cpu_s": bare[1],
            "overhead_wall": own[0] / bare[0], "overhead_cpu": own[1] / bare[1]}


def benchmark(args: argparse.Namespace) -> list[dict[str, object]]:
    """Time every selected sampler; one row of numbers per sampler."""
    schedule = NoiseSchedule.cosine(T)
    target, gmm, bar = build_target(schedule)
    samplers = build_samplers()
    known = sampler_names(args.mode)
    names = known if args.samplers is None else args.samplers.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--samplers: unknown {unknown}; choose from {','.join(known)} (--mode {args.mode})")
    if args.mode == "annealed" and args.batch % SMC_GROUP and any(n.endswith(SMC) for n in names):
        raise SystemExit(f"--batch={args.batch} must be a multiple of {SMC_GROUP} (the particle groups) for the "
                         f"{SMC} rows")
    gen = torch.Generator().manual_seed(args.seed)
    if args.mode == "kernel":
        x0 = sample_box_product(gmm, bar, args.batch, args.level, gen)
    else:
        x0 = torch.randn(args.batch, 2, generator=gen)
    rows = []
    for name in names:
        print(f"[{args.mode}] {name} ...", file=sys.stderr, flush=True)
        rows.append(time_sampler(name, samplers[name.removesuffix(SMC)], target, schedule, x0, args))
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| sampler | NFE/sample | accept | wall (s) | bare evals wall (s) | wall / bare | CPU / bare CPU |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {_format_rate(r['accept_rate'])} | {r['wall_s']:.3f} "
              f"| {r['bare_wall_s']:.3f} | {r['overhead_wall']:.2f} | {r['overhead_cpu']:.2f} |" for r in rows]
    return "\n".join(lines)


def _format_rate(rate: object) -> str:
    return "–" if rate is None else f"{rate:.3f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["kernel", "annealed"], default="kernel")
    p.add_argument("--level", type=int, default=0, help="kernel mode: the diffusion level t (0..T-1)")
    p.add_argument("--steps", type=int, default=100, help="kernel mode: MCMC steps")
    p.add_argument("--steps-per-level", type=int, default=10, help="annealed mode: K, MCMC steps per level")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the tensors are tiny: 1 is fastest)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions; the minimum time is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", default=None, help="comma-separated subset of: " + ",".join(sampler_names("annealed"))
                   + f" (the {SMC} rows in annealed mode only)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to OUT.md and the numbers to OUT.json")
    args = p.parse_args(argv)
    for key in ("batch", "threads", "repeats", "steps_per_level"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be at least 1")
    if args.steps < 0:
        p.error(f"--steps={args.steps} must be non-negative")
    if not 0 <= args.level < T:
        p.error(f"--level={args.level} must lie in 0..{T - 1}")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print the Markdown table (and write --out files); returns the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = benchmark(args)
    settings = (f"mode={args.mode}, batch={args.batch}, threads={args.threads}, repeats={args.repeats}, "
                f"seed={args.seed}, " + (f"level={args.level}, steps={args.steps}" if args.mode == "kernel"
                                         else f"T={T}, steps_per_level={args.steps_per_level}, no reverse step")
                + f", torch {torch.__version__}, {os.cpu_count()} CPUs, load average at the end "
                + "/".join(f"{load:.2f}" for load in os.getloadavg()))
    table = f"{settings}\n\n{format_table(rows)}"
    print(table)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                             "rows": rows}, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
