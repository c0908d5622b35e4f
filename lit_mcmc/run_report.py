"""The report of one predict run, which the callbacks share through the trainer instead of looking each other up.

A run with a sample writer reports in three phases, each a Lightning hook that runs for every callback before the
next phase starts, so the order of the callbacks in a config does not matter:

1. ``on_predict_epoch_end``: the writer merges every rank's shards and puts the result in :attr:`RunReport.merged`;
2. ``on_predict_end``: metric callbacks score the merged samples and :meth:`RunReport.add_metrics` their values;
3. ``teardown("predict")``: the writer publishes the report (``metrics.json``, TensorBoard).

Without a writer there is no report, and metric callbacks score each batch as it comes and log their own values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_ATTRIBUTE = "lit_mcmc_run_report"


class RunReport:
    """The merged samples of a predict run and the metric values computed on them (global rank zero only), and the
    directory the run writes to."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.merged: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}

    def add_metrics(self, values: dict[str, float]) -> None:
        """Record metric values of this run (floats; a later value of the same name replaces the earlier one)."""
        self.metrics.update({name: float(value) for name, value in values.items()})

    def merged_samples(self, reader: str) -> dict[str, Any]:
        """The merged samples, for ``reader`` (a callback's name) to score; an error if nothing was merged."""
        if self.merged is None:
            raise RuntimeError(f"{reader} scores the merged samples, but the sample writer merged none: the predict "
                               "run drew no samples on this rank")
        return self.merged


def open_report(trainer: Any, output_dir: Path) -> RunReport:
    """Start a fresh report for this predict run (the sample writer calls this in ``on_predict_start``)."""
    report = RunReport(output_dir)
    setattr(trainer, _ATTRIBUTE, report)
    return report


def run_report(trainer: Any) -> RunReport | None:
    """The trainer's run report, or None when no sample writer keeps one (callbacks are fixed for a trainer's life,
    so a report of an earlier predict call means a writer that opens a fresh one for each run)."""
    return getattr(trainer, _ATTRIBUTE, None)


def scored_samples(outputs: dict[str, Any]) -> Any:
    """What image metrics and pictures look at: the decoded ``images`` of a latent model, else the ``samples``."""
    images = outputs.get("images")
    return images if images is not None else outputs["samples"]


def required_report(trainer: Any, reader: str) -> RunReport:
    """The trainer's run report, for a callback (``reader``) that scores the merged samples; without a sample writer,
    an error that says to add one."""
    report = run_report(trainer)
    if report is None:
        raise RuntimeError(f"{reader} scores the merged samples: add callbacks.sample_writer.SampleWriter to "
                           "trainer.callbacks")
    return report


def particle_groups(merged: dict[str, Any], pl_module: Any) -> np.ndarray | None:
    """For a run with particle resampling, each scored sample's particle group (its index // group size): samples
    copied from a common ancestor are not independent, so standard errors resample whole groups. None otherwise."""
    resample = getattr(getattr(pl_module, "sampler_config", None), "resample", None)
    if resample is None:
        return None
    return np.asarray(merged["indices"]) // resample.group_size


def estimable(groups: np.ndarray | None) -> bool:
    """Whether standard errors can be estimated over these particle groups: it takes two groups or more (a single
    group's samples all descend from the same draws)."""
    return groups is None or len(np.unique(groups)) >= 2


def class_strata(labels: np.ndarray | None) -> np.ndarray | None:
    """The class of each scored sample as strata for standard errors (labels are fixed by the sample index, not
    drawn), when every class holds at least two samples; None otherwise (one sample per class, e.g. 1000 ImageNet
    samples, leaves no spread within a class to measure: the plain standard error is used, which is conservative)."""
    if labels is None:
        return None
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return np.asarray(labels) if counts.min() >= 2 else None
