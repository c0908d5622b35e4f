"""The run's report that metric callbacks share: particle groups for their standard errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from lit_mcmc.run_report import class_strata, estimable, particle_groups
from lit_mcmc.samplers import SamplerConfig
from lit_mcmc.samplers.particles import ResampleConfig


def test_particle_groups_follow_the_scored_samples_ancestors():
    merged = {"indices": np.array([0, 0, 2, 5, 7, 7, 9, 11])}  # a systematic resample keeps ancestors' indices
    with_particles = SimpleNamespace(sampler_config=SamplerConfig(
        kernel="hmc", step_size=0.1, correction="energy", resample=ResampleConfig(weights="exact", group_size=4)))
    assert particle_groups(merged, with_particles).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert particle_groups(merged, SimpleNamespace(sampler_config=SamplerConfig(kernel="reverse"))) is None
    assert particle_groups(merged, object()) is None


def test_classes_are_strata_only_when_each_holds_two_samples_or_more():
    assert class_strata(np.array([0, 1, 0, 1])).tolist() == [0, 1, 0, 1]
    assert class_strata(np.arange(4)) is None  # one sample per class: no spread within a class to measure
    assert class_strata(None) is None


def test_standard_errors_over_particle_groups_need_two_groups():
    assert estimable(None) and estimable(np.array([0, 0, 1, 1])) and not estimable(np.array([3, 3, 3]))
