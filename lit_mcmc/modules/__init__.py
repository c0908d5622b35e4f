"""LightningModules: training (DiffusionModule, NoisyClassifierModule, ClassifierModule) and sampling."""

from lit_mcmc.modules.classifiers import ClassifierModule, NoisyClassifierModule, load_classifier
from lit_mcmc.modules.components import ComponentConfig
from lit_mcmc.modules.composition import CompositionConfig
from lit_mcmc.modules.diffusion import DiffusionModule
from lit_mcmc.modules.sampling import SamplingModule

__all__ = [
    "ClassifierModule",
    "ComponentConfig",
    "CompositionConfig",
    "DiffusionModule",
    "NoisyClassifierModule",
    "SamplingModule",
    "load_classifier",
]
