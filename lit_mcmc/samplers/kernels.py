"""MCMC kernels at a fixed diffusion level: Langevin (ULA, MALA) and Hamiltonian (U-HMC, HMC).

A kernel is ``init`` (evaluate the target at the start point) and ``step`` (one transition) over a small
:class:`ChainState` that caches the current point's evaluation, so nothing is evaluated twice; ``run`` chains
``n_steps`` transitions. Whether a kernel is Metropolis-adjusted, and how, is its ``correction`` strategy
(``samplers/corrections.py``): ULA is Langevin without one, MALA with one; likewise U-HMC and HMC.
Accept/reject is per sample, and a NaN or infinite log-ratio is a rejection.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lit_mcmc.samplers.chain import ChainInfo, ChainState, StepInfo
from lit_mcmc.samplers.corrections import (
    Correction,
    CorrectionName,
    CurveIntegral,
    QuadratureName,
    dot,
    make_correction,
)
from lit_mcmc.samplers.random import RandomStream, as_random_stream
from lit_mcmc.samplers.schedules import LevelValue, check_positive, value_at
from lit_mcmc.targets import Evaluation, Target, where_rows

MassValue = float | Tensor | LevelValue

class Kernel(ABC):
    """One MCMC transition at a fixed level t, optionally Metropolis-adjusted by a :class:`Correction`."""

    step_size: LevelValue
    correction: Correction | None = None
    carries_momentum: bool = False
    keeps_log_prob: bool = False

    @property
    def needs_log_prob(self) -> bool:
        return self.correction is not None and self.correction.needs_log_prob

    @property
    def state_log_prob(self) -> bool:
        """Whether its states carry log p̃: its MH test needs it, or ``keeps_log_prob`` asks for it (exact particle
        weights read it from the state each level ends with). Only states are evaluated with it, not every
        leapfrog point."""
        return self.needs_log_prob or self.keeps_log_prob

    def keeping_log_prob(self) -> Kernel:
        """The same kernel, with log p̃ in every state it returns."""
        kept = copy.copy(self)
        kept.keeps_log_prob = True
        return kept

    def check_target(self, target: Target) -> None:
        """Fail clearly when the correction needs what the target cannot give."""
        if self.needs_log_prob:
            target.require_log_prob(f"{type(self).__name__} with correction='energy'")

    def evaluate(self, target: Target, x: Tensor, t: int, with_log_prob: bool | None = None) -> Evaluation:
        ev = target.evaluate(x, t, with_log_prob=self.state_log_prob if with_log_prob is None else with_log_prob)
        if ev.score.shape != x.shape:
            raise ValueError(f"{type(target).__name__}.score returned shape {tuple(ev.score.shape)} for x of "
                             f"shape {tuple(x.shape)}: a target's score must be shaped like x")
        return ev

    def init(self, target: Target, x: Tensor, t: int, momentum: Tensor | None = None,
             generator: torch.Generator | RandomStream | None = None,
             evaluation: Evaluation | None = None) -> tuple[ChainState, int]:
        """(state at x, evaluations per sample it cost); ``evaluation``, when given, is the target's at (x, t)."""
        self.check_target(target)
        if x.dim() < 2:
            raise ValueError(f"x must be batched, shape [B, ...], got {tuple(x.shape)}")
        if evaluation is not None:
            return ChainState(x, evaluation, t), 0
        return ChainState(x, self.evaluate(target, x, t), t), 1

    @abstractmethod
    def step(self, target: Target, state: ChainState, rng: RandomStream,
             step_size: float | None = None) -> tuple[ChainState, StepInfo]:
        """One transition with ``step_size`` (the kernel's configured step at the state's level when None)."""

    def step_size_at(self, t: int, step_size: float | None) -> float:
        return value_at(self.step_size, t, "step_size") if step_size is None else step_size

    def run(self, target: Target, x: Tensor, t: int, n_steps: int,
            generator: torch.Generator | RandomStream | None = None,
            momentum: Tensor | None = None, step_size: float | None = None) -> tuple[Tensor, ChainInfo]:
        """Plain MCMC on ``target`` at level ``t``: ``n_steps`` transitions from x. Returns (x, info)."""
        state, info = self.run_chain(target, x, t, n_steps, generator, momentum, step_size=step_size)
        return state.x, info

    def run_chain(self, target: Target, x: Tensor, t: int, n_steps: int,
                  generator: torch.Generator | RandomStream | None = None, momentum: Tensor | None = None,
                  evaluation: Evaluation | None = None,
                  step_size: float | None = None) -> tuple[ChainState, ChainInfo]:
        """Like :meth:`run`, returning the final state (its cached evaluation and momentum can be reused);
        ``evaluation``, when given, is the target's at (x, t) (not evaluated again); ``step_size``, when given,
        replaces the configured step."""
        if int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps={n_steps} must be a non-negative integer")
        rng = as_random_stream(generator)
        with torch.no_grad():
            state, nfe = self.init(target, x, t, momentum, rng, evaluation)
            info = ChainInfo(batch_size=x.shape[0], adjusted=self.correction is not None, nfe=nfe)
            for _ in range(int(n_steps)):
                state, step_info = self.step(target, state, rng, step_size)
                info.update(step_info)
        info.sync()
        return state, info

    def _accept(self, log_ratio: Tensor, rng: RandomStream, like: Tensor) -> Tensor:
        # A NaN or infinite log-ratio signals a numerical breakdown, not a certain move: reject it.
        u = rng.uniform(like)
        return (torch.log(u) < log_ratio) & torch.isfinite(log_ratio)


class LangevinKernel(Kernel):
    """x' = x + ε g(x) + √(2ε) ξ, optionally MH-adjusted (docs/algorithms.md §4.1–4.2). Use :class:`ULA` or
    :class:`MALA`."""

    def __init__(self, step_size: LevelValue, correction: Correction | None = None) -> None:
        check_positive(step_size, "step_size")
        if isinstance(correction, CurveIntegral):
            raise ValueError("correction='curve' integrates along a multi-step path (HMC's leapfrog); a Langevin "
                             "proposal is one straight step: use correction='line'")
        self.step_size = step_size
        self.correction = correction

    def step(self, target: Target, state: ChainState, rng: RandomStream,
             step_size: float | None = None) -> tuple[ChainState, StepInfo]:
        x, ev0, t = state.x, state.evaluation, state.t
        eps = self.step_size_at(t, step_size)
        mean_fwd = x + eps * ev0.score
        x_new = mean_fwd + math.sqrt(2 * eps) * rng.normal(x)
        ev1 = self.evaluate(target, x_new, t)
        if self.correction is None:
            accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            return ChainState(x_new, ev1, t), StepInfo(accepted, None, 1)
        estimate = self.correction.estimate(target, t, [x, x_new], [ev0, ev1])
        delta, extra_nfe = estimate.delta, estimate.nfe
        log_q_fwd = -dot(x_new - mean_fwd, x_new - mean_fwd) / (4 * eps)
        back = x - (x_new + eps * ev1.score)
        log_q_rev = -dot(back, back) / (4 * eps)
        log_ratio = delta + log_q_rev - log_q_fwd
        accepted = self._accept(log_ratio, rng, x)
        new = ChainState(where_rows(accepted, x_new, x), ev1.where(accepted, ev0), t)
        return new, StepInfo(accepted, log_ratio, 1 + extra_nfe, estimate.error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step_size={self.step_size!r}, correction={self.correction!r})"


class ULA(LangevinKernel):
    """Unadjusted Langevin: one score evaluation per step."""

    def __init__(self, step_size: LevelValue) -> None:
        super().__init__(step_size, None)


class MALA(LangevinKernel):
    """Metropolis-adjusted Langevin ("LA" in the papers) with an exact ("energy") or integrated ("line") Δ."""

    def __init__(self, step_size: LevelValue, correction: CorrectionName | Correction = "energy",
                 n_points: int = 0, quadrature: QuadratureName = "trapezoid") -> None:
        super().__init__(step_size, make_correction(correction, n_points, quadrature))


class HamiltonianKernel(Kernel):
    """Generalised HMC with partial momentum refresh, optionally MH-adjusted (docs/algorithms.md §4.3–4.4).

    Per step: v' = γ v + √(1−γ²) M^{1/2} ξ; ``n_leapfrog`` leapfrog steps of size ε with diagonal mass M; then,
    if adjusted, accept (x_L, v_L) with log α = Δ − ½v_LᵀM⁻¹v_L + ½v'ᵀM⁻¹v'. On rejection the momentum is
    negated (``flip_on_reject=True``, Horowitz's generalised HMC, needed for invariance when γ > 0); the papers
    keep v' instead (``flip_on_reject=False``). Use :class:`UHMC` or :class:`HMC`.
    """

    def __init__(self, step_size: LevelValue, n_leapfrog: int = 3, damping: float = 0.0, mass: MassValue = 1.0,
                 correction: Correction | None = None, flip_on_reject: bool = True,
                 carry_momentum: bool = False) -> None:
        check_positive(step_size, "step_size")
        if int(n_leapfrog) != n_leapfrog or n_leapfrog < 1:
            raise ValueError(f"n_leapfrog={n_leapfrog} must be a positive integer")
        if not 0.0 <= damping <= 1.0:
            raise ValueError(f"damping={damping} must lie in [0, 1] (the fraction of momentum kept per step)")
        if isinstance(mass, Tensor):
            if not bool((mass > 0).all()):
                raise ValueError("mass must be positive in every coordinate")
        else:
            check_positive(mass, "mass")
        self.step_size = step_size
        self.n_leapfrog = int(n_leapfrog)
        self.damping = float(damping)
        self.mass = mass
        self.correction = correction
        self.flip_on_reject = flip_on_reject
        self.carries_momentum = carry_momentum

    def mass_at(self, t: int, x: Tensor) -> Tensor | float:
        """The diagonal mass at level t: a float, or a tensor broadcastable to one sample's shape."""
        if isinstance(self.mass, Tensor):
            mass = self.mass.to(x)
            try:
                torch.broadcast_shapes(mass.shape, x.shape[1:])
            except RuntimeError:
                raise ValueError(f"mass of shape {tuple(mass.shape)} does not broadcast to a sample of shape "
                                 f"{tuple(x.shape[1:])}") from None
            return mass
        return value_at(self.mass, t, "mass")

    def init(self, target: Target, x: Tensor, t: int, momentum: Tensor | None = None,
             generator: torch.Generator | RandomStream | None = None,
             evaluation: Evaluation | None = None) -> tuple[ChainState, int]:
        state, nfe = super().init(target, x, t, evaluation=evaluation)
        if momentum is None:
            momentum = _sqrt(self.mass_at(t, x)) * as_random_stream(generator).normal(x)
        elif momentum.shape != x.shape:
            raise ValueError(f"momentum shape {tuple(momentum.shape)} does not match x {tuple(x.shape)}")
        state.momentum = momentum
        return state, nfe

    def step(self, target: Target, state: ChainState, rng: RandomStream,
             step_size: float | None = None) -> tuple[ChainState, StepInfo]:
        x, ev0, t = state.x, state.evaluation, state.t
        eps = self.step_size_at(t, step_size)
        mass = self.mass_at(t, x)
        gamma = self.damping
        v_refreshed = gamma * state.momentum + math.sqrt(1 - gamma**2) * _sqrt(mass) * rng.normal(x)  # type: ignore[operator]
        path, evals = [x], [ev0]
        x_l, v_l, ev_l = x, v_refreshed, ev0
        for i in range(self.n_leapfrog):
            v_l = v_l + 0.5 * eps * ev_l.score
            x_l = x_l + eps * v_l / mass
            ev_l = self.evaluate(target, x_l, t, with_log_prob=self.state_log_prob and i == self.n_leapfrog - 1)
            v_l = v_l + 0.5 * eps * ev_l.score
            path.append(x_l)
            evals.append(ev_l)
        if self.correction is None:
            accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            return ChainState(x_l, ev_l, t, v_l), StepInfo(accepted, None, self.n_leapfrog)
        estimate = self.correction.estimate(target, t, path, evals)
        delta, extra_nfe = estimate.delta, estimate.nfe
        log_ratio = delta - 0.5 * dot(v_l, v_l / mass) + 0.5 * dot(v_refreshed, v_refreshed / mass)
        accepted = self._accept(log_ratio, rng, x)
        v_rejected = -v_refreshed if self.flip_on_reject else v_refreshed
        new = ChainState(where_rows(accepted, x_l, x), ev_l.where(accepted, ev0), t,
                         where_rows(accepted, v_l, v_rejected))
        return new, StepInfo(accepted, log_ratio, self.n_leapfrog + extra_nfe, estimate.error)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(step_size={self.step_size!r}, n_leapfrog={self.n_leapfrog}, "
                f"damping={self.damping}, mass={self.mass!r}, correction={self.correction!r}, "
                f"flip_on_reject={self.flip_on_reject})")


class UHMC(HamiltonianKernel):
    """Unadjusted generalised HMC (R3's "UHA"): every leapfrog proposal is kept."""

    def __init__(self, step_size: LevelValue, n_leapfrog: int = 3, damping: float = 0.0, mass: MassValue = 1.0,
                 carry_momentum: bool = False) -> None:
        super().__init__(step_size, n_leapfrog, damping, mass, None, True, carry_momentum)


class HMC(HamiltonianKernel):
    """MH-adjusted generalised HMC with an exact ("energy") or integrated ("line", "curve") Δ."""

    def __init__(self, step_size: LevelValue, n_leapfrog: int = 3, damping: float = 0.0, mass: MassValue = 1.0,
                 correction: CorrectionName | Correction = "energy", n_points: int = 0,
                 flip_on_reject: bool = True, carry_momentum: bool = False,
                 quadrature: QuadratureName = "trapezoid") -> None:
        super().__init__(step_size, n_leapfrog, damping, mass, make_correction(correction, n_points, quadrature),
                         flip_on_reject, carry_momentum)


def _sqrt(value: Tensor | float) -> Tensor | float:
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)
