"""Per-level hyper-parameter schedules (step size, mass): a constant, or a·β_t^b as in the papers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from lit_mcmc.diffusion import NoiseSchedule

LevelValue = float | Callable[[int], float]


class BetaPower:
    """value(t) = a · β_t^b on a given noise schedule (MCMC-corr's step sizes; mass √M = β_t is a=1, b=2 for M).

    β_t is the schedule's VP-equivalent one (its own on DDPM schedules, 1 − ᾱ_t/ᾱ_{t−1} with ᾱ_t = α_t²/(α_t² + σ_t²)
    on other Gaussian paths). ``scale_power`` p multiplies by (α_t² + σ_t²)^{p/2}, the path's x scale to the power p:
    x_t/√(α_t² + σ_t²) is the VP path, so a Langevin step (p = 2) or an HMC step at fixed mass (p = 1) chosen for VP
    coordinates keeps its meaning on a path whose scale grows with σ (VE; docs/gaussian_paths.md). p = 0 (default)
    is the papers' rule.
    """

    def __init__(self, schedule: NoiseSchedule, a: float, b: float, scale_power: float = 0.0) -> None:
        if a <= 0:
            raise ValueError(f"a={a} must be positive in a·β_t^b")
        self.schedule = schedule
        self.a = float(a)
        self.b = float(b)
        self.scale_power = float(scale_power)

    def __call__(self, t: int) -> float:
        value = self.a * float(self.schedule.betas[t]) ** self.b
        if self.scale_power:
            alpha, sigma = self.schedule.level_coefficients(t)
            value *= (alpha**2 + sigma**2) ** (self.scale_power / 2)
        return value

    def __repr__(self) -> str:
        scaled = f", scale_power={self.scale_power}" if self.scale_power else ""
        return f"BetaPower(a={self.a}, b={self.b}{scaled})"


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


class StepTable:
    """A step size per level from a table (tuned by ``samplers/adaptation.py``, or loaded from ``step_sizes.json``).

    Args:
        steps: level -> step size; every value must be positive and finite.
        source: where the table came from, named in errors (e.g. "sampler.step_table=runs/a/step_sizes.json").
    """

    def __init__(self, steps: Mapping[int, float], source: str = "step table") -> None:
        bad = {int(level): value for level, value in steps.items() if not (math.isfinite(value) and value > 0)}
        if bad:
            raise ValueError(f"{source}: step sizes must be positive and finite, got {bad}")
        self.steps = {int(level): float(value) for level, value in steps.items()}
        self.source = source

    def __call__(self, t: int) -> float:
        if t not in self.steps:
            raise ValueError(f"{self.source} has no step size for level t={t} (it has levels "
                             f"{min(self.steps, default=None)}..{max(self.steps, default=None)}): it was made for "
                             "another schedule or level plan")
        return self.steps[t]

    def covers(self, levels: list[int]) -> list[int]:
        """The levels of ``levels`` the table lacks."""
        return [t for t in levels if t not in self.steps]

    def as_json(self) -> dict[str, float]:
        """{"<level>": step} in descending level order (JSON keys are strings)."""
        return {str(t): self.steps[t] for t in sorted(self.steps, reverse=True)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepTable) and self.steps == other.steps

    def __repr__(self) -> str:
        return f"StepTable({len(self.steps)} levels, {self.source})"

