"""Annealed MCMC through the diffusion levels T−1 … 0.

At each level the driver optionally takes one ancestral reverse step (t → t−1, with the target's score), then runs
K kernel steps at the level it has reached. The levels each sampler visits are explicit (:meth:`plan`) and the
same for every kernel — the reference codebases disagree here (docs/algorithms.md §11.6). Without a reverse step
(the papers' 2D experiment), MCMC runs at every level T−1 … 0 starting from x ~ N(0, I); with it (images), x
starts at level T−1, and MCMC runs after each reverse step at levels T−2 … 0.

With particle resampling (``samplers/particles.py``) the particles' weights change with every move between
levels, and a group whose weights have degenerated resamples when it arrives at a level, before that level's MCMC
steps (resample-move SMC). ``final_denoise`` ends a run without reverse steps with Tweedie's estimate
x̂_0 = (x + σ_0² S(x, 0))/α_0 from the last state's cached score (no extra evaluation); with reverse steps the last
one (from level 0, without noise) already is that estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_mcmc.diffusion import REVERSE_VARIANCES, NoiseSchedule, ReverseVariance, check_eta
from lit_mcmc.samplers.chain import (
    ACCEPT_RATE,
    NONFINITE_LOG_RATIO_SHARE,
    NONFINITE_SAMPLE_SHARE,
    ChainInfo,
    ChainState,
)
from lit_mcmc.samplers.diagnostics import DegeneracyThresholds, DegenerateSampling
from lit_mcmc.samplers.kernels import Kernel
from lit_mcmc.samplers.levels import record
from lit_mcmc.samplers.particles import Particles, ResampleConfig
from lit_mcmc.samplers.random import RandomStream, as_random_stream
from lit_mcmc.samplers.schedules import LevelValue, value_at
from lit_mcmc.targets import Evaluation, Target

# (target, x, level, momentum or None, random stream, evaluation at (x, level) or None) -> (final state,
# statistics): what runs the kernel at one level (the step-size tuning pass adapts there instead).
LevelRunner = Callable[[Target, Tensor, int, Tensor | None, RandomStream, Evaluation | None],
                       tuple[ChainState, ChainInfo]]


@dataclass(frozen=True)
class LevelPlan:
    """What happens at one iteration: a reverse step from ``reverse_from`` (or None), then MCMC at ``mcmc_level``."""

    reverse_from: int | None
    mcmc_level: int | None


class AnnealedSampler:
    """Annealed sampling through all levels of a noise schedule; the target (and a tuned step table) come with each
    call of :meth:`sample` or :meth:`run`, so one sampler serves every batch and every set of labels.

    Args:
        schedule: the noise schedule whose levels are visited.
        kernel: the MCMC kernel run at each level, or None for the plain reverse process.
        n_steps: K, kernel steps per level.
        reverse: take an ancestral reverse step before the kernel steps of each level.
        reverse_variance: "beta" (s_t² = β_t), "posterior" (β̃_t) or "learned" (the model's own variance output,
            for learned-σ networks such as ADM) for the reverse step's noise.
        min_mcmc_level: run the kernel only at levels >= this (R3's PyTorch code uses MCMC only for t > 50).
        degeneracy: thresholds that flag a level whose sampling has broken down; the driver records each level's
            share of non-finite samples, and the run's degenerate levels are found once, over all batches
            (``lit_mcmc/run_stats.py``); None records and checks nothing.
        fail_on_degenerate: raise :class:`~lit_mcmc.samplers.diagnostics.DegenerateSampling` at the first
            degenerate level instead of going on.
        resample: particle resampling between levels (weights, group size, ESS threshold, final output); None
            runs independent chains.
        final_denoise: end with Tweedie's x̂_0 (runs without reverse steps only).
        reverse_eta: DDIM's η for reverse_variance "posterior" (1: the DDPM posterior; 0: deterministic).
    """

    def __init__(self, schedule: NoiseSchedule, kernel: Kernel | None = None, n_steps: int = 0,
                 reverse: bool = True, reverse_variance: ReverseVariance = "beta", min_mcmc_level: int = 0,
                 degeneracy: DegeneracyThresholds | None = None, fail_on_degenerate: bool = False,
                 resample: ResampleConfig | None = None, final_denoise: bool = False,
                 reverse_eta: float = 1.0) -> None:
        if kernel is None and not reverse:
            raise ValueError("a sampler with no kernel must take reverse steps (reverse=True)")
        if int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps={n_steps} must be a non-negative integer (kernel steps per level)")
        if reverse_variance not in REVERSE_VARIANCES:
            raise ValueError(f"reverse_variance={reverse_variance!r} is not one of {list(REVERSE_VARIANCES)}")
        if final_denoise and reverse:
            raise ValueError("sampler.final_denoise applies to samplers without reverse steps: with reverse: true the "
                             "last reverse step (from level 0, without noise) already returns Tweedie's x̂_0")
        self.reverse_eta = check_eta(reverse_eta, "reverse_eta")
        if self.reverse_eta != 1.0 and reverse_variance != "posterior":
            raise ValueError(f"reverse_eta={reverse_eta} applies to reverse_variance 'posterior' (DDIM(η)); "
                             f"{reverse_variance!r} keeps the posterior mean")
        if self.reverse_eta != 1.0 and resample is not None:
            raise ValueError("particle weights assume the DDPM posterior step: reverse_eta must be 1 with resample")
        self.schedule = schedule
        if kernel is not None and resample is not None and resample.weights == "exact":
            kernel = kernel.keeping_log_prob()  # exact weights read log γ_t from the state each level ends with
        self.kernel = kernel
        self.n_steps = int(n_steps)
        self.reverse = reverse
        self.reverse_variance: ReverseVariance = reverse_variance
        self.min_mcmc_level = min_mcmc_level
        self.degeneracy = degeneracy
        self.fail_on_degenerate = fail_on_degenerate
        self.resample = resample
        self.final_denoise = final_denoise

    def check_target(self, target: Target) -> None:
        """Fail clearly when the kernel's correction or the particles' weights need what ``target`` cannot give."""
        if self.kernel is not None:
            self.kernel.check_target(target)
        if self.resample is not None:
            self.resample.strategy().check(target, self.reverse)

    def without_particles(self) -> AnnealedSampler:
        """The same levels and kernel as independent chains, unchecked: what the step-size tuning pass runs (its
        chains adapt their steps, and particle weights do not change the MCMC kernel)."""
        return AnnealedSampler(self.schedule, self.kernel, self.n_steps, self.reverse, self.reverse_variance,
                               self.min_mcmc_level, final_denoise=self.final_denoise,
                               reverse_eta=self.reverse_eta)

    def plan(self) -> list[LevelPlan]:
        """The iterations, in order: which reverse step and which MCMC level each performs."""
        plan = []
        for t in range(self.schedule.T - 1, -1, -1):
            level = t - 1 if self.reverse else t
            runs_mcmc = self.kernel is not None and self.n_steps > 0 and level >= max(self.min_mcmc_level, 0)
            plan.append(LevelPlan(t if self.reverse else None, level if runs_mcmc else None))
        return plan

    def mcmc_levels(self) -> list[int]:
        """The levels at which the kernel runs, in visiting order."""
        return [p.mcmc_level for p in self.plan() if p.mcmc_level is not None]

    def sample(self, target: Target, shape: tuple[int, ...],
               generator: torch.Generator | RandomStream | None = None, step_table: LevelValue | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               progress: bool = False, run_level: LevelRunner | None = None) -> tuple[Tensor, ChainInfo]:
        """Draw x ~ N(0, s² I) of ``shape`` ([B, ...]) from the same random stream, s the schedule's ``prior_std``
        (1 on DDPM, ≈ σ_max on VE paths), and run :meth:`run` from it."""
        rng = as_random_stream(generator)
        x = rng.normal(torch.empty(shape, device=device, dtype=dtype))
        if self.schedule.prior_std != 1.0:
            x = x * self.schedule.prior_std
        return self.run(target, x, rng, step_table, progress, run_level)

    def run(self, target: Target, x: Tensor, generator: torch.Generator | RandomStream | None = None,
            step_table: LevelValue | None = None, progress: bool = False,
            run_level: LevelRunner | None = None) -> tuple[Tensor, ChainInfo]:
        """Anneal ``target`` from x (taken to be at level T−1) down to the data level. Returns (x, info).

        ``step_table`` (e.g. a tuned :class:`~lit_mcmc.samplers.schedules.StepTable`) gives the kernel's step per
        level instead of the configured one. ``run_level`` replaces the K kernel steps at each level (the step-size
        tuning pass adapts there instead); by default the kernel runs ``n_steps`` transitions.
        """
        rng = as_random_stream(generator)
        if run_level is None:
            self.check_target(target)
            run_level = partial(self.run_level, step_table=step_table)
        info = ChainInfo(batch_size=x.shape[0], adjusted=self.kernel is not None and self.kernel.correction is not None)
        state: ChainState | None = None  # the last kernel state: its cached evaluation serves the next reverse step
        particles = Particles(self.resample, x) if self.resample is not None else None
        level = self.schedule.T - 1  # where x is now
        with torch.no_grad():
            if particles is not None:
                particles.leave(particles.weights.leave_start(x, self.schedule.prior_std))
                x, state = self._arrive(target, particles, x, level, None, rng, info)
            for step in tqdm(self.plan(), desc="levels", disable=not progress, leave=False):
                if step.reverse_from is not None:
                    t = step.reverse_from
                    if state is not None and state.t == t:
                        evaluation = state.evaluation
                    else:
                        evaluation = target.evaluate(x, t)
                        info.nfe += 1
                    noise = rng.normal(x) if t > 0 else None
                    x_new = self.schedule.reverse_step(x, t, evaluation.score, noise, self.reverse_variance,
                                                       evaluation.variance_output, self.reverse_eta)
                    if particles is not None:
                        particles.leave(particles.weights.leave_reverse(x, x_new, t, evaluation, self.schedule,
                                                                        self.reverse_variance))
                    x, state, level = x_new, None, t - 1
                elif particles is not None and step.mcmc_level != level:
                    assert state is not None
                    particles.leave(particles.weights.leave_carried(state.evaluation))
                    level = step.mcmc_level  # type: ignore[assignment]
                if particles is not None and level >= 0 and (state is None or state.t != level):
                    x, state = self._arrive(target, particles, x, level, state, rng, info)
                if step.mcmc_level is not None:
                    assert self.kernel is not None
                    momentum = state.momentum if (state is not None and self.kernel.carries_momentum) else None
                    cached = state.evaluation if (state is not None and state.t == step.mcmc_level) else None
                    state, level_info = run_level(target, x, step.mcmc_level, momentum, rng, cached)
                    x = state.x
                    info.merge(level_info, level=step.mcmc_level)
                if self.degeneracy is not None:
                    self._check_level(x, step, info)
            if self.final_denoise:
                x = self._denoise(target, x, state, info)
            if particles is not None:
                index, info.particles = particles.finish(rng, x, info.levels)
                if index is not None:
                    x = x.index_select(0, index)
        return x, info

    def _arrive(self, target: Target, particles: Particles, x: Tensor, level: int, state: ChainState | None,
                rng: RandomStream, info: ChainInfo) -> tuple[Tensor, ChainState | None]:
        """Complete the particles' weights at ``level`` (evaluating there when the weights need it: that evaluation
        is what the level's MCMC steps start from), resample, and return the kept rows of x and of that state."""
        evaluation = None
        if particles.weights.needs_log_prob:
            evaluation = target.evaluate(x, level, with_log_prob=True)
            info.nfe += 1
        index = particles.arrive(level, evaluation, rng, x)
        momentum = state.momentum if state is not None else None
        x = x.index_select(0, index)
        if momentum is not None:
            momentum = momentum.index_select(0, index)
        if evaluation is not None:
            return x, ChainState(x, evaluation.rows(index), level, momentum)
        return x, None if state is None else ChainState(x, state.evaluation.rows(index), state.t, momentum)

    def _denoise(self, target: Target, x: Tensor, state: ChainState | None, info: ChainInfo) -> Tensor:
        """Tweedie's x̂_0 = (x + σ_0² S(x, 0))/α_0, with the cached score at level 0 when there is one."""
        if state is not None and state.t == 0:
            score = state.evaluation.score
        else:
            score = target.evaluate(x, 0).score
            info.nfe += 1
        variance = float(self.schedule.marginal_std[0]) ** 2
        return (x + variance * score) / float(self.schedule.signal_scale[0])

    def _check_level(self, x: Tensor, step: LevelPlan, info: ChainInfo) -> None:
        """Record the level's share of non-finite samples (one host read); with ``fail_on_degenerate``, stop at a
        degenerate level (otherwise the run's statistics find those levels, over all batches)."""
        assert self.degeneracy is not None
        level = step.mcmc_level if step.mcmc_level is not None else step.reverse_from
        if level is None:  # no reverse step and no MCMC here (reverse: false below min_mcmc_level): nothing to check
            return
        nonfinite = float((~torch.isfinite(x.flatten(1))).any(1).double().mean())
        record(info.levels, NONFINITE_SAMPLE_SHARE, level, nonfinite)
        if not self.fail_on_degenerate:
            return
        accept = (info.levels.get(ACCEPT_RATE, {}).get(level) if info.adjusted and step.mcmc_level is not None
                  else None)
        problems = self.degeneracy.problems(accept, info.levels.get(NONFINITE_LOG_RATIO_SHARE, {}).get(level, 0.0),
                                            nonfinite)
        if problems:
            raise DegenerateSampling(
                f"sampling degenerated at level {level} ({'; '.join(problems.values())}); stopped there, as "
                "sampler.fail_on_degenerate is true. Smaller steps (sampler.step_size or step_a) usually help; "
                "non-finite samples point to a diverged model")

    def run_level(self, target: Target, x: Tensor, level: int, momentum: Tensor | None, rng: RandomStream,
                  evaluation: Evaluation | None = None, step_table: LevelValue | None = None,
                  step_size: float | None = None) -> tuple[ChainState, ChainInfo]:
        """The kernel's ``n_steps`` transitions at ``level`` from x (and its evaluation there, when known), with
        ``step_size``, else the table's step at ``level``, else the kernel's configured one."""
        assert self.kernel is not None
        if step_size is None and step_table is not None:
            step_size = value_at(step_table, level, "step_size")
        return self.kernel.run_chain(target, x, level, self.n_steps, rng, momentum, evaluation, step_size)
