"""A run's statistics from its shards: what ``stats.json`` holds (no Lightning here).

A shard holds one batch: its samples, per-sample and per-batch numbers, and the batch's per-level record
(``{stat: {level: value}}``, ``lit_mcmc/samplers/levels.py``) stored entry by entry by :func:`level_arrays`.
:func:`run_stats` combines every shard of a run: each declared per-level statistic by its own rule, whichever
statistics the shards hold, then the run's summaries (acceptance, NFE, quadrature error, particles, broken-down
levels, the step table).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import lit_mcmc.samplers  # noqa: F401  (declares the kernels' and particles' per-level statistics)
from lit_mcmc.samplers.diagnostics import degenerate_report
from lit_mcmc.samplers.levels import LEVEL_STATS, LevelRecord, LevelStat

Shard = dict[str, np.ndarray]
LEVEL_PREFIX = "per_level."
# the run's summary numbers that metrics.json repeats next to the metric callbacks' values
REPORTED_STATS = ("accept_rate", "nfe_per_sample", "wall_seconds", "samples_per_second",
                  # with particles
                  "ess_mean", "resampling_events", "log_z_mean", "log_z_se", "unique_ancestors_mean")


# ----- the per-level record in a shard ---------------------------------------------------------------------------


def level_arrays(levels: LevelRecord) -> dict[str, np.ndarray]:
    """A batch's per-level record as shard arrays: ``per_level.<stat>.levels`` and ``per_level.<stat>.values``."""
    arrays = {}
    for stat, values in levels.items():
        keys = list(values)
        arrays[f"{LEVEL_PREFIX}{stat}.levels"] = np.array(keys, dtype=np.int64)
        arrays[f"{LEVEL_PREFIX}{stat}.values"] = np.array([values[k] for k in keys], dtype=np.float64)
    return arrays


def shard_level_stats(shards: list[Shard]) -> list[str]:
    """The per-level statistics the shards hold, in the order they were first written."""
    found: dict[str, None] = {}
    for shard in shards:
        for key in shard:
            if key.startswith(LEVEL_PREFIX) and key.endswith(".levels"):
                found[key[len(LEVEL_PREFIX):-len(".levels")]] = None
    return list(found)


def combine_levels(shards: list[Shard], stat: str) -> dict[str, float]:
    """One per-level statistic over the run's shards, by its declared rule, keyed by the level as a string."""
    rule = LEVEL_STATS.get(stat, LevelStat())
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for shard in shards:
        levels_key = f"{LEVEL_PREFIX}{stat}.levels"
        if levels_key not in shard:
            continue
        weight = len(shard["group_ids"]) if rule.combine == "group_mean" else len(shard["indices"])
        for level, value in zip(shard[levels_key].tolist(), shard[f"{LEVEL_PREFIX}{stat}.values"].tolist(),
                                strict=True):
            if rule.combine == "min":
                sums[level] = min(sums.get(level, math.inf), value)
            elif rule.combine == "sum":
                sums[level] = sums.get(level, 0) + int(value)
            elif np.isfinite(value):
                sums[level] = sums.get(level, 0.0) + value * weight
                counts[level] = counts.get(level, 0) + weight
    if rule.combine in ("mean", "group_mean"):
        return {str(k): sums[k] / counts[k] for k in sorted(sums, reverse=rule.descending)}
    return {str(k): sums[k] for k in sorted(sums, reverse=rule.descending)}


def run_levels(shards: list[Shard]) -> dict[str, dict[str, float]]:
    """Every per-level statistic of the run: {stat: {level: value}} (levels as strings, as stats.json has them)."""
    return {stat: combine_levels(shards, stat) for stat in shard_level_stats(shards)}


# ----- stats.json ------------------------------------------------------------------------------------------------


def run_stats(shards: list[Shard], indices: np.ndarray, samples: np.ndarray, accept: np.ndarray, sampler: Any,
              hparams: dict[str, Any], step_table_record: dict[str, Any] | None) -> dict[str, Any]:
    """``stats.json`` of a run (without timings of the whole run, which its writer adds): ``sampler`` is the run's
    :class:`~lit_mcmc.samplers.SamplerConfig` (None when unknown)."""
    levels = run_levels(shards)
    accept_per_level = levels.get("accept_rate", {})
    stats: dict[str, Any] = {
        "sampler": sampler.name if sampler is not None else None,
        "hparams": hparams,
        "n_samples": int(len(indices)),
        "adjusted": bool(any(bool(s["adjusted"]) for s in shards)),
        "accept_rate": float(accept.mean()),
        "accept_rate_per_level": accept_per_level,
        "nfe_per_sample": float(np.mean([float(s["nfe"]) for s in shards])),
        "n_nonfinite_log_ratios": int(sum(int(s["n_nonfinite"]) for s in shards)),
    }
    if levels.get("quadrature_error"):
        stats["quadrature_error_mean"] = float(np.mean(list(levels["quadrature_error"].values())))
    for stat, values in levels.items():
        if values and LEVEL_STATS.get(stat, LevelStat()).reported and stat != "nonfinite_sample_share":
            stats[f"{stat}_per_level"] = values
    stats.update(step_table_stats(step_table_record))
    stats.update(health_stats(indices, samples, levels, stats["adjusted"], sampler))
    stats.update(particle_stats(shards, levels))
    return stats


def health_stats(indices: np.ndarray, samples: np.ndarray, levels: dict[str, dict[str, float]], adjusted: bool,
                 sampler: Any) -> dict[str, Any]:
    """Non-finite samples (count and first indices) and the degenerate levels, from all shards of the run."""
    broken = ~np.isfinite(samples.reshape(len(samples), -1)).all(1)
    stats: dict[str, Any] = {"n_nonfinite_samples": int(broken.sum()),
                             "nonfinite_sample_indices": indices[broken][:20].tolist()}
    nonfinite_samples = levels.get("nonfinite_sample_share")
    if not nonfinite_samples or sampler is None:
        return stats
    nonfinite_log_ratios = levels.get("nonfinite_log_ratio_share", {})
    accept_per_level = levels.get("accept_rate", {})
    problems = {}
    for level, share in nonfinite_samples.items():
        accept = accept_per_level.get(level) if adjusted else None
        found = sampler.degeneracy.problems(accept, nonfinite_log_ratios.get(level, 0.0), share)
        if found:
            problems[int(level)] = found
    stats.update(nonfinite_sample_share_per_level=nonfinite_samples,
                 degenerate_levels={str(k): v for k, v in sorted(problems.items(), reverse=True)},
                 degenerate_report=degenerate_report(problems))
    return stats


def particle_stats(shards: list[Shard], levels: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The particles over the whole run: the number of groups, the mean ESS over levels, the resampling events,
    log Ẑ per group (its mean and standard error) and the unique ancestors at the end; empty without particles."""
    if "group_log_z" not in shards[0]:
        return {}
    log_z = np.concatenate([s["group_log_z"] for s in shards])
    ancestors = np.concatenate([s["group_unique_ancestors"] for s in shards])
    return {
        "n_groups": int(sum(len(s["group_ids"]) for s in shards)),
        "ess_mean": float(np.mean(list(levels.get("ess_mean", {}).values()))),
        "resampling_events": int(sum(levels.get("resampled_groups", {}).values())),
        "log_z_mean": float(log_z.mean()),
        "log_z_se": float(log_z.std(ddof=1) / math.sqrt(len(log_z))) if len(log_z) > 1 else math.nan,
        # log of the mean of Ẑ over groups: the unbiased estimate (in Ẑ) of the normalising constant of γ_0
        "log_mean_z": float(np.logaddexp.reduce(log_z) - math.log(len(log_z))),
        "unique_ancestors_mean": float(ancestors.mean()),
        "unique_ancestors_min": int(ancestors.min()),
    }


def step_table_stats(record: dict[str, Any] | None) -> dict[str, Any]:
    """The tuned (or reused) step size per level and how it was obtained, when the sampler used a step table."""
    if record is None:
        return {}
    return {"step_sizes": record["step_sizes"],
            "step_tuning": {k: v for k, v in record.items() if k not in ("step_sizes", "format")}}


# ----- weighted particles ----------------------------------------------------------------------------------------


def weighted_output(shards: list[Shard], order: np.ndarray) -> np.ndarray | None:
    """The samples' log-weights in index order when the run kept weights (``final: weighted``: not all zero)."""
    if "log_weight" not in shards[0]:
        return None
    log_weight = np.concatenate([s["log_weight"] for s in shards])[order]
    return log_weight if np.any(log_weight != 0) else None


def equally_weighted(merged: dict[str, Any], log_weight: np.ndarray) -> dict[str, Any]:
    """What metric callbacks and pictures score for weighted samples: a systematic resample of them (by their
    weights, the same every time) with equal weights; samples.npz keeps the weighted samples themselves."""
    weights = np.exp(log_weight - log_weight.max())
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    chosen = np.minimum(np.searchsorted(cdf, (np.arange(len(weights)) + 0.5) / len(weights), side="right"),
                        len(weights) - 1)
    view = {key: (value[chosen] if key in ("samples", "indices", "labels", "images") and value is not None else value)
            for key, value in merged.items()}
    return {**view, "log_weight": log_weight}
