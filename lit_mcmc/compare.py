"""Compare sampling runs side by side: ``python -m lit_mcmc.compare RUN_DIR [RUN_DIR ...]``.

A run is a directory holding the ``stats.json`` that ``lit-mcmc predict`` writes (and usually ``metrics.json``).
Arguments may be run directories, directories that contain runs at any depth, or glob patterns
(``'runs/toy2d/samples/*hmc*'``). The table has one row per run: its name, the sampler and its key
hyper-parameters, acceptance rate, NFE per sample, throughput and wall time, then every quality metric found in
any run's ``metrics.json`` ("–" where a run lacks it). ``--sort w2`` orders rows by a column (runs without it
last), ``--format csv`` writes CSV (empty cells where missing) instead of Markdown.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HPARAM_COLUMNS = ("kernel", "correction", "n_points", "step", "n_steps", "n_leapfrog", "damping")
STATS_COLUMNS = ("accept_rate", "nfe_per_sample", "samples_per_second", "wall_seconds")
MISSING = "–"


def find_runs(patterns: Sequence[str]) -> list[Path]:
    """Run directories (those with a stats.json) named by, or found below, each path or glob pattern."""
    runs: set[Path] = set()
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"RUN_DIR {pattern!r} matches nothing: give a run directory (one holding "
                                    "stats.json), a directory of runs, or a glob pattern")
        for match in map(Path, matches):
            found = [match / "stats.json"] if (match / "stats.json").is_file() else match.rglob("stats.json")
            runs.update(stats.parent.resolve() for stats in found)
    if not runs:
        raise FileNotFoundError(f"no stats.json in or below {list(patterns)}: run `lit-mcmc predict` first")
    return sorted(runs)


def run_names(runs: Sequence[Path]) -> list[str]:
    """Each run's path relative to the runs' common parent (just the folder name for a single run)."""
    if len(runs) == 1:
        return [runs[0].name]
    common = os.path.commonpath(runs)
    return [str(run.relative_to(common)) for run in runs]


def step_label(hparams: dict[str, Any]) -> Any:
    """The step size: the constant, or ``a·β^b`` for a β-power schedule; None for the reverse sampler."""
    if present(hparams.get("step_size")):
        return hparams["step_size"]
    if present(hparams.get("step_a")):
        return f"{hparams['step_a']:g}·β^{hparams.get('step_b', 1.0):g}"
    return None


def present(value: Any) -> bool:
    """Whether a field holds a value (stats.json writes missing hyper-parameters as "none")."""
    return value is not None and value != "none"


def relevant_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The key hyper-parameters that the run's kernel uses (a Langevin run has no leapfrog steps, ...)."""
    kernel = hparams.get("kernel")
    used = {"kernel"}
    if kernel != "reverse":
        used |= {"step", "n_steps"}
    if kernel in ("mala", "hmc"):
        used.add("correction")
    if hparams.get("correction") in ("line", "curve"):
        used.add("n_points")
    if kernel in ("uhmc", "hmc"):
        used |= {"n_leapfrog", "damping"}
    values = {**hparams, "step": step_label(hparams)}
    return {key: values.get(key) for key in HPARAM_COLUMNS if key in used}


def load_row(run: Path, name: str) -> dict[str, Any]:
    """One table row from a run's stats.json and (when present) metrics.json; absent fields are left out."""
    stats = json.loads((run / "stats.json").read_text())
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    row: dict[str, Any] = {"run": name, "sampler": stats.get("sampler"),
                           **relevant_hparams(stats.get("hparams", {}))}
    row.update({key: stats.get(key, metrics.get(key)) for key in STATS_COLUMNS})
    row.update({key: value for key, value in metrics.items() if key not in row})
    return {key: value for key, value in row.items() if present(value)}


def comparison(runs: Sequence[Path], sort: str | None = None, descending: bool = False,
               ) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (fixed ones, then the union of metric names in first-seen order) and one row per run."""
    rows = [load_row(run, name) for run, name in zip(runs, run_names(runs), strict=True)]
    columns = ["run", "sampler", *HPARAM_COLUMNS, *STATS_COLUMNS]
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if sort is not None:
        if sort not in columns:
            raise ValueError(f"--sort {sort!r} is not a column; choose one of {columns}")
        with_value = [row for row in rows if sort in row]
        with_value.sort(key=lambda row: sort_key(row[sort]), reverse=descending)
        rows = with_value + [row for row in rows if sort not in row]
    return columns, rows


def sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before text, so a column mixing both (e.g. "step") still sorts.
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def to_markdown(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table; numbers to 4 significant digits, "–" where a run lacks a column."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c]) if c in row else MISSING for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """CSV with full-precision numbers and empty cells where a run lacks a column."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m lit_mcmc.compare`` (console script ``lit-mcmc-compare``)."""
    parser = argparse.ArgumentParser(prog="lit-mcmc-compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory, directory of runs, or glob")
    parser.add_argument("--sort", help="column to order rows by, e.g. w2, fid, accept_rate, wall_seconds")
    parser.add_argument("--descending", action="store_true", help="largest first (e.g. for accuracies)")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="output format (default: md)")
    args = parser.parse_args(argv)
    try:
        columns, rows = comparison(find_runs(args.runs), args.sort, args.descending)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    sys.stdout.write((to_csv if args.format == "csv" else to_markdown)(columns, rows))


if __name__ == "__main__":
    main()
