"""Compare sampling runs side by side: ``python -m lit_mcmc.compare RUN_DIR [RUN_DIR ...]``.

A run is a directory holding the ``stats.json`` that ``lit-mcmc predict`` writes (and usually ``metrics.json``).
Arguments may be run directories, directories that contain runs at any depth, or glob patterns
(``'runs/toy2d/samples/*hmc*'``). The table is TensorBoard's HPARAMS table in the terminal: one row per run, its
name, then the hyper-parameters in HPARAMS' column order (sampler, model, step size, K, composition, ...; see
:mod:`lit_mcmc.report`), then the metrics with the same headers (the quality metrics, then acceptance, NFE per
sample, samples/s, non-finite log-ratios, ...; "–" where a run lacks one). Hyper-parameters that are the same in
every run are listed once above the table instead of as columns (sampler and model always stay columns).
``--sort w2`` orders rows by a column key (runs without it last), ``--format csv`` writes CSV with the column keys
as header, every hyper-parameter, and empty cells where missing.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_mcmc.report import (
    ALWAYS_SHOWN,
    HPARAM_COLUMNS,
    QUALITY_METRICS,
    Column,
    metric_columns,
    run_hparams,
    run_metrics,
)

RUN = Column("run", "run")
MISSING = "–"


@dataclass
class Comparison:
    """The table: its columns (run, hyper-parameters that differ, metrics), one row per run, and the
    hyper-parameters every run shares."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [column.key for column in self.columns]


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


def load_row(run: Path, name: str) -> dict[str, Any]:
    """One row from a run's stats.json and (when present) metrics.json: its hyper-parameters and metrics."""
    stats = json.loads((run / "stats.json").read_text())
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return {"run": name, **run_hparams(stats), **run_metrics(stats, metrics)}


def hparam_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[Column], dict[str, Any]]:
    """The hyper-parameter columns (those some run has, and whose value differs between runs or is missing in
    some), and the ones every run shares, with their value."""
    columns, shared = [], {}
    for column in HPARAM_COLUMNS:
        values = [row.get(column.key) for row in rows]
        if all(value is None for value in values):
            continue
        if column.key not in ALWAYS_SHOWN and len(rows) > 1 and len({repr(v) for v in values}) == 1:
            shared[column.key] = values[0]
        else:
            columns.append(column)
    return columns, shared


def metrics_of(rows: Sequence[dict[str, Any]]) -> list[Column]:
    """The metric columns that some run has, in HPARAMS' order (quality metrics, sampler statistics, others)."""
    hparams = {column.key for column in HPARAM_COLUMNS} | {"run"}
    keys = [key for row in rows for key in row if key not in hparams]
    quality = [column for column in QUALITY_METRICS if column.key in keys]
    return [column for column in metric_columns(quality, keys) if column.key in keys]


def comparison(runs: Sequence[Path], sort: str | None = None, descending: bool = False) -> Comparison:
    """The comparison of ``runs``, rows ordered by column ``sort`` when given (runs without it last)."""
    rows = [load_row(run, name) for run, name in zip(runs, run_names(runs), strict=True)]
    hparams, shared = hparam_columns(rows)
    table = Comparison([RUN, *hparams, *metrics_of(rows)], rows, shared)
    if sort is not None:
        known = table.keys + list(shared)
        if sort not in known:
            raise ValueError(f"--sort {sort!r} is not a column; choose one of {known}")
        with_value = [row for row in rows if sort in row]
        with_value.sort(key=lambda row: sort_key(row[sort]), reverse=descending)
        table.rows = with_value + [row for row in rows if sort not in row]
    return table


def sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before text, so a column mixing both still sorts.
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}"


def to_markdown(table: Comparison) -> str:
    """A line naming the shared hyper-parameters, then a Markdown table with HPARAMS' headers; numbers to 4
    significant digits, "–" where a run lacks a column."""
    lines = []
    if table.shared:
        lines += ["Same in every run: " + ", ".join(f"{k}={cell(v)}" for k, v in table.shared.items()), ""]
    lines += ["| " + " | ".join(column.label for column in table.columns) + " |",
              "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(row[key]) if key in row else MISSING for key in table.keys) + " |"
              for row in table.rows]
    return "\n".join(lines) + "\n"


def to_csv(table: Comparison) -> str:
    """CSV with the column keys as header, every hyper-parameter (shared ones too), full-precision numbers and
    empty cells where a run lacks a column."""
    keys = [table.keys[0], *table.shared, *table.keys[1:]]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table.rows)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m lit_mcmc.compare`` (console script ``lit-mcmc-compare``)."""
    parser = argparse.ArgumentParser(prog="lit-mcmc-compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory, directory of runs, or glob")
    parser.add_argument("--sort", help="column key to order rows by, e.g. w2, fid, accept_rate, wall_seconds")
    parser.add_argument("--descending", action="store_true", help="largest first (e.g. for accuracies)")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="output format (default: md)")
    args = parser.parse_args(argv)
    try:
        table = comparison(find_runs(args.runs), args.sort, args.descending)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    sys.stdout.write((to_csv if args.format == "csv" else to_markdown)(table))


if __name__ == "__main__":
    main()
