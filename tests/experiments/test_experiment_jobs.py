"""The experiment drivers' job runner: resumable subprocess jobs side by side, failures, CPU time, tables."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from lit_mcmc.experiments.jobs import (
    Job,
    JobFailed,
    evaluations_per_level,
    fit_done,
    markdown_table,
    run_jobs,
    run_phases,
)


def test_markdown_table_layout():
    assert markdown_table(["A", "B"], [["1", "2"]]).splitlines() == ["| A | B |", "| --- | --- |", "| 1 | 2 |"]


def test_fit_done_needs_a_checkpoint_of_the_full_run(tmp_path: Path):
    assert not fit_done(tmp_path, 30)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 20}, tmp_path / "checkpoints" / "last.ckpt")  # interrupted after 20 steps
    assert not fit_done(tmp_path, 30)
    assert fit_done(tmp_path, 20)


def python_job(tmp_path: Path, name: str, code: str, done: bool = False) -> Job:
    return Job(name, [sys.executable, "-c", code], tmp_path / name, "job.log", lambda: done)


def test_run_jobs_reports_a_failure_with_log_tail_and_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    ok = python_job(tmp_path, "ok", "print('fine')")
    bad = python_job(tmp_path, "bad", "import sys; print('\\n'.join(f'line {i}' for i in range(40))); sys.exit(3)")
    with pytest.raises(JobFailed) as failure:
        run_jobs([ok, bad], n_workers=1)
    message = str(failure.value)
    assert "bad failed (exit code 3)" in message
    assert "line 39" in message and "line 10" in message and "line 9\n" not in message  # the last 30 lines
    assert "command: " in message and "sys.exit(3)" in message
    assert (tmp_path / "ok" / "job.log").read_text() == "fine\n"


def test_a_failure_stops_the_other_running_jobs(tmp_path: Path):
    sleeper = python_job(tmp_path, "sleeper", "import time; time.sleep(60)")
    bad = python_job(tmp_path, "bad", "import time, sys; time.sleep(0.5); sys.exit(2)")
    start = time.perf_counter()
    with pytest.raises(JobFailed, match="bad failed"):
        run_jobs([sleeper, bad], n_workers=2)
    assert time.perf_counter() - start < 30


def test_run_jobs_returns_each_runs_cpu_time(tmp_path: Path):
    busy = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass"
    (cpu,) = run_jobs([python_job(tmp_path, "busy", busy)], n_workers=1)
    assert 0.3 <= cpu < 5


def test_run_jobs_skips_done_jobs(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert run_jobs([python_job(tmp_path, "finished", "raise SystemExit(1)", done=True)], n_workers=2) == []
    assert "skipped finished: outputs exist" in capsys.readouterr().err
    assert not (tmp_path / "finished").exists()


def test_run_phases_times_each_phase_counts_reused_runs_and_exits_on_failure(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture):
    phases = {"first": [python_job(tmp_path, "a", "pass"), python_job(tmp_path, "b", "pass", done=True)],
              "second": [python_job(tmp_path, "c", "pass")]}
    seconds, cpu_seconds, reused = run_phases(phases, n_workers=2)
    assert list(seconds) == list(cpu_seconds) == ["first", "second"] and reused == 1
    assert all(value > 0 for value in [*seconds.values(), *cpu_seconds.values()])
    with pytest.raises(SystemExit) as exit_info:
        run_phases({"broken": [python_job(tmp_path, "d", "raise SystemExit(4)")],
                    "never": [python_job(tmp_path, "e", "pass")]}, n_workers=1)
    assert exit_info.value.code == 1
    assert "d failed (exit code 4)" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # later phases do not start


@pytest.mark.parametrize("sampler,expected", [
    ({"kernel": "reverse"}, 1),
    ({"kernel": "ula", "n_steps": 10, "step_size": 0.1}, 11),
    ({"kernel": "mala", "n_steps": 10, "step_size": 0.1, "correction": "line", "n_points": 3}, 1 + 10 * 4),
    ({"kernel": "hmc", "n_steps": 2, "step_size": 0.1, "n_leapfrog": 3, "correction": "line", "n_points": 8},
     1 + 2 * 11),
    ({"kernel": "hmc", "n_steps": 2, "step_size": 0.1, "n_leapfrog": 3, "correction": "curve", "n_points": 1},
     1 + 2 * 6),
    ({"kernel": "hmc", "n_steps": 2, "step_size": 0.1, "n_leapfrog": 3, "correction": "energy"}, 1 + 2 * 3),
])
def test_evaluations_per_level_follow_the_corrections_costs(sampler, expected):
    # the costs of the README's corrections table: line L + k (MALA 1 + k), curve L + L·N, energy L
    assert evaluations_per_level(sampler) == expected
