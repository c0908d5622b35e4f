"""Do the per-run standard errors explain the spread over seeds? (image runs scored with a trained classifier)

For every configuration whose runs differ only in ``model.seed`` (grouped as ``lit-mcmc-compare`` groups them),
it scores each run's ``samples.npz`` with the evaluation classifier (accuracy) and its penultimate features (FID,
KID, precision, recall against the real images), with the standard errors of :mod:`lit_mcmc.metrics`: class labels
as strata, and particle runs' resampling groups as clusters. It prints, per configuration and metric, the std of
the metric over the seeds next to the mean of the runs' own standard errors. With only a few seeds the std is
itself uncertain (from 3 seeds, within a factor of about 2 either way).

Run ``python -m lit_mcmc.benchmarks.seed_spread runs/mnist_smc/samples
--classifier runs/mnist_smc/train/eval_classifier/checkpoints/last.ckpt --dataset mnist`` (CPU, about 20 s per run).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lit_mcmc.metrics.uncertainty import trials

METRICS = ("fid", "kid", "precision", "recall", "r3_accuracy")


def spread_table(groups: Mapping[str, Sequence[Mapping[str, float]]], metrics: Sequence[str] = METRICS) -> str:
    """Markdown: per configuration and metric, the std over its runs (ddof=1, n) and the mean of their ``_se``."""
    lines = ["| configuration | metric | std over seeds (n) | mean per-run s.e. | ratio |", "|---|---|---|---|---|"]
    for name, runs in groups.items():
        for metric in metrics:
            values = [run[metric] for run in runs if metric in run]
            ses = [run[f"{metric}_se"] for run in runs if f"{metric}_se" in run]
            if len(values) < 2 or not ses:
                continue
            spread, own = trials(values).std, float(np.mean(ses))
            lines.append(f"| {name} | {metric} | {spread:.4g} ({len(values)}) | {own:.4g} | {own / spread:.2f} |"
                         if spread > 0 else f"| {name} | {metric} | 0 ({len(values)}) | {own:.4g} | – |")
    return "\n".join(lines) + "\n"


def score_run(run: Path, classifier: torch.nn.Module, real_features: torch.Tensor, n_boot: int) -> dict[str, float]:
    """Accuracy, FID, KID, precision and recall of one run's samples, each with its standard error."""
    from lit_mcmc.metrics.feature_metrics import image_feature_metrics
    from lit_mcmc.metrics.images import ClassifierFeatures, accuracy_estimates, quantize

    with np.load(run / "samples.npz") as saved:
        samples, labels, indices = (torch.from_numpy(saved[key]) for key in ("samples", "labels", "indices"))
    stats = json.loads((run / "stats.json").read_text())
    group_size = stats.get("hparams", {}).get("resample_group_size")
    groups = (indices // int(group_size)).numpy() if group_size else None
    features = ClassifierFeatures(classifier)
    with torch.no_grad():
        fake = torch.cat([features(quantize(batch)) for batch in samples.split(500)]).double()
        logits = torch.cat([classifier(batch) for batch in samples.split(500)])
    out = image_feature_metrics(fake, real_features, n_boot=n_boot, groups=groups, strata=labels.numpy())
    out.update(accuracy_estimates(logits, labels, groups=None if groups is None else torch.from_numpy(groups)))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    """Entry point: score every run below the given directories and print the spread table."""
    from lit_mcmc.compare import braced_name, find_runs, group_trials, trial_key
    from lit_mcmc.data.images import load_images
    from lit_mcmc.metrics.images import ClassifierFeatures, quantize
    from lit_mcmc.modules.classifiers import load_classifier

    parser = argparse.ArgumentParser(prog="python -m lit_mcmc.benchmarks.seed_spread",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories, directories of runs, or glob patterns")
    parser.add_argument("--classifier", required=True, help="the evaluation classifier's checkpoint (last.ckpt)")
    parser.add_argument("--dataset", default="mnist", help="real images: a load_images dataset (default: mnist)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for FID (default: 200)")
    args = parser.parse_args(argv)
    runs = find_runs(args.runs)
    classifier = load_classifier(args.classifier)
    real = load_images(dataset=args.dataset, split=args.split)
    with torch.no_grad():
        images = torch.stack([real[i][0] for i in range(len(real))])
        real_features = torch.cat([ClassifierFeatures(classifier)(quantize(batch)) for batch in images.split(500)])
    scored = {run: score_run(run, classifier, real_features.double(), args.n_boot) for run in runs}
    groups = {braced_name([run.name for run in (runs[i] for i in members)]): [scored[runs[i]] for i in members]
              for members in group_trials([trial_key(run) for run in runs])}
    table = spread_table(groups)
    print(table, end="")
    return table


if __name__ == "__main__":
    main()
