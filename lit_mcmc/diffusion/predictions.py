"""What a network predicts, turned into the score on a Gaussian path x_t = α_t x_0 + σ_t ε.

On any Gaussian path ∇ log p_t(x) = −ε̂/σ_t = (α_t x̂_0 − x)/σ_t², with ε̂ or x̂_0 read from the prediction:
"epsilon" (DDPM, ADM, SD 1–2), "v_prediction" (v = α ε − σ x_0, SD 2.x-v), "velocity" (u = ε − x_0, rectified flows:
x̂_0 = x − σ u, ε̂ = x + α u when α + σ = 1) or "sample" (x̂_0 itself, EDM's denoiser D). The formulas below hold
for any α, σ (docs/gaussian_paths.md).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "velocity", "sample"]
PREDICTION_KINDS = ("epsilon", "v_prediction", "velocity", "sample")


def to_epsilon(kind: PredictionType, prediction: Tensor, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """ε̂ from a prediction of ``kind`` at x on the level (α, σ)."""
    if kind == "epsilon":
        return prediction
    if kind == "v_prediction":  # v = α ε − σ x_0 and x = α x_0 + σ ε  ⇒  ε = (σ x + α v)/(α² + σ²)
        return (sigma * x + alpha * prediction) / (alpha**2 + sigma**2)
    if kind == "velocity":  # u = ε − x_0  ⇒  ε = (x + α u)/(α + σ)
        return (x + alpha * prediction) / (alpha + sigma)
    if kind == "sample":
        return (x - alpha * prediction) / sigma
    raise ValueError(f"prediction type {kind!r} is not one of {list(PREDICTION_KINDS)}")


def to_sample(kind: PredictionType, prediction: Tensor, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """x̂_0 from a prediction of ``kind`` at x on the level (α, σ)."""
    if kind == "sample":
        return prediction
    if kind == "velocity":  # x = (α + σ) x_0 + σ u
        return (x - sigma * prediction) / (alpha + sigma)
    if kind == "v_prediction":
        return (alpha * x - sigma * prediction) / (alpha**2 + sigma**2)
    return (x - sigma * to_epsilon(kind, prediction, x, alpha, sigma)) / alpha


def to_score(kind: PredictionType, prediction: Tensor, x: Tensor, alpha: float, sigma: float) -> Tensor:
    """∇ log p_t(x): −ε̂/σ for ε-like predictions, (α x̂_0 − x)/σ² for a denoiser's x̂_0 (no division by α)."""
    if kind == "sample":
        return (alpha * prediction - x) / sigma**2
    return -to_epsilon(kind, prediction, x, alpha, sigma) / sigma
