"""LightningModules: training (DiffusionModule) and sampling (SamplingModule)."""

from lit_mcmc.modules.diffusion import DiffusionModule
from lit_mcmc.modules.sampling import ComponentConfig, CompositionConfig, SamplingModule

__all__ = ["ComponentConfig", "CompositionConfig", "DiffusionModule", "SamplingModule"]
