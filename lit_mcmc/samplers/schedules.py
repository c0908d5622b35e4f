"""Per-level hyper-parameter schedules (step size, mass): a constant, or a·β_t^b as in the papers."""

from __future__ import annotations

from collections.abc import Callable

from lit_mcmc.diffusion import NoiseSchedule

LevelValue = float | Callable[[int], float]


class BetaPower:
    """value(t) = a · β_t^b on a given noise schedule (MCMC-corr's step sizes; mass √M = β_t is a=1, b=2 for M)."""

    def __init__(self, schedule: NoiseSchedule, a: float, b: float) -> None:
        if a <= 0:
            raise ValueError(f"a={a} must be positive in a·β_t^b")
        self.schedule = schedule
        self.a = float(a)
        self.b = float(b)

    def __call__(self, t: int) -> float:
        return self.a * float(self.schedule.betas[t]) ** self.b

    def __repr__(self) -> str:
        return f"BetaPower(a={self.a}, b={self.b})"


def value_at(value: LevelValue, t: int, name: str) -> float:
    """Evaluate a constant-or-schedule at level t and check it is positive (naming the parameter if not)."""
    v = float(value(t)) if callable(value) else float(value)
    if not v > 0:
        raise ValueError(f"{name} must be positive, got {v} at level t={t}")
    return v


def check_positive(value: LevelValue, name: str) -> None:
    """Fail early for a constant that is not positive."""
    if not callable(value) and not float(value) > 0:
        raise ValueError(f"{name} must be positive, got {value}")
