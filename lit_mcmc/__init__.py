"""lit_mcmc: compositional generation with diffusion models and MCMC."""

__version__ = "0.1.0"
