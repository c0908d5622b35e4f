"""diffusers models as Targets: any DDPM-family UNet and scheduler, text-prompt compositions, latent models, tapestry.

A diffusers UNet predicts ε, v or x̂₀ (the scheduler's ``prediction_type``); every one of them is turned into ε̂
and the score −ε̂/σ_t, so each sampler, MH correction, composition and callback of lit_mcmc works on it unchanged.

- ``unet.py``: :func:`schedule_from_scheduler` (the scheduler's ᾱ_t as a :class:`~lit_mcmc.diffusion.NoiseSchedule`
  whose network time input is the training timestep) and :class:`DiffusersTarget`, a
  :class:`~lit_mcmc.targets.ScoreModelTarget` whose ε call is the UNet's (fixed conditioning).
- ``prompts.py``: :class:`PromptProduct` (ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), one batched UNet call) and
  :class:`Tapestry` (square regions of a larger canvas, each a prompt product on its crop; regions parsed once by
  :func:`parse_regions`).
- ``text.py``: prompt embeddings as the model's own pipeline makes them (:func:`encode_with_pipeline`: the class
  ``model_index.json`` names, its ``encode_prompt``), or from a bare tokenizer and encoder, or a saved file.
- ``files.py``: local folders only, ``.safetensors`` preferred, pickled ``.bin`` files refused by name, the
  packages a tokenizer needs.
- ``loading.py``: :func:`load_pipeline` (UNet, scheduler, VAE) and :func:`load_component` (a component config's
  pipeline and Target maker, SDXL's pooled embeddings and ``time_ids`` included).

Nothing is ever downloaded (``local_files_only=True``). diffusers and transformers (the ``[pretrained]`` extra) are
imported inside the functions that need them, so this package, and the config checks that use it, import without
them.
"""

from lit_mcmc.pretrained.diffusers.files import (
    check_caption_packages,
    check_local_folder,
    check_tokenizer_packages,
    class_name,
    has_safetensors,
    refuse_pickled_weights,
    weight_files,
)
from lit_mcmc.pretrained.diffusers.loading import (
    MICRO_CONDITIONING_KEYS,
    DiffusersComponent,
    Pipeline,
    check_micro_conditioning,
    is_text_conditional,
    load_component,
    load_pipeline,
    sdxl_time_ids,
    takes_time_ids,
    target_factory,
)
from lit_mcmc.pretrained.diffusers.prompts import (
    REGION_KEYS,
    PromptGroup,
    PromptProduct,
    Region,
    RegionSpec,
    Tapestry,
    parse_regions,
    prompt_group,
    region_coverage,
)
from lit_mcmc.pretrained.diffusers.text import (
    PromptEncoding,
    encode_prompts,
    encode_with_pipeline,
    load_text_encoder,
    load_text_pipeline,
    pipeline_defaults,
    prompt_table,
    read_prompt_embeddings,
)
from lit_mcmc.pretrained.diffusers.unet import (
    MAX_BETA,
    PREDICTION_TYPES,
    TORCH_DTYPES,
    DiffusersTarget,
    UNetPredictor,
    broadcast_batch,
    epsilon_from_output,
    schedule_from_scheduler,
)

__all__ = [
    "DiffusersComponent",
    "DiffusersTarget",
    "MAX_BETA",
    "MICRO_CONDITIONING_KEYS",
    "PREDICTION_TYPES",
    "Pipeline",
    "PromptEncoding",
    "PromptGroup",
    "PromptProduct",
    "REGION_KEYS",
    "Region",
    "RegionSpec",
    "TORCH_DTYPES",
    "Tapestry",
    "UNetPredictor",
    "broadcast_batch",
    "check_caption_packages",
    "check_local_folder",
    "check_micro_conditioning",
    "check_tokenizer_packages",
    "class_name",
    "encode_prompts",
    "encode_with_pipeline",
    "epsilon_from_output",
    "has_safetensors",
    "is_text_conditional",
    "load_component",
    "load_pipeline",
    "load_text_encoder",
    "load_text_pipeline",
    "parse_regions",
    "pipeline_defaults",
    "prompt_group",
    "prompt_table",
    "read_prompt_embeddings",
    "refuse_pickled_weights",
    "region_coverage",
    "schedule_from_scheduler",
    "sdxl_time_ids",
    "takes_time_ids",
    "target_factory",
    "weight_files",
]
