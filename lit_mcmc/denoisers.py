"""EDM-style denoisers D(x, σ, **cond) ≈ E[x_0 | x_0 + σε = x] as Targets, on any Gaussian path.

A network from EDM / k-diffusion-style code is a denoiser on the VE path x_σ = x_0 + σ ε, either directly or
through Karras et al.'s preconditioning D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ), **cond)
(:class:`Preconditioned`). On a path x_t = α_t x_0 + σ_t ε, x_t/α_t is the VE variable at σ_t/α_t, so
x̂_0 = D(x_t/α_t, σ_t/α_t) and the score is (α_t x̂_0 − x_t)/σ_t² (docs/algorithms.md §15.3). A user's network
becomes a component by naming its class (``network``) and a weights file (:class:`DenoiserConfig`): the weights are
read as a state dict (``torch.load(weights_only=True)`` or safetensors), never unpickled code
(docs/gaussian_paths.md).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.diffusion.predictions import to_score
from lit_mcmc.targets import DensityTarget

PreconditioningName = Literal["edm", "ve", "none"]
PRECONDITIONINGS = ("edm", "ve", "none")


def edm_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Karras et al. 2022 (Table 1, "ours"): c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²),
    c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


def ve_coefficients(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Song et al.'s VE (NCSN++) parameterisation in EDM's Table 1: c_skip = 1, c_out = σ, c_in = 1,
    c_noise = ln(σ/2)."""
    one = torch.ones_like(sigma)
    return one, sigma, one, (sigma / 2).log()


COEFFICIENTS: dict[str, Callable[[Tensor, float], tuple[Tensor, Tensor, Tensor, Tensor]]] = {
    "edm": edm_coefficients, "ve": ve_coefficients}


class Preconditioned(nn.Module):
    """D(x, σ, **cond) = c_skip x + c_out F(c_in x, c_noise, **cond) around a raw network F (``kind``: "edm" or
    "ve", see :data:`COEFFICIENTS`); σ is a [B] tensor, broadcast over x's other dimensions."""

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = 0.5) -> None:
        super().__init__()
        if kind not in COEFFICIENTS:
            raise ValueError(f"preconditioning={kind!r} is not one of {list(COEFFICIENTS)} (or 'none')")
        self.net, self.kind, self.sigma_data = net, kind, float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        sig = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        c_skip, c_out, c_in, c_noise = COEFFICIENTS[self.kind](sig, self.sigma_data)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.flatten(), **cond)


class DenoiserTarget(DensityTarget):
    """A denoiser D(x, σ, **cond) → x̂_0 (trained on x_0 + σ ε) as a target on ``schedule``'s path:
    score = (α_t D(x/α_t, σ_t/α_t) − x)/σ_t². ``cond``: keyword inputs passed on every call, each broadcast to
    the batch (e.g. EDM's one-hot ``class_labels``). Its log-density is unknown."""

    has_log_prob = False

    def __init__(self, denoiser: nn.Module | Callable[..., Tensor], schedule: NoiseSchedule,
                 cond: Mapping[str, Any] | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = schedule
        self.cond = {k: torch.as_tensor(v) for k, v in (cond or {}).items()}

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, None]:
        alpha, sigma = self.schedule.level_coefficients(t)
        ve_sigma = torch.full((x.shape[0],), sigma / alpha, dtype=x.dtype, device=x.device)
        cond = {k: _batched(v, x) for k, v in self.cond.items()}
        denoised = self.denoiser(x / alpha if alpha != 1.0 else x, ve_sigma, **cond)
        return to_score("sample", denoised.to(x.dtype), x, alpha, sigma), None


def _batched(value: Tensor, like: Tensor) -> Tensor:
    """A conditioning input on like's device, with a batch dimension of like's size (added when it has none)."""
    value = value.to(like.device)
    if value.dim() == 0 or value.shape[0] != like.shape[0]:
        value = value.expand(like.shape[0], *value.shape)
    return value


@dataclass
class DenoiserConfig:
    """A user's denoiser network as configs write it (``model.components.<name>.denoiser``).

    ``network``: the nn.Module's import path (``package.module.Class``), built with ``network_args`` (not
    ``class_path``/``init_args``: the CLI reads those as a class to build itself). ``weights``:
    its state dict (a torch.save file of tensors, read with ``weights_only=True``, or .safetensors; relative to
    ``model.checkpoint_root``; null keeps the constructed weights). ``preconditioning``: "edm" (the module is F in
    D = c_skip x + c_out F(c_in x, c_noise); ``sigma_data``), "ve" (Song's: c_out = σ, c_noise = ln(σ/2)), or
    "none" (the module is D(x, σ) itself). ``cond``: constant keyword inputs for every call (e.g. ``class_labels``).
    """

    network: str = ""
    network_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    preconditioning: PreconditioningName = "edm"
    sigma_data: float = 0.5
    cond: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = "model.components.<name>.denoiser"
        if not self.network or "." not in self.network:
            raise ValueError(f"{key}.network must name your network's class as package.module.Class, got "
                             f"{self.network!r}")
        if self.preconditioning not in PRECONDITIONINGS:
            raise ValueError(f"{key}.preconditioning={self.preconditioning!r} is not one of {list(PRECONDITIONINGS)}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"{key}.sigma_data={self.sigma_data} must be positive (the data's std; EDM uses 0.5)")


def build_denoiser(spec: DenoiserConfig, root: Path, key: str) -> nn.Module:
    """The network of ``spec`` with its weights loaded strictly, wrapped in its preconditioning, in eval mode and
    without parameter gradients (sampling needs input gradients only)."""
    module_name, _, class_name = spec.network.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{key}.network={spec.network!r} does not import ({err}): is its package installed "
                         "or on PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{key}.network={spec.network!r} is not an nn.Module class")
    net = cls(**spec.network_args)
    if spec.weights is not None:
        path = Path(spec.weights) if Path(spec.weights).is_absolute() else root / spec.weights
        _load_weights(net, path, f"{key}.weights")
    module = net if spec.preconditioning == "none" else Preconditioned(net, spec.preconditioning, spec.sigma_data)
    return module.eval().requires_grad_(False)


def _load_weights(net: nn.Module, path: Path, key: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no weights file {path} (save your network's state dict with "
                                "torch.save(net.state_dict(), path); relative paths start at model.checkpoint_root)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError (and others) for pickled code
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"{key}={str(path)!r} is not a plain state dict (torch.load with weights_only=True "
                             f"refused it: {first}); save net.state_dict(), not the module") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{key}={str(path)!r} holds a {type(state).__name__}, not a state dict")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(f"{key}={str(path)!r} does not fit the network: {lines[-1]}") from None
