"""The CPU-scale MNIST guided-sampling experiment (``make demo-images``) end to end through ``lit-mcmc``.

The CIFAR-100 experiment of the papers (classifier guidance, λ = 20, MCMC with and without MH correction; see
``configs/cifar100``) shrunk to MNIST: the four models of ``configs/mnist/train_*.yaml`` (score UNet, energy UNet,
time-conditioned guidance classifier, clean evaluation classifier) are trained with ``lit-mcmc fit`` into
``OUT/train/<model>``, then every sampler row ``configs/mnist/sample_*.yaml`` (1000 guided digits, sample i towards
digit i % 10) runs with ``lit-mcmc predict`` into ``OUT/samples/<row>``. Each run is a subprocess with one torch thread,
``--jobs`` at a time, longest first, with its log in its run directory and its config (the repo's, with paths
under ``OUT``) in ``OUT/configs``. Finished runs are skipped and interrupted training resumes, so rerunning the
command resumes.

Outputs: ``OUT/table.md`` (accuracy of the evaluation classifier, FID in its pooled features against the 10 000
t10k digits, MH acceptance, network evaluations per sample, sampling time), ``OUT/results.json`` and
``OUT/grid.png`` (60 digits of every row: column d was guided towards digit d). TensorBoard: ``tensorboard --logdir
OUT/samples`` compares the sampler runs (HPARAMS), ``OUT/train`` holds the training curves. ``--preset smoke`` is a
seconds-long version for tests. ``python -m lit_mcmc.experiments.mnist --help``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from lit_mcmc.metrics.uncertainty import MARK, marked_cells, mean_std_text

CONFIGS = REPO / "configs" / "mnist"
CONFIG_ROOT = "runs/mnist"  # the output root written in the configs, replaced by OUT
MODELS = ("energy", "score", "noisy_classifier", "eval_classifier")
ROWS = ("sample_score_reverse", "sample_score_ula", "sample_score_la", "sample_score_uhmc", "sample_score_hmc",
        "sample_energy_la", "sample_energy_hmc")
# Relative cost of a training step (measured on the configs' sizes), for longest-first scheduling.
STEP_COST = {"energy": 3.0, "score": 1.0, "noisy_classifier": 0.6, "eval_classifier": 0.4}
# Relative cost of one guided target evaluation while sampling: an energy model backpropagates to its input.
EVALUATION_COST = {"score": 1.0, "energy": 1.7}
OUTPUTS = ("samples.npz", "stats.json", "metrics.json")
DASH = "–"
GRID_ROWS = 6  # samples per digit in the figure


# Particle rows: Feynman–Kac weights in groups of 50 (index // 50 picks the digit, so a group shares its target and
# the 1000 samples hold 100 of each digit).
SMC_GROUP = 50


@dataclass(frozen=True)
class Preset:
    """Changes to the configs (None keeps the config's value), the rows to run (None: all), the sampling seeds of
    each row and whether each row also runs with particle resampling."""

    max_steps: int | None = None
    ch: int | None = None
    n_samples: int | None = None
    batch_size: int | None = None
    respace: int | None = None
    rows: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    particles: bool = False


PRESETS = {
    "demo": Preset(),
    # seconds per run: a few training steps of 8-channel networks, 12 samples on 3 levels, three rows
    "smoke": Preset(max_steps=3, ch=8, n_samples=12, batch_size=6, respace=3,
                    rows=("sample_score_reverse", "sample_score_hmc", "sample_energy_la")),
    # particle resampling (SMC, Feynman–Kac weights) against the same samplers without it, 3 sampling seeds each
    "smc": Preset(rows=("sample_score_reverse", "sample_score_hmc"), seeds=(0, 1, 2), particles=True),
    "smc_smoke": Preset(max_steps=3, ch=8, n_samples=4, batch_size=4, respace=3, rows=("sample_score_hmc",),
                        seeds=(0, 1), particles=True),
    # every demo row with 3 sampling seeds (the demo's trained models when --out is the demo's folder)
    "seeds": Preset(seeds=(0, 1, 2)),
    "seeds_smoke": Preset(max_steps=3, ch=8, n_samples=12, batch_size=6, respace=3,
                          rows=("sample_score_reverse", "sample_score_hmc"), seeds=(0, 1)),
}
BASELINE = "sample_score_reverse"  # differences are marked against the reverse process


@dataclass(frozen=True)
class Row:
    """One sampler run: a sample config, its seed (None: the config's) and whether particles resample."""

    stem: str
    seed: int | None = None
    particles: bool = False

    @property
    def key(self) -> str:
        """Its run folder under ``OUT/samples``: the config's name for plain rows."""
        return self.stem + ("" if self.seed is None else f"_seed{self.seed}") + ("_smc" if self.particles else "")

    @property
    def variant(self) -> str:
        """The configuration it is a trial of (rows differing only in seed share it)."""
        return self.stem + ("_smc" if self.particles else "")


def preset_rows(preset: Preset) -> list[Row]:
    stems = [s for s in ROWS if preset.rows is None or s in preset.rows]
    seeds = preset.seeds or (None,)
    return [Row(stem, seed, particles) for stem in stems for particles in ((False, True) if preset.particles
                                                                           else (False,)) for seed in seeds]


def run_config(stem: str, out: Path, preset: Preset, row: Row | None = None) -> dict[str, Any]:
    """``configs/mnist/<stem>.yaml`` with its paths moved from runs/mnist to ``out`` and the preset (and the row's
    seed and particles) applied."""
    config = yaml.safe_load((CONFIGS / f"{stem}.yaml").read_text().replace(CONFIG_ROOT, str(out)))
    init = config["model"]["init_args"]
    if stem.startswith("train_"):
        if preset.max_steps is not None:
            config["trainer"]["max_steps"] = preset.max_steps
        if preset.ch is not None:
            init["net"]["init_args"]["ch"] = preset.ch
        if "warmup_steps" in init and preset.max_steps is not None:
            init["warmup_steps"] = min(init["warmup_steps"], preset.max_steps)
    else:
        if preset.n_samples is not None:
            config["data"]["init_args"]["n_samples"] = preset.n_samples
        if preset.batch_size is not None:
            config["data"]["init_args"]["batch_size"] = preset.batch_size
        if preset.respace is not None:
            init["respace"] = preset.respace
        if row is not None:
            config["trainer"]["default_root_dir"] = str(out / "samples" / row.key)
            if row.seed is not None:
                init["seed"] = row.seed
            if row.particles:
                group = min(SMC_GROUP, config["data"]["init_args"]["batch_size"])
                init["sampler"]["resample"] = {"weights": "feynman_kac", "group_size": group}
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_job(out: Path, model: str, preset: Preset) -> Job:
    """Training of ``model`` (e.g. "score") into ``out/train/<model>``; resumes from its last checkpoint."""
    config = run_config(f"train_{model}", out, preset)
    run_dir = Path(config["trainer"]["default_root_dir"])
    max_steps = config["trainer"]["max_steps"]
    command = cli_command("fit", "--config", str(write_config(config, out / "configs" / f"train_{model}.yaml")))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        command += ["--ckpt_path", str(last)]
    return Job(f"train/{model}", command, run_dir, "fit.log", lambda: fit_done(run_dir, max_steps),
               max_steps * STEP_COST[model])


def row_model(stem: str) -> str:
    """"score" or "energy", from a sample config's name."""
    return stem.removeprefix("sample_").split("_")[0]


def predict_job(out: Path, row: Row, preset: Preset) -> Job:
    """Sampler row ``row`` into ``out/samples/<row.key>``."""
    config = run_config(row.stem, out, preset, row)
    run_dir = Path(config["trainer"]["default_root_dir"])
    command = cli_command("predict", "--config", str(write_config(config, out / "configs" / f"{row.key}.yaml")))
    cost = evaluations_per_level(config["model"]["init_args"]["sampler"]) * EVALUATION_COST[row_model(row.stem)]
    return Job(f"samples/{row.key}", command, run_dir, "predict.log", lambda: predict_done(run_dir, OUTPUTS), cost)


# ----- results ---------------------------------------------------------------------------------------------------

def read_row(out: Path, row: Row) -> dict[str, Any]:
    """A row's numbers from its stats.json and metrics.json."""
    run_dir = out / "samples" / row.key
    stats = json.loads((run_dir / "stats.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"key": row.key, "variant": row.variant, "model": row_model(row.stem), "sampler": stats["sampler"],
            "adjusted": stats["adjusted"],
            **{k: stats[k] for k in ("accept_rate", "nfe_per_sample", "sampling_seconds", "n_samples")
               if k in stats},
            **{k: stats[k] for k in ("ess_mean", "unique_ancestors_mean") if k in stats},
            **{k: metrics[k] for k in ("r3_accuracy", "top1_accuracy", "fid")},
            **{k: metrics[k] for k in ("kid", "precision", "recall") if k in metrics}}


def real_digits_row(out: Path, n: int) -> dict[str, Any]:
    """The first ``n`` t10k digits scored like the samples: the floor of both metrics at this sample size.

    They are training images of every model here (only t10k is available), so the accuracy is a training
    accuracy and the FID compares a subset with the set that contains it.
    """
    import torch

    from lit_mcmc.data.images import load_images
    from lit_mcmc.metrics.feature_metrics import FrechetDistance, gaussian_stats, kid, precision_recall
    from lit_mcmc.metrics.images import ClassifierFeatures, r3_hits
    from lit_mcmc.modules.classifiers import load_classifier

    classifier = load_classifier(str(out / "train" / "eval_classifier" / "checkpoints" / "last.ckpt"))
    real = load_images("mnist", split="test")
    images = torch.stack([real[i][0] for i in range(len(real))])
    labels = real.labels
    features = ClassifierFeatures(classifier)
    with torch.no_grad():  # every digit through the feature network once: FID, KID and precision/recall share it
        real_features = torch.cat([features(chunk) for chunk in images.split(1000)])
        probs = classifier(images[:n]).softmax(dim=1)
    scored = real_features[:n]
    fid = FrechetDistance(*gaussian_stats(real_features), scored)()
    return {"key": "real", "model": "data", "sampler": f"{n} real t10k digits (floor)", "adjusted": False,
            "r3_accuracy": float(r3_hits(probs, labels[:n]).float().mean()),
            "top1_accuracy": float((probs.argmax(1) == labels[:n]).float().mean()), "fid": fid,
            "kid": kid(scored, real_features).value,
            **{name: e.value for name, e in precision_recall(scored, real_features, n_real=n).items()}}


def row_cells(row: dict[str, Any]) -> list[str]:
    """Model, sampler, accuracy (p > 0.5), top-1, FID, acceptance ('–' if unadjusted), NFE/sample, sampling s."""

    def number(key: str, fmt: str) -> str:
        return fmt % row[key] if key in row else DASH

    return [row["model"], row["sampler"], number("r3_accuracy", "%.3f"), number("top1_accuracy", "%.3f"),
            number("fid", "%.2f"), number("accept_rate", "%.3f") if row["adjusted"] else DASH,
            number("nfe_per_sample", "%.0f"), number("sampling_seconds", "%.0f")]


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["Model", "Sampler", "Accuracy ↑", "Top-1 ↑", "FID ↓", "accept", "NFE/sample", "sampling s"]
    return markdown_table(header, [row_cells(r) for r in rows])


def trials_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows that differ only in seed as one line: mean ± sample std over the seeds, ``*`` where the mean differs from
    the reverse process's by more than two standard errors (Welch, over the seeds), and the mean ESS."""
    variants: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        variants.setdefault(row.get("variant", row["key"]), []).append(row)

    def column(key: str, fmt: str, marked: bool = True) -> dict[str, str]:
        values = {variant: [r[key] for r in runs if key in r] for variant, runs in variants.items()}
        if marked and BASELINE in values and values[BASELINE]:
            return marked_cells(values, BASELINE, fmt)
        return {variant: mean_std_text(v, fmt) if v else DASH for variant, v in values.items()}

    columns = [column(key, fmt) for key, fmt in (("r3_accuracy", "%.3f"), ("top1_accuracy", "%.3f"),
                                                 ("fid", "%.2f"), ("kid", "%.4f"), ("precision", "%.3f"),
                                                 ("recall", "%.3f"))]
    plain = [column(key, fmt, marked=False) for key, fmt in (("ess_mean", "%.1f"), ("nfe_per_sample", "%.0f"),
                                                             ("sampling_seconds", "%.0f"))]
    accept = column("accept_rate", "%.3f", marked=False)
    body = [[runs[0]["model"], runs[0]["sampler"], str(len(runs)), *(c[variant] for c in columns),
             accept[variant] if runs[0]["adjusted"] else DASH, *(c[variant] for c in plain)]
            for variant, runs in variants.items()]
    return markdown_table(["Model", "Sampler", "seeds", "Accuracy ↑", "Top-1 ↑", "FID ↓", "KID ↓", "Precision ↑",
                           "Recall ↑", "accept", "ESS", "NFE/sample", "sampling s"], body)


def settings(out: Path, preset: Preset) -> dict[str, Any]:
    """The settings that shape the table, read from the configs as run."""
    fits = {m: run_config(f"train_{m}", out, preset) for m in MODELS}
    sample = run_config(ROWS[0], out, preset)
    return {
        "training_steps": {m: c["trainer"]["max_steps"] for m, c in fits.items()},
        "training_batch": {m: c["data"]["init_args"]["batch_size"] for m, c in fits.items()},
        "unet_ch": fits["score"]["model"]["init_args"]["net"]["init_args"]["ch"],
        "levels": sample["model"]["init_args"]["respace"],
        "T": fits["score"]["model"]["init_args"]["schedule"]["T"],
        "guidance_scale": sample["model"]["init_args"]["composition"]["scale"],
    }


def caption(preset_name: str, setup: dict[str, Any], timings: Timings) -> str:
    steps = ", ".join(f"{m} {s}" for m, s in setup["training_steps"].items())
    return (f"MNIST, classifier guidance λ = {setup['guidance_scale']:g}, preset `{preset_name}`: UNets of width "
            f"{setup['unet_ch']} trained for {steps} steps; sampling on {setup['levels']} of the T = {setup['T']} "
            f"training levels. Accuracy = fraction of samples whose evaluation classifier gives the guided digit "
            f"p > 0.5 (the papers' measure); FID in that classifier's pooled features against the 10 000 t10k "
            f"digits; accept = mean MH acceptance ('{DASH}': unadjusted); NFE = guided target evaluations per "
            f"sample; sampling s = CPU-thread time spent sampling the row. " + timings.summary())


def plot_grid(out: Path, rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Every row's first GRID_ROWS samples per digit (column d: guided towards d), one panel per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = 4
    n_panel_rows = -(-len(rows) // n_cols)
    fig, axes = plt.subplots(n_panel_rows, n_cols, figsize=(3.2 * n_cols, 2.3 * n_panel_rows), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        with np.load(out / "samples" / row["key"] / "samples.npz") as data:
            samples, labels = data["samples"][:, 0], data["labels"]
        tiles = [[samples[np.flatnonzero(labels == digit)[r]] if r < np.sum(labels == digit) else
                  np.full((28, 28), -1.0) for digit in range(10)] for r in range(GRID_ROWS)]
        ax.imshow(np.block(tiles), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"{row['model']}: {row['sampler']}\nacc {row['r3_accuracy']:.2f}, FID {row['fid']:.1f}",
                     fontsize=8)
        ax.set(xticks=[], yticks=[])
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = driver_arguments(__doc__.splitlines()[0], list(PRESETS), f"{CONFIG_ROOT}, or {CONFIG_ROOT}_<preset> for "
                         "other presets")
    args = p.parse_args(argv)
    check_jobs(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Runs the experiment and returns (and prints) the table with its caption."""
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    out = (args.out or Path(CONFIG_ROOT if args.preset == "demo" else f"{CONFIG_ROOT}_{args.preset}")).resolve()
    runs = preset_rows(preset)
    models = [m for m in MODELS if m.endswith("classifier") or any(row_model(r.stem) == m for r in runs)]
    phases = {"train": [fit_job(out, m, preset) for m in models], "sample": [predict_job(out, r, preset) for r in runs]}

    def evaluate() -> list[dict[str, Any]]:
        rows = [read_row(out, r) for r in runs]
        rows.append(real_digits_row(out, rows[0]["n_samples"]))
        plot_grid(out, rows[:-1], out / "grid.png")
        return rows

    rows, timings = run_experiment(phases, args.jobs, evaluate)
    setup = settings(out, preset)
    body = table(rows) if preset.seeds is None else (
        f"Sampling seeds {list(preset.seeds)} per row: mean ± sample std over the seeds; {MARK}: the mean differs "
        "from the score model's Reverse row by more than two standard errors of the difference (Welch, over the "
        "seeds). KID in the classifier's features (torch-fidelity's units), precision/recall with k = 3 against "
        "as many real digits"
        + (f"; particles: Feynman–Kac weights, groups of {SMC_GROUP} samples guided to one digit, ESS threshold "
           "0.5, final resampling" if preset.particles else "") + ":\n\n" + trials_table(rows))
    text = caption(args.preset, setup, timings) + "\n\n" + body + "\n"
    return write_results(out, text, {"preset": args.preset, "changes": asdict(preset), "settings": setup,
                                     "rows": rows}, timings)


if __name__ == "__main__":
    main()
