"""Prompt embeddings as the model's own pipeline makes them.

A published pipeline folder names its pipeline class in ``model_index.json``. :func:`encode_with_pipeline` loads
that class with only its tokenizers and text encoders (no UNet, VAE or safety checker; local files only) and calls
its own ``encode_prompt``, with the values its ``__call__`` would pass (IF's caption cleaning, SDXL's two encoders
and pooled embedding, the empty prompt as zeros where ``force_zeros_for_empty_prompt`` says so). So every family
encodes prompts exactly as its owners do, and a new family needs no new text code. A folder without
``model_index.json`` (a UNet with a tokenizer and text encoder beside it) is encoded by :func:`encode_prompts`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.checkpoints import read_checkpoint
from lit_mcmc.pretrained.diffusers.files import (
    check_caption_packages,
    check_tokenizer_packages,
    has_safetensors,
    refuse_pickled_weights,
    weight_files,
)
from lit_mcmc.pretrained.diffusers.unet import TORCH_DTYPES

# encode_prompt arguments set here; any other argument it shares with the pipeline's __call__ takes __call__'s
# default (IF's clean_caption=True, for one).
SET_HERE = ("prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance", "negative_prompt")
TEXT_PARTS = ("tokenizer", "text_encoder")


@dataclass
class PromptEncoding:
    """One text's conditioning: the hidden states [L, D] the UNet cross-attends to and, for models that also take
    a pooled text embedding (SDXL's ``text_embeds``), that embedding [P]."""

    hidden: Tensor
    pooled: Tensor | None = None


def components(index: Mapping[str, Any]) -> list[str]:
    """The components a ``model_index.json`` lists (entries ``name: [library, class]``; other entries, such as
    SDXL's ``force_zeros_for_empty_prompt``, are the pipeline's own settings)."""
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


def text_parts(index: Mapping[str, Any]) -> list[str]:
    """The tokenizers and text encoders a ``model_index.json`` lists (tokenizer, text_encoder_2, …)."""
    return [name for name in components(index) if name.startswith(TEXT_PARTS)]


def load_text_pipeline(folder: Path, key: str, torch_dtype: str | None = None, variant: str | None = None) -> Any:
    """The pipeline class ``folder/model_index.json`` names, with its tokenizers and text encoders only.

    Every other component (UNet, transformer, VAE, scheduler, safety checker, …) is passed as None, so it is not
    read. Local files only; ``.safetensors`` are preferred, and a pickled ``.bin`` with more than tensors is refused
    first (:func:`~lit_mcmc.pretrained.diffusers.files.refuse_pickled_weights`). ``key`` names the folder's config
    key in errors.
    """
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    name = index.get("_class_name")
    pipeline_class = getattr(diffusers, name, None) if isinstance(name, str) else None
    if pipeline_class is None or not hasattr(pipeline_class, "encode_prompt"):
        raise ValueError(f"{folder / 'model_index.json'} names pipeline class {name!r}, which diffusers does not "
                         f"have or which encodes no prompts ({key}); give prompt embeddings with the component's "
                         "'embeddings' key instead")
    parts = text_parts(index)
    missing = [part for part in parts if index[part] and index[part][0] is not None and not (folder / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"prompts need the pipeline's {missing[0]}/ folder, not found in {folder} ({key}); "
                                "or give precomputed prompt embeddings with the component's 'embeddings' key")
    for part in parts:
        if part.startswith("tokenizer"):
            check_tokenizer_packages(folder / part, key)
        else:
            refuse_pickled_weights(folder / part, key)
    skipped = {part: None for part in components(index) if part not in parts}
    encoders = [folder / part for part in parts if part.startswith("text_encoder")]
    use_safetensors = True if encoders and all(has_safetensors(f) for f in encoders) else None
    dtype = TORCH_DTYPES[torch_dtype] if torch_dtype is not None else None
    try:
        return pipeline_class.from_pretrained(folder, local_files_only=True, torch_dtype=dtype, variant=variant,
                                              use_safetensors=use_safetensors, **skipped)
    except ImportError as err:
        raise ImportError(f"cannot read the tokenizers/text encoders in {folder} ({key}): {err}") from None
    except (OSError, ValueError) as err:
        files = {part: weight_files(folder / part) for part in parts if part.startswith("text_encoder")}
        raise ValueError(f"cannot load the text encoders in {folder} ({key}; variant={variant!r}; weight files "
                         f"there: {files}; variant: fp16 reads *.fp16.safetensors): {err}") from None


def pipeline_defaults(pipeline: Any) -> dict[str, Any]:
    """What the pipeline's ``__call__`` passes to ``encode_prompt`` by default, for the arguments both share and
    that :data:`SET_HERE` does not set (IF: ``clean_caption=True``)."""
    encode = inspect.signature(pipeline.encode_prompt).parameters
    call = inspect.signature(type(pipeline).__call__).parameters
    return {name: call[name].default for name in encode if name in call and name not in SET_HERE
            and call[name].default is not inspect.Parameter.empty and "embeds" not in name}


@torch.no_grad()
def encode_with_pipeline(folder: Path, prompts: Sequence[str], key: str = "path", torch_dtype: str | None = None,
                         variant: str | None = None, **overrides: Any) -> dict[str, PromptEncoding]:
    """{text: :class:`PromptEncoding`} for "" (the unconditional part: the pipeline's negative embedding with no
    negative prompt) and ``prompts``, from the pipeline's own ``encode_prompt`` on the CPU.

    ``overrides`` replace the pipeline's ``__call__`` defaults (e.g. ``clean_caption=False``, ``clip_skip=1``).
    Pipelines whose ``encode_prompt`` returns (embeds, negative) or (embeds, negative, pooled, negative pooled) are
    understood (Stable Diffusion 1.x/2.x, SDXL, DeepFloyd IF and the like).
    """
    pipeline = load_text_pipeline(folder, key, torch_dtype, variant)
    texts = list(dict.fromkeys(prompts))
    arguments = {**pipeline_defaults(pipeline), **overrides}
    if arguments.get("clean_caption"):
        check_caption_packages(key)
    outputs = pipeline.encode_prompt(prompt=texts or [""], device=torch.device("cpu"), num_images_per_prompt=1,
                                     do_classifier_free_guidance=True, negative_prompt=None, **arguments)
    if not isinstance(outputs, tuple) or len(outputs) not in (2, 4):
        raise ValueError(f"{type(pipeline).__name__}.encode_prompt returns {type(outputs).__name__} of "
                         f"{len(outputs) if isinstance(outputs, tuple) else '?'} parts; lit_mcmc reads (embeds, "
                         "negative) or (embeds, negative, pooled, negative pooled): give 'embeddings' instead")
    hidden, negative = outputs[0], outputs[1]
    pooled, negative_pooled = (outputs[2], outputs[3]) if len(outputs) == 4 else (None, None)
    table = {"": PromptEncoding(negative[0].float(), None if negative_pooled is None else negative_pooled[0].float())}
    for i, text in enumerate(texts):
        table[text] = PromptEncoding(hidden[i].float(), None if pooled is None else pooled[i].float())
    return table


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: nn.Module, prompts: Sequence[str]) -> dict[str, Tensor]:
    """{prompt: [L, D] embedding} for "" (the unconditional part) and ``prompts`` with a bare tokenizer and text
    encoder (folders without ``model_index.json``): padded to the tokenizer's ``model_max_length``, the encoder's
    last hidden state (T5 encoders also get the attention mask). Save the dict with ``torch.save`` to reuse it
    through ``embeddings:``."""
    texts = list(dict.fromkeys(["", *prompts]))
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    param = next(text_encoder.parameters())
    config = getattr(text_encoder, "config", None)
    kwargs = {}
    if getattr(config, "model_type", None) == "t5" or getattr(config, "use_attention_mask", False):
        kwargs["attention_mask"] = tokens.attention_mask.to(param.device)
    hidden = text_encoder(tokens.input_ids.to(param.device), **kwargs)[0]
    return {text: row.float().cpu() for text, row in zip(texts, hidden, strict=True)}


def load_text_encoder(path: Path, torch_dtype: str | None, key: str) -> tuple[Any, nn.Module]:
    """A bare folder's tokenizer and text encoder (``tokenizer/``, ``text_encoder/``), with local files only."""
    import transformers

    dtype = TORCH_DTYPES[torch_dtype] if torch_dtype is not None else None
    for part in TEXT_PARTS:
        if not (path / part).is_dir():
            raise FileNotFoundError(f"prompts need the pipeline's {part}/ folder, not found in {path} ({key}); or "
                                    "give precomputed prompt embeddings with the component's 'embeddings' key")
    check_tokenizer_packages(path / "tokenizer", key)
    refuse_pickled_weights(path / "text_encoder", key)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    config = json.loads((path / "text_encoder" / "config.json").read_text())
    name = (config.get("architectures") or ["AutoModel"])[0]
    encoder_class = getattr(transformers, name, transformers.AutoModel)
    encoder = encoder_class.from_pretrained(path / "text_encoder", dtype=dtype, local_files_only=True,
                                            use_safetensors=True if has_safetensors(path / "text_encoder") else None)
    return tokenizer, encoder.eval().requires_grad_(False)


def read_prompt_embeddings(path: Path, prompts: Sequence[str], key: str) -> dict[str, PromptEncoding]:
    """Prompt embeddings saved earlier: a dict {prompt: [L, D]} (as :func:`encode_prompts` returns), a dict {prompt:
    {"hidden": [L, D], "pooled": [P]}} (models with pooled text embeddings), or a tensor [k+1, L, D] whose rows are
    "" and then ``prompts`` in order of first appearance."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt embeddings file not found: {path} ({key}); write it with "
                                "torch.save(lit_mcmc.pretrained.diffusers.encode_prompts(tokenizer, text_encoder, "
                                "prompts), path), or remove the key to encode the prompts with the pipeline's "
                                "text encoder")
    saved = read_checkpoint(path, key)
    texts = list(dict.fromkeys(["", *prompts]))
    if isinstance(saved, Tensor):
        if saved.dim() != 3 or saved.shape[0] != len(texts):
            raise ValueError(f"{key}={str(path)!r} holds a tensor of shape {tuple(saved.shape)}; expected "
                             f"[{len(texts)}, L, D]: the empty prompt, then {texts[1:]}")
        return {text: PromptEncoding(row.float()) for text, row in zip(texts, saved, strict=True)}
    if not isinstance(saved, dict):
        raise ValueError(f"{key}={str(path)!r} holds a {type(saved).__name__}; expected a dict {{prompt: [L, D]}} "
                         "or a tensor [k+1, L, D]")
    missing = [text for text in texts if text not in saved]
    if missing:
        raise ValueError(f"{key}={str(path)!r} has no embedding for prompts {missing} (the empty prompt '' is the "
                         "unconditional part and must be there too)")
    table = {}
    for text in texts:
        value = saved[text]
        if isinstance(value, Mapping):
            pooled = value.get("pooled")
            table[text] = PromptEncoding(value["hidden"].float(), None if pooled is None else pooled.float())
        else:
            table[text] = PromptEncoding(value.float())
    return table


def prompt_table(path: Path, prompts: Sequence[str], key: str, embeddings: Path | None = None,
                 torch_dtype: str | None = None, variant: str | None = None) -> dict[str, PromptEncoding]:
    """{text: encoding} for "" and ``prompts``: read from ``embeddings`` when given, else encoded once by the
    pipeline's own ``encode_prompt`` (a folder with ``model_index.json``) or its bare tokenizer and text encoder;
    the text models are then dropped (sampling needs only the embeddings)."""
    if embeddings is not None:
        return read_prompt_embeddings(embeddings, prompts, f"{key}.embeddings")
    if (path / "model_index.json").is_file():
        return encode_with_pipeline(path, prompts, f"{key}.path", torch_dtype, variant)
    tokenizer, text_encoder = load_text_encoder(path, torch_dtype, f"{key}.path")
    return {text: PromptEncoding(hidden) for text, hidden in encode_prompts(tokenizer, text_encoder, prompts).items()}
