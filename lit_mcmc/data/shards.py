"""What a predict run writes, and how: the shard format (one ``.npz`` per batch in ``<run>/shards``) and the atomic
writers every file of a run goes through (a temporary file in the same folder, then a rename: a reader sees the
whole file or none, and a crash leaves no truncated file behind).

The ``SampleWriter`` callback writes the shards and the merged files with these; the CLI checks a run directory
with them before anything is sampled, and finds the run's writer by what it does (:func:`find_sample_writer`),
without importing the callbacks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

SHARD_PATTERN = re.compile(r"^shard_(\d+)_(\d+)\.npz$")


# ----- atomic writers --------------------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[IO[Any]], None], binary: bool = True, suffix: str = "") -> None:
    """Write ``path`` through ``write(file)`` so that readers see either nothing or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """An ``.npz`` of ``arrays``, written atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: Path, record: Any) -> None:
    """``record`` as indented JSON, written atomically."""
    atomic_write(path, lambda f: json.dump(record, f, indent=2), binary=False, suffix=".json")


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save(obj)``, written atomically."""
    atomic_write(path, lambda f: torch.save(obj, f), suffix=".pt")


# ----- the shards ------------------------------------------------------------------------------------------------


def shard_name(indices: np.ndarray) -> str:
    """File name of a shard holding these global indices (named by the first and last)."""
    return f"shard_{int(indices[0]):09d}_{int(indices[-1]):09d}.npz"


def shard_paths(output_dir: str | Path) -> list[Path]:
    """All complete shards in a directory (temporary files of interrupted writes are ignored)."""
    directory = Path(output_dir) / "shards"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD_PATTERN.match(p.name))


def read_shard(path: Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of a shard (all, or only ``keys``), or None with a warning when the file cannot be read.

    Shards are written atomically, but a node crash can still leave a renamed file whose data never reached the
    disk; such a shard is treated as missing, so its samples are drawn (and its file rewritten) again.
    """
    try:
        with np.load(path) as shard:
            return {key: shard[key] for key in (keys or shard.files)}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable sample shard {path} ({type(err).__name__}: {err}); its samples are "
                      "drawn again", stacklevel=2)
        return None


# ----- the run directory -----------------------------------------------------------------------------------------


def expected_bytes(datamodule: Any, pl_module: Any) -> int:
    """A lower bound on what a predict run writes: every sample twice (its shard and samples.npz), in float32."""
    n_samples = getattr(datamodule, "n_samples", None)
    shape = getattr(pl_module, "sample_shape", None)
    if n_samples is None or shape is None:
        return 0
    return 2 * 4 * int(n_samples) * int(np.prod(shape))


def check_output_dir(directory: Path, needed_bytes: int) -> None:
    """A clear error before sampling starts if ``directory`` cannot be written or lacks the space ``needed_bytes``."""
    try:
        (directory / "shards").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory / "shards", prefix=".probe_"):
            pass
    except OSError as err:
        raise OSError(f"the output directory {directory} (trainer.default_root_dir, or the SampleWriter's output_dir) "
                      f"cannot be written: {err.strerror or err}") from None
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OSError(f"the output directory {directory} has {free / 2**20:.0f} MiB free, but the run writes at least "
                      f"{needed_bytes / 2**20:.0f} MiB: free space or choose another trainer.default_root_dir")


def find_sample_writer(callbacks: Sequence[Any]) -> Any:
    """The run's sample writer among ``callbacks`` (the prediction writer that writes shards into the directory
    its ``resolve_dir(trainer)`` names), or None."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    for callback in callbacks:
        if isinstance(callback, BasePredictionWriter) and callable(getattr(callback, "resolve_dir", None)):
            return callback
    return None
