"""diffusers models as Targets: any DDPM-family UNet and scheduler, text-prompt compositions, latent models, tapestry.

A diffusers UNet predicts ε, v or x̂₀ (the scheduler's ``prediction_type``); every one of them is turned into ε̂
and the score −ε̂/σ_t, so each sampler, MH correction, composition and callback of lit_mcmc works on it unchanged.

- :func:`schedule_from_scheduler`: the scheduler's ᾱ_t as a :class:`~lit_mcmc.diffusion.NoiseSchedule` whose
  network time input is the scheduler's training timestep.
- :class:`DiffusersTarget`: one UNet with fixed conditioning (class labels, text embeddings, …).
- :class:`PromptProduct`: ε = ε(∅) + Σᵢ wᵢ(ε(cᵢ) − ε(∅)), i.e. p(x|∅)·Πᵢ(p(x|cᵢ)/p(x|∅))^{wᵢ}; a negative weight is
  a negation, one prompt is classifier-free guidance. The empty prompt and all prompts share one batched UNet call.
- :class:`Tapestry`: a canvas larger than the model, covered by square regions with their own prompt products;
  the composed score is the sum of the regions' scores placed back on their crops (optionally divided by the
  number of regions covering each pixel). All regions share one batched UNet call.
- :func:`load_pipeline`: a pipeline folder saved by diffusers (``unet/``, ``scheduler/``, optional ``vae/``,
  ``text_encoder/``, ``tokenizer/``), read with ``local_files_only=True``: nothing is ever downloaded.

diffusers and transformers (the ``[pretrained]`` extra) are imported inside the functions that need them, so this
module, and the config checks that use it, import without them.
"""

from lit_mcmc.pretrained.diffusers.loading import (
    DiffusersComponent,
    Pipeline,
    _class_name,
    _load_scheduler,
    _load_unet,
    _load_vae,
    _unet_folder,
    _weight_files,
    check_local_folder,
    is_text_conditional,
    load_pipeline,
    load_text_encoder,
    target_factory,
)
from lit_mcmc.pretrained.diffusers.prompts import (
    PromptGroup,
    PromptProduct,
    Region,
    RegionSpec,
    Tapestry,
    _PromptComposition,
    encode_prompts,
    prompt_group,
    read_prompt_embeddings,
    region_coverage,
)
from lit_mcmc.pretrained.diffusers.unet import (
    MAX_BETA,
    PREDICTION_TYPES,
    REGION_KEYS,
    TORCH_DTYPES,
    DiffusersTarget,
    UNetPredictor,
    _to_device,
    broadcast_batch,
    epsilon_from_output,
    schedule_from_scheduler,
)

__all__ = [
    "DiffusersComponent",
    "DiffusersTarget",
    "MAX_BETA",
    "PREDICTION_TYPES",
    "Pipeline",
    "PromptGroup",
    "PromptProduct",
    "REGION_KEYS",
    "Region",
    "RegionSpec",
    "TORCH_DTYPES",
    "Tapestry",
    "UNetPredictor",
    "_PromptComposition",
    "_class_name",
    "_load_scheduler",
    "_load_unet",
    "_load_vae",
    "_to_device",
    "_unet_folder",
    "_weight_files",
    "broadcast_batch",
    "check_local_folder",
    "encode_prompts",
    "epsilon_from_output",
    "is_text_conditional",
    "load_pipeline",
    "load_text_encoder",
    "prompt_group",
    "read_prompt_embeddings",
    "region_coverage",
    "schedule_from_scheduler",
    "target_factory",
]
