"""A denoiser whose answer is known exactly: the posterior mean of a Gaussian mixture under x = x_0 + σ ε."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianMixtureDenoiser(nn.Module):
    """D(x, σ) = E[x_0 | x_0 + σ ε = x] for x_0 ~ Σ_k w_k N(μ_k, s_k² I): an EDM-style denoiser (``preconditioning:
    none``) with exact outputs, to check a denoiser setup end to end. The mixture is a state dict of buffers.

    Args:
        means: [K, D] component means; the paper's 8-mode 2D mixture (``lit_mcmc.data.toy2d``) when None.
        std: one std for all components, or [K] (default: the 2D mixture's).
        weights: [K] mixture weights (normalised here); equal by default.
    """

    def __init__(self, means: list[list[float]] | None = None, std: float | list[float] | None = None,
                 weights: list[float] | None = None) -> None:
        super().__init__()
        from lit_mcmc.data import toy2d

        mu = torch.as_tensor(toy2d.GMM_MEANS if means is None else means, dtype=torch.float64)
        k = mu.shape[0]
        self.register_buffer("means", mu)
        self.register_buffer("stds", torch.as_tensor(toy2d.GMM_STD if std is None else std,
                                                     dtype=torch.float64).expand(k).clone())
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        var = self.stds.to(x) ** 2  # [K]
        total = var[None] + sigma.to(x)[:, None] ** 2  # [B, K]
        diff = x[:, None, :] - self.means.to(x)[None]  # [B, K, D]
        log_resp = (self.weights.log().to(x) - 0.5 * diff.pow(2).sum(-1) / total
                    - 0.5 * x.shape[1] * total.log())
        resp = torch.softmax(log_resp, dim=1)
        posterior = self.means.to(x)[None] + (var[None] / total)[..., None] * diff  # each component's E[x_0 | x]
        return (resp[..., None] * posterior).sum(1)
