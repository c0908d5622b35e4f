"""DDPM noise schedules: betas, cumulative alphas, the forward marginal and the ancestral reverse step.

Indexing follows both reference codebases: t is a 0-based level in {0, ..., T-1}, ᾱ_t = ∏_{s<=t} (1 - β_s), and
the data are "level -1" (ᾱ_{-1} = 1). ``marginal_std[t]`` is σ_t = √(1 - ᾱ_t), the std of x_t given x_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ReverseVariance = Literal["beta", "posterior", "learned"]
REVERSE_VARIANCES = ("beta", "posterior", "learned")


class NoiseSchedule:
    """A discrete DDPM noise schedule, optionally respaced onto a subset of a longer schedule's levels.

    Args:
        betas: β_t for t = 0..T-1 (float64 is used internally for the cumulative products).
        model_timesteps: the time index the network is called with at each level. Equal to ``arange(T)``
            unless the schedule was respaced, in which case level k calls the network with the original t_k.
    """

    def __init__(self, betas: Tensor, model_timesteps: Tensor | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0:
            raise ValueError("betas must not be empty")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.marginal_std = torch.sqrt(1.0 - self.alphas_cumprod)
        # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t); β̃_0 = 0.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log β̃_t with entry 0 (β̃_0 = 0) replaced by entry 1, as guided-diffusion clips it.
        clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]) if len(betas) > 1 \
            else self.betas
        self.posterior_log_variance_clipped = torch.log(clipped)
        if model_timesteps is None:
            model_timesteps = torch.arange(len(betas))
        self.model_timesteps = torch.as_tensor(model_timesteps, dtype=torch.long)
        if self.model_timesteps.shape != betas.shape:
            raise ValueError("model_timesteps must have one entry per beta")

    @property
    def T(self) -> int:  # noqa: N802 - the papers' name for the number of levels
        """Number of levels."""
        return len(self.betas)

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, beta_0={self.betas[0]:.3g}, beta_T-1={self.betas[-1]:.3g})"

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:  # noqa: N803
        """Ho et al.'s linear schedule: β_t = linspace(beta_start, beta_end, T)."""
        _check_levels(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 100, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
        """Nichol & Dhariwal's cosine schedule: ᾱ_t = f(t+1)/f(0), f(u) = cos²((u/T + s)/(1 + s)·π/2)."""
        _check_levels(T)
        u = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f[1:] / f[0]
        alphas_cumprod_prev = f[:-1] / f[0]
        betas = torch.clamp(1 - alphas_cumprod / alphas_cumprod_prev, max=max_beta)
        return cls(betas)

    @classmethod
    def from_config(cls, kind: Literal["linear", "cosine"] = "cosine", T: int = 100, respace: int | None = None,  # noqa: N803
                    **kwargs: float) -> NoiseSchedule:
        """Build a schedule by name (what configs use): ``kind`` is "linear" or "cosine"."""
        return ScheduleConfig(kind, T, respace=respace, **kwargs).build()

    def respace(self, n_levels: int) -> NoiseSchedule:
        """Keep ``n_levels`` evenly spaced levels t_k = round(k (T-1)/(K-1)) (improved-diffusion style).

        β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}, so the marginals at the kept levels are unchanged; the network is still
        called with the original t_k.
        """
        if not 2 <= n_levels <= self.T:
            raise ValueError(f"respace n_levels={n_levels} must lie in [2, T={self.T}]")
        kept = torch.round(torch.arange(n_levels, dtype=torch.float64) * (self.T - 1) / (n_levels - 1)).long()
        abar = self.alphas_cumprod[kept]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return NoiseSchedule(1 - abar / abar_prev, self.model_timesteps[kept])

    def model_t(self, t: int, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The network's time input for level ``t``, as a LongTensor of shape [batch_size]."""
        self.check_level(t)
        return torch.full((batch_size,), int(self.model_timesteps[t]), dtype=torch.long, device=device)

    def check_level(self, t: int) -> None:
        if not 0 <= t < self.T:
            raise ValueError(f"level t={t} is outside [0, {self.T - 1}] for this schedule")

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + σ_t ε; ``t`` is an int or a LongTensor of shape [B]."""
        abar = _per_sample(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def reverse_step(self, x: Tensor, t: int, score: Tensor, noise: Tensor | None,
                     variance: ReverseVariance = "beta", variance_output: Tensor | None = None) -> Tensor:
        """One ancestral step from level t to t-1 in score form.

        x_{t-1} = (x_t + β_t s(x_t)) / √α_t + s_t z, with s_t² = β_t ("beta"), β̃_t ("posterior"), or ("learned")
        the model's interpolation log s_t² = f log β_t + (1 − f) log β̃_t^clipped, f = (v + 1)/2, from its variance
        output v (``variance_output``, shaped like x; guided-diffusion's learned σ). No noise is added at t = 0
        (the result is then at the data level).
        """
        if t == 0 or noise is None:
            return self._reverse_mean(x, t, score)
        mean, std = self.reverse_mean_and_std(x, t, score, variance, variance_output)
        return mean + std * noise

    def _reverse_mean(self, x: Tensor, t: int, score: Tensor) -> Tensor:
        self.check_level(t)
        beta = float(self.betas[t])
        return (x + beta * score) / math.sqrt(1.0 - beta)

    def reverse_mean_and_std(self, x: Tensor, t: int, score: Tensor, variance: ReverseVariance = "beta",
                             variance_output: Tensor | None = None) -> tuple[Tensor, float | Tensor]:
        """The reverse kernel N(mean, s_t² I) of :meth:`reverse_step` from level t (s_t a float, or a tensor shaped
        like x for a learned variance); particle weights need its density."""
        mean = self._reverse_mean(x, t, score)
        beta = float(self.betas[t])
        if variance == "beta":
            return mean, math.sqrt(beta)
        if variance == "posterior":
            return mean, math.sqrt(float(self.posterior_variance[t]))
        if variance == "learned":
            if variance_output is None:
                raise ValueError("reverse variance='learned' needs a model that predicts its variance (learned σ: an "
                                 "ADM/diffusers network with twice the input channels); use 'beta' or 'posterior'")
            frac = (variance_output.to(x.dtype) + 1) / 2
            log_var = frac * math.log(beta) + (1 - frac) * float(self.posterior_log_variance_clipped[t])
            return mean, torch.exp(0.5 * log_var)
        raise ValueError(f"reverse variance={variance!r} is not one of {list(REVERSE_VARIANCES)}")


@dataclass
class ScheduleConfig:
    """A noise schedule as configs write it: ``{kind: cosine, T: 100}`` or ``{kind: linear, T: 1000}``.

    ``beta_start``/``beta_end`` apply to "linear", ``s``/``max_beta`` to "cosine"; ``respace`` keeps that many
    evenly spaced levels.
    """

    kind: Literal["linear", "cosine"] = "cosine"
    T: int = 100  # noqa: N815
    beta_start: float = 1e-4
    beta_end: float = 0.02
    s: float = 0.008
    max_beta: float = 0.999
    respace: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"schedule kind={self.kind!r} is not one of ['cosine', 'linear']")
        _check_levels(self.T)

    def build(self) -> NoiseSchedule:
        if self.kind == "linear":
            schedule = NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        else:
            schedule = NoiseSchedule.cosine(self.T, self.s, self.max_beta)
        return schedule.respace(self.respace) if self.respace else schedule


def _check_levels(T: int) -> None:  # noqa: N803
    if T < 1:
        raise ValueError(f"T={T} must be a positive number of levels")


def _per_sample(values: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """values[t] broadcast against ``like`` ([B, ...]), in like's dtype and device."""
    if isinstance(t, int):
        return values[t].to(like)
    out = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))
