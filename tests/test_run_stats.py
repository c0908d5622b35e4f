"""The per-level record: declared once where it is computed, stored generically, combined by its rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lit_mcmc.run_stats import level_arrays, run_levels
from lit_mcmc.samplers.levels import LEVEL_STATS, level_stat, record


@pytest.fixture
def declared():
    names = [level_stat("test_mean"), level_stat("test_groups", "group_mean", descending=True),
             level_stat("test_min", "min"), level_stat("test_count", "sum")]
    yield names
    for name in names:
        LEVEL_STATS.pop(name)


def shard(n: int, n_groups: int, levels: dict) -> dict[str, np.ndarray]:
    return {"indices": np.arange(n), "group_ids": np.arange(n_groups), **level_arrays(levels)}


def test_a_new_statistic_is_stored_and_combined_without_other_changes(declared):
    first, second = {}, {}
    for stat, values in (("test_mean", (1.0, 4.0)), ("test_groups", (2.0, 8.0)), ("test_min", (3.0, 1.0)),
                         ("test_count", (1, 2))):
        record(first, stat, 0, values[0])
        record(first, stat, 1, values[0])
        record(second, stat, 0, values[1])
    record(second, "test_mean", 1, math.nan)  # non-finite values are left out of a mean
    levels = run_levels([shard(2, 1, first), shard(6, 3, second)])
    assert levels["test_mean"] == {"0": (1.0 * 2 + 4.0 * 6) / 8, "1": 1.0}
    assert levels["test_groups"] == {"0": (2.0 * 1 + 8.0 * 3) / 4, "1": 2.0}
    assert list(levels["test_groups"]) == ["1", "0"]  # descending: the visiting order
    assert levels["test_min"] == {"0": 1.0, "1": 3.0}
    assert levels["test_count"] == {"0": 3, "1": 1} and isinstance(levels["test_count"]["0"], int)


def test_an_undeclared_statistic_is_refused():
    with pytest.raises(KeyError, match="not declared"):
        record({}, "no_such_statistic", 0, 1.0)
