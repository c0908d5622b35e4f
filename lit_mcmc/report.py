"""What a sampling run reports, in one place: the columns that tell sampler runs apart.

A predict run's ``stats.json`` holds its hyper-parameters (:func:`sampler_hparams`: only what distinguishes
samplers, no paths) and its sampler statistics; ``metrics.json`` the quality metrics of its metric callbacks. The
:class:`~callbacks.sample_writer.SampleWriter` turns them into one TensorBoard HParams session
(:func:`write_hparams_session`), and ``lit-mcmc-compare`` prints them as a table, both with the columns and labels
defined here (:data:`HPARAM_COLUMNS`, :func:`metric_columns`), in the same order.

TensorBoard's HPARAMS page orders hyper-parameters by name and ticks the first five of them (and the first five
metrics) for display. The session names each hyper-parameter with its column position (``"03 step_size"``) and
shows its plain name as the display name, so the table opens on sampler, model, step size, K and composition.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

TEXT, NUMBER, FLAG = "text", "number", "flag"
METRIC_TAG_PREFIX = "metrics/"


@dataclass(frozen=True)
class Column:
    """One column of the comparison: its key in stats.json / metrics.json, its header and its value type."""

    key: str
    label: str
    kind: str = NUMBER


def _same(key: str, kind: str = NUMBER) -> Column:
    return Column(key, key, kind)


# Hyper-parameters in display order (HPARAMS shows the first five by default).
HPARAM_COLUMNS: tuple[Column, ...] = (
    _same("sampler", TEXT), _same("model", TEXT), _same("step_size"), _same("n_steps"), _same("composition", TEXT),
    _same("step_a"), _same("step_b"), _same("step_scaling", TEXT), _same("target_accept"), _same("n_leapfrog"),
    _same("damping"), _same("mass"), _same("mass_beta_power"), _same("kernel", TEXT), _same("correction", TEXT),
    _same("n_points"), _same("quadrature", TEXT), _same("flip_on_reject", FLAG), _same("carry_momentum", FLAG),
    _same("reverse", FLAG), _same("reverse_variance", TEXT), _same("reverse_eta"), _same("min_mcmc_level"),
    _same("step_table", TEXT), _same("tune_samples"), _same("tune_steps"), _same("levels"), _same("guidance_scale"),
    _same("mh_scale"), _same("n_samples"), _same("seed"), _same("precision", TEXT), _same("resample", TEXT),
    _same("resample_group_size"), _same("resample_ess_threshold"), _same("resample_final", TEXT),
    _same("final_denoise", FLAG),
)
HPARAM_KEYS = tuple(column.key for column in HPARAM_COLUMNS)
# Columns shown whatever the runs hold, so that a row always says which sampler on which model it is.
ALWAYS_SHOWN = ("sampler", "model")

TOY2D_METRICS = (Column("ll", "LL ↑"), Column("w2", "W2 ↓"), Column("gmm", "GMM ↓"))
IMAGE_METRICS = (Column("r3_accuracy", "accuracy (R3) ↑"), Column("top1_accuracy", "top-1 ↑"), Column("fid", "FID ↓"))
SAMPLER_METRICS = (Column("accept_rate", "acceptance"), Column("nfe_per_sample", "NFE/sample"),
                   Column("samples_per_second", "samples/s"), Column("n_nonfinite_log_ratios", "non-finite log-ratios"),
                   Column("quadrature_error_mean", "quadrature error"), Column("wall_seconds", "wall s"),
                   Column("ess_mean", "ESS (mean)"), Column("resampling_events", "resamplings"),
                   Column("log_z_mean", "log Ẑ"), Column("log_z_se", "log Ẑ s.e."),
                   Column("unique_ancestors_mean", "unique ancestors"))
QUALITY_METRICS = (*TOY2D_METRICS, *IMAGE_METRICS)
# Metrics some runs report (lit_mcmc.metrics.feature_metrics, .clip_score, .images): labelled, not declared for all.
OPTIONAL_METRICS = (Column("top5_accuracy", "top-5 ↑"), Column("kid", "KID ↓"), Column("precision", "precision ↑"),
                    Column("recall", "recall ↑"), Column("clip_score_min", "CLIP (min) ↑"),
                    Column("clip_score_min_per_image", "CLIP (min per image) ↑"))
KNOWN_METRICS = {column.key: column for column in (*QUALITY_METRICS, *SAMPLER_METRICS, *OPTIONAL_METRICS)}
# A metric's uncertainty keys (lit_mcmc.metrics.uncertainty.Estimate.as_metrics) and the words their labels end with.
UNCERTAINTY_LABELS = {"_se": "s.e.", "_low": "95 % low", "_high": "95 % high"}

KERNELS = ("reverse", "ula", "mala", "uhmc", "hmc")
MODEL_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin")


# ----- the hyper-parameters of a run ----------------------------------------------------------------------------

def _field(record: Any, name: str) -> Any:
    """A field of a config given as a dataclass, a Namespace or a dict (None when absent)."""
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def short_path_name(path: str) -> str:
    """A file or folder name without a weights suffix (``.../256x256_diffusion.pt`` -> ``256x256_diffusion``)."""
    name = PurePath(path).name
    for suffix in MODEL_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def checkpoint_run_name(checkpoint: str) -> str:
    """The training run a checkpoint belongs to: the folder above ``checkpoints/`` (else the file's stem)."""
    folders = PurePath(checkpoint).parts[:-1]
    for above, folder in zip(reversed(folders[:-1]), reversed(folders[1:]), strict=True):
        if folder == "checkpoints":
            return above
    return short_path_name(checkpoint)


def component_name(component: Any) -> str:
    """A short name of one component: its checkpoint's run name, the analytic target, or the published model."""
    if _field(component, "checkpoint"):
        return checkpoint_run_name(str(_field(component, "checkpoint")))
    if _field(component, "analytic"):
        return str(_field(component, "analytic"))
    path = _field(component, "path")
    return short_path_name(str(path)) if path else str(_field(component, "pretrained"))


def model_identifier(components: Mapping[str, Any]) -> str:
    """The models a composition samples, e.g. ``gmm_score+bar_score`` or ``score+noisy_classifier``."""
    names = [component_name(component) for component in components.values()]
    return "+".join(dict.fromkeys(names))


def relevant_keys(hparams: Mapping[str, Any]) -> set[str]:
    """The hyper-parameters a run's kernel and composition use (a Langevin run has no leapfrog steps, ...)."""
    used = {"sampler", "model", "kernel", "composition", "guidance_scale", "mh_scale", "levels", "n_samples", "seed",
            "precision", "resample"}
    if _present(hparams.get("resample")):
        used |= {"resample_group_size", "resample_ess_threshold", "resample_final"}
    if not hparams.get("reverse", True):
        used.add("final_denoise")
    kernel, correction = hparams.get("kernel"), hparams.get("correction")
    if hparams.get("reverse", True):
        used.add("reverse_variance")
        if hparams.get("reverse_eta", 1.0) not in (1.0, None, "none"):  # DDIM's η, shown away from DDPM's 1
            used.add("reverse_eta")
    if kernel in (None, "reverse"):
        return used
    if hparams.get("step_scaling") not in (None, "none"):
        used.add("step_scaling")
    used |= {"n_steps", "reverse", "min_mcmc_level", "step_table"}
    used |= {"step_size"} if _present(hparams.get("step_size")) else {"step_a", "step_b"}
    if _present(hparams.get("target_accept")):
        used |= {"target_accept", "tune_samples", "tune_steps"}
    if kernel in ("mala", "hmc"):
        used.add("correction")
    if correction in ("line", "curve"):
        used |= {"n_points", "quadrature"}
    if kernel in ("uhmc", "hmc"):
        used |= {"n_leapfrog", "damping", "carry_momentum"}
        used |= {"mass_beta_power"} if _present(hparams.get("mass_beta_power")) else {"mass"}
    if kernel == "hmc":
        used.add("flip_on_reject")
    return used


def _present(value: Any) -> bool:
    """Whether a field holds a value (older stats.json files write missing values as "none")."""
    return value is not None and value != "none"


def distinguishing(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of :data:`HPARAM_COLUMNS` that apply to the run and have a value, in column order."""
    used = relevant_keys(hparams)
    return {key: hparams[key] for key in HPARAM_KEYS if key in used and _present(hparams.get(key))}


def sampler_hparams(sampler: Any, composition: Any, components: Mapping[str, Any], *, levels: int, seed: int,
                    precision: str) -> dict[str, Any]:
    """What distinguishes a sampling run (stats.json's ``hparams``): sampler, kernel settings, composition, levels,
    seed, precision and a short model identifier; no paths (a reused step table is named by its run folder)."""
    fields = {key: _field(sampler, key) for key in HPARAM_KEYS}
    fields.update(resample_hparams(_field(sampler, "resample")))
    step_table = _field(sampler, "step_table")
    fields.update(
        sampler=sampler.name, model=model_identifier(components), composition=_field(composition, "kind"),
        guidance_scale=_field(composition, "scale"), mh_scale=_field(composition, "mh_scale"), levels=levels,
        seed=seed, precision=precision, n_samples=None,
        step_table=PurePath(step_table).parent.name or short_path_name(step_table) if step_table else None)
    return distinguishing(fields)


def resample_hparams(resample: Any) -> dict[str, Any]:
    """The particle settings as flat columns: ``resample`` (the weights, or "none") and, when on, the rest."""
    if resample is None:
        return {"resample": "none"}
    return {"resample": _field(resample, "weights"), "resample_group_size": _field(resample, "group_size"),
            "resample_ess_threshold": _field(resample, "ess_threshold"), "resample_final": _field(resample, "final")}


def run_hparams(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run's hyper-parameters (from its stats.json): its ``hparams`` and the number of samples."""
    return distinguishing({**stats.get("hparams", {}), "n_samples": stats.get("n_samples")})


# ----- the metrics of a run -------------------------------------------------------------------------------------

def run_metrics(stats: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, float]:
    """Every number a run reports: the sampler statistics of stats.json and the metrics of metrics.json."""
    values = {column.key: stats[column.key] for column in SAMPLER_METRICS if column.key in stats}
    values.update(metrics)
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def quality_family(sample_shape: Sequence[int]) -> tuple[Column, ...]:
    """The quality metrics runs of this kind are scored with: LL/W2/GMM for 2D points, accuracy/FID for images."""
    if len(sample_shape) == 1 and sample_shape[0] == 2:
        return TOY2D_METRICS
    if len(sample_shape) == 3:
        return IMAGE_METRICS
    return ()


def metric_columns(quality: Sequence[Column], keys: Sequence[str] = ()) -> list[Column]:
    """The declared metrics: the quality family, the sampler statistics, then any other metric in ``keys``; each
    metric's standard error and interval in ``keys`` right after it, so that they read together."""
    present = set(keys)
    columns: list[Column] = []
    for column in [*quality, *SAMPLER_METRICS]:
        columns += [column, *(metric_column(column.key + suffix) for suffix in UNCERTAINTY_LABELS
                              if column.key + suffix in present)]
    known = {column.key for column in columns}
    columns += [metric_column(key) for key in dict.fromkeys(keys) if key not in known]
    return columns


def metric_column(key: str) -> Column:
    """A metric's column: its declared label, "<label> s.e." (or "95 % low"/"95 % high") for the uncertainty of
    a declared metric (``fid_se`` → "FID s.e."), else the key itself."""
    if key in KNOWN_METRICS:
        return KNOWN_METRICS[key]
    for suffix, words in UNCERTAINTY_LABELS.items():
        base = KNOWN_METRICS.get(key.removesuffix(suffix)) if key.endswith(suffix) else None
        if base is not None:
            return Column(key, f"{base.label.rstrip(' ↑↓')} {words}")
    return Column(key, key)


# ----- the TensorBoard HParams session --------------------------------------------------------------------------

def tensorboard_name(key: str) -> str:
    """The hyper-parameter's name in the HParams session: its column position first, so HPARAMS keeps the order."""
    return f"{HPARAM_KEYS.index(key) + 1:02d} {key}"


def _data_type(kind: str) -> int:
    return {TEXT: api_pb2.DATA_TYPE_STRING, NUMBER: api_pb2.DATA_TYPE_FLOAT64, FLAG: api_pb2.DATA_TYPE_BOOL}[kind]


def _hparam_info(column: Column) -> api_pb2.HParamInfo:
    info = api_pb2.HParamInfo(name=tensorboard_name(column.key), display_name=column.label,
                              type=_data_type(column.kind))  # type: ignore[arg-type]
    if column.kind == FLAG:
        info.domain_discrete.extend([False, True])
    elif column.key == "kernel":
        info.domain_discrete.extend(list(KERNELS))
    return info


def _value(value: Any) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def hparams_session(hparams: Mapping[str, Any], metrics: Sequence[Column]) -> list[Summary]:
    """The HParams plugin's experiment (every column declared, so all runs of a folder agree), the session's start
    (this run's hyper-parameters) and its end (success)."""
    experiment = api_pb2.Experiment(
        hparam_infos=[_hparam_info(column) for column in HPARAM_COLUMNS],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=METRIC_TAG_PREFIX + column.key),
                                         display_name=column.label) for column in metrics])
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in distinguishing(hparams).items():
        start.hparams[tensorboard_name(key)].CopyFrom(_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))]


def write_hparams_session(writer: Any, hparams: Mapping[str, Any], metrics: Mapping[str, float],
                          quality: Sequence[Column]) -> None:
    """Write a run's HParams session and its metric scalars (``metrics/<key>``, step 0) with a torch SummaryWriter."""
    columns = metric_columns(quality, list(metrics))
    file_writer = writer._get_file_writer()  # what SummaryWriter.add_hparams uses for these summaries
    for summary in hparams_session(hparams, columns):
        file_writer.add_summary(summary)
    for key, value in metrics.items():
        writer.add_scalar(METRIC_TAG_PREFIX + key, value, 0)
    writer.flush()


# ----- reading it back --------------------------------------------------------------------------------------------

@dataclass
class Session:
    """One run's HParams session as read back from its event file (display names as TensorBoard shows them)."""

    run_dir: str
    hparam_names: list[str]  # the declared hyper-parameters' names, in the experiment's order
    hparam_labels: list[str]  # and their display names
    metric_tags: list[str]
    metric_labels: list[str]
    hparams: dict[str, Any]  # this run's values, by display name


def _plugin_data(accumulator: Any, tag: str) -> plugin_data_pb2.HParamsPluginData:
    content = accumulator.SummaryMetadata(tag).plugin_data.content
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def read_hparams_sessions(root: str | Path) -> list[Session]:
    """Every HParams session in the event files below ``root`` (one per run folder that has one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # only when reading

    sessions = []
    for run_dir in sorted({events.parent for events in Path(root).rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
        accumulator.Reload()
        if metadata.EXPERIMENT_TAG not in accumulator.Tags().get("tensors", []):
            continue
        experiment = _plugin_data(accumulator, metadata.EXPERIMENT_TAG).experiment
        start = _plugin_data(accumulator, metadata.SESSION_START_INFO_TAG).session_start_info
        labels = {info.name: info.display_name for info in experiment.hparam_infos}
        metrics = experiment.metric_infos
        sessions.append(Session(
            str(run_dir), [info.name for info in experiment.hparam_infos], list(labels.values()),
            [info.name.tag for info in metrics], [info.display_name for info in metrics],
            {labels.get(name, name): MessageToDict(value) for name, value in start.hparams.items()}))
    return sessions
