"""The sampler benchmark reports the kernels' own NFE and acceptance, in both modes."""

from __future__ import annotations

import json

import pytest
import torch

from lit_mcmc.benchmarks.samplers import build_samplers, build_target, main
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.targets import sample_box_product


def table_rows(table: str) -> dict[str, list[str]]:
    """Sampler name -> its cells, from the Markdown table's body rows."""
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_kernel_mode_reports_the_kernels_nfe_and_acceptance(tmp_path):
    steps, batch, seed = 3, 16, 5
    table = main(["--batch", str(batch), "--steps", str(steps), "--repeats", "1", "--seed", str(seed),
                  "--samplers", "HMC-curve,LA-3-line,U-LA", "--out", str(tmp_path / "bench")])
    rows = table_rows(table)
    assert list(rows) == ["HMC-curve", "LA-3-line", "U-LA"]
    # Hand-counted: 1 initial evaluation + per step L=3 leapfrog / 1 proposal + 3 line nodes / 1 proposal.
    assert [int(rows[name][0]) for name in rows] == [1 + steps * 3, 1 + steps * (1 + 3), 1 + steps]
    assert rows["U-LA"][1] == "–"  # unadjusted: no acceptance rate

    saved = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert (tmp_path / "bench.md").read_text().strip() == table
    # The same run by hand: exact product samples at t=0 from the seed, then kernel.run with a fresh generator.
    schedule = NoiseSchedule.cosine(100)
    target, gmm, bar = build_target(schedule)
    x0 = sample_box_product(gmm, bar, batch, 0, torch.Generator().manual_seed(seed))
    for row in saved[:2]:
        _, info = build_samplers()[row["sampler"]].run(target, x0, 0, steps, torch.Generator().manual_seed(seed))
        assert row["nfe"] == info.nfe
        assert row["accept_rate"] == pytest.approx(info.accept_rate)
        assert row["overhead_wall"] == pytest.approx(row["wall_s"] / row["bare_wall_s"])
        assert row["overhead_cpu"] == pytest.approx(row["cpu_s"] / row["bare_cpu_s"])


def test_annealed_mode_counts_every_level():
    table = main(["--mode", "annealed", "--steps-per-level", "1", "--batch", "8", "--repeats", "1",
                  "--samplers", "U-HMC,HMC-3-curve"])
    rows = table_rows(table)
    # 100 levels, each 1 initial evaluation + K=1 step of 3 leapfrog evaluations (+ 3 curve midpoints).
    assert int(rows["U-HMC"][0]) == 100 * (1 + 3)
    assert int(rows["HMC-3-curve"][0]) == 100 * (1 + 3 + 3)


def test_particle_rows_cost_no_evaluations():
    table = main(["--mode", "annealed", "--steps-per-level", "1", "--batch", "64", "--repeats", "1",
                  "--samplers", "HMC-energy,HMC-energy+SMC"])
    rows = table_rows(table)
    assert rows["HMC-energy+SMC"][0] == rows["HMC-energy"][0]
    with pytest.raises(SystemExit, match="must be a multiple of 64"):
        main(["--mode", "annealed", "--batch", "8", "--samplers", "HMC-energy+SMC"])


def test_unknown_sampler_is_named():
    with pytest.raises(SystemExit, match="unknown \\['HMC-9-line'\\]; choose from U-LA"):
        main(["--batch", "4", "--steps", "1", "--samplers", "HMC-9-line"])


def test_adm_benchmark_counts_the_imagenet_configs_evaluations(tmp_path):
    from lit_mcmc.benchmarks.adm import main as adm_main
    from lit_mcmc.benchmarks.adm import sampler_for
    from lit_mcmc.experiments.jobs import evaluations_per_level

    adm_main(["--small", "--levels", "1", "--batch", "1", "--out", str(tmp_path / "adm")])
    rows = json.loads((tmp_path / "adm.json").read_text())["rows"]
    assert [(r["sampler"], r["use_fp16"]) for r in rows] == [("Reverse", True), ("HMC-6-curve", True),
                                                            ("Reverse", False), ("HMC-6-curve", False)]
    hmc = sampler_for("HMC-6-curve")
    # one guided evaluation per level for Reverse; the chain's start plus 2 steps of 3 leapfrog + 6 curve nodes
    assert [r["nfe_per_level"] for r in rows] == [1, evaluations_per_level(vars(hmc)), 1, 19]
    assert all(r["samples_per_s_full_run"] > 0 for r in rows)


def test_gpu_benchmark_small_runs_on_cpu_and_counts_the_configs_evaluations(tmp_path):
    from lit_mcmc.benchmarks.gpu import ROWS, sampler_config
    from lit_mcmc.benchmarks.gpu import main as gpu_main
    from lit_mcmc.experiments.jobs import evaluations_per_level

    levels = 3
    table = gpu_main(["--small", "--levels", str(levels), "--repeats", "1", "--out", str(tmp_path / "gpu")])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["model"], r["precision"]) for r in saved["training"]] == [
        (model, precision) for precision in ("fp32", "bf16") for model in ("score", "energy", "classifier")]
    assert all(r["ms_per_step"] > 0 for r in saved["training"])
    rows = saved["sampling"]
    assert [(r["sampler"], r["precision"]) for r in rows] == [
        (row, precision) for precision in ("fp32", "bf16") for row in ROWS]
    for r in rows:  # the first reverse step, then per level the chain's evaluations
        assert r["nfe_per_sample"] == 1 + (levels - 1) * evaluations_per_level(vars(sampler_config(r["sampler"])))
        assert r["samples_per_s"] > 0 and 0 < r["network_share"] <= 1
    assert "samples/s" in table and "ms/step" in table


def test_diffusers_benchmark_small_counts_the_configs_evaluations(tmp_path):
    from lit_mcmc.benchmarks.diffusers import main as diffusers_main
    from lit_mcmc.benchmarks.diffusers import sampler_configs
    from lit_mcmc.experiments.jobs import evaluations_per_level

    levels = 2
    diffusers_main(["--small", "--levels", str(levels), "--batch", "1", "--out", str(tmp_path / "sd")])
    rows = json.loads((tmp_path / "sd.json").read_text())["rows"]
    configs = sampler_configs()
    assert [r["sampler"] for r in rows] == list(configs) == ["Reverse", "HMC-2-curve"]
    for r in rows:
        assert r["nfe_per_sample"] == 1 + (levels - 1) * evaluations_per_level(vars(configs[r["sampler"]]))
        assert r["samples_per_s"] > 0
