"""The ancestral (reverse) step on any Gaussian path x_t = α_t x_0 + σ_t ε, written in α, σ and x̂_0.

From level t to s = t − 1 (s = "−1", the data, has α = 1, σ = 0), with ε̂ = −σ_t S(x_t) and
x̂_0 = (x_t + σ_t² S(x_t))/α_t:

    x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c z,   c² = η² σ̃²,   σ̃² = σ²_{t|s} σ_s²/σ_t²,   σ²_{t|s} = σ_t² − (α_t/α_s)² σ_s²

(DDIM with η; η = 1 is the DDPM posterior q(x_s | x_t, x̂_0), docs/gaussian_paths.md). The mean is linear in
(x, S): x_s = a·x + b·S + c z with the scalar coefficients below, so nothing is divided by a small α_t elementwise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ReverseVariance = Literal["beta", "posterior", "learned"]
REVERSE_VARIANCES = ("beta", "posterior", "learned")


def ancestral_mean_coefficients(alpha_t: float, sigma_t: float, alpha_s: float, sigma_s: float,
                                eta: float = 1.0) -> tuple[float, float]:
    """(a, b) with mean = a·x_t + b·S(x_t) for the DDIM(η) step t → s (η = 1: the posterior mean)."""
    transition_var = sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2
    noise_var = eta**2 * transition_var * sigma_s**2 / sigma_t**2
    eps_coef = math.sqrt(max(sigma_s**2 - noise_var, 0.0))
    # α_s x̂_0 + eps_coef ε̂ with x̂_0 = (x + σ_t² S)/α_t and ε̂ = −σ_t S
    return alpha_s / alpha_t, alpha_s * sigma_t**2 / alpha_t - eps_coef * sigma_t


def reverse_noise_std(variance: ReverseVariance, transition_var: float, posterior_var: float,
                      posterior_log_var_clipped: float, eta: float = 1.0,
                      variance_output: Tensor | None = None, like: Tensor | None = None) -> float | Tensor:
    """The reverse step's noise std: √σ²_{t|s} ("beta", DDPM's β_t), η·σ̃ ("posterior"), or ("learned") the model's
    interpolation log c² = f log σ²_{t|s} + (1 − f) log σ̃²_clipped, f = (v + 1)/2 (guided-diffusion's learned σ)."""
    if variance not in REVERSE_VARIANCES:
        raise ValueError(f"reverse variance={variance!r} is not one of {list(REVERSE_VARIANCES)}")
    if eta != 1.0 and variance != "posterior":
        raise ValueError(f"reverse eta={eta} applies to variance 'posterior' (DDIM's c = η·σ̃); variance "
                         f"{variance!r} keeps the posterior mean (η = 1)")
    if variance == "beta":
        return math.sqrt(transition_var)
    if variance == "posterior":
        return eta * math.sqrt(posterior_var)
    if variance_output is None:
        raise ValueError("reverse variance='learned' needs a model that predicts its variance (learned σ: an "
                         "ADM/diffusers network with twice the input channels); use 'beta' or 'posterior'")
    frac = (variance_output.to(like.dtype if like is not None else variance_output.dtype) + 1) / 2
    log_var = frac * math.log(transition_var) + (1 - frac) * posterior_log_var_clipped
    return torch.exp(0.5 * log_var)


def check_eta(eta: float, key: str = "eta") -> float:
    """η must be a finite number >= 0 (0: deterministic DDIM, 1: the DDPM posterior)."""
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"{key}={eta} must be a finite number >= 0 (0: deterministic DDIM, 1: the DDPM posterior)")
    return eta
