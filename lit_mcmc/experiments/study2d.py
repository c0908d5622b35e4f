"""The 2D study (``python -m lit_mcmc.experiments.toy2d --preset study``): when does the MH correction matter?

At the papers' 2D step sizes the MH acceptance is 0.998–0.999, so corrected and unadjusted samplers barely differ.
This study runs, for the score and the energy models of every trial (models as in the 2D driver, retrained per
trial), each sampler at the papers' ε and at ε tuned per level to a target acceptance (``sampler.target_accept``:
0.8 for HMC, 0.65 for Langevin), the unadjusted samplers at their corrected twin's tuned steps (its
``step_sizes.json`` through ``sampler.step_table``: equal steps, equal NFE for the HMC pair), and U-HMC with the
reference code's level coverage (no MCMC at level 0; docs/algorithms.md §11.6) next to ours.

Outputs in ``OUT``: ``table.md`` (mean ± population std over trials), ``results.json``, ``figure.png`` (trial 0's
samples) and ``steps.png`` (tuned ε and acceptance per level, trial 0). Tuned rows write their table to
``<run dir>/step_sizes.json``; the twins run after them.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_mcmc.experiments.jobs import (
    Job,
    cli_command,
    evaluations_per_level,
    markdown_table,
    predict_done,
    run_experiment,
    write_results,
)
from lit_mcmc.experiments.toy2d import (
    CONFIGS,
    EVALUATION_COST,
    EXACT,
    METRIC_FORMATS,
    METRIC_HEADERS,
    PREDICT_KEYS,
    PRESETS,
    STUDY_PRESETS,
    Preset,
    exact_floor,
    exact_product_sets,
    fit_job,
    load_config,
    mean_std,
    parse_args,
    plot_figure,
    read_run,
    row_cells,
    samples_dir,
    train_dir,
    trained_models,
)
from lit_mcmc.metrics.uncertainty import MARK, paired

SAMPLER = "--model.init_args.sampler."
# The tuning pass at the study's budget: 128 chains, 50 adaptation steps per level (the defaults are 256 and 100;
# the 2D adaptation tests show both reach the target within ±0.05 on the product target).
TUNING = (f"{SAMPLER}tune_samples", "128", f"{SAMPLER}tune_steps", "50")
HMC_ACCEPT, LANGEVIN_ACCEPT = 0.8, 0.65


@dataclass(frozen=True)
class StudyRow:
    """One row: a sample config with extra overrides; ``table_from`` names the tuned row whose step table it
    reuses (an unadjusted twin)."""

    key: str
    stem: str
    label: str
    overrides: tuple[str, ...] = ()
    table_from: str | None = None
    compare_to: str | None = None  # the row whose metrics this one is tested against (the table's "vs" column)

    @property
    def model(self) -> str:
        return self.stem.removeprefix("sample_").split("_")[0]

    @property
    def tunes(self) -> bool:
        """Whether this row's run tunes its steps (``sampler.target_accept``)."""
        return f"{SAMPLER}target_accept" in self.overrides


def tuned(accept: float) -> tuple[str, ...]:
    return (f"{SAMPLER}target_accept", str(accept), *TUNING)


def model_rows(model: str, hmc: str, hmc_label: str, langevin: str, langevin_label: str) -> list[StudyRow]:
    """The rows of one model kind: HMC family, then Langevin family."""
    uhmc, ula = f"sample_{model}_uhmc", f"sample_{model}_ula"
    hmc_stem, langevin_stem = f"sample_{model}_{hmc}", f"sample_{model}_{langevin}"
    # each row is tested against the row it answers a question about: the MH correction at equal ε (adjusted vs
    # unadjusted twin), and tuning (tuned vs paper ε)
    return [
        StudyRow(f"{model}_uhmc", uhmc, "U-HMC, paper ε"),
        StudyRow(f"{model}_uhmc_reference_levels", uhmc, "U-HMC, paper ε, reference levels (no MCMC at t=0)",
                 (f"{SAMPLER}min_mcmc_level", "1"), compare_to=f"{model}_uhmc"),
        StudyRow(f"{model}_{hmc}", hmc_stem, f"{hmc_label}, paper ε", compare_to=f"{model}_uhmc"),
        StudyRow(f"{model}_{hmc}_tuned", hmc_stem, f"{hmc_label}, tuned ε ({HMC_ACCEPT})", tuned(HMC_ACCEPT),
                 compare_to=f"{model}_{hmc}"),
        StudyRow(f"{model}_uhmc_tuned", uhmc, f"U-HMC at {hmc_label}'s tuned ε", table_from=f"{model}_{hmc}_tuned",
                 compare_to=f"{model}_{hmc}_tuned"),
        StudyRow(f"{model}_ula", ula, "U-LA, paper ε"),
        StudyRow(f"{model}_{langevin}", langevin_stem, f"{langevin_label}, paper ε", compare_to=f"{model}_ula"),
        StudyRow(f"{model}_{langevin}_tuned", langevin_stem, f"{langevin_label}, tuned ε ({LANGEVIN_ACCEPT})",
                 tuned(LANGEVIN_ACCEPT), compare_to=f"{model}_{langevin}"),
        StudyRow(f"{model}_ula_tuned", ula, f"U-LA at {langevin_label}'s tuned ε",
                 table_from=f"{model}_{langevin}_tuned", compare_to=f"{model}_{langevin}_tuned"),
    ]


STUDY_ROWS = (*model_rows("score", "hmc_curve", "HMC-curve", "la_1_line", "LA-1-line"),
              *model_rows("energy", "hmc", "HMC", "la", "LA"))

# The particle study (preset "smc"): each sampler with and without resampling, at equal NFE (the weights and
# resampling cost no evaluation), groups of 64 of the 512 samples.
SMC_GROUP = 64
SMC_BATCH = ("--data.init_args.batch_size", "512")  # whole groups per batch (the configs' 2000 is not)
EXACT_SMC = (f"{SAMPLER}resample.weights", "exact", f"{SAMPLER}resample.group_size", str(SMC_GROUP), *SMC_BATCH)
FK_SMC = (f"{SAMPLER}resample.weights", "feynman_kac", f"{SAMPLER}resample.group_size", str(SMC_GROUP), *SMC_BATCH)
DENOISE = (f"{SAMPLER}final_denoise", "true")
REVERSE = (f"{SAMPLER}reverse", "true")


def smc_rows(model: str, stem: str, label: str, extra: tuple[str, ...] = (), weights: str = "exact") -> list[StudyRow]:
    """A sampler with and without particles; samplers without reverse steps also with and without final
    denoising (with reverse steps the last one already returns Tweedie's x̂_0)."""
    smc, name = (EXACT_SMC, "SMC") if weights == "exact" else (FK_SMC, "SMC (FK)")
    key = f"{model}_{stem.removeprefix(f'sample_{model}_')}" + ("_reverse" if extra == REVERSE else "")
    rows = [StudyRow(key, stem, label, extra),
            StudyRow(f"{key}_smc", stem, f"{label} + {name}", (*extra, *smc), compare_to=key)]
    if REVERSE != extra and stem != "sample_score_reverse":
        rows += [StudyRow(f"{key}_denoise", stem, f"{label}, denoised", (*extra, *DENOISE), compare_to=key),
                 StudyRow(f"{key}_smc_denoise", stem, f"{label} + {name}, denoised", (*extra, *smc, *DENOISE),
                          compare_to=f"{key}_denoise")]
    return rows


SMC_ROWS = (*smc_rows("oracle", "sample_oracle_hmc", "HMC"),
            *smc_rows("energy", "sample_energy_hmc", "HMC"),
            *smc_rows("energy", "sample_energy_la", "LA"),
            *smc_rows("score", "sample_score_hmc_curve", "HMC-curve, reverse steps", REVERSE, "feynman_kac"),
            *smc_rows("score", "sample_score_reverse", "Reverse", weights="feynman_kac"))


def study_job(out: Path, trial: int, row: StudyRow, preset: Preset) -> Job:
    """Row ``row`` of ``trial`` into ``out/samples/trial_<k>/<row.key>`` (sampler seed k)."""
    config = load_config(row.stem)
    run_dir = samples_dir(out, trial) / row.key
    table = ((f"{SAMPLER}step_table", str(samples_dir(out, trial) / row.table_from / "step_sizes.json"))
             if row.table_from else ())
    command = cli_command("predict", "--config", str(CONFIGS / f"{row.stem}.yaml"),
                          "--model.init_args.checkpoint_root", str(train_dir(out, trial)),
                          "--trainer.default_root_dir", str(run_dir), "--model.init_args.seed", str(trial),
                          *preset.overrides(PREDICT_KEYS), *row.overrides, *table)
    cost = evaluations_per_level(config["model"]["init_args"]["sampler"]) * EVALUATION_COST[row.model]
    if row.tunes:
        cost *= 3  # its tuning pass comes first, and its twin waits for it
    return Job(str(run_dir.relative_to(out)), command, run_dir, "predict.log",
               functools.partial(predict_done, run_dir, ("samples.npz", "stats.json", "metrics.json")), cost)


def study_phases(out: Path, trials: int, preset: Preset, rows: Sequence[StudyRow]) -> dict[str, list[Job]]:
    """Training, then the rows that tune or use the papers' ε, then the twins that reuse a tuned table."""
    stems = sorted({row.stem for row in rows})
    return {"train": [fit_job(out, k, m, preset) for k in range(trials) for m in trained_models(stems)],
            "sample": [study_job(out, k, r, preset) for k in range(trials) for r in rows if not r.table_from],
            "sample_twins": [study_job(out, k, r, preset) for k in range(trials) for r in rows if r.table_from]}


# ----- results ---------------------------------------------------------------------------------------------------


def read_study_run(run_dir: Path) -> dict[str, Any]:
    """:func:`read_run` plus the step sizes at the first and last level (tuned table, or the config's ε), the
    share of samples outside the bar (metastable modes) and, with particles, their mean ESS."""
    from lit_mcmc.data.toy2d import inside_bar

    run = read_run(run_dir)
    stats = json.loads((run_dir / "stats.json").read_text())
    with np.load(run_dir / "samples.npz") as saved:
        run["outside"] = 1.0 - float(inside_bar(torch.from_numpy(saved["samples"])).double().mean())
    if "ess_mean" in stats:
        run["ess_mean"] = float(stats["ess_mean"])
    steps = stats.get("step_sizes")
    if steps:
        run["step_first"], run["step_last"] = float(next(iter(steps.values()))), float(list(steps.values())[-1])
        run["tuning_seconds"] = float(stats.get("step_tuning", {}).get("tuning_seconds", 0.0))
    elif "step_size" in stats["hparams"]:  # the config's constant ε (the reverse process has none)
        run["step_first"] = run["step_last"] = float(stats["hparams"]["step_size"])
    return run


def collect_study(out: Path, trials: int, n_samples: int, study_rows: Sequence[StudyRow]) -> list[dict[str, Any]]:
    """One record per row (and the exact floor): per-trial numbers, their mean and population std."""
    rows = [{"key": row.key, "model": row.model, "sampler": row.label, "distribution": "product",
             "compare_to": row.compare_to, "adjusted": read_run(samples_dir(out, 0) / row.key)["adjusted"],
             "trials": [read_study_run(samples_dir(out, k) / row.key) for k in range(trials)]} for row in study_rows]
    rows.append({"key": EXACT, "model": EXACT, "sampler": "exact samples (floor)", "adjusted": False,
                 "distribution": "product", "trials": [exact_floor(n_samples, k) for k in range(trials)]})
    for row in rows:
        numbers = {k for run in row["trials"] for k, v in run.items() if isinstance(v, float)}
        values = {k: np.array([run[k] for run in row["trials"] if k in run]) for k in sorted(numbers)}
        row["mean"] = {k: float(v.mean()) for k, v in values.items()}
        row["std"] = {k: float(v.std()) if np.isfinite(v).all() else float("nan") for k, v in values.items()}
    return rows


def marked_metric(row: dict[str, Any], by_key: dict[str, dict[str, Any]], metric: str, fmt: str) -> str:
    """"mean ± population std" of a metric over the trials, with ``*`` when it differs from the ``compare_to`` row's
    by more than two standard errors of the paired difference (trial k of both rows shares its trained models, its
    sampling seed and its reference set, so the per-trial differences carry the comparison)."""
    values = [run[metric] for run in row["trials"] if metric in run]
    text = mean_std(values, fmt)
    other = by_key.get(row.get("compare_to") or "")
    if other is not None and len(values) > 1:
        base = [run[metric] for run in other["trials"] if metric in run]
        if len(base) == len(values) and paired(values, base).significant:
            text += MARK
    return text


def study_table(rows: Sequence[dict[str, Any]], particles: bool = False) -> str:
    """Markdown: model, sampler, the row it is tested against ("vs"), LL/W2/GMM and the share outside the bar
    (mean ± std, ``*`` where the paired difference to "vs" exceeds two standard errors), acceptance, ε at t=99 → t=0
    (trial mean) or, for the particle study, the mean ESS, then NFE and wall time."""
    by_key = {row["key"]: row for row in rows}
    body = []
    for row in rows:
        cells = row_cells(row, list(METRIC_FORMATS))
        mean = row["mean"]
        marked = [marked_metric(row, by_key, metric, fmt) for metric, fmt in (*METRIC_FORMATS.items(),
                                                                              ("outside", "%.3f"))]
        if particles:
            extra = f"{mean['ess_mean']:.1f}" if "ess_mean" in mean else "–"
        else:
            extra = f"{mean['step_first']:.3g} → {mean['step_last']:.3g}" if "step_first" in mean else "–"
        vs = by_key[row["compare_to"]]["sampler"] if row.get("compare_to") in by_key else "–"
        body.append([*cells[:2], vs, *marked, cells[-3], extra, *cells[-2:]])
    return markdown_table(["Model", "Sampler", "vs", *METRIC_HEADERS.values(), "outside bar", "accept",
                           "ESS (mean)" if particles else "ε (t=99 → 0)", "NFE/sample", "wall s"], body)


def plot_steps(out: Path, path: Path) -> None:
    """Trial 0: the tuned ε per level (log scale) and the acceptance per level at the papers' and the tuned ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (steps_ax, accept_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for row in STUDY_ROWS:
        stats = json.loads((samples_dir(out, 0) / row.key / "stats.json").read_text())
        rates = stats["accept_rate_per_level"]
        if row.tunes:
            levels = [int(t) for t in stats["step_sizes"]]
            steps_ax.plot(levels, list(stats["step_sizes"].values()), label=f"{row.model}: {row.label}")
        if stats["adjusted"]:
            accept_ax.plot([int(t) for t in rates], list(rates.values()), label=f"{row.model}: {row.label}")
    steps_ax.set(yscale="log", xlabel="level t", ylabel="ε", title="tuned step size per level (trial 0)")
    accept_ax.set(xlabel="level t", ylabel="MH acceptance", title="acceptance per level (trial 0)")
    for ax in (steps_ax, accept_ax):
        ax.invert_xaxis()
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_study(args: argparse.Namespace) -> str:
    """Runs the study (``--preset study``: the MH-correction rows; ``--preset smc``: the particle rows) with the
    driver's parsed arguments; returns (and prints) the caption and the table."""
    particles = args.preset == "smc"
    study_rows = SMC_ROWS if particles else STUDY_ROWS
    preset = PRESETS[args.preset]
    out = (args.out or Path("runs") / args.preset).resolve()
    n_samples = preset.n_samples

    def evaluate() -> list[dict[str, Any]]:
        rows = collect_study(out, args.trials, n_samples, study_rows)  # type: ignore[arg-type]
        plot_figure(out, rows, exact_product_sets(n_samples, 0)[0], out / "figure.png")  # type: ignore[arg-type]
        if not particles:
            plot_steps(out, out / "steps.png")
        return rows

    rows, timings = run_experiment(study_phases(out, args.trials, preset, study_rows), args.jobs, evaluate)
    about = (f"SMC rows: exact or Feynman–Kac (FK) weights, groups of {SMC_GROUP}, ESS threshold 0.5, final "
             "resampling; equal NFE with and without (ESS: the mean over levels and groups before resampling). "
             if particles else
             f"tuning pass {TUNING[1]} chains × {TUNING[3]} adaptation steps per level (its cost is not in "
             "NFE/sample; the tuned rows' wall s includes it). ε: the step at the first and the last level (trial "
             "mean). ")
    text = (f"2D {'particle ' if particles else ''}study (product GMM × bar), {args.trials} trial(s), mean ± "
            f"population std; {MARK}: differs from the row named in 'vs' by more than two standard errors of the "
            "paired difference (trial k of both rows shares its models and its sampling seed). Budget: "
            f"{preset.reductions()}; {about}"
            f"Outside bar: the share of samples with |x| >= 0.2. {timings.summary()}\n\n"
            + study_table(rows, particles) + "\n")
    return write_results(out, text, {"preset": args.preset,
                                     "settings": {f.name: getattr(preset, f.name) for f in fields(preset)},
                                     "tuning": list(TUNING), "trials": args.trials, "n_samples": n_samples,
                                     "rows": rows}, timings)


def main(argv: Sequence[str] | None = None) -> str:
    """``python -m lit_mcmc.experiments.study2d --preset study|smc ...`` (the 2D driver's arguments): runs the study
    and returns (and prints) the caption and the table."""
    args = parse_args(argv)
    if args.preset not in STUDY_PRESETS:
        raise SystemExit(f"--preset {args.preset} is not a study: use one of {list(STUDY_PRESETS)} here, or run "
                         "python -m lit_mcmc.experiments.toy2d for the other presets")
    return run_study(args)


if __name__ == "__main__":
    main()
