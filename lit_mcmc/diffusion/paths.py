"""Level grids of the Gaussian paths other than DDPM: rectified flows (with diffusers' timestep shift) and Karras σ.

Each function returns per-level tensors in increasing noise, level 0 the least noisy: the signal scale α_t, the
noise std σ_t (x_t = α_t x_0 + σ_t ε) and the time input the network is called with (docs/gaussian_paths.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler shift σ' = shift·σ / (1 + (shift − 1)·σ) (SD3's ``shift``).

    With Flux's dynamic shifting the scheduler uses e^μ/(e^μ + 1/σ − 1), which is this map with shift = e^μ.
    """
    if not shift > 0:
        raise ValueError(f"shift={shift} must be positive")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_shift(image_seq_len: int, base_image_seq_len: int = 256, max_image_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift e^μ, μ linear in the number of packed latent tokens (the Flux pipeline's
    ``calculate_shift``; defaults are its scheduler config's). 1024² images have 4096 tokens: μ = 1.15."""
    if image_seq_len < 1 or max_image_seq_len == base_image_seq_len:
        raise ValueError(f"resolution shift needs image_seq_len >= 1 and max_image_seq_len != base_image_seq_len "
                         f"(got {image_seq_len}, {base_image_seq_len}, {max_image_seq_len})")
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    mu = image_seq_len * slope + base_shift - slope * base_image_seq_len
    return math.exp(mu)


def rectified_flow_levels(T: int, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999,  # noqa: N803
                          num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """x_t = (1 − σ_t) x_0 + σ_t ε at σ_k = shift(u_k), u_k evenly spaced in [t_min, t_max] (k = 0..T−1).

    The network's time is σ_k · num_train_timesteps, as diffusers' flow-matching scheduler gives it. ``t_max`` < 1:
    at σ = 1 (α = 0) a score says nothing about x_0, so no reverse step could leave that level.
    """
    if not 0 < t_min < t_max < 1:
        raise ValueError(f"rectified flow levels need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(t_min, t_max, T, dtype=torch.float64) if T > 1 else torch.tensor([t_max], dtype=torch.float64)
    sigma = shift_sigmas(u, shift)
    return 1.0 - sigma, sigma, sigma * num_train_timesteps


def karras_levels(T: int, sigma_min: float = 0.002, sigma_max: float = 80.0,  # noqa: N803
                  rho: float = 7.0) -> tuple[Tensor, Tensor, Tensor]:
    """The VE/EDM path x_σ = x_0 + σ ε at Karras et al.'s levels σ_k = (σ_min^{1/ρ} + k/(T−1)(σ_max^{1/ρ} −
    σ_min^{1/ρ}))^ρ (k = 0..T−1, ascending). The network's time is σ itself (an EDM denoiser maps it to c_noise)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"karras levels need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho={rho} must be positive")
    ramp = torch.linspace(0, 1, T, dtype=torch.float64) if T > 1 else torch.ones(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigma = (lo + ramp * (hi - lo)) ** rho
    return torch.ones_like(sigma), sigma, sigma.clone()
