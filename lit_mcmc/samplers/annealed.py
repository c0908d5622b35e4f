"""Annealed MCMC through the diffusion levels T−1 … 0.

At each level the driver optionally takes one ancestral reverse step (t → t−1, with the target's score), then runs
K kernel steps at the level it has reached. The levels each sampler visits are explicit (:meth:`plan`) and the
same for every kernel — the reference codebases disagree here (ALGORITHMS.md §11.6). Without a reverse step
(the papers' 2D experiment), MCMC runs at every level T−1 … 0 starting from x ~ N(0, I); with it (images), x
starts at level T−1, and MCMC runs after each reverse step at levels T−2 … 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lit_mcmc.diffusion import REVERSE_VARIANCES, NoiseSchedule, ReverseVariance
from lit_mcmc.samplers.kernels import ChainInfo, ChainState, Kernel
from lit_mcmc.samplers.random import RandomStream, as_random_stream
from lit_mcmc.targets import Target


@dataclass(frozen=True)
class LevelPlan:
    """What happens at one iteration: a reverse step from ``reverse_from`` (or None), then MCMC at ``mcmc_level``."""

    reverse_from: int | None
    mcmc_level: int | None


class AnnealedSampler:
    """Annealed sampling of a target through all levels of a noise schedule.

    Args:
        target: the (composed) target p̃_t.
        schedule: the noise schedule whose levels are visited.
        kernel: the MCMC kernel run at each level, or None for the plain reverse process.
        n_steps: K, kernel steps per level.
        reverse: take an ancestral reverse step before the kernel steps of each level.
        reverse_variance: "beta" (s_t² = β_t), "posterior" (β̃_t) or "learned" (the model's own variance output,
            for learned-σ networks such as ADM) for the reverse step's noise.
        min_mcmc_level: run the kernel only at levels >= this (R3's PyTorch code uses MCMC only for t > 50).
    """

    def __init__(self, target: Target, schedule: NoiseSchedule, kernel: Kernel | None = None, n_steps: int = 0,
                 reverse: bool = True, reverse_variance: ReverseVariance = "beta", min_mcmc_level: int = 0) -> None:
        if kernel is None and not reverse:
            raise ValueError("a sampler with no kernel must take reverse steps (reverse=True)")
        if int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps={n_steps} must be a non-negative integer (kernel steps per level)")
        if kernel is not None:
            kernel.check_target(target)
        if reverse_variance not in REVERSE_VARIANCES:
            raise ValueError(f"reverse_variance={reverse_variance!r} is not one of {list(REVERSE_VARIANCES)}")
        self.target = target
        self.schedule = schedule
        self.kernel = kernel
        self.n_steps = int(n_steps)
        self.reverse = reverse
        self.reverse_variance: ReverseVariance = reverse_variance
        self.min_mcmc_level = min_mcmc_level

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

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | RandomStream | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               progress: bool = False) -> tuple[Tensor, ChainInfo]:
        """Draw x ~ N(0, I) of ``shape`` ([B, ...]) from the same random stream and run :meth:`run` from it."""
        rng = as_random_stream(generator)
        x = rng.normal(torch.empty(shape, device=device, dtype=dtype))
        return self.run(x, rng, progress)

    def run(self, x: Tensor, generator: torch.Generator | RandomStream | None = None,
            progress: bool = False) -> tuple[Tensor, ChainInfo]:
        """Anneal from x (taken to be at level T−1) down to the data level. Returns (x, info)."""
        rng = as_random_stream(generator)
        info = ChainInfo(batch_size=x.shape[0], adjusted=self.kernel is not None and self.kernel.correction is not None)
        state: ChainState | None = None  # the last kernel state: its cached evaluation serves the next reverse step
        plan = self.plan()
        with torch.no_grad():
            for step in tqdm(plan, desc="levels", disable=not progress, leave=False):
                if step.reverse_from is not None:
                    t = step.reverse_from
                    if state is not None and state.t == t:
                        evaluation = state.evaluation
                    else:
                        evaluation = self.target.evaluate(x, t)
                        info.nfe += 1
                    noise = rng.normal(x) if t > 0 else None
                    x = self.schedule.reverse_step(x, t, evaluation.score, noise, self.reverse_variance,
                                                   evaluation.variance_output)
                    state = None
                if step.mcmc_level is not None:
                    assert self.kernel is not None
                    momentum = state.momentum if (state is not None and self.kernel.carries_momentum) else None
                    state, level_info = self.kernel.run_chain(self.target, x, step.mcmc_level, self.n_steps, rng,
                                                              momentum)
                    x = state.x
                    info.merge(level_info, level=step.mcmc_level)
        return x, info
