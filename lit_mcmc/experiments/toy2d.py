"""The 2D product experiment (Table 1; docs/algorithms.md §7, §13 two_d_product) end to end through ``lit-mcmc``.

Per trial k the four component models ({GMM, bar} × {score, energy}) are trained with ``lit-mcmc fit`` into
``OUT/train/trial_k/<model>`` (seeds = the config's seed + k), then every sampler row runs with ``lit-mcmc predict``
into ``OUT/samples/trial_k/<config stem>`` (sampler seed k). Each run is its own subprocess with one torch thread,
``--jobs`` at a time, longest first; its log is ``<run dir>/<fit|predict>.log``. A run whose outputs exist is
skipped, and an unfinished training run resumes from its last checkpoint, so rerunning the command resumes.
Rows: every score and energy sampler of Table 1, HMC on the analytic (oracle) scores, and a fresh set of exact
product samples scored like the others (the floor). The mixture (second table) and the negation are run too and
shown in the figure. Outputs: ``OUT/table.md``, ``OUT/results.json``, ``OUT/figure.png``; TensorBoard logs in each
run dir: ``tensorboard --logdir OUT/samples`` compares the sampler runs (HPARAMS: one row per run),
``tensorboard --logdir OUT/train`` shows the training curves. ``python -m lit_mcmc.experiments.toy2d --help``.

Presets (overrides of the paper configs in ``configs/toy2d``):

- ``paper`` (``make table1``, with ``--trials 10``): the configs as written: ResMLP hidden 128, batch 2000,
  15 001 steps; 2000 samples per row, K=10 MCMC steps per level.
- ``demo`` (``make demo``): under 10 minutes on 2 cores. Network hidden 32 (paper 128; 16× fewer FLOPs per
  evaluation), training batch 500 (÷4) for 3000 steps (÷5), 500 samples per row (÷4); sampler settings unchanged
  (K=10, the paper's step sizes); all rows but LA-8-line and HMC-8-line (measured here: 10.6 min with them).
  Fewer than 3000 steps would leave much of the initial (zero-output) network in
  the 0.999 EMA that sampling uses (0.999^3000 ≈ 5 %).
- ``smoke`` (tests): hidden 16, 1 block, 30 steps of batch 128, 64 samples, K=1; score Reverse, score HMC-curve
  and oracle rows only (so only the two score models are trained).
- ``study`` (``make study2d``, with ``--trials 5``): when the MH correction matters — samplers at the papers' ε and
  at ε tuned to a target acceptance, unadjusted twins at the tuned steps, U-HMC with the reference code's level
  coverage; the demo's models, 300 samples per row (``lit_mcmc/experiments/study2d.py``).

Costs measured on the 2-core machine (CPU time of one thread): ~10 s of start-up (imports) per run; a training
step takes 111 / 308 ms (score / energy model) at the paper's hidden 128 and batch 2000, 11 / 28 ms at the
demo's; one target evaluation (two networks) while sampling takes ~97 / ~147 ms at the paper's size (2000
samples), ~6 / ~11 ms at the demo's. A trial evaluates the target ~47k times per sample for the score rows
(negation included; HMC-8-line alone 11 100) and ~12k times for the energy rows (mixture included). The paper
preset thus needs ~19 000 CPU seconds per trial (~12 600 training, ~6 300 sampling), ~26 hours for 10 trials on
2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lit_mcmc.experiments.jobs import (
    REPO,
    Job,
    Timings,
    check_jobs,
    cli_command,
    driver_arguments,
    evaluations_per_level,
    fit_done,
    markdown_table,
    predict_done,
    run_experiment,
    write_results,
)

CONFIGS = REPO / "configs" / "toy2d"
MODELS = ("gmm_energy", "bar_energy", "gmm_score", "bar_score")
SCORE_ROWS = ("reverse", "ula", "la_1_line", "la_3_line", "la_8_line", "uhmc", "hmc_1_line", "hmc_3_line",
              "hmc_8_line", "hmc_curve")
ENERGY_ROWS = ("reverse", "ula", "la", "uhmc", "hmc")
SAMPLE_CONFIGS = (*(f"sample_score_{r}" for r in SCORE_ROWS), *(f"sample_energy_{r}" for r in ENERGY_ROWS),
                  "sample_oracle_hmc", "sample_energy_mixture", "sample_score_negation")
EXACT = "exact"

# Relative cost of a training step or target evaluation, for longest-first scheduling (measured): energy models
# backpropagate to the input; the analytic oracle is cheap.
EVALUATION_COST = {"score": 1.0, "energy": 2.3, "oracle": 0.5}

# Preset field -> the config key it overrides.
FIT_KEYS = {"hidden": "model.init_args.net.init_args.hidden", "n_blocks": "model.init_args.net.init_args.n_blocks",
            "batch_size": "data.init_args.batch_size", "max_steps": "trainer.max_steps"}
PREDICT_KEYS = {"n_samples": "data.init_args.n_samples", "sampler_steps": "model.init_args.sampler.n_steps"}
# Configs holding the paper's values of those keys (for the caption).
PAPER_FIT_CONFIG = "train_gmm_score"
PAPER_PREDICT_CONFIG = "sample_score_hmc_curve"
LABELS = {"hidden": "net hidden", "n_blocks": "net blocks", "batch_size": "training batch", "max_steps": "steps",
          "n_samples": "samples per row", "sampler_steps": "MCMC steps per level K"}

METRIC_FORMATS = {"ll": "%.2f", "w2": "%.3f", "gmm": "%.5f"}
METRIC_HEADERS = {"ll": "LL ↑", "w2": "W2 ↓", "gmm": "GMM ↓"}
DASH = "–"


def load_config(stem: str) -> dict[str, Any]:
    """The YAML config ``configs/toy2d/<stem>.yaml`` as a dict."""
    return yaml.safe_load((CONFIGS / f"{stem}.yaml").read_text())


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (``trainer.max_steps``) of a config dict."""
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


@dataclass(frozen=True)
class Preset:
    """Overrides of the paper configs (None keeps the config's value) and the sample configs to run (None: all)."""

    hidden: int | None = None
    n_blocks: int | None = None
    batch_size: int | None = None
    max_steps: int | None = None
    n_samples: int | None = None
    sampler_steps: int | None = None
    rows: tuple[str, ...] | None = None

    def overrides(self, keys: dict[str, str]) -> list[str]:
        """Command-line overrides (``--key value``) for the preset fields named in ``keys``."""
        return [arg for name, key in keys.items() if getattr(self, name) is not None
                for arg in (f"--{key}", str(getattr(self, name)))]

    def reductions(self) -> str:
        """The settings that differ from the paper's, e.g. 'steps 3000 (paper 15001, ÷5.0)'."""
        paper = {**{n: config_value(load_config(PAPER_FIT_CONFIG), k) for n, k in FIT_KEYS.items()},
                 **{n: config_value(load_config(PAPER_PREDICT_CONFIG), k) for n, k in PREDICT_KEYS.items()}}
        changed = [f"{LABELS[f.name]} {getattr(self, f.name)} (paper {paper[f.name]}, "
                   f"÷{paper[f.name] / getattr(self, f.name):.1f})"
                   for f in fields(self) if f.name in paper and getattr(self, f.name) is not None]
        return ", ".join(changed) if changed else "none: the paper's settings"


PRESETS = {
    "paper": Preset(),
    # LA-8-line and HMC-8-line (the two costliest rows, 20 200 NFE/sample together) are left to `make table1`.
    "demo": Preset(hidden=32, batch_size=500, max_steps=3000, n_samples=500,
                   rows=tuple(s for s in SAMPLE_CONFIGS if not s.endswith("_8_line"))),
    "smoke": Preset(hidden=16, n_blocks=1, batch_size=128, max_steps=30, n_samples=64, sampler_steps=1,
                    rows=("sample_score_reverse", "sample_score_hmc_curve", "sample_oracle_hmc")),
    # The MH-correction study (experiments/study2d.py, its own rows): the demo's models, 300 samples per row.
    "study": Preset(hidden=32, batch_size=500, max_steps=3000, n_samples=300, rows=()),
    # The particle study (study2d.SMC_ROWS): the same models, 512 samples per row (8 groups of 64).
    "smc": Preset(hidden=32, batch_size=500, max_steps=3000, n_samples=512, rows=()),
}
# run by their own driver, lit_mcmc/experiments/study2d.py
STUDY_PRESETS = ("study", "smc")


# ----- jobs ------------------------------------------------------------------------------------------------------

def train_dir(out: Path, trial: int) -> Path:
    """Where the component models of ``trial`` are trained (the sampling runs' checkpoint_root)."""
    return out / "train" / f"trial_{trial}"


def samples_dir(out: Path, trial: int) -> Path:
    """Where the sampler rows of ``trial`` run: apart from training, so TensorBoard's HPARAMS on
    ``out/samples`` lists sampler runs only."""
    return out / "samples" / f"trial_{trial}"


def fit_job(out: Path, trial: int, model: str, preset: Preset) -> Job:
    """Training of component ``model`` (e.g. "gmm_score") for ``trial`` into ``out/train/trial_<k>/<model>``."""
    config = load_config(f"train_{model}")
    seed = str(config["seed_everything"] + trial)
    run_dir = train_dir(out, trial) / model
    max_steps = preset.max_steps or config_value(config, FIT_KEYS["max_steps"])
    command = cli_command("fit", "--config", str(CONFIGS / f"train_{model}.yaml"),
                          "--trainer.default_root_dir", str(run_dir), "--seed_everything", seed,
                          "--model.init_args.seed", seed, "--data.init_args.seed", seed, *preset.overrides(FIT_KEYS))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # an interrupted run continues where it stopped
        command += ["--ckpt_path", str(last)]
    cost = max_steps * EVALUATION_COST[model.split("_")[1]]
    return Job(str(run_dir.relative_to(out)), command, run_dir, "fit.log",
               functools.partial(fit_done, run_dir, max_steps), cost)


def metrics_distribution(config: dict[str, Any]) -> str | None:
    """The distribution a predict config's Toy2DMetrics callback scores against (None: no metrics)."""
    for callback in config["trainer"].get("callbacks", []):
        if callback["class_path"].endswith("Toy2DMetrics"):
            return callback.get("init_args", {}).get("distribution", "product")
    return None


def trained_models(stems: Sequence[str]) -> list[str]:
    """The component models (e.g. "gmm_score") that the sample configs ``stems`` load checkpoints of."""
    needed = {Path(spec["checkpoint"]).parts[0] for stem in stems
              for spec in load_config(stem)["model"]["init_args"]["components"].values() if spec.get("checkpoint")}
    return [model for model in MODELS if model in needed]


def row_model(stem: str) -> str:
    """"score", "energy" or "oracle", from a sample config's name."""
    return stem.removeprefix("sample_").split("_")[0]


def predict_job(out: Path, trial: int, stem: str, preset: Preset) -> Job:
    """Sampler row ``stem`` (a sample config) for ``trial`` into ``out/samples/trial_<k>/<stem>``."""
    config = load_config(stem)
    run_dir = samples_dir(out, trial) / stem
    command = cli_command("predict", "--config", str(CONFIGS / f"{stem}.yaml"),
                          "--model.init_args.checkpoint_root", str(train_dir(out, trial)),
                          "--trainer.default_root_dir", str(run_dir), "--model.init_args.seed", str(trial),
                          *preset.overrides(PREDICT_KEYS))
    outputs = ("samples.npz", "stats.json", *(("metrics.json",) if metrics_distribution(config) else ()))
    cost = evaluations_per_level(config["model"]["init_args"]["sampler"]) * EVALUATION_COST[row_model(stem)]
    return Job(str(run_dir.relative_to(out)), command, run_dir, "predict.log",
               functools.partial(predict_done, run_dir, outputs), cost)


# ----- results ---------------------------------------------------------------------------------------------------

def read_run(run_dir: Path) -> dict[str, Any]:
    """A predict run's numbers: sampler name, adjusted, accept_rate, nfe_per_sample, wall_seconds, ll/w2/gmm."""
    stats = json.loads((run_dir / "stats.json").read_text())
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return {"sampler": stats["sampler"], "adjusted": stats["adjusted"],
            **{k: stats[k] for k in ("accept_rate", "nfe_per_sample", "wall_seconds")},
            **{k: metrics[k] for k in METRIC_FORMATS if k in metrics}}


def exact_product_sets(n: int, trial: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, fresh): the exact product samples Toy2DMetrics scores every row against, and a new exact set."""
    from lit_mcmc.data.toy2d import sample_distribution, seeded_generator
    from lit_mcmc.metrics.toy2d import REFERENCE_SEED

    seed = REFERENCE_SEED
    reference = sample_distribution("product", n, seeded_generator(seed)).numpy()
    return reference, sample_distribution("product", n, seeded_generator(seed, 1 + trial)).numpy()


def exact_floor(n: int, trial: int) -> dict[str, float]:
    """The metrics of a fresh exact product sample set, scored exactly like the sampler rows."""
    from lit_mcmc.metrics.toy2d import sample_metrics

    reference, fresh = exact_product_sets(n, trial)
    return sample_metrics(fresh, reference, "product")


def collect(out: Path, stems: Sequence[str], trials: int, n_samples: int) -> list[dict[str, Any]]:
    """One record per row: key, model, sampler, adjusted, distribution, per-trial numbers, their mean and std."""
    rows = []
    for stem in stems:
        runs = [read_run(samples_dir(out, k) / stem) for k in range(trials)]
        rows.append({"key": stem, "model": row_model(stem), "sampler": runs[0]["sampler"],
                     "adjusted": runs[0]["adjusted"], "distribution": metrics_distribution(load_config(stem)),
                     "trials": runs})
    rows.append({"key": EXACT, "model": EXACT, "sampler": "exact samples (floor)", "adjusted": False,
                 "distribution": "product", "trials": [exact_floor(n_samples, k) for k in range(trials)]})
    for row in rows:
        numbers = {k for run in row["trials"] for k, v in run.items() if isinstance(v, float)}
        values = {k: np.array([run[k] for run in row["trials"]]) for k in sorted(numbers)}
        row["mean"] = {k: float(v.mean()) for k, v in values.items()}
        row["std"] = {k: float(v.std()) if np.isfinite(v).all() else float("nan") for k, v in values.items()}
    return rows


def mean_std(values: Sequence[float], fmt: str) -> str:
    """'1.23' for one value, '1.23 ± 0.04' for several (population std, ddof=0); a non-finite mean alone."""
    if len(values) == 0:
        return DASH
    array = np.asarray(values, dtype=np.float64)
    mean = array.mean()
    if len(array) == 1 or not np.isfinite(mean):
        return fmt % mean
    return f"{fmt % mean} ± {fmt % array.std()}"


def row_cells(row: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """Table cells of a row: model, sampler, each metric (mean ± std), acceptance ('–' if unadjusted), NFE, wall."""
    runs = row["trials"]

    def mean_of(key: str, fmt: str) -> str:
        values = [run[key] for run in runs if key in run]
        return fmt % np.mean(values) if values else DASH

    return [row["model"], row["sampler"], *(mean_std([r[m] for r in runs if m in r], METRIC_FORMATS[m])
                                            for m in metrics),
            mean_of("accept_rate", "%.3f") if row["adjusted"] else DASH,
            mean_of("nfe_per_sample", "%.0f"), mean_of("wall_seconds", "%.1f")]


def tables(rows: Sequence[dict[str, Any]]) -> str:
    """The product table (Table 1 rows, oracle and exact floor) and the mixture table, in Markdown."""
    tail = ["accept", "NFE/sample", "wall s"]
    product = [row_cells(r, list(METRIC_FORMATS)) for r in rows if r["distribution"] == "product"]
    text = markdown_table(["Model", "Sampler", *METRIC_HEADERS.values(), *tail], product)
    mixture = [row_cells(r, ["w2", "gmm"]) for r in rows if r["distribution"] == "mixture"]
    if mixture:
        text += ("\n\nMixture ½·GMM + ½·bar of the two energy models (not a Table-1 row), vs exact mixture samples:\n\n"
                 + markdown_table(["Model", "Sampler", METRIC_HEADERS["w2"], METRIC_HEADERS["gmm"], *tail], mixture))
    return text


def caption(preset_name: str, preset: Preset, trials: int, n_samples: int, timings: Timings) -> str:
    """What the table shows and how it was made: preset, trials, reductions, machine, wall (and CPU) times."""
    spread = ", mean ± population std" if trials > 1 else ""
    return (f"2D product GMM × bar (Table 1), preset `{preset_name}`, {trials} trial(s){spread}. "
            f"Reductions vs the paper: {preset.reductions()}. Metrics vs {n_samples} exact product samples "
            f"(correct formulas, not paper_compat); accept = mean MH acceptance ('{DASH}' for unadjusted samplers); "
            f"NFE = target evaluations per sample; wall s = sampling time of the predict run (one thread). W2 follows "
            f"how many samples fall in each mode: two exact sets of this size differ by ~0.05-0.15 already. "
            + timings.summary())


def plot_figure(out: Path, rows: Sequence[dict[str, Any]], reference: np.ndarray, path: Path) -> None:
    """A grid of trial 0's samples: exact product target, every row, the mixture and the negation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("exact product (target)", reference)]
    for row in rows:
        if row["key"] != EXACT:
            samples = np.load(samples_dir(out, 0) / row["key"] / "samples.npz")["samples"]
            kind = {"mixture": "mixture, ", None: "negation, "}.get(row["distribution"], "")
            panels.append((f"{row['model']}: {kind}{row['sampler']}", samples))
    n_cols = 5
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.5 * n_rows), squeeze=False)
    for ax, (title, points) in zip(axes.flat, panels, strict=False):
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, linewidths=0)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", xticks=[], yticks=[])
        ax.set_title(title, fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = driver_arguments(__doc__.splitlines()[0], list(PRESETS), "runs/<preset>")
    p.add_argument("--trials", type=int, default=1, help="independent trials (models retrained each time)")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error(f"--trials={args.trials} must be >= 1")
    check_jobs(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Runs the experiment and returns (and prints) the table with its caption."""
    args = parse_args(argv)
    if args.preset in STUDY_PRESETS:  # their own driver (which imports this one): run it, as before
        command = [sys.executable, "-m", "lit_mcmc.experiments.study2d",
                   *(sys.argv[1:] if argv is None else list(argv))]
        warnings.warn(f"--preset {args.preset} is run by python -m lit_mcmc.experiments.study2d (same arguments); "
                      "running that now", FutureWarning, stacklevel=2)
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        print(result.stdout, end="")
        return result.stdout
    preset = PRESETS[args.preset]
    out = (args.out or Path("runs") / args.preset).resolve()
    stems = [s for s in SAMPLE_CONFIGS if preset.rows is None or s in preset.rows]
    n_samples = preset.n_samples or config_value(load_config(PAPER_PREDICT_CONFIG), PREDICT_KEYS["n_samples"])
    phases = {"train": [fit_job(out, k, m, preset) for k in range(args.trials) for m in trained_models(stems)],
              "sample": [predict_job(out, k, s, preset) for k in range(args.trials) for s in stems]}

    def evaluate() -> list[dict[str, Any]]:
        rows = collect(out, stems, args.trials, n_samples)
        plot_figure(out, rows, exact_product_sets(n_samples, 0)[0], out / "figure.png")
        return rows

    rows, timings = run_experiment(phases, args.jobs, evaluate)
    text = caption(args.preset, preset, args.trials, n_samples, timings) + "\n\n" + tables(rows) + "\n"
    return write_results(out, text, {"preset": args.preset,
                                     "settings": {f.name: getattr(preset, f.name) for f in fields(preset)},
                                     "reductions": preset.reductions(), "trials": args.trials,
                                     "n_samples": n_samples, "rows": rows}, timings)


if __name__ == "__main__":
    main()
