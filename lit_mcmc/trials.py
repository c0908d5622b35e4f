"""Sampling seeds as trials of one configuration.

``model.seeds: [0, 1, 2]`` makes ``lit-mcmc predict`` run its configuration once per seed. Each trial is a complete
run of its own in ``<default_root_dir>/seed_<s>/``: resumable, with its samples, statistics, metrics and TensorBoard
row, and with the same guarantee as any run (a sample depends only on the seed and its index). Then the trials'
aggregate goes to ``<default_root_dir>/trials.json``: for every metric, the mean, the sample std, n and the standard
error of the mean over the seeds. ``lit-mcmc-compare`` groups the trials into one row the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_mcmc.data.shards import atomic_write_json
from lit_mcmc.metrics.uncertainty import trials

TRIALS_FILE = "trials.json"
UNCERTAINTY_SUFFIXES = ("_se", "_low", "_high")  # a trial's own uncertainty: the spread over trials replaces it


def check_seeds(seeds: Any) -> list[int]:
    """``model.seeds`` as a list of distinct integers (an error naming the key otherwise)."""
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"model.seeds={seeds!r} must be a non-empty list of integer sampling seeds, e.g. [0, 1, 2] "
                         "(or null: one run with model.seed)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"model.seeds={list(seeds)} repeats a seed: a repeated trial draws the same samples")
    return list(seeds)


def trial_dir(root: Path, seed: int) -> Path:
    return root / f"seed_{seed}"


def trial_args(argv: Sequence[str], seed: int, root: Path) -> list[str]:
    """The command line of one trial: the given one, with this seed, no seed list, and the trial's own directory."""
    return [*argv, f"--model.init_args.seed={seed}", "--model.init_args.seeds=null",
            f"--trainer.default_root_dir={trial_dir(root, seed)}"]


def aggregate_trials(root: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Reads each trial's ``metrics.json`` and writes ``root/trials.json``: per metric that every trial reports, its
    mean, sample std, n, standard error and the values in seed order (a trial's own ``<metric>_se`` and interval
    are left out). Returns that record."""
    per_seed = {}
    for seed in seeds:
        path = trial_dir(root, seed) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: trial seed {seed} did not finish; rerun the same command to "
                                    "resume it")
        per_seed[seed] = json.loads(path.read_text())
    names = [name for name, value in per_seed[seeds[0]].items()
             if isinstance(value, (int, float)) and not name.endswith(UNCERTAINTY_SUFFIXES)
             and all(name in metrics for metrics in per_seed.values())]
    metrics = {}
    for name in names:
        values = [float(per_seed[seed][name]) for seed in seeds]
        summary = trials(values)
        metrics[name] = {"mean": summary.mean, "std": summary.std, "n": summary.n, "se": summary.se, "values": values}
    record = {"seeds": list(seeds), "runs": [str(trial_dir(root, seed)) for seed in seeds], "metrics": metrics}
    atomic_write_json(root / TRIALS_FILE, record)
    return record


def trials_summary(record: dict[str, Any]) -> str:
    """Lines ``name: mean ± std (n)`` for the console."""
    return "\n".join(f"  {name}: {m['mean']:.4g} ± {m['std']:.2g} (n={m['n']})"
                     for name, m in record["metrics"].items())
