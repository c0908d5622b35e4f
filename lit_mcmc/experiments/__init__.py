"""Experiment drivers: a paper's experiment end to end through ``lit-mcmc`` (``python -m lit_mcmc.experiments.X``)."""
