"""How group size and ESS threshold shape particle resampling on the 2D oracle product (exact scores).

``python -m lit_mcmc.experiments.particle_sweep`` runs the papers' oracle HMC (ε = 0.03, K = 10, L = 3, γ = 0.5) on
the analytic GMM × bar product without particles and with exact-weight particles at several group sizes and ESS
thresholds, ``--seeds`` sampling seeds each, ``--n-samples`` samples per run, and prints a Markdown table: LL, W2
(against the exact product samples the 2D metrics use), the share of samples in the upper mode (0.5 exactly) and
outside the bar, mean ± population std over seeds. In-process and analytic: no training, about a minute.

``--model-modes OUT`` instead reads a finished ``make smc2d`` (``OUT``, e.g. runs/smc2d) and prints, per trial,
the share of the upper mode in the level-0 product of the two trained *energy* models (their own density,
integrated on a grid over each mode's half of the bar) next to the share in the energy rows' samples with and
without particles: exact weights sample the models' density, whatever its mode balance.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lit_mcmc.compose import Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.experiments.jobs import markdown_table
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.samplers.particles import ResampleConfig
from lit_mcmc.targets import Target

PAPERS_HMC = dict(kernel="hmc", n_steps=10, step_size=0.03, n_leapfrog=3, damping=0.5, carry_momentum=True,
                  correction="energy", flip_on_reject=False, reverse=False)
SETTINGS = ((None, None), (64, 0.5), (128, 0.5), (512, 0.5), (64, 0.2))  # (group size, ESS threshold)


def oracle_product(schedule: NoiseSchedule) -> Product:
    from lit_mcmc.modules.components import ComponentConfig, load_component

    return Product([load_component(name, ComponentConfig(analytic=f"toy2d_{name}"), ".").make_target(schedule)
                    for name in ("gmm", "bar")])


def run(n_samples: int, seeds: int) -> str:
    from lit_mcmc.experiments.toy2d import exact_product_sets
    from lit_mcmc.metrics.toy2d import sample_metrics

    schedule = NoiseSchedule.cosine(100)
    target = oracle_product(schedule)
    reference = exact_product_sets(n_samples, 0)[0]
    body = []
    for group, threshold in SETTINGS:
        resample = None if group is None else ResampleConfig("exact", group, threshold)
        sampler = SamplerConfig(**PAPERS_HMC, resample=resample).build(schedule)
        numbers = []
        start = time.perf_counter()
        for seed in range(seeds):
            x, _ = sampler.sample(target, (n_samples, 2), PerSampleRandom(seed, torch.arange(n_samples)))
            scores = sample_metrics(x.numpy(), reference)
            numbers.append((scores["ll"], scores["w2"], float((x[:, 1] > 0).double().mean()),
                            float((x[:, 0].abs() >= 0.2).double().mean())))
        values = np.array(numbers)
        label = "HMC" if group is None else f"HMC + SMC, groups of {group}, ESS < {threshold:g}·G"
        body.append([label, *(f"{m:.3f} ± {s:.3f}" for m, s in zip(values.mean(0), values.std(0), strict=True)),
                     f"{(time.perf_counter() - start) / seeds:.1f}"])
    return markdown_table(["Sampler", "LL ↑", "W2 ↓", "upper mode (0.5)", "outside bar", "s/run"], body)


def upper_share(target: Target) -> float:
    """∫ over the upper mode / ∫ over both modes of the target's level-0 density (a 0.005 grid over each mode's
    part of the bar, |x₁| ≤ 0.2 and 0.3 ≤ |x₂| ≤ 0.7)."""
    xs, ys = torch.linspace(-0.2, 0.2, 81), torch.linspace(0.3, 0.7, 81)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        upper, lower = (torch.logsumexp(target.log_prob(grid * torch.tensor([1.0, sign]), 0), 0)
                        for sign in (1.0, -1.0))
    return float(torch.sigmoid(upper - lower))


def model_modes(out: Path) -> str:
    """Per trial: the upper-mode share of the energy models' level-0 product and of the energy rows' samples."""
    from lit_mcmc.modules.components import ComponentConfig, load_component

    body = []
    for trial in sorted(out.glob("train/trial_*"), key=lambda p: int(p.name.split("_")[1])):
        loaded = [load_component(name, ComponentConfig(checkpoint=f"{name}/checkpoints/last.ckpt"), str(trial))
                  for name in ("gmm_energy", "bar_energy")]
        schedule = loaded[0].schedule
        product = Product([component.make_target(schedule) for component in loaded])  # type: ignore[misc]
        cells = [trial.name, f"{upper_share(product):.3f}"]
        for row in ("energy_hmc", "energy_hmc_smc", "energy_la", "energy_la_smc"):
            with np.load(out / "samples" / trial.name / row / "samples.npz") as saved:
                cells.append(f"{float((saved['samples'][:, 1] > 0).mean()):.3f}")
        body.append(cells)
    return markdown_table(["trial", "energy product at level 0", "HMC", "HMC + SMC", "LA", "LA + SMC"], body)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=512, help="samples per run (a multiple of 512)")
    p.add_argument("--seeds", type=int, default=5, help="sampling seeds per setting")
    p.add_argument("--model-modes", type=Path, default=None, metavar="OUT",
                   help="instead: the upper-mode shares of a finished `make smc2d` in OUT")
    args = p.parse_args(argv)
    if args.model_modes is not None:
        table = f"Share of the upper mode (0.5 for the true product):\n\n{model_modes(args.model_modes)}"
        print(table)
        return table
    if args.n_samples < 512 or args.n_samples % 512 or args.seeds < 1:
        p.error("--n-samples must be a positive multiple of 512 and --seeds >= 1")
    torch.set_num_threads(1)
    table = (f"2D oracle product, papers' HMC, {args.n_samples} samples, {args.seeds} seeds (mean ± population "
             f"std):\n\n{run(args.n_samples, args.seeds)}")
    print(table)
    return table


if __name__ == "__main__":
    main()
