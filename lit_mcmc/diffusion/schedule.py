"""Noise schedules as Gaussian paths x_t = α_t x_0 + σ_t ε on discrete levels, with the ancestral reverse step.

Indexing follows both reference codebases: t is a 0-based level in {0, ..., T-1}, the data are "level -1"
(α = 1, σ = 0). A DDPM schedule is built from betas: ᾱ_t = ∏_{s<=t} (1 - β_s), α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t). Any
other Gaussian path (rectified flow, VE/EDM: ``diffusion/paths.py``) is built from α_t and σ_t and also carries its
VP-equivalent ᾱ_t = α_t²/(α_t² + σ_t²) and β_t = 1 − ᾱ_t/ᾱ_{t−1}, which the step-size and mass rules (a·β_t^b)
read. ``marginal_std[t]`` is σ_t, the std of x_t given x_0, on every path (docs/gaussian_paths.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_mcmc.diffusion.reverse import (
    REVERSE_VARIANCES,
    ReverseVariance,
    ancestral_mean_coefficients,
    reverse_noise_std,
)

Path = Literal["ddpm", "rectified_flow", "ve"]
PATHS = ("ddpm", "rectified_flow", "ve")


class NoiseSchedule:
    """Discrete levels of a Gaussian path; a DDPM schedule (from betas) is one case, optionally respaced.

    Args:
        betas: β_t for t = 0..T-1 of a DDPM schedule (float64 is used internally for the cumulative products).
            Other paths use :meth:`from_levels`.
        model_timesteps: the time index the network is called with at each level. Equal to ``arange(T)``
            unless the schedule was respaced, in which case level k calls the network with the original t_k.

    Attributes (per level, float64): ``signal_scale`` α_t, ``marginal_std`` σ_t, ``alphas_cumprod`` (VP-equivalent)
    ᾱ_t, ``betas`` β_t, ``transition_variance`` σ²_{t|t−1} = σ_t² − (α_t/α_{t−1})² σ_{t−1}² (β_t on DDPM),
    ``posterior_variance`` σ̃_t² = σ²_{t|t−1} σ_{t−1}²/σ_t² (DDPM's β̃_t), ``model_timesteps``.
    """

    def __init__(self, betas: Tensor, model_timesteps: Tensor | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0:
            raise ValueError("betas must not be empty")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.path: Path = "ddpm"
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.marginal_std = torch.sqrt(1.0 - self.alphas_cumprod)
        # √ᾱ_t element by element with math.sqrt, as the targets always took it (torch.sqrt's vectorised float64
        # root can differ in the last bit, which would change DDPM samples)
        self.signal_scale = torch.tensor([math.sqrt(a) for a in self.alphas_cumprod.tolist()], dtype=torch.float64)
        self.transition_variance = betas
        # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t); β̃_0 = 0.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self._finish(model_timesteps, torch.long)

    @classmethod
    def from_levels(cls, signal_scale: Tensor, marginal_std: Tensor, model_timesteps: Tensor,
                    path: Path) -> NoiseSchedule:
        """A Gaussian path x_t = α_t x_0 + σ_t ε at the given levels (α_t > 0, σ_t > 0, α_t/σ_t strictly decreasing)
        whose network takes ``model_timesteps`` (floats) as its time input."""
        if path not in PATHS or path == "ddpm":
            raise ValueError(f"path={path!r} is not one of {list(PATHS[1:])} (DDPM schedules are built from betas)")
        alpha = torch.as_tensor(signal_scale, dtype=torch.float64).flatten()
        sigma = torch.as_tensor(marginal_std, dtype=torch.float64).flatten()
        if alpha.numel() == 0 or alpha.shape != sigma.shape:
            raise ValueError(f"signal_scale and marginal_std need one entry per level (got {alpha.numel()} and "
                             f"{sigma.numel()})")
        if not bool(torch.isfinite(alpha).all() & torch.isfinite(sigma).all() & (alpha > 0).all() & (sigma > 0).all()):
            raise ValueError("every level needs a finite α_t > 0 and σ_t > 0")
        snr = alpha / sigma
        if not bool((snr[1:] < snr[:-1]).all()):
            raise ValueError("levels must be ordered from least to most noisy (α_t/σ_t strictly decreasing)")
        schedule = cls.__new__(cls)
        schedule.path = path
        schedule.signal_scale, schedule.marginal_std = alpha, sigma
        schedule.alphas_cumprod = alpha**2 / (alpha**2 + sigma**2)
        one = torch.ones(1, dtype=torch.float64)
        schedule.alphas_cumprod_prev = torch.cat([one, schedule.alphas_cumprod[:-1]])
        schedule.betas = 1.0 - schedule.alphas_cumprod / schedule.alphas_cumprod_prev
        schedule.alphas = 1.0 - schedule.betas
        alpha_prev = torch.cat([one, alpha[:-1]])
        sigma_prev = torch.cat([torch.zeros(1, dtype=torch.float64), sigma[:-1]])
        schedule.transition_variance = sigma**2 - (alpha / alpha_prev) ** 2 * sigma_prev**2
        schedule.posterior_variance = schedule.transition_variance * sigma_prev**2 / sigma**2
        schedule._finish(model_timesteps, torch.float64)
        return schedule

    def _finish(self, model_timesteps: Tensor | None, dtype: torch.dtype) -> None:
        # log σ̃_t² with entry 0 (σ̃_0 = 0) replaced by entry 1, as guided-diffusion clips it.
        post = self.posterior_variance
        clipped = torch.cat([post[1:2], post[1:]]) if len(post) > 1 else self.transition_variance
        self.posterior_log_variance_clipped = torch.log(clipped)
        if model_timesteps is None:
            model_timesteps = torch.arange(len(self.betas))
        self.model_timesteps = torch.as_tensor(model_timesteps, dtype=dtype)
        if self.model_timesteps.shape != self.betas.shape:
            raise ValueError("model_timesteps must have one entry per level")

    @property
    def T(self) -> int:  # noqa: N802 - the papers' name for the number of levels
        """Number of levels."""
        return len(self.betas)

    @property
    def prior_std(self) -> float:
        """The std of x at the noisiest level when x_0 is negligible, √(α²+σ²) (1 on DDPM, ≈ σ_max on VE): the
        annealed sampler starts from N(0, prior_std² I)."""
        if self.path == "ddpm":
            return 1.0
        return math.sqrt(float(self.signal_scale[-1]) ** 2 + float(self.marginal_std[-1]) ** 2)

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        if self.path == "ddpm":
            return f"NoiseSchedule(T={self.T}, beta_0={self.betas[0]:.3g}, beta_T-1={self.betas[-1]:.3g})"
        return (f"NoiseSchedule(path={self.path}, T={self.T}, sigma_0={self.marginal_std[0]:.3g}, "
                f"sigma_T-1={self.marginal_std[-1]:.3g})")

    def same_levels(self, other: NoiseSchedule) -> bool:
        """Whether ``other`` has the same path, levels (α_t, σ_t) and network times."""
        return (self.path == other.path and self.T == other.T
                and torch.allclose(self.signal_scale, other.signal_scale)
                and torch.allclose(self.marginal_std, other.marginal_std)
                and torch.allclose(self.model_timesteps.double(), other.model_timesteps.double()))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:  # noqa: N803
        """Ho et al.'s linear schedule: β_t = linspace(beta_start, beta_end, T)."""
        check_levels(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 100, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
        """Nichol & Dhariwal's cosine schedule: ᾱ_t = f(t+1)/f(0), f(u) = cos²((u/T + s)/(1 + s)·π/2)."""
        check_levels(T)
        u = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f[1:] / f[0]
        alphas_cumprod_prev = f[:-1] / f[0]
        betas = torch.clamp(1 - alphas_cumprod / alphas_cumprod_prev, max=max_beta)
        return cls(betas)

    @classmethod
    def rectified_flow(cls, T: int = 1000, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999,  # noqa: N803
                       num_train_timesteps: int = 1000) -> NoiseSchedule:
        """x_t = (1 − σ_t) x_0 + σ_t ε at shifted, evenly spaced σ (see :func:`~lit_mcmc.diffusion.paths.
        rectified_flow_levels`)."""
        from lit_mcmc.diffusion.paths import rectified_flow_levels

        check_levels(T)
        return cls.from_levels(*rectified_flow_levels(T, shift, t_min, t_max, num_train_timesteps), "rectified_flow")

    @classmethod
    def karras(cls, T: int = 40, sigma_min: float = 0.002, sigma_max: float = 80.0,  # noqa: N803
               rho: float = 7.0) -> NoiseSchedule:
        """The VE/EDM path x_σ = x_0 + σ ε at Karras σ levels (see :func:`~lit_mcmc.diffusion.paths.karras_levels`)."""
        from lit_mcmc.diffusion.paths import karras_levels

        check_levels(T)
        return cls.from_levels(*karras_levels(T, sigma_min, sigma_max, rho), "ve")

    def respace(self, n_levels: int) -> NoiseSchedule:
        """Keep ``n_levels`` evenly spaced levels t_k = round(k (T-1)/(K-1)) (improved-diffusion style).

        The marginals at the kept levels are unchanged (on DDPM β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}); the network is still
        called with the original t_k.
        """
        if not 2 <= n_levels <= self.T:
            raise ValueError(f"respace n_levels={n_levels} must lie in [2, T={self.T}]")
        kept = torch.round(torch.arange(n_levels, dtype=torch.float64) * (self.T - 1) / (n_levels - 1)).long()
        if self.path != "ddpm":
            return NoiseSchedule.from_levels(self.signal_scale[kept], self.marginal_std[kept],
                                             self.model_timesteps[kept], self.path)
        abar = self.alphas_cumprod[kept]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return NoiseSchedule(1 - abar / abar_prev, self.model_timesteps[kept])

    def model_t(self, t: int, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The network's time input for level ``t``, shape [batch_size]: a LongTensor on DDPM schedules, float32
        otherwise (σ·1000 on rectified flows, σ on VE paths)."""
        self.check_level(t)
        if self.path == "ddpm":
            return torch.full((batch_size,), int(self.model_timesteps[t]), dtype=torch.long, device=device)
        return torch.full((batch_size,), float(self.model_timesteps[t]), dtype=torch.float32, device=device)

    def check_level(self, t: int) -> None:
        if not 0 <= t < self.T:
            raise ValueError(f"level t={t} is outside [0, {self.T - 1}] for this schedule")

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """x_t = α_t x_0 + σ_t ε; ``t`` is an int or a LongTensor of shape [B]."""
        if self.path != "ddpm":
            return _per_sample(self.signal_scale, t, x0) * x0 + _per_sample(self.marginal_std, t, x0) * noise
        abar = _per_sample(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def level_coefficients(self, t: int) -> tuple[float, float]:
        """(α_t, σ_t) at level t; (1, 0) at the data level t = −1."""
        if t == -1:
            return 1.0, 0.0
        self.check_level(t)
        return float(self.signal_scale[t]), float(self.marginal_std[t])

    def transition(self, t: int) -> tuple[float, float]:
        """(α_t/α_{t−1}, σ_{t|t−1}): x_t given x_{t−1} is N(α_t/α_{t−1} x_{t−1}, σ²_{t|t−1} I); (√(1−β_t), √β_t) on
        DDPM."""
        self.check_level(t)
        if self.path == "ddpm":
            beta = float(self.betas[t])
            return math.sqrt(1.0 - beta), math.sqrt(beta)
        alpha_prev = self.level_coefficients(t - 1)[0]
        return float(self.signal_scale[t]) / alpha_prev, math.sqrt(float(self.transition_variance[t]))

    def denoise(self, x: Tensor, t: int, score: Tensor) -> Tensor:
        """Tweedie's x̂_0 = (x + σ_t² S(x))/α_t."""
        alpha, sigma = self.level_coefficients(t)
        return (x + sigma**2 * score) / alpha

    def reverse_step(self, x: Tensor, t: int, score: Tensor, noise: Tensor | None,
                     variance: ReverseVariance = "beta", variance_output: Tensor | None = None,
                     eta: float = 1.0) -> Tensor:
        """One ancestral step from level t to t-1 in score form (``diffusion/reverse.py``).

        x_{t-1} = α_{t-1} x̂_0 + √(σ_{t-1}² − c²) ε̂ + c z: with η = 1 the mean is the posterior mean (on DDPM
        (x_t + β_t s(x_t)) / √α_t), and c² = σ²_{t|t−1} ("beta", DDPM's β_t), η²σ̃_t² ("posterior", DDIM(η)), or
        ("learned") the model's interpolation log c² = f log β_t + (1 − f) log β̃_t^clipped, f = (v + 1)/2, from its
        variance output v (``variance_output``, shaped like x; guided-diffusion's learned σ). No noise is added at
        t = 0 (the result is then at the data level: x̂_0).
        """
        if t == 0 or noise is None:
            return self._reverse_mean(x, t, score, eta)
        mean, std = self.reverse_mean_and_std(x, t, score, variance, variance_output, eta)
        return mean + std * noise

    def _reverse_mean(self, x: Tensor, t: int, score: Tensor, eta: float = 1.0) -> Tensor:
        self.check_level(t)
        if self.path == "ddpm" and eta == 1.0:  # today's arithmetic, so DDPM samples stay bitwise the same
            beta = float(self.betas[t])
            return (x + beta * score) / math.sqrt(1.0 - beta)
        alpha_s, sigma_s = self.level_coefficients(t - 1)
        a, b = ancestral_mean_coefficients(float(self.signal_scale[t]), float(self.marginal_std[t]), alpha_s,
                                           sigma_s, eta)
        return a * x + b * score

    def reverse_mean_and_std(self, x: Tensor, t: int, score: Tensor, variance: ReverseVariance = "beta",
                             variance_output: Tensor | None = None,
                             eta: float = 1.0) -> tuple[Tensor, float | Tensor]:
        """The reverse kernel N(mean, c² I) of :meth:`reverse_step` from level t (c a float, or a tensor shaped like
        x for a learned variance); particle weights need its density."""
        mean = self._reverse_mean(x, t, score, eta)
        std = reverse_noise_std(variance, float(self.transition_variance[t]), float(self.posterior_variance[t]),
                                float(self.posterior_log_variance_clipped[t]), eta, variance_output, x)
        return mean, std


def check_levels(T: int) -> None:  # noqa: N803
    if T < 1:
        raise ValueError(f"T={T} must be a positive number of levels")


def _per_sample(values: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """values[t] broadcast against ``like`` ([B, ...]), in like's dtype and device."""
    if isinstance(t, int):
        return values[t].to(like)
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


__all__ = ["PATHS", "REVERSE_VARIANCES", "NoiseSchedule", "Path", "ReverseVariance", "check_levels"]
