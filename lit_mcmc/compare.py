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

Seeds are trials: runs that differ only in ``model.seed`` (their run.json settings, file identities and sample
counts otherwise equal) are one row, named with their differing part in braces (``hmc_seed{0,1,2}``), whose metrics
are the mean ± sample std over the runs and their number, ``9.1 ± 1.3 (n=3)``. Runs without a run.json are never
grouped. ``--ungrouped`` lists every run on its own row. A single run whose metrics.json holds ``<metric>_se`` (a
bootstrap or analytic standard error) shows ``value ± se (s.e.)``. ``--baseline ROW`` adds to every metric of the
other rows the difference to that row, ``Δ+1.3*``: ``*`` when it exceeds two standard errors of the difference
(Welch: √(se₁² + se₂²), each side's se the std/√n of its trials, or, for a single run, its own ``<metric>_se``;
``?`` when a side has neither). CSV adds ``<metric>_std``, ``<metric>_n``, ``<metric>_se`` and, with a baseline,
``<metric>_diff``, ``<metric>_diff_se`` and ``<metric>_significant`` columns.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_mcmc.metrics.uncertainty import difference, trials
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
SEED_SETTING = "model.seed"  # the run.json key that makes runs trials of one configuration
# metrics.json keys that hold a metric's uncertainty rather than a metric of their own
UNCERTAINTY_SUFFIXES = ("_se", "_low", "_high")
N_SE = 2.0  # a difference is marked when it exceeds this many standard errors


@dataclass
class Comparison:
    """The table: its columns (run, hyper-parameters that differ, metrics), one row per run, and the
    hyper-parameters every run shares."""

    columns: list[Column]
    rows: list[dict[str, Any]]
    shared: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # the run cell of the baseline row, when differences are marked

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


def trial_key(run: Path) -> str | None:
    """What a run is a trial of: its run.json settings except ``model.seed``, the identities of the files they
    name, and its sample count (None without a run.json: such a run is never grouped with another)."""
    path = run / "run.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    settings = {k: v for k, v in record.get("settings", {}).items() if k != SEED_SETTING}
    return json.dumps([settings, record.get("files", {}), record.get("n_samples")], sort_keys=True, default=str)


def group_trials(keys: Sequence[str | None]) -> list[list[int]]:
    """Indices of the runs grouped by trial key, groups in the order of their first run; a None key is alone."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(i if key is None else key, []).append(i)
    return list(groups.values())


def braced_name(names: Sequence[str]) -> str:
    """``a_seed{0,1,2}_b`` for names that share a prefix and a suffix (the only name for one)."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names))
    rest = [name[len(prefix):] for name in names]
    suffix = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    middles = [r[:len(r) - len(suffix)] for r in rest]
    return f"{prefix}{{{','.join(middles)}}}{suffix}"


def is_uncertainty(key: str, row: dict[str, Any]) -> bool:
    """Whether ``key`` is the standard error or an interval end of another metric of the row (``fid_se``)."""
    return any(key.endswith(suffix) and key[:-len(suffix)] in row for suffix in UNCERTAINTY_SUFFIXES)


def merge_trials(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row for runs that are trials of one configuration: the first run's hyper-parameters with the seeds
    listed, each metric's mean over the runs that have it, and under ``"_trials"`` its values, under ``"_se"`` a
    single run's own standard errors (``<metric>_se`` of its metrics.json)."""
    first = rows[0]
    hparams = {column.key for column in HPARAM_COLUMNS} | {"run"}
    merged = {key: value for key, value in first.items() if key in hparams}
    merged["run"] = braced_name([row["run"] for row in rows])
    if len(rows) > 1 and any("seed" in row for row in rows):
        merged["seed"] = ",".join(cell(row.get("seed", MISSING)) for row in rows)
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in hparams and not is_uncertainty(key, row):
                values.setdefault(key, []).append(value)
    merged.update({key: sum(v) / len(v) for key, v in values.items()})
    merged["_trials"] = values
    merged["_se"] = {key: first[f"{key}_se"] for key in values if len(rows) == 1 and f"{key}_se" in first}
    return merged


def standard_error(row: dict[str, Any], key: str) -> float:
    """The standard error of a row's metric: std/√n over its trials, else a single run's own ``<metric>_se``."""
    values = row.get("_trials", {}).get(key, [])
    if len(values) > 1:
        return trials(values).se
    return float(row.get("_se", {}).get(key, math.nan))


def mark_differences(table: Comparison, baseline: str) -> None:
    """Set ``table.baseline`` to the row named by ``baseline`` (its run cell or one of its runs' names: exactly, by
    their end, or by a part that no other row has) and give every other row, per metric both have, ``"_diff"``: the
    :class:`~lit_mcmc.metrics.uncertainty.Difference` to the baseline (two-standard-error test)."""
    def rows_where(test: Any) -> list[dict[str, Any]]:
        return [row for row in table.rows if any(test(name) for name in [row["run"], *row.get("_runs", ())])]

    # the exact name first, then names that end with it (``reverse_seed0`` is not ``reverse_seed0_smc``), then parts
    matches = (rows_where(lambda name: name == baseline) or rows_where(lambda name: name.endswith(baseline))
               or rows_where(lambda name: baseline in name))
    if len(matches) != 1:
        found = "matches no row" if not matches else f"matches {len(matches)} rows"
        raise ValueError(f"--baseline {baseline!r} {found}; give one of {[row['run'] for row in table.rows]}")
    base = matches[0]
    table.baseline = base["run"]
    metric_keys = [column.key for column in table.columns[1:] if column.key in base.get("_trials", {})]
    for row in table.rows:
        if row is base:
            continue
        row["_diff"] = {key: difference(row[key], standard_error(row, key), base[key], standard_error(base, key),
                                        N_SE) for key in metric_keys if key in row.get("_trials", {})}


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
    keys = [key for row in rows for key in row if key not in hparams and not key.startswith("_")
            and not is_uncertainty(key, row)]
    quality = [column for column in QUALITY_METRICS if column.key in keys]
    return [column for column in metric_columns(quality, keys) if column.key in keys]


def comparison(runs: Sequence[Path], sort: str | None = None, descending: bool = False, group: bool = True,
               baseline: str | None = None) -> Comparison:
    """The comparison of ``runs``, rows ordered by column ``sort`` when given (runs without it last). With ``group``
    runs that differ only in their seed are one row (:func:`trial_key`); ``baseline`` names the row every other row
    is compared with (:func:`mark_differences`)."""
    singles = [load_row(run, name) for run, name in zip(runs, run_names(runs), strict=True)]
    groups = group_trials([trial_key(run) if group else None for run in runs])
    rows = []
    for members in groups:
        row = merge_trials([singles[i] for i in members])
        row["_runs"] = [singles[i]["run"] for i in members]
        rows.append(row)
    hparams, shared = hparam_columns(rows)
    table = Comparison([RUN, *hparams, *metrics_of(rows)], rows, shared)
    if sort is not None:
        known = table.keys + list(shared)
        if sort not in known:
            raise ValueError(f"--sort {sort!r} is not a column; choose one of {known}")
        with_value = [row for row in rows if sort in row]
        with_value.sort(key=lambda row: sort_key(row[sort]), reverse=descending)
        table.rows = with_value + [row for row in rows if sort not in row]
    if baseline is not None:
        mark_differences(table, baseline)
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


def metric_text(row: dict[str, Any], key: str) -> str:
    """A metric's cell: the value, "mean ± std (n=k)" over trials, or "value ± se (s.e.)" for one run with its own
    standard error; then, against a baseline, "Δ+d" with ``*`` past two standard errors (``?``: no standard error)."""
    values = row.get("_trials", {}).get(key, [])
    if len(values) > 1:
        summary = trials(values)
        spread = f" ± {cell(summary.std)}" if math.isfinite(summary.mean) else ""  # a run at −inf has no spread
        text = f"{cell(summary.mean)}{spread} (n={summary.n})"
    elif key in row.get("_se", {}):
        text = f"{cell(row[key])} ± {cell(float(row['_se'][key]))} (s.e.)"
    else:
        text = cell(row[key])
    test = row.get("_diff", {}).get(key)
    if test is not None:
        mark = "?" if test.significant is None else ("*" if test.significant else "")
        text += f", Δ{'+' if test.diff >= 0 else '−'}{cell(abs(test.diff))}{mark}"
    return text


def to_markdown(table: Comparison) -> str:
    """A line naming the shared hyper-parameters, then a Markdown table with HPARAMS' headers; numbers to 4
    significant digits, "–" where a run lacks a column; with a baseline, a line saying what Δ and ``*`` mean."""
    lines = []
    if table.shared:
        lines += ["Same in every run: " + ", ".join(f"{k}={cell(v)}" for k, v in table.shared.items()), ""]
    lines += ["| " + " | ".join(column.label for column in table.columns) + " |",
              "|" + "|".join("---" for _ in table.columns) + "|"]
    hparams = {column.key for column in HPARAM_COLUMNS} | {"run"}
    for row in table.rows:
        cells = [MISSING if key not in row else cell(row[key]) if key in hparams else metric_text(row, key)
                 for key in table.keys]
        if row["run"] == table.baseline:
            cells[0] += " (baseline)"
        lines.append("| " + " | ".join(cells) + " |")
    if table.baseline is not None:
        lines += ["", f"Δ: difference to {table.baseline}; *: larger than {N_SE:g} standard errors of the difference "
                      "(Welch: trials' std/√n, or a single run's own s.e.); ?: a side has no standard error."]
    return "\n".join(lines) + "\n"


def to_csv(table: Comparison) -> str:
    """CSV with the column keys as header, every hyper-parameter (shared ones too), full-precision numbers and
    empty cells where a run lacks a column; per metric its std, n and standard error, and with a baseline the
    difference, its standard error and whether it is significant."""
    hparams = {column.key for column in HPARAM_COLUMNS} | {"run"}
    metric_keys = [key for key in table.keys if key not in hparams]
    extra = ["_std", "_n", "_se"] + (["_diff", "_diff_se", "_significant"] if table.baseline is not None else [])
    keys = [table.keys[0], *table.shared, *table.keys[1:], *(key + suffix for key in metric_keys for suffix in extra)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in table.rows:
        flat = {key: value for key, value in row.items() if not key.startswith("_")}
        for key in metric_keys:
            values = row.get("_trials", {}).get(key, [])
            if not values:
                continue
            summary = trials(values)
            flat[f"{key}_n"] = summary.n
            if summary.n > 1:
                flat[f"{key}_std"] = summary.std
            if math.isfinite(se := standard_error(row, key)):
                flat[f"{key}_se"] = se
            test = row.get("_diff", {}).get(key)
            if test is not None:
                flat[f"{key}_diff"] = test.diff
                if test.significant is not None:
                    flat[f"{key}_diff_se"], flat[f"{key}_significant"] = test.se, test.significant
        writer.writerow(flat)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m lit_mcmc.compare`` (console script ``lit-mcmc-compare``)."""
    parser = argparse.ArgumentParser(prog="lit-mcmc-compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory, directory of runs, or glob")
    parser.add_argument("--sort", help="column key to order rows by, e.g. w2, fid, accept_rate, wall_seconds")
    parser.add_argument("--descending", action="store_true", help="largest first (e.g. for accuracies)")
    parser.add_argument("--format", choices=("md", "csv"), default="md", help="output format (default: md)")
    parser.add_argument("--ungrouped", action="store_true",
                        help="one row per run (by default runs that differ only in model.seed are one row)")
    parser.add_argument("--baseline", metavar="ROW",
                        help="mark every metric's difference to this row (its name, or a unique part of it) where it "
                             "exceeds two standard errors")
    args = parser.parse_args(argv)
    try:
        table = comparison(find_runs(args.runs), args.sort, args.descending, group=not args.ungrouped,
                           baseline=args.baseline)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    sys.stdout.write((to_csv if args.format == "csv" else to_markdown)(table))


if __name__ == "__main__":
    main()
