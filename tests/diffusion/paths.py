"""Shared test material: one schedule per Gaussian path and a two-mode mixture diffused along each."""

from __future__ import annotations

import torch

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.targets import DiffusedGaussianMixture

PATHS = {
    "ddpm_cosine": lambda T: NoiseSchedule.cosine(T),
    "rectified_flow_sd3": lambda T: NoiseSchedule.rectified_flow(T, shift=3.0),
    "ve_karras": lambda T: NoiseSchedule.karras(T, sigma_min=0.002, sigma_max=80.0, rho=7.0),
}
MEANS = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
STD = 0.2


def two_modes(schedule: NoiseSchedule) -> DiffusedGaussianMixture:
    """Modes at ±(1, −0.5) with weights 0.3 / 0.7 and std 0.2, diffused in closed form on ``schedule``'s path."""
    return DiffusedGaussianMixture(MEANS, STD, schedule, WEIGHTS)


def upper_mode_share(x: torch.Tensor) -> float:
    """The share of samples nearer the mode at (1, −0.5) (the modes are 5.6 stds apart: no ambiguity)."""
    return float((x[:, 0] > 0).double().mean())
