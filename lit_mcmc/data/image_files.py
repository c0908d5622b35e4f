"""Image datasets read from local files in their original formats: CIFAR-10 and CIFAR-100 python-pickle directories,
MNIST idx files (gzipped or plain) and plain image folders, as uint8 arrays [N, H, W, C] and int64 labels.

Nothing is ever downloaded: a missing file raises FileNotFoundError naming the path, the files expected there, where
such data is normally obtained, and the config key (``data.root``) that points to it. The CIFAR pickles are read by
a restricted unpickler that admits only the few numpy globals such a file references (see :class:`CifarUnpickler`);
any other global is refused before anything runs.
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DATASETS = ("cifar10", "cifar100", "mnist", "folder")
SPLITS = ("train", "test")
LABEL_KINDS = ("fine", "coarse")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}
_MNIST_PREFIX = {"train": "train", "test": "t10k"}
SOURCES = {
    "cifar10": "the python version of CIFAR-10 (cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "the python version of CIFAR-100 (cifar-100-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html",
    "mnist": "the MNIST idx files from http://yann.lecun.com/exdb/mnist/ or a mirror",
    "folder": "your own images, laid out as <root>/<class_name>/*.png|jpg or flat in <root>",
}
_MNIST_TRAIN_HINT = (
    " The shared MNIST folder holds only the t10k test split; to train on it set `data.train_split: test`."
)
_IDX_UBYTE = 0x08  # idx type code for unsigned bytes, the only type MNIST uses
_GRAY_MODES = ("1", "L", "LA")
FIXED_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist": (1, 28, 28)}
FIXED_CLASSES = {"cifar10": 10, "mnist": 10}
CIFAR100_CLASSES = {"fine": 100, "coarse": 20}


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}.")


def check_subset(key: str, subset: int | None, available: int | None = None) -> None:
    if subset is None:
        return
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise ValueError(f"{key}={subset!r} must be a positive integer (the first N images) or null for all.")
    if available is not None and subset > available:
        raise ValueError(
            f"{key}={subset} exceeds the {available} images available; lower it or set it to null for all."
        )


def _missing(path: Path, expected: Sequence[str], dataset: str, hint: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} not found. Expected there: {', '.join(expected)}; source: {SOURCES[dataset]}. "
        f"Nothing is downloaded: set the config key `data.root` to the folder holding these files.{hint}"
    )


def _require_dir(root: Path, expected: Sequence[str], dataset: str, hint: str = "") -> None:
    if not root.is_dir():
        raise _missing(root, expected, dataset, hint)


# ---- CIFAR-10 / CIFAR-100 python pickles ----


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A CIFAR pickle referenced a global outside :class:`CifarUnpickler`'s allow-list; nothing was loaded."""


_LATIN1_NAMES = ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how Python 3 writes bytes (numpy array data) at protocols 0-2."""
    if not isinstance(text, str) or encoding.lower() not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only on text with latin-1, not {encoding!r}")
    return text.encode("latin1")


def _numpy_global(name: str, modules: Sequence[str]) -> Any:
    """``name`` from the first of ``modules`` that has it (numpy 2 spells numpy.core as numpy._core)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides none of {', '.join(f'{m}.{name}' for m in modules)}")


def _cifar_allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a CIFAR batch written by numpy 1 or 2 may reference."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for submodule, names in (("multiarray", ("_reconstruct", "scalar")), ("numeric", ("_frombuffer",))):
        spellings = (f"numpy._core.{submodule}", f"numpy.core.{submodule}")
        for name in names:
            target = _numpy_global(name, spellings)
            allowed.update({(module, name): target for module in spellings})
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR-10/100 python batches that refuses every global a CIFAR batch does not need.

    Dicts, lists, strings, bytes and numbers are pickle opcodes and need no globals. Numpy arrays need
    ``numpy.ndarray``, ``numpy.dtype`` and ``_reconstruct`` (protocols 0-4), ``_frombuffer`` (protocol 5) or
    ``scalar`` (numpy scalars, e.g. labels of a re-pickled copy), each under its ``numpy.core`` (numpy 1) and
    ``numpy._core`` (numpy 2) module, plus ``_codecs.encode`` limited to latin-1 (bytes at protocols 0-2).
    None of these runs code chosen by the file; any other global raises :class:`UnsafePickleError`.
    """

    def __init__(self, file: Any, path: Path) -> None:
        # latin1 reads the original Python-2 pickles, numpy array data included
        super().__init__(file, encoding="latin1")
        self.path = path
        self._allowed = _cifar_allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path} is not a CIFAR batch and may have been tampered with: its pickle references the "
                f"global {module}.{name}, which CIFAR-10/100 python pickles never use (they need only numpy "
                "arrays). Nothing from it was run or loaded; replace it with the original file."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path} is not a CIFAR batch: its pickle uses persistent ids ({pid!r}).")


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        batch = CifarUnpickler(f, path).load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a pickled {type(batch).__name__}, not the dict of a CIFAR batch.")
    # keys of the original Python-2 pickles come back as bytes or str depending on who wrote the file
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_images(data: Any, path: Path) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be an N x 3072 uint8 array, got {data.dtype} {data.shape}.")
    # each row is channel-major: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _read_cifar(root: Path, files: Sequence[str], label_key: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    _require_dir(root, files, dataset)
    images, labels = [], []
    for name in files:
        path = root / name
        if not path.is_file():
            raise _missing(path, files, dataset)
        batch = _read_cifar_pickle(path)
        for key in ("data", label_key):
            if key not in batch:
                raise ValueError(f"{path} has no {key!r} entry (it has {sorted(batch)}); is it a {dataset} file?")
        batch_images = _cifar_images(batch["data"], path)
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        if batch_labels.shape != (len(batch_images),):
            raise ValueError(f"{path}: {len(batch_images)} images but {batch_labels.shape} {label_key}.")
        images.append(batch_images)
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


# ---- MNIST idx ----


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    header_size = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(raw) < header_size:
        raise ValueError(f"{path} holds {len(raw)} bytes, too few for an idx header of {header_size} bytes.")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise ValueError(
            f"{path} is not an idx file of {ndim}-d unsigned bytes: expected magic number "
            f"0x{expected_magic:08x}, found 0x{magic:08x}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    body = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if body.size != math.prod(shape):
        raise ValueError(f"{path}: the header says shape {shape} but the file holds {body.size} values.")
    return body.reshape(shape).copy()  # frombuffer views the read-only bytes


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _MNIST_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    expected = [f"{stem}[.gz]" for stem in stems]
    hint = _MNIST_TRAIN_HINT if split == "train" else ""
    _require_dir(root, expected, "mnist", hint)
    images_path, labels_path = (_find_idx(root, stem) for stem in stems)
    if images_path is None or labels_path is None:
        missing_stem = stems[0] if images_path is None else stems[1]
        raise _missing(root / f"{missing_stem}[.gz]", expected, "mnist", hint)
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels.")
    return images[..., None], labels.astype(np.int64)


# ---- plain image folders ----


def _folder_split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists, otherwise ``root`` itself (then every split reads the same images)."""
    return root / split if (root / split).is_dir() else root


def folder_groups(root: Path, split: str) -> list[tuple[int, Path]]:
    """(label, directory) pairs: sorted class sub-folders, or the folder itself with label 0 when flat."""
    expected = [f"<class_name>/*{suffix}" for suffix in IMAGE_SUFFIXES]
    _require_dir(root, expected, "folder")
    base = _folder_split_dir(root, split)
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    return list(enumerate(class_dirs)) if class_dirs else [(0, base)]


def _load_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if image.mode in _GRAY_MODES else "RGB"))


def _read_folder(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, directory in folder_groups(root, split):
        found = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(
            f"No {'/'.join(IMAGE_SUFFIXES)} images in {_folder_split_dir(root, split)} or its class "
            f"sub-folders; expected {SOURCES['folder']}. Set the config key `data.root` to such a folder."
        )
    arrays = [_load_image(p) for p in paths]
    if any(a.ndim == 3 for a in arrays):  # some colour images: expand the grey ones to RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
    else:
        arrays = [a[..., None] for a in arrays]
    for path, array in zip(paths, arrays, strict=True):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; resize the folder's images to one size."
            )
    return np.stack(arrays), np.asarray(labels, dtype=np.int64)


def load_arrays(dataset: str, root: str | Path, split: str, label_kind: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """Read a split as (uint8 images [N, H, W, C], int64 labels [N]) from local files.

    ``label_kind`` ("fine" or "coarse") selects CIFAR-100's label set; the other datasets have one.
    A "folder" reads ``root/<split>/`` when that exists, otherwise ``root`` for every split.
    """
    check_choice("dataset", dataset, DATASETS)
    check_choice("split", split, SPLITS)
    check_choice("label_kind", label_kind, LABEL_KINDS)
    root = Path(root)
    if dataset == "cifar10":
        return _read_cifar(root, _CIFAR10_FILES[split], "labels", dataset)
    if dataset == "cifar100":
        return _read_cifar(root, _CIFAR100_FILES[split], f"{label_kind}_labels", dataset)
    if dataset == "mnist":
        return _read_mnist(root, split)
    return _read_folder(root, split)
