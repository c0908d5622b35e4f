"""Two figures of distributed sampling: the speed-up of 2 CPU processes over 1, and the sample writer's overhead.

Both time the same ``lit-mcmc predict`` job: the oracle HMC config (analytic GMM x bar, T=100 levels, K steps per
level), ``--n-samples`` samples in batches of ``--batch-size``. Each configuration runs ``--repeats`` times and the
fastest run counts (the machine is shared: the minimum is the least disturbed run). Every run samples into a fresh
directory, so nothing is skipped as already done.

- processes: the job as a fresh ``python -m lit_mcmc.cli`` process on 1 and on 2 CPU processes (DDP, gloo), one
  thread each, with the SampleWriter as the only callback. Two times: the process's wall time (start-up included)
  and the sampling time the writer records (``wall_seconds`` in stats.json: predict start to merged samples).
- writer: ``trainer.predict`` in this process with the SampleWriter as the only callback vs with no callbacks
  (``return_predictions=False`` in both, so nothing else keeps the samples).

Run ``python -m lit_mcmc.benchmarks.distributed --help``. The figures go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "toy2d" / "sample_oracle_hmc.yaml"
WRITER_ONLY = '[{"class_path": "callbacks.sample_writer.SampleWriter"}]'


def predict_args(root: Path, options: argparse.Namespace) -> list[str]:
    """The job's config overrides (without the subcommand), sampling into ``root``."""
    return ["--config", str(CONFIG), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar",
            "false", "--data.init_args.n_samples", str(options.n_samples), "--data.init_args.batch_size",
            str(options.batch_size), "--model.init_args.sampler.n_steps", str(options.n_steps)]


def time_processes(n_processes: int, root: Path, options: argparse.Namespace) -> tuple[float, float]:
    """(process wall seconds, sampling seconds from stats.json) of the job on ``n_processes`` CPU processes."""
    command = [sys.executable, "-m", "lit_mcmc.cli", "predict", *predict_args(root, options),
               "--trainer.callbacks", WRITER_ONLY, "--trainer.devices", str(n_processes)]
    if n_processes > 1:
        command += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall, json.loads((root / "stats.json").read_text())["wall_seconds"]


def time_predict(with_writer: bool, root: Path, options: argparse.Namespace) -> tuple[float, float]:
    """(wall, CPU) seconds of ``trainer.predict`` in this process, with the SampleWriter alone or no callbacks."""
    from lit_mcmc.cli import LitMCMCCLI

    warnings.filterwarnings("ignore", "LightningCLI's args parameter")  # this script's own argv is not for it
    callbacks = WRITER_ONLY if with_writer else "[]"
    cli = LitMCMCCLI(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False, run=False,
                     args=[*predict_args(root, options), "--trainer.callbacks", callbacks])
    wall, cpu = time.perf_counter(), time.process_time()
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def best_of(repeats: int, runs: dict[str, Callable[[Path], tuple[float, ...]]]) -> dict[str, tuple[float, ...]]:
    """Per configuration, the element-wise minimum of ``repeats`` timings, each run sampling into a fresh temporary
    directory. The configurations take turns, so a change in the machine's load hits them alike."""
    results: dict[str, list[tuple[float, ...]]] = {label: [] for label in runs}
    for repeat in range(repeats):
        for label, run in runs.items():
            with tempfile.TemporaryDirectory(prefix="lit_mcmc_bench_") as root:
                results[label].append(run(Path(root)))
            times = ", ".join(f"{t:.2f} s" for t in results[label][-1])
            print(f"{label} run {repeat + 1}/{repeats}: {times}", file=sys.stderr)
    return {label: tuple(min(column) for column in zip(*timings, strict=True)) for label, timings in results.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--n-steps", type=int, default=10, help="MCMC steps per level (K)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["processes", "writer"], help="measure one figure only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the figures."""
    options = parse_args(argv)
    print(f"oracle HMC predict job: {options.n_samples} samples, batch {options.batch_size}, K={options.n_steps}, "
          f"T=100; best of {options.repeats} runs")
    if options.only in (None, "processes"):
        timings = best_of(options.repeats, {"1 process": partial(time_processes, 1, options=options),
                                            "2 processes": partial(time_processes, 2, options=options)})
        (wall1, sampling1), (wall2, sampling2) = timings.values()
        print(f"1 process: {wall1:.2f} s wall, {sampling1:.2f} s sampling; "
              f"2 processes: {wall2:.2f} s wall, {sampling2:.2f} s sampling")
        print(f"speed-up 2 vs 1 process: {sampling1 / sampling2:.2f}x sampling, {wall1 / wall2:.2f}x wall")
    if options.only in (None, "writer"):
        import torch

        torch.set_num_threads(1)  # as in the process runs
        variants = {"no callbacks": False, "SampleWriter": True}
        timings = best_of(options.repeats, {label: partial(time_predict, with_writer, options=options)
                                            for label, with_writer in variants.items()})
        (bare_wall, bare_cpu), (writer_wall, writer_cpu) = timings.values()
        print(f"predict without callbacks: {bare_wall:.2f} s wall, {bare_cpu:.2f} s CPU; "
              f"with the SampleWriter: {writer_wall:.2f} s wall, {writer_cpu:.2f} s CPU")
        print(f"writer overhead (time with / without): {writer_wall / bare_wall:.3f}x wall, "
              f"{writer_cpu / bare_cpu:.3f}x CPU")


if __name__ == "__main__":
    main()
