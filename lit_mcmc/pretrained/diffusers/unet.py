"""A diffusers UNet as a Target: the scheduler's ᾱ_t as a noise schedule, any ``prediction_type`` turned into
ε̂, and the score −ε̂/σ_t (:class:`DiffusersTarget`, one UNet with fixed conditioning)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.targets import ScoreModelTarget

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Zero-terminal-SNR schedules (``rescale_betas_zero_snr``) end with β = 1, i.e. ᾱ = 0, where the score −ε̂/σ_t
# still exists but x_t holds no signal and the reverse step divides by √α = 0: cap β as guided-diffusion does.
MAX_BETA = 0.999


# --------------------------------------------------------------------------------------------------------------
# Schedules and ε̂
# --------------------------------------------------------------------------------------------------------------


def schedule_from_scheduler(scheduler: Any) -> NoiseSchedule:
    """The scheduler's noise levels as a NoiseSchedule with the same ᾱ_t (DDPM/DDIM/PNDM/… family).

    Built from the scheduler's ``betas`` (any beta schedule: linear, scaled_linear, squaredcos_cap_v2, given
    ``trained_betas``), so its ᾱ_t equal the scheduler's ``alphas_cumprod`` (float64 here, float32 there). Level t
    calls the network with training timestep t (0..T−1).
    """
    betas = getattr(scheduler, "betas", None)
    if not isinstance(betas, Tensor) or not isinstance(getattr(scheduler, "alphas_cumprod", None), Tensor):
        raise ValueError(f"{type(scheduler).__name__} has no betas/alphas_cumprod: only discrete DDPM-family "
                         "schedulers (DDPMScheduler, DDIMScheduler, PNDMScheduler, …) define the noise levels "
                         "lit_mcmc samples")
    return NoiseSchedule(betas.detach().to(torch.float64).clamp(max=MAX_BETA))


def epsilon_from_output(output: Tensor, x: Tensor, alpha_bar: float, prediction_type: str) -> Tensor:
    """ε̂ from a UNet output of ``prediction_type``, with x_t = √ᾱ x₀ + σ ε.

    "epsilon": ε̂ = out; "v_prediction" (v = √ᾱ ε − σ x₀): ε̂ = √ᾱ v + σ x_t; "sample" (x̂₀): ε̂ = (x_t − √ᾱ x̂₀)/σ.
    """
    if prediction_type == "epsilon":
        return output
    scale, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return scale * output + sigma * x
    if prediction_type == "sample":
        return (x - scale * output) / sigma
    raise ValueError(f"prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


def broadcast_batch(value: Any, batch: int, name: str) -> Any:
    """A conditioning value for a batch: a tensor with batch 1 is repeated, batch ``batch`` is kept; dicts (e.g.
    ``added_cond_kwargs``) are broadcast entry by entry; anything else is passed as is."""
    if isinstance(value, Mapping):
        return {key: broadcast_batch(item, batch, f"{name}[{key!r}]") for key, item in value.items()}
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"conditioning {name} has batch {value.shape[0]}, but x has a batch of {batch}: give one "
                     "row (shared by every sample) or one per sample")


def _to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a conditioning value to the UNet's device; floating tensors also take its dtype (fp16 weights)."""
    if isinstance(value, Mapping):
        return {key: _to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    return value


class UNetPredictor:
    """Calls a diffusers UNet at a level and returns (ε̂, learned-variance output or None) in x's dtype.

    A UNet with twice x's channels predicts a variance too (diffusers' "learned"/"learned_range"): the first half
    is the prediction, the second half v ∈ [−1, 1] is what the reverse step's ``reverse_variance: learned`` uses.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type

    def __call__(self, x: Tensor, t: int, conditioning: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        param = next(self.unet.parameters())
        t_model = self.schedule.model_t(t, x.shape[0], param.device)
        kwargs = {key: _to_device(value, param.device, param.dtype) for key, value in conditioning.items()}
        output = self.unet(x.to(device=param.device, dtype=param.dtype), t_model, **kwargs).sample
        output = output.to(device=x.device, dtype=x.dtype)
        variance = None
        if output.shape[1] == 2 * x.shape[1]:
            output, variance = output.chunk(2, dim=1)
        elif output.shape[1] != x.shape[1]:
            raise ValueError(f"the UNet returned {output.shape[1]} channels for an input of {x.shape[1]}: expected "
                             f"{x.shape[1]} (a prediction) or {2 * x.shape[1]} (prediction and learned variance)")
        alpha_bar = float(self.schedule.alphas_cumprod[t])
        return epsilon_from_output(output, x, alpha_bar, self.prediction_type), variance


# --------------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------------


class DiffusersTarget(ScoreModelTarget):
    """A diffusers UNet with fixed conditioning as a Target: score = −ε̂(x, t)/σ_t (its log-density is unknown).

    A :class:`~lit_mcmc.targets.ScoreModelTarget` whose ε call is the UNet's (any prediction type turned into ε̂,
    a learned variance told by the output's channel count); everything else is the base class's.

    Args:
        unet: a diffusers ``UNet2DModel``/``UNet2DConditionModel`` (or anything called as
            ``unet(x, t, **conditioning).sample``).
        schedule: the levels (usually :func:`schedule_from_scheduler`, possibly respaced).
        prediction_type: what the UNet predicts: "epsilon", "v_prediction" or "sample".
        **conditioning: passed to the UNet only when given (``encoder_hidden_states``, ``class_labels``,
            ``added_cond_kwargs``, …); a tensor with batch 1 is shared by the batch, one with batch B is per sample.
    """

    # Class labels that predict runs give sample i: label_cycle[i % len] (set from a config's ``class_labels``).
    label_cycle: list[int] | None = None

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                 **conditioning: Any) -> None:
        super().__init__(unet, schedule)
        self.predictor = UNetPredictor(unet, schedule, prediction_type)
        self.conditioning = conditioning

    def with_labels(self, labels: Tensor) -> DiffusersTarget:
        """A copy conditioned on ``class_labels=labels`` (LongTensor [B], one per sample); the UNet is shared."""
        labelled = copy.copy(self)
        labelled.conditioning = {**self.conditioning, "class_labels": labels}
        return labelled

    def _network(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        batch = x.shape[0]
        conditioning = {key: broadcast_batch(value, batch, key) for key, value in self.conditioning.items()}
        return self.predictor(x, t, conditioning)
