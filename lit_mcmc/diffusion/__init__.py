"""Noise schedules as Gaussian paths x_t = α_t x_0 + σ_t ε: DDPM (betas), rectified flows and VE/EDM σ levels,
the forward marginal, the ancestral reverse step in α, σ and x̂_0, and the conversions between what networks
predict (ε, v, velocity, x̂_0) and the score (docs/gaussian_paths.md).

- ``schedule.py``: :class:`NoiseSchedule` (levels, VP-equivalent ᾱ_t and β_t, q_sample, reverse step, respacing).
- ``paths.py``: the rectified-flow (diffusers' shift, Flux's resolution shift) and Karras level grids.
- ``reverse.py``: the DDIM(η)/DDPM-posterior step's coefficients and noise.
- ``predictions.py``: ε / v / velocity / x̂_0 → score.
- ``config.py``: :class:`ScheduleConfig`, a schedule as configs write it.
"""

from lit_mcmc.diffusion.config import ScheduleConfig, check_trainable_schedule
from lit_mcmc.diffusion.paths import karras_levels, rectified_flow_levels, resolution_shift, shift_sigmas
from lit_mcmc.diffusion.reverse import REVERSE_VARIANCES, ReverseVariance, check_eta
from lit_mcmc.diffusion.schedule import PATHS, NoiseSchedule

__all__ = ["PATHS", "REVERSE_VARIANCES", "NoiseSchedule", "ReverseVariance", "ScheduleConfig", "check_eta",
           "check_trainable_schedule", "karras_levels", "rectified_flow_levels", "resolution_shift", "shift_sigmas"]
