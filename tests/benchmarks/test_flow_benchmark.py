"""The flow-matching throughput benchmark runs (tiny transformers on the CPU) and counts the configs' evaluations."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers", reason="the [pretrained] extra (diffusers) is not installed")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_benchmark_small_counts_the_configs_evaluations(tmp_path, family):
    from lit_mcmc.benchmarks.flow import main, sampler_configs
    from lit_mcmc.experiments.jobs import evaluations_per_level

    levels = 3
    main(["--family", family, "--small", "--levels", str(levels), "--batch", "1", "--out", str(tmp_path / family)])
    rows = json.loads((tmp_path / f"{family}.json").read_text())["rows"]
    configs = sampler_configs(family)
    assert [r["sampler"] for r in rows] == list(configs) == ["Reverse", "HMC-2-curve"]
    for r in rows:
        assert r["nfe_per_sample"] == 1 + (levels - 1) * evaluations_per_level(vars(configs[r["sampler"]]))
        assert r["samples_per_s"] > 0
