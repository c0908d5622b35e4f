"""What is in a diffusers folder, and whether it is safe and possible to read: local folders only, the class each
config names, weight files (``.safetensors`` preferred; a pickled ``.bin`` that holds more than tensors is refused
before any library opens it), and the packages a tokenizer needs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

# Tokenizer files and the package that reads each (when no tokenizer.json lets the fast tokenizer do without it).
TOKENIZER_PACKAGES = {"spiece.model": "sentencepiece", "tokenizer.model": "sentencepiece",
                      "sentencepiece.bpe.model": "sentencepiece"}


def check_local_folder(path: Path, given: str, key: str) -> None:
    """A diffusers folder must exist locally: a hub id or a missing folder is an error saying how to get it."""
    if path.is_dir():
        return
    how = ("download it first on a machine with internet access (`huggingface-cli download {id} --local-dir DIR`, "
           "or load it there with diffusers' DiffusionPipeline and call its save_pretrained(DIR)), copy DIR here and "
           "set {key} to it (relative paths start at model.checkpoint_root); nothing is downloaded at run time")
    looks_like_hub_id = given.count("/") == 1 and not given.startswith((".", "/", "~")) and not path.exists()
    if looks_like_hub_id:
        raise FileNotFoundError(f"{key}={given!r} looks like a Hugging Face hub id, not a local folder ({path} does "
                                "not exist): " + how.format(id=given, key=key))
    raise FileNotFoundError(f"diffusers model folder not found: {path} ({key}={given!r}); "
                            + how.format(id="<org>/<model>", key=key))


def class_name(folder: Path, config_name: str) -> str | None:
    """The ``_class_name`` a diffusers config file names (None without the file)."""
    config = folder / config_name
    return json.loads(config.read_text()).get("_class_name") if config.is_file() else None


def weight_files(folder: Path) -> list[str]:
    """The weight files in ``folder``, by name."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def has_safetensors(folder: Path) -> bool:
    """Whether ``folder`` holds ``.safetensors`` weights (then they are read, never a ``.bin`` beside them)."""
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def refuse_pickled_weights(folder: Path, key: str) -> None:
    """Every ``.bin`` in ``folder`` that would be read (no ``.safetensors`` there) must hold tensors only.

    Each is opened as ``torch.load(weights_only=True)`` does, with its tensors memory-mapped, not read: a file with
    other pickled objects is one line naming it, before diffusers or transformers open it (their own message would
    advise ``weights_only=False``, which runs whatever code the file carries).
    """
    if not folder.is_dir() or has_safetensors(folder):
        return
    for path in sorted(folder.glob("*.bin")):
        try:
            _load_weights_only(path)
        except Exception as err:  # noqa: BLE001 - whatever the unpickler raises, the file is not plain weights
            what = ("it holds pickled Python objects other than tensors" if "weights only" in str(err).lower()
                    else "it is not a PyTorch weights file (truncated, or another format)")
            raise ValueError(f"{path} ({key}) was refused, nothing in it ran: {what}; use .safetensors weights "
                             "(save_pretrained writes them) or a trusted copy of the folder") from None


def _load_weights_only(path: Path) -> None:
    """``torch.load(weights_only=True)`` with the tensors memory-mapped; a file in torch's legacy (pre-zip) format
    cannot be mapped and is read whole instead."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        torch.load(path, map_location="cpu", weights_only=True)


def check_tokenizer_packages(folder: Path, key: str) -> None:
    """A tokenizer whose files need a package that is not installed is one line naming the package (transformers
    would otherwise fall back to another reader and fail with a message about that one)."""
    if not folder.is_dir() or (folder / "tokenizer.json").is_file():
        return
    for name, package in TOKENIZER_PACKAGES.items():
        if (folder / name).is_file() and importlib.util.find_spec(package) is None:
            raise ImportError(f"the tokenizer in {folder} ({key}) is a {name} file, which needs the '{package}' "
                              f"package: pip install {package} (it is in lit-mcmc's [pretrained] extra)")


def check_caption_packages(key: str) -> None:
    """IF's pipeline cleans captions with BeautifulSoup and ftfy; without them diffusers would silently only
    lower-case them, and the embeddings would differ from the pipeline's: one line naming what to install."""
    missing = [package for module, package in (("bs4", "beautifulsoup4"), ("ftfy", "ftfy"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"the pipeline in {key} cleans captions with {' and '.join(missing)}, not installed: pip "
                          f"install {' '.join(missing)} (they are in lit-mcmc's [pretrained] extra)")
