"""The 2D MH-correction study preset: its rows and jobs (the runs themselves are those of the 2D driver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lit_mcmc.experiments.study2d import SAMPLER, SMC_ROWS, STUDY_ROWS, study_phases
from lit_mcmc.experiments.toy2d import PRESETS, parse_args


def option(command: list[str], key: str) -> str | None:
    return command[command.index(key) + 1] if key in command else None


def test_study_rows_cover_the_issue():
    keys = {row.key for row in STUDY_ROWS}
    for model, hmc, langevin in (("score", "hmc_curve", "la_1_line"), ("energy", "hmc", "la")):
        assert {f"{model}_uhmc", f"{model}_uhmc_reference_levels", f"{model}_{hmc}", f"{model}_{hmc}_tuned",
                f"{model}_uhmc_tuned", f"{model}_ula", f"{model}_{langevin}", f"{model}_{langevin}_tuned",
                f"{model}_ula_tuned"} <= keys


def test_study_jobs_tune_then_reuse_the_tables(tmp_path: Path):
    phases = study_phases(tmp_path, 5, PRESETS["study"], STUDY_ROWS)
    assert list(phases) == ["train", "sample", "sample_twins"]  # twins run after the tables exist
    assert len(phases["train"]) == 5 * 4
    jobs = {job.label: job.command for phase in ("sample", "sample_twins") for job in phases[phase]}
    assert len(jobs) == 5 * len(STUDY_ROWS)
    tuned = jobs["samples/trial_3/score_hmc_curve_tuned"]
    assert option(tuned, f"{SAMPLER}target_accept") == "0.8" and option(tuned, "--model.init_args.seed") == "3"
    assert option(jobs["samples/trial_3/energy_la_tuned"], f"{SAMPLER}target_accept") == "0.65"
    twin = jobs["samples/trial_3/score_uhmc_tuned"]
    assert option(twin, f"{SAMPLER}step_table") == str(tmp_path / "samples" / "trial_3" / "score_hmc_curve_tuned"
                                                       / "step_sizes.json")
    assert all(job.label.endswith("_tuned") for job in phases["sample_twins"])
    assert option(jobs["samples/trial_0/energy_uhmc_reference_levels"], f"{SAMPLER}min_mcmc_level") == "1"
    assert option(jobs["samples/trial_0/score_uhmc"], f"{SAMPLER}min_mcmc_level") is None
    assert parse_args(["--preset", "study", "--trials", "5"]).preset == "study"


def test_particle_study_pairs_every_sampler_with_and_without_particles(tmp_path: Path):
    phases = study_phases(tmp_path, 5, PRESETS["smc"], SMC_ROWS)
    jobs = {job.label.removeprefix("samples/trial_0/"): job.command for job in phases["sample"]
            if job.label.startswith("samples/trial_0/")}
    assert len(jobs) == len(SMC_ROWS) and not phases["sample_twins"]
    for key in ("oracle_hmc", "energy_hmc", "energy_la"):  # carried x: exact weights, with and without denoising
        assert {key, f"{key}_smc", f"{key}_denoise", f"{key}_smc_denoise"} <= set(jobs)
        assert option(jobs[f"{key}_smc_denoise"], f"{SAMPLER}resample.weights") == "exact"
        assert option(jobs[f"{key}_smc_denoise"], f"{SAMPLER}final_denoise") == "true"
        assert option(jobs[key], f"{SAMPLER}resample.weights") is None
    for key in ("score_hmc_curve_reverse", "score_reverse"):  # reverse steps: Feynman–Kac weights
        assert option(jobs[f"{key}_smc"], f"{SAMPLER}resample.weights") == "feynman_kac"
    assert option(jobs["score_hmc_curve_reverse"], f"{SAMPLER}reverse") == "true"
    assert option(jobs["oracle_hmc"], "--data.init_args.n_samples") == "512"
    assert int(option(jobs["oracle_hmc_smc"], "--data.init_args.batch_size")) % 64 == 0
    assert len(phases["train"]) == 5 * 4


def test_study_table_marks_paired_differences_to_the_compared_row():
    from lit_mcmc.experiments.study2d import study_table

    def row(key, sampler, compare_to, w2s):
        trials = [{"ll": 1.0 + 0.1 * k, "w2": w2, "gmm": 0.01, "outside": 0.05} for k, w2 in enumerate(w2s)]
        return {"key": key, "model": "oracle", "sampler": sampler, "compare_to": compare_to, "adjusted": False,
                "distribution": "product", "trials": trials, "mean": {}}

    base = [0.10, 0.20, 0.30, 0.15, 0.25]
    rows = [row("a", "A", None, base),
            row("shifted", "A + shift", "a", [w + 0.01 for w in base]),  # tiny but in every trial: paired, marked
            row("noisy", "A + noise", "a", list(np.add(base, (0.05, -0.04, 0.03, -0.05, 0.02))))]
    lines = {line.split(" | ")[1]: line.split(" | ") for line in study_table(rows).splitlines()[2:]}
    assert lines["A + shift"][2] == "A" and lines["A + shift"][4].endswith("*")
    assert not lines["A + noise"][4].endswith("*") and not lines["A"][4].endswith("*")
    assert not lines["A + shift"][3].endswith("*")  # the same LL in both rows
