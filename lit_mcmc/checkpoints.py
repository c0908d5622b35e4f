"""Reading checkpoint files, with one clear message for a file that ``torch.load`` cannot read.

torch's own messages are long, and for a file holding other Python objects they advise re-running with
``weights_only=False``, which would run whatever code the file carries. Here such a file is named with the config
key that points to it, and the advice is never given. Files are always read with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


def unreadable_checkpoint(path: str | Path, key: str, err: BaseException) -> ValueError:
    """The error to raise instead of ``err`` (what torch.load raised): the file, the config key and what is wrong."""
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        reason = ("it holds Python objects other than tensors and plain values (a foreign or tampered file); it was "
                  "refused, and nothing in it ran")
    elif isinstance(err, EOFError) or "central directory" in str(err) or "zip" in str(err).lower():
        reason = "it is empty, truncated or not a PyTorch zip file (an interrupted copy?)"
    else:
        reason = f"it is not a PyTorch checkpoint ({type(err).__name__})"
    return ValueError(f"{key}={str(path)!r} is not a readable checkpoint: {reason}. Point {key} at the intended file")


def read_checkpoint(path: str | Path, key: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU (tensor data memory-mapped with ``mmap``); a file it
    cannot read is one clear ValueError naming ``key``, the config key that points to the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - garbage makes the unpickler raise anything: every failure is the file's
        raise unreadable_checkpoint(path, key, err) from None


def check_readable(path: str | Path, key: str) -> None:
    """The clear error now if ``path`` is not a readable checkpoint (cheap: its tensors are mapped, not read), before
    a library's own loader reports it less clearly."""
    read_checkpoint(path, key, mmap=True)
