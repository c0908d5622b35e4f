"""Step sizes tuned to a target acceptance per level, apart from the kernels (BlackJAX style).

A tuning pass anneals ``tune_samples`` chains of their own through the same levels as the sampling run. At each
level it adapts log ε by dual averaging (Nesterov; Hoffman & Gelman 2014, Alg. 5, as in Stan and BlackJAX)
towards ``target_accept``, one kernel step of all chains per iteration, and keeps the averaged step as that
level's entry of a :class:`~lit_mcmc.samplers.schedules.StepTable`. The sampling pass then uses the table
unchanged, so each of its kernels is a fixed MH kernel and keeps its target invariant.

The tuning chains draw from :class:`PerSampleRandom` streams keyed by the run's seed and the indices −1, −2, …,
which no sample has: tuning changes no sample's randomness, and the table depends only on the seed and the
settings (not on the batch size or the number of processes). Tables are saved as ``step_sizes.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_mcmc.data.shards import atomic_write_json
from lit_mcmc.samplers.annealed import AnnealedSampler
from lit_mcmc.samplers.chain import ChainInfo, ChainState
from lit_mcmc.samplers.config import SamplerConfig
from lit_mcmc.samplers.random import PerSampleRandom, RandomStream
from lit_mcmc.samplers.schedules import LevelValue, StepTable, value_at
from lit_mcmc.targets import Evaluation, Target

TABLE_FORMAT = "lit_mcmc.step_sizes/1"
TABLE_FILE = "step_sizes.json"
# The cap on ε at a level: within this factor of the configured (initial) step either way. It only stops a
# runaway; 1e4 lets 2D steps go from the papers' 0.001 to above 1 (or from 0.03 down to 3e-6).
STEP_RANGE = 1e4


def acceptance_probability(log_ratio: Tensor) -> Tensor:
    """min(1, exp(log α)) per sample; 0 where the log-ratio is NaN or infinite (those proposals are rejected)."""
    finite = torch.isfinite(log_ratio)
    return torch.where(finite, log_ratio.clamp(max=0.0).exp(), torch.zeros_like(log_ratio))


@dataclass
class DualAveraging:
    """Dual averaging of log ε towards a target acceptance (Hoffman & Gelman 2014, Alg. 5).

    ``update`` takes the mean acceptance probability of the last step; :attr:`step` is the next step to try and
    :attr:`final_step` the averaged step to keep. The shrinkage point μ is log(initial_step): the tuner starts each
    level from the previous level's tuned step, a better guess than Stan's 10·ε₀ for a cold start.
    """

    initial_step: float
    target_accept: float
    min_step: float = 0.0
    max_step: float = math.inf
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75
    iteration: int = 0
    h_bar: float = 0.0
    log_step: float = field(init=False)
    log_step_avg: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.initial_step > 0:
            raise ValueError(f"initial_step={self.initial_step} must be positive")
        self.log_step = self.log_step_avg = self._clip(math.log(self.initial_step))

    def _clip(self, log_step: float) -> float:
        low = math.log(self.min_step) if self.min_step > 0 else -math.inf
        return min(max(log_step, low), math.log(self.max_step))

    def update(self, accept_prob: float) -> None:
        """One adaptation step from the acceptance probability observed with :attr:`step`."""
        self.iteration += 1
        m = self.iteration
        accept = accept_prob if math.isfinite(accept_prob) else 0.0
        eta = 1.0 / (m + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target_accept - accept)
        self.log_step = self._clip(math.log(self.initial_step) - math.sqrt(m) / self.gamma * self.h_bar)
        weight = m ** -self.kappa
        self.log_step_avg = weight * self.log_step + (1 - weight) * self.log_step_avg

    @property
    def step(self) -> float:
        return math.exp(self.log_step)

    @property
    def final_step(self) -> float:
        return math.exp(self.log_step_avg)


@dataclass
class StepTuning:
    """A tuning pass's result: the table, and the acceptance per level of the tuning chains' K steps at the
    tuned step (what the sampling pass should see there)."""

    table: StepTable
    accept_rate_per_level: dict[int, float]
    nfe_per_chain: int = 0
    seconds: float = 0.0

    def as_json(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The ``step_sizes.json`` record: the table with the settings it was tuned with, and what tuning cost."""
        return {"format": TABLE_FORMAT, "tuned_with": settings, "step_sizes": self.table.as_json(),
                "tuning_accept_rate": {str(t): self.accept_rate_per_level[t]
                                       for t in sorted(self.accept_rate_per_level, reverse=True)},
                "tuning_nfe_per_chain": self.nfe_per_chain, "tuning_seconds": self.seconds}


def tuning_indices(n_chains: int) -> Tensor:
    """The tuning chains' stream indices −1 … −n_chains: disjoint from every sample index (>= 0)."""
    return -1 - torch.arange(n_chains)


class LevelAdapter:
    """The tuning pass's work at one level, used as the annealed driver's ``run_level``.

    The sampling pass runs K = ``n_steps`` kernel steps at a level from the chains it brings from the level
    above, and its acceptance there is the mean over those K steps. To tune for exactly that, adaptation runs in
    episodes of K steps that each restart from the chains' entry state, ``n_iterations`` steps in all, updating the
    dual average after every step. The chains then take K steps at the final (averaged) step, as the sampling pass
    will, and move on to the next level; the acceptance of those K steps is reported per level.
    """

    def __init__(self, sampler: AnnealedSampler, initial: LevelValue, target_accept: float,
                 n_iterations: int) -> None:
        self.sampler, self.initial = sampler, initial
        self.target_accept, self.n_iterations = target_accept, n_iterations
        self.steps: dict[int, float] = {}
        self.accept_rates: dict[int, float] = {}
        self.adaptation_nfe = 0  # per chain, in the adaptation episodes (not the K steps that move the chains on)
        self._previous: int | None = None

    def start_step(self, level: int) -> float:
        """The previous level's tuned step, rescaled by the configured schedule's ratio (levels change smoothly);
        the configured step at the first level."""
        configured = value_at(self.initial, level, "step_size")
        if self._previous is None:
            return configured
        return self.steps[self._previous] * configured / value_at(self.initial, self._previous, "step_size")

    def adapt(self, target: Target, x: Tensor, level: int, momentum: Tensor | None, rng: RandomStream) -> float:
        """Dual averaging over episodes of K steps from (x, momentum); returns the averaged step."""
        kernel, episode_length = self.sampler.kernel, max(self.sampler.n_steps, 1)
        assert kernel is not None
        configured = value_at(self.initial, level, "step_size")
        averaging = DualAveraging(self.start_step(level), self.target_accept, configured / STEP_RANGE,
                                  configured * STEP_RANGE)
        for i in range(self.n_iterations):
            if i % episode_length == 0:
                state, nfe = kernel.init(target, x, level, momentum, rng)
                self.adaptation_nfe += nfe
            state, step_info = kernel.step(target, state, rng, averaging.step)
            self.adaptation_nfe += step_info.nfe
            # one host sync per step: the dual average needs the number (tuning is not the sampling hot path)
            averaging.update(float(acceptance_probability(step_info.log_ratio).mean()))  # type: ignore[arg-type]
        return averaging.final_step

    def __call__(self, target: Target, x: Tensor, level: int, momentum: Tensor | None, rng: RandomStream,
                 evaluation: Evaluation | None = None) -> tuple[ChainState, ChainInfo]:
        self.steps[level] = self.adapt(target, x, level, momentum, rng)
        state, info = self.sampler.run_level(target, x, level, momentum, rng, evaluation, step_size=self.steps[level])
        self.accept_rates[level] = info.accept_rate
        self._previous = level
        return state, info


def tune_step_sizes(sampler: AnnealedSampler, target: Target, initial: LevelValue, target_accept: float,
                    n_chains: int, n_iterations: int, seed: int, sample_shape: tuple[int, ...],
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    progress: bool = False) -> StepTuning:
    """Tune ε per level: anneal ``n_chains`` tuning chains on ``target`` through the sampler's levels, adapting at
    each. The result's table is what :meth:`AnnealedSampler.sample` then takes as its ``step_table``.

    Args:
        sampler: the sampling pass's sampler (not changed: the tuning chains run as independent chains).
        target: the target the sampling pass samples (for labelled targets, with the tuning chains' labels).
        initial: the configured step per level (``step_size`` or a·β_t^b): the first level's starting point, the
            shape of the warm starts, and the centre of the cap.
        target_accept: the mean acceptance probability to reach at every level, in (0, 1).
        n_chains: tuning chains (``sampler.tune_samples``); n_iterations: adaptation steps per level
            (``sampler.tune_steps``).
        seed: the run's base seed; the chains use the streams (seed, −1 … −n_chains).
    """
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept={target_accept} must lie in (0, 1)")
    if sampler.kernel is None or sampler.kernel.correction is None:
        raise ValueError("step-size tuning needs an MH kernel (MALA or HMC with a correction)")
    sampler.kernel.check_target(target)
    chains = sampler.without_particles()  # unchecked too: the sampling pass is what gets checked for degeneracy
    adapter = LevelAdapter(chains, initial, target_accept, n_iterations)
    random = PerSampleRandom(seed, tuning_indices(n_chains))
    start = time.perf_counter()
    _, info = chains.sample(target, (n_chains, *sample_shape), random, device=device, dtype=dtype, progress=progress,
                            run_level=adapter)
    return StepTuning(StepTable(adapter.steps, "the tuned step table"), adapter.accept_rates,
                      info.nfe + adapter.adaptation_nfe, time.perf_counter() - start)


# ----- step_sizes.json -------------------------------------------------------------------------------------------


def save_step_table(path: Path, record: dict[str, Any]) -> None:
    """Write a ``step_sizes.json`` record atomically (readers see the whole file or none)."""
    atomic_write_json(path, record)


def load_step_table(path: Path | str, key: str = "sampler.step_table") -> tuple[StepTable, dict[str, Any]]:
    """(table, the whole record) from a ``step_sizes.json``; clear errors naming ``key`` and the file."""
    path = Path(path)
    where = f"{key}={str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file; point it to the step_sizes.json of a run tuned with "
                                "sampler.target_accept (it is written into that run's trainer.default_root_dir)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not valid JSON ({err}): it must be a step_sizes.json written by lit-mcmc") \
            from None
    return parse_step_table(record, where), record


def parse_step_table(record: Any, where: str) -> StepTable:
    """The table of a ``step_sizes.json`` record; ``where`` (the key and file) is named in errors."""
    steps = record.get("step_sizes") if isinstance(record, dict) else None
    if not isinstance(steps, dict) or not steps:
        raise ValueError(f"{where} is malformed: it needs a non-empty 'step_sizes' object {{\"<level>\": step}} "
                         f"(format {TABLE_FORMAT})")
    try:
        parsed = {int(level): float(value) for level, value in steps.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where} is malformed: 'step_sizes' must map integer levels to numbers") from None
    return StepTable(parsed, where)


def check_covers(table: StepTable, levels: list[int]) -> None:
    """Every level the sampler visits must have a step in the table."""
    missing = table.covers(levels)
    if missing:
        raise ValueError(f"{table.source} lacks step sizes for levels {missing[:5]}{'...' if len(missing) > 5 else ''}"
                         f" that this sampler visits ({levels[0]}..{levels[-1]}): it was made for another schedule "
                         "or level plan")


def obtain_step_table(config: SamplerConfig, run_dir: Path, seed: int, levels: list[int],
                      tune: Callable[[], StepTuning]) -> dict[str, Any]:
    """The ``step_sizes.json`` record the sampling pass uses, written to ``run_dir``.

    In order: ``sampler.step_table`` (another run's table, copied into ``run_dir`` for the record); this run's
    own ``run_dir/step_sizes.json`` from an earlier (interrupted) invocation, if it was tuned with the same
    settings; otherwise ``tune()``'s result.
    """
    saved = run_dir / TABLE_FILE
    if config.step_table is not None:
        table, record = load_step_table(config.step_table)
        check_covers(table, levels)
        if Path(config.step_table).resolve() != saved.resolve():
            record = {**record, "copied_from": str(Path(config.step_table).resolve())}
            save_step_table(saved, record)
        return record
    settings = json.loads(json.dumps({**config.tuning_settings(), "seed": seed, "levels": levels}))
    if saved.is_file():
        table, record = load_step_table(saved, key="the saved table")
        if record.get("tuned_with") != settings:
            changed = sorted(k for k in settings if record.get("tuned_with", {}).get(k) != settings[k])
            raise ValueError(f"{saved} was tuned with other settings ({', '.join(changed)} differ): delete it to "
                             "tune again, or sample into a fresh trainer.default_root_dir")
        check_covers(table, levels)
        return record
    record = tune().as_json(settings)
    save_step_table(saved, record)
    return record
