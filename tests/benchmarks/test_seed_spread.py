"""The seed-spread table: the std over a configuration's seeds beside the mean of its runs' own standard errors."""

from __future__ import annotations

import numpy as np

from lit_mcmc.benchmarks.seed_spread import spread_table


def test_spread_table_puts_the_std_over_seeds_beside_the_runs_own_standard_errors() -> None:
    runs = [{"fid": 4.0, "fid_se": 1.0}, {"fid": 6.0, "fid_se": 1.2}, {"fid": 5.0, "fid_se": 0.8}]
    table = spread_table({"hmc_seed{0,1,2}": runs, "single": [{"fid": 3.0, "fid_se": 0.5}],
                          "same": [{"kid": 1.0, "kid_se": 0.1}, {"kid": 1.0, "kid_se": 0.1}]}, metrics=("fid", "kid"))
    lines = table.splitlines()
    assert lines[2] == f"| hmc_seed{{0,1,2}} | fid | 1 (3) | 1 | {1 / np.std([4, 6, 5], ddof=1):.2f} |"
    assert lines[3] == "| same | kid | 0 (2) | 0.1 | – |"
    assert len(lines) == 4  # one run: no spread to compare with
