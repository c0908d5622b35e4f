"""The experiment drivers' skeleton: ``lit-mcmc`` runs side by side, resumable, with their CPU time; the timed
phases of an experiment; its ``table.md`` and ``results.json``."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@dataclass
class Job:
    """One ``lit-mcmc`` run: its command, its run directory, when it counts as done, and its relative cost."""

    label: str
    command: list[str]
    run_dir: Path
    log_name: str
    done: Callable[[], bool]
    cost: float = 1.0


class JobFailed(RuntimeError):
    """A ``lit-mcmc`` run exited with an error; the message holds its log tail and command."""


def fit_done(run_dir: Path, max_steps: int) -> bool:
    """Whether ``run_dir/checkpoints/last.ckpt`` exists and was saved after ``max_steps`` training steps."""
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    return last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= max_steps


def predict_done(run_dir: Path, outputs: Sequence[str]) -> bool:
    """Whether every output file of a predict run exists."""
    return all((run_dir / name).is_file() for name in outputs)


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lit_mcmc.cli", *args, "--trainer.enable_progress_bar", "false"]


def job_env() -> dict[str, str]:
    """The environment of every run: one thread each (jobs run side by side), the repo importable."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


def log_tail(path: Path, n_lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n_lines:]) if path.is_file() else "(no log)"


def run_jobs(jobs: Sequence[Job], n_workers: int) -> list[float]:
    """Runs the jobs that are not done, longest first, ``n_workers`` at a time; one progress line per job.

    Returns the CPU seconds of each run it started. On the first failure the other running jobs are stopped and
    :class:`JobFailed` is raised.
    """
    todo = []
    for job in jobs:
        if job.done():
            print(f"skipped {job.label}: outputs exist", file=sys.stderr)
        else:
            todo.append(job)
    todo.sort(key=lambda job: -job.cost)
    print(f"running {len(todo)} lit-mcmc jobs, {n_workers} at a time ({len(jobs) - len(todo)} skipped)",
          file=sys.stderr)
    finished = itertools.count(1)
    lock = threading.Lock()
    running: set[subprocess.Popen] = set()
    failures: list[str] = []
    cpu_seconds: list[float] = []

    def run(job: Job) -> None:
        with lock:
            if failures:
                return
            job.run_dir.mkdir(parents=True, exist_ok=True)
            log = job.run_dir / job.log_name
            start = time.perf_counter()
            with log.open("w") as stream:
                process = subprocess.Popen(job.command, stdout=stream, stderr=subprocess.STDOUT, env=job_env(),
                                           cwd=REPO)
            running.add(process)
        # wait4 also reports the run's CPU time (wall time alone misleads on a shared machine)
        _, status, usage = os.wait4(process.pid, 0)
        code = process.returncode = os.waitstatus_to_exitcode(status)
        with lock:
            running.discard(process)
            cpu_seconds.append(usage.ru_utime + usage.ru_stime)
            if failures:  # stopped because another job failed
                return
            if code != 0:
                failures.append(f"{job.label} failed (exit code {code}); last lines of {log}:\n{log_tail(log)}\n"
                                f"command: {shlex.join(job.command)}")
                for other in running:  # os.kill, not terminate(): its poll() could reap a child another thread waits on
                    os.kill(other.pid, signal.SIGTERM)
                return
            print(f"[{next(finished)}/{len(todo)}] {job.label} done in {time.perf_counter() - start:.1f} s "
                  f"(CPU {cpu_seconds[-1]:.1f} s)", file=sys.stderr)

    with ThreadPoolExecutor(max(1, n_workers)) as pool:
        list(pool.map(run, todo))
    if failures:
        raise JobFailed(failures[0])
    return cpu_seconds


def run_phases(phases: dict[str, Sequence[Job]], n_workers: int) -> tuple[dict[str, float], dict[str, float], int]:
    """Runs each phase's jobs (:func:`run_jobs`) in order, exiting with status 1 after the first failed run.

    Returns the wall seconds and the CPU seconds of the runs per phase, and how many runs were skipped as done.
    """
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    reused = 0
    for phase, jobs in phases.items():
        start = time.perf_counter()
        try:
            ran = run_jobs(jobs, n_workers)
        except JobFailed as error:
            print(error, file=sys.stderr)
            raise SystemExit(1) from error
        seconds[phase], cpu_seconds[phase] = time.perf_counter() - start, sum(ran)
        reused += len(jobs) - len(ran)
    return seconds, cpu_seconds, reused


@dataclass
class Timings:
    """How long an experiment took: wall seconds per phase (its run phases, ``evaluate`` and ``total``), the CPU
    seconds of the ``lit-mcmc`` runs per phase, how many runs were reused from an earlier invocation, and on how
    many parallel jobs."""

    seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    reused: int
    jobs: int

    def summary(self) -> str:
        """The caption's last sentence: the machine, the wall time per phase (with the runs' CPU time)."""
        cpu = {name: f" (CPU {value:.0f} s)" for name, value in self.cpu_seconds.items()}
        phases = ", ".join(f"{name} {value:.0f} s{cpu.get(name, '')}" for name, value in self.seconds.items()
                           if name != "total")
        return (f"Machine: nproc = {len(os.sched_getaffinity(0))}, {self.jobs} parallel jobs; total wall time "
                f"{self.seconds['total']:.0f} s ({phases})"
                + (f"; {self.reused} lit-mcmc runs reused from an earlier invocation are not timed." if self.reused
                   else "."))

    def record(self) -> dict[str, Any]:
        """The timing entries of ``results.json``."""
        return {"nproc": len(os.sched_getaffinity(0)), "jobs": self.jobs, "seconds": self.seconds,
                "cpu_seconds_of_runs": self.cpu_seconds, "reused_runs": self.reused}


def run_experiment(phases: dict[str, Sequence[Job]], n_workers: int, evaluate: Callable[[], T]) -> tuple[T, Timings]:
    """Runs the phases' jobs (:func:`run_phases`), then ``evaluate()`` on their outputs; returns its result and the
    timings."""
    start = time.perf_counter()
    seconds, cpu_seconds, reused = run_phases(phases, n_workers)
    evaluate_start = time.perf_counter()
    result = evaluate()
    seconds["evaluate"] = time.perf_counter() - evaluate_start
    seconds["total"] = time.perf_counter() - start
    return result, Timings(seconds, cpu_seconds, reused, n_workers)


def write_results(out: Path, text: str, results: dict[str, Any], timings: Timings) -> str:
    """Writes ``out/table.md`` (``text``: the caption and the table) and ``out/results.json`` (``results`` with the
    timings), prints the text and returns it."""
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({**results, **timings.record()}, indent=2))
    print(text)
    return text


def evaluations_per_level(sampler: dict[str, Any]) -> int:
    """Target evaluations per level of a sampler config: the initial one plus each kernel step's (README table)."""
    from lit_mcmc.samplers import SamplerConfig

    spec = SamplerConfig(**sampler)
    if spec.kernel == "reverse":
        return 1
    quadrature = {"line": spec.n_points, "curve": spec.n_leapfrog * spec.n_points}.get(spec.correction or "", 0)
    per_step = (spec.n_leapfrog if spec.kernel in ("uhmc", "hmc") else 1) + quadrature
    return 1 + spec.n_steps * per_step


def driver_arguments(description: str, presets: Sequence[str], default_out: str) -> argparse.ArgumentParser:
    """The options every experiment driver has: ``--preset``, ``--out`` and ``--jobs`` (checked by check_jobs)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=list(presets), default="demo")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {default_out})")
    parser.add_argument("--jobs", type=int, default=2, help="lit-mcmc runs side by side (one thread each)")
    return parser


def check_jobs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1 (runs side by side; use the number of CPU cores)")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (one header row, one separator row, then the rows)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
