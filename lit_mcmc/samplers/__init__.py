"""MCMC kernels, MH-correction strategies and the annealed driver."""

from lit_mcmc.samplers.annealed import AnnealedSampler, LevelPlan
from lit_mcmc.samplers.chain import ChainInfo, ChainState, StepInfo
from lit_mcmc.samplers.config import SamplerConfig
from lit_mcmc.samplers.corrections import (
    Correction,
    CurveIntegral,
    EnergyDifference,
    LineIntegral,
    make_correction,
)
from lit_mcmc.samplers.kernels import (
    HMC,
    MALA,
    UHMC,
    ULA,
    HamiltonianKernel,
    Kernel,
    LangevinKernel,
)
from lit_mcmc.samplers.random import PerSampleRandom, RandomStream, TorchRandom, as_random_stream
from lit_mcmc.samplers.schedules import BetaPower

__all__ = [
    "HMC", "MALA", "ULA", "UHMC", "AnnealedSampler", "BetaPower", "ChainInfo", "ChainState", "Correction",
    "CurveIntegral", "EnergyDifference", "HamiltonianKernel", "Kernel", "LangevinKernel", "LevelPlan",
    "LineIntegral", "PerSampleRandom", "RandomStream", "SamplerConfig", "StepInfo", "TorchRandom", "as_random_stream",
    "make_correction",
]
