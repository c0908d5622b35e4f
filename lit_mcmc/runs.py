"""A run directory is one run: ``run.json`` records the settings that determine its samples.

The first ``lit-mcmc predict`` into a directory writes ``run.json`` (atomically, before any shard) with:

- ``settings``: every key of the resolved ``model`` section (components, composition, sampler, schedule, respacing,
  sample shape, seed, precision, compile, and any key added to them later), flattened to the full key path
  (``model.sampler.kernel``), plus the ``data`` section's keys except ``data.batch_size`` and ``data.output_dir``;
- ``files``: the identity of every file a key points to (checkpoints, published weights, diffusers folders, prompt
  embeddings, ``model.sampler.step_table``): its size and a SHA-256 (of the whole file up to 64 MiB; of its first
  and last 4 MiB and its size above that), so a checkpoint that moved but is the same file still resumes, and
  one that changed under the same path does not. The paths themselves (and ``model.checkpoint_root``) are only
  recorded under ``locations``, which is not compared;
- ``n_samples``: ``data.n_samples``.

What does not change samples is left out: callbacks, loggers, the batch size and the trainer's devices, nodes,
strategy or accelerator (resuming on another number of processes is what resume is for).

A rerun whose settings and files match resumes. More samples with otherwise equal settings extend the run (samples
are keyed by their index, so the ones already drawn are kept bit for bit). Anything else, fewer samples included,
is refused with one line naming the first differing keys; ``--overwrite`` first moves the old run aside to
``<dir>.old-<timestamp>``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from lit_mcmc.data.shards import atomic_write_text

RUN_FILE = "run.json"
RUN_FORMAT = "lit_mcmc.run/1"
WHOLE_FILE_HASH = 64 * 2**20  # bytes: files up to this size are hashed whole
HEAD_TAIL = 4 * 2**20  # bytes hashed at each end of a larger file
# Keys of the model section that only locate a file: its identity is recorded instead of (next to) the path.
COMPONENT_FILE_KEYS = ("checkpoint", "path", "embeddings")
# Keys of the data section that do not change any sample.
DATA_KEYS_IGNORED = ("batch_size", "output_dir", "n_samples")
# Settings added after runs were first recorded, with the value that does what runs recorded without them did: a
# record that lacks one ran with that value. (An optional setting added later is null when unset, needing no entry.)
ADDED_SETTINGS: dict[str, Any] = {"model.sampler.reverse_eta": 1.0, "model.sampler.step_scaling": "none"}
# Outputs of a run: a directory holding any of these holds a run.
RUN_OUTPUTS = (RUN_FILE, "shards", "samples.npz", "stats.json", "step_sizes.json")


class RunMismatch(ValueError):
    """The run directory holds another run (one line, naming the keys and the way out)."""


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """{"model.sampler.kernel": "hmc", ...}: dicts and namespaces flattened, "init_args" levels dropped."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, prefix if key == "init_args" else f"{prefix}.{key}"))
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}


def file_identity(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file (whole up to 64 MiB, else its first and last 4 MiB); for a folder, that of every
    file in it (hidden files left out), keyed by the relative path."""
    if path.is_dir():
        return {"folder": {str(p.relative_to(path)): file_identity(p) for p in sorted(path.rglob("*"))
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= WHOLE_FILE_HASH:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return {"size": size, "sha256": digest.hexdigest()}
        digest.update(f.read(HEAD_TAIL))
        f.seek(size - HEAD_TAIL)
        digest.update(f.read(HEAD_TAIL))
        return {"size": size, "sha256_first_last_4MiB": digest.hexdigest()}


def _resolve(path: str, root: Path) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else root / resolved


def run_record(config: Any) -> dict[str, Any]:
    """The ``run.json`` record of a predict config (the resolved jsonargparse namespace of the subcommand)."""
    model = flatten(config.get("model"), "model")
    data = flatten(config.get("data"), "data")
    root = Path(model.pop("model.checkpoint_root", None) or ".")
    locations: dict[str, str] = {"model.checkpoint_root": str(root.resolve())}
    files: dict[str, Any] = {}
    components = {key for key in model if key.startswith("model.components.")}
    for key in sorted(components):
        field = key.rsplit(".", 1)[1]
        if field in COMPONENT_FILE_KEYS and isinstance(model[key], str):
            path = _resolve(model.pop(key), root)
            locations[key] = str(path.resolve())
            files[key] = file_identity(path) if path.exists() else "missing"
    if isinstance(model.get("model.sampler.step_table"), str):  # read relative to the working directory
        path = Path(model.pop("model.sampler.step_table")).expanduser()
        locations["model.sampler.step_table"] = str(path.resolve())
        files["model.sampler.step_table"] = file_identity(path) if path.exists() else "missing"
    settings = {**model, **{k: v for k, v in data.items() if k.rsplit(".", 1)[1] not in DATA_KEYS_IGNORED}}
    n_samples = data.get("data.n_samples")
    return {"format": RUN_FORMAT, "n_samples": n_samples, "settings": settings, "files": files,
            "locations": locations}


def _compared(record: dict[str, Any]) -> dict[str, Any]:
    return {**record.get("settings", {}), **record.get("files", {})}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, dict) else "a file of size " + str(value.get("size", "?"))
    if isinstance(value, dict) and "folder" in value:
        text = f"a folder of {len(value['folder'])} files"
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: was X, now Y' for every compared key that differs (the new config's order, then keys it lacks)."""
    before, after = _compared(old), _compared(new)
    missing = object()
    changed = []
    for key in [*after, *(k for k in before if k not in after)]:
        was, now = before.get(key, missing), after.get(key, missing)
        if was is missing and (now is None or ADDED_SETTINGS.get(key, missing) == now):
            continue  # a setting added since that run, at the value the run had
        if was != now:
            if key in new.get("files", {}) or key in old.get("files", {}):
                detail = "another file (size and SHA-256 differ)" if was is not missing and now is not missing \
                    else ("not set before" if was is missing else "not set now")
                changed.append(f"{key}: {detail}")
            else:
                shown = ("not set" if v is missing else _short(v) for v in (was, now))
                changed.append(f"{key} was {next(shown)}, now {next(shown)}")
    return changed


def holds_run(directory: Path) -> bool:
    """Whether ``directory`` holds the outputs of a predict run (not only logs)."""
    return any((directory / name).exists() for name in RUN_OUTPUTS)


def aside_path(directory: Path) -> Path:
    """``<dir>.old-<YYYYmmdd-HHMMSS>`` (with -1, -2, ... when taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 0
    while candidate.exists():
        n += 1
        candidate = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
    return candidate


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Write ``run.json`` atomically (temporary file + rename)."""
    try:
        atomic_write_text(directory / RUN_FILE, json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise OSError(f"the output directory {directory} (trainer.default_root_dir, or the SampleWriter's output_dir) "
                      f"cannot be written: {err.strerror or err}") from None


def claim_run_dir(directory: Path, record: dict[str, Any], overwrite: bool = False, write: bool = True) -> str | None:
    """Check that ``directory`` holds this run (or none) and record it there; returns a line for the console (an
    extension, or where ``overwrite`` moved the old run), else None. Raises :class:`RunMismatch` (nothing written)
    when it holds another run. ``write`` false (ranks other than 0) only checks."""
    directory = Path(directory)
    way_out = (f"sample into another --trainer.default_root_dir, or pass --overwrite to move the old run aside to "
               f"{directory}.old-<timestamp>")
    note = None
    if overwrite and holds_run(directory):
        if not write:
            return None  # rank 0 moves it
        if Path.cwd().resolve().is_relative_to(directory.resolve()):
            raise RunMismatch(f"--overwrite would move {directory.resolve()}, which holds the working directory: set "
                              "trainer.default_root_dir to the run's own directory")
        target = aside_path(directory)
        directory.rename(target)
        note = f"--overwrite: moved the earlier run in {directory} to {target}; sampling afresh"
    saved_file = directory / RUN_FILE
    if saved_file.is_file():
        try:
            saved = json.loads(saved_file.read_text())
        except (OSError, ValueError) as err:
            raise RunMismatch(f"{saved_file} cannot be read ({err}); {way_out}") from None
        changed = differences(saved, record)
        if changed:
            shown = "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "")
            raise RunMismatch(f"{directory} holds a run with other settings ({shown}); its samples are not mixed with "
                              f"these: {way_out}")
        old_n, new_n = saved.get("n_samples"), record.get("n_samples")
        if isinstance(old_n, int) and isinstance(new_n, int) and new_n < old_n:
            raise RunMismatch(f"data.n_samples={new_n} is smaller than the {old_n} samples of the run in {directory}; "
                              f"a run is never cut short: read the first {new_n} of its samples.npz, or {way_out}")
        if isinstance(old_n, int) and isinstance(new_n, int) and new_n > old_n:
            note = (f"extending the run in {directory} from data.n_samples={old_n} to {new_n}: its {old_n} samples "
                    "are kept as they are and only the new indices are drawn")
            if write:
                write_record(directory, {**record, "extended_from": [*saved.get("extended_from", []), old_n]})
        return note
    if (directory / "samples.npz").exists() or any((directory / "shards").glob("shard_*.npz")):
        raise RunMismatch(f"{directory} holds samples but no {RUN_FILE} (an older lit-mcmc wrote them), so their "
                          f"settings are unknown and they are not resumed: {way_out}")
    if write:
        write_record(directory, record)
    return note
