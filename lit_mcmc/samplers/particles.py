"""Particle resampling (SMC resample-move) between the levels of an annealed sampler (docs/algorithms.md §14).

Annealed MCMC targets γ_T−1, …, γ_0 one level at a time, but nothing moves mass *between* levels: particles that
γ_{t+1} left where γ_t no longer wants them stay in local modes. Importance weights correct that, resampling
concentrates the particles where the weights are, and the MCMC steps after each resampling restore diversity.

Particles interact only inside *groups* of ``group_size`` consecutive samples (rows); each group is an
independent SMC run. A group's resampling uniform is the first sample's uniform draw of its own per-sample stream,
so it depends only on (seed, group): samples do not depend on batch size, process count or restarts as long as no
batch splits a group. Everything stays on the device: resampling is a gather with the identity where a group's
effective sample size (ESS) is still high, and the per-level statistics are read once, at the end.

Weights are a strategy next to the MH correction, not a sampler of their own:

- :class:`ExactWeights` (targets with log-densities): carried x gains log γ_t(x) − log γ_{t+1}(x); a reverse step
  x_t → x_{t−1} gains log γ_{t−1}(x_{t−1}) + log L(x_t | x_{t−1}) − log γ_t(x_t) − log M(x_{t−1} | x_t), with L
  the forward noising kernel and M the reverse kernel; the start x ~ N(0, I) gains log γ_T−1(x) − log N(x; 0, I).
  Log Ẑ is then an unbiased (in Ẑ) estimate of the normalising constant of γ_0.
- :class:`FeynmanKacWeights` (score models, reverse steps; Skreta et al. 2025): a reverse step from level t with
  the composed score S = Σ_i w_i s_i gains ½β_t (‖S‖² − Σ_i w_i ‖s_i‖²), from scores already computed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_mcmc.diffusion import NoiseSchedule, ReverseVariance
from lit_mcmc.samplers.levels import LevelRecord, level_stat, record
from lit_mcmc.samplers.random import RandomStream
from lit_mcmc.targets import Evaluation, Target

# per level, over the batch's groups: the ESS's mean (weighted by groups over batches) and min, and how many groups
# resampled there; in visiting order
ESS_MEAN = level_stat("ess_mean", "group_mean", descending=True)
ESS_MIN = level_stat("ess_min", "min", descending=True)
RESAMPLED_GROUPS = level_stat("resampled_groups", "sum", descending=True)

WeightsName = Literal["exact", "feynman_kac"]
WEIGHTS = ("exact", "feynman_kac")
FINALS = ("resample", "weighted")


@dataclass
class ResampleConfig:
    """Particle resampling as configs write it (``model.sampler.resample``).

    ``weights``: "exact" (log-densities: energy models, analytic targets, mixtures) or "feynman_kac" (any score,
    with reverse steps). ``group_size``: particles per group (consecutive sample indices). A group resamples
    (systematically) when its ESS falls below ``ess_threshold``·``group_size``. ``final``: "resample" returns
    equally weighted samples; "weighted" returns the last weights as ``log_weight`` instead.
    """

    weights: WeightsName = "exact"
    group_size: int = 64
    ess_threshold: float = 0.5
    final: Literal["resample", "weighted"] = "resample"

    def __post_init__(self) -> None:
        key = "model.sampler.resample"
        if self.weights not in WEIGHTS:
            raise ValueError(f"{key}.weights={self.weights!r} is not one of {list(WEIGHTS)}")
        if int(self.group_size) != self.group_size or self.group_size < 2:
            raise ValueError(f"{key}.group_size={self.group_size} must be an integer >= 2 (particles that resample "
                             "together)")
        self.group_size = int(self.group_size)
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"{key}.ess_threshold={self.ess_threshold} must lie in [0, 1] (a group resamples when "
                             "its ESS < ess_threshold * group_size)")
        if self.final not in FINALS:
            raise ValueError(f"{key}.final={self.final!r} is not one of {list(FINALS)}")

    def strategy(self) -> ParticleWeights:
        return ExactWeights() if self.weights == "exact" else FeynmanKacWeights()


class ParticleWeights(ABC):
    """How a move between levels changes the particles' log-weights.

    A move *leaves* a level (:meth:`leave_start`, :meth:`leave_carried`, :meth:`leave_reverse` give what is known
    then) and *arrives* at the next, where :meth:`arrive` adds the new level's term (exact weights need
    log γ_t(x) there: the evaluation the next MCMC steps start from, so no evaluation is added).
    """

    needs_log_prob: bool = False

    @abstractmethod
    def check(self, target: Target, reverse: bool) -> None:
        """A clear error when the target or the level moves cannot give these weights."""

    @abstractmethod
    def leave_start(self, x: Tensor, std: float = 1.0) -> Tensor:
        """The start x ~ N(0, std² I) (the schedule's ``prior_std``), taken to be at the first level."""

    @abstractmethod
    def leave_carried(self, evaluation: Evaluation) -> Tensor:
        """x carried unchanged to the next level; ``evaluation`` at (x, the level it leaves)."""

    @abstractmethod
    def leave_reverse(self, x: Tensor, x_new: Tensor, t: int, evaluation: Evaluation, schedule: NoiseSchedule,
                      variance: ReverseVariance) -> Tensor:
        """A reverse step x (level t) → x_new (level t − 1) made with ``evaluation`` at (x, t)."""

    def arrive(self, evaluation: Evaluation | None) -> Tensor | float:
        """The arrival level's term, from the evaluation there (None when :attr:`needs_log_prob` is False)."""
        return 0.0


class ExactWeights(ParticleWeights):
    """Exact incremental weights from log-densities (no extra evaluations: the cached ones carry log p̃)."""

    needs_log_prob = True

    def check(self, target: Target, reverse: bool) -> None:
        if not target.has_log_prob:
            raise ValueError(f"model.sampler.resample.weights='exact' needs log-densities, but {type(target).__name__} "
                             "has none (score models): use weights: feynman_kac with sampler.reverse: true")

    def leave_start(self, x: Tensor, std: float = 1.0) -> Tensor:
        return -(_standard_normal_log_prob(x) if std == 1.0 else _normal_log_prob(x, torch.zeros_like(x), std))

    def leave_carried(self, evaluation: Evaluation) -> Tensor:
        return -_log_prob(evaluation)

    def leave_reverse(self, x: Tensor, x_new: Tensor, t: int, evaluation: Evaluation, schedule: NoiseSchedule,
                      variance: ReverseVariance) -> Tensor:
        if t == 0:  # the last step adds no noise: a deterministic map of the level-0 particles, no weight
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        mean, std = schedule.reverse_mean_and_std(x, t, evaluation.score, variance, evaluation.variance_output)
        scale, forward_std = schedule.transition(t)  # √(1 − β_t), √β_t on DDPM
        log_backward = _normal_log_prob(x_new, mean, std)  # M(x_new | x)
        log_forward = _normal_log_prob(x, scale * x_new, forward_std)  # L(x | x_new)
        return log_forward - log_backward - _log_prob(evaluation)

    def arrive(self, evaluation: Evaluation | None) -> Tensor:
        assert evaluation is not None
        return _log_prob(evaluation)


class FeynmanKacWeights(ParticleWeights):
    """½β_t (‖S‖² − Σ_i w_i ‖s_i‖²) per reverse step, from the component scores the composed score was made of."""

    def check(self, target: Target, reverse: bool) -> None:
        if not reverse:
            raise ValueError("model.sampler.resample.weights='feynman_kac' weighs reverse steps: set "
                             "model.sampler.reverse: true (or weights: exact for targets with log-densities)")
        if not target.feynman_kac:
            raise ValueError(f"model.sampler.resample.weights='feynman_kac' needs a weighted product of diffused "
                             f"densities; {type(target).__name__} is not one (mixtures, reconstruction guidance, "
                             "tapestries): use weights: exact where the parts have log-densities")

    def leave_start(self, x: Tensor, std: float = 1.0) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def leave_carried(self, evaluation: Evaluation) -> Tensor:
        raise ValueError("Feynman–Kac weights need a reverse step between levels")

    def leave_reverse(self, x: Tensor, x_new: Tensor, t: int, evaluation: Evaluation, schedule: NoiseSchedule,
                      variance: ReverseVariance) -> Tensor:
        return 0.5 * float(schedule.transition_variance[t]) * evaluation.sq_norm_gap().to(x.dtype)


@dataclass
class ParticleInfo:
    """What the particles did in one run: per-level ESS and resampling, and per group log Ẑ and ancestry.

    ``log_weight`` [B] is normalised per group to mean e^{log_weight} = 1 (all zeros after a final resampling);
    ``log_z`` [n_groups] estimates log of γ_0's normalising constant per group (exact weights; for Feynman–Kac
    weights up to a constant common to all groups); ``unique_ancestors`` [n_groups] counts the start particles
    that still have descendants.
    """

    group_size: int
    log_weight: Tensor
    log_z: Tensor
    unique_ancestors: Tensor


class Particles:
    """The particles' log-weights, log Ẑ and ancestry during one annealed run (groups of consecutive rows)."""

    def __init__(self, config: ResampleConfig, x: Tensor) -> None:
        batch = x.shape[0]
        if batch % config.group_size:
            raise ValueError(f"a batch of {batch} samples does not hold whole groups of "
                             f"model.sampler.resample.group_size={config.group_size}: make data.batch_size and "
                             "data.n_samples multiples of the group size")
        self.config = config
        self.weights = config.strategy()
        self.n_groups = batch // config.group_size
        self.log_w = torch.zeros(batch, dtype=torch.float64, device=x.device)
        self.log_z = torch.zeros(self.n_groups, dtype=torch.float64, device=x.device)
        self.origin = torch.arange(batch, device=x.device)
        self.pending: Tensor | float = 0.0
        self._levels: list[tuple[int, Tensor]] = []  # (level, [ESS mean, ESS min, groups resampled]) on the device

    def leave(self, increment: Tensor) -> None:
        self.pending = increment

    def arrive(self, level: int, evaluation: Evaluation | None, rng: RandomStream,
               x: Tensor) -> Tensor | None:
        """Complete the move's weight at ``level``; resample the groups whose ESS is low. Returns the rows to keep
        ([B] ancestor indices: the identity for groups that did not resample)."""
        increment = self.pending + self.weights.arrive(evaluation)
        self.pending = 0.0
        self.log_w = self.log_w + torch.as_tensor(increment, device=self.log_w.device).double()
        groups = self._grouped(self.log_w)
        ess = effective_sample_size(groups)
        resample = ess < self.config.ess_threshold * self.config.group_size
        u = self._group_uniforms(rng, x)
        self._levels.append((level, torch.stack([ess.mean(), ess.min(), resample.double().sum()])))
        return self._resample(groups, resample, u)

    def finish(self, rng: RandomStream, x: Tensor, levels: LevelRecord) -> tuple[Tensor | None, ParticleInfo]:
        """The last resampling (``final: resample``) or the normalised weights (``weighted``); one host read. The
        per-level ESS (mean and min over the groups) and the number of groups resampled go into ``levels``."""
        groups = self._grouped(self.log_w)
        u = self._group_uniforms(rng, x)
        index = None
        if self.config.final == "resample":
            index = self._resample(groups, torch.ones(self.n_groups, dtype=torch.bool, device=groups.device), u)
            log_weight = torch.zeros_like(self.log_w)
        else:
            self.log_z = self.log_z + _log_mean_exp(groups)
            log_weight = (groups - _log_mean_exp(groups)[:, None]).flatten()
        stats = torch.stack([v for _, v in self._levels]).tolist() if self._levels else []
        info = ParticleInfo(self.config.group_size, log_weight, self.log_z, self._unique_ancestors())
        for (level, _), (ess_mean, ess_min, resampled) in zip(self._levels, stats, strict=True):
            record(levels, ESS_MEAN, level, ess_mean)
            record(levels, ESS_MIN, level, ess_min)
            record(levels, RESAMPLED_GROUPS, level, int(resampled))
        return index, info

    def _grouped(self, log_w: Tensor) -> Tensor:
        # A NaN or infinite log-weight (a broken evaluation) is a particle of weight zero.
        log_w = torch.where(torch.isfinite(log_w), log_w, -math.inf)
        return log_w.view(self.n_groups, self.config.group_size)

    def _group_uniforms(self, rng: RandomStream, x: Tensor) -> Tensor:
        # One uniform per sample, drawn at every resampling point whether or not a group resamples (so the draw
        # count never depends on the data); each group uses its first sample's.
        return rng.uniform(x)[:: self.config.group_size].double()

    def _resample(self, groups: Tensor, resample: Tensor, u: Tensor) -> Tensor:
        size = self.config.group_size
        self.log_z = self.log_z + torch.where(resample, _log_mean_exp(groups), 0.0)
        ancestors = systematic_resample(groups, u)
        keep = torch.arange(size, device=groups.device).expand_as(ancestors)
        chosen = torch.where(resample[:, None], ancestors, keep)
        index = (chosen + size * torch.arange(self.n_groups, device=groups.device)[:, None]).flatten()
        self.log_w = torch.where(resample[:, None], 0.0, groups).flatten()
        self.origin = self.origin.index_select(0, index)
        return index

    def _unique_ancestors(self) -> Tensor:
        origin = self.origin.view(self.n_groups, self.config.group_size).sort(dim=1).values
        return 1 + (origin[:, 1:] != origin[:, :-1]).sum(1)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """(Σ w)² / Σ w² per row of log-weights [n_groups, G] (G when all are equal)."""
    w = torch.softmax(_finite_or_uniform(log_w), dim=1)
    return 1.0 / w.pow(2).sum(1)


def systematic_resample(log_w: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling per row: ancestors [n_groups, G] of the positions (u + k)/G, k = 0..G−1, in the
    weights' cumulative sum (u [n_groups] uniform on [0, 1)). Each particle j gets ⌊G w_j⌋ or ⌈G w_j⌉ copies."""
    size = log_w.shape[1]
    cdf = torch.softmax(_finite_or_uniform(log_w).double(), dim=1).cumsum(1)
    cdf[:, -1] = 1.0
    positions = (u.double()[:, None] + torch.arange(size, device=log_w.device, dtype=torch.float64)) / size
    return torch.searchsorted(cdf, positions, right=True).clamp_max(size - 1)


def _finite_or_uniform(log_w: Tensor) -> Tensor:
    """A group whose weights are all zero (every log-weight −∞) is taken as uniform rather than NaN."""
    dead = ~torch.isfinite(log_w).any(1, keepdim=True)
    return torch.where(dead, 0.0, log_w)


def _log_mean_exp(log_w: Tensor) -> Tensor:
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


def _log_prob(evaluation: Evaluation) -> Tensor:
    if evaluation.log_prob is None:
        raise ValueError("exact particle weights need log p̃ in every evaluation (the target has no log-density)")
    return evaluation.log_prob.double()


def _normal_log_prob(x: Tensor, mean: Tensor, std: float | Tensor) -> Tensor:
    """log N(x; mean, std² I) per sample, std a float or shaped like x."""
    z = ((x - mean) / std).double().flatten(1)
    if isinstance(std, Tensor):
        log_std = std.double().expand_as(x).log().flatten(1).sum(1)
    else:
        log_std = z.shape[1] * math.log(std)
    return -0.5 * z.pow(2).sum(1) - log_std - 0.5 * z.shape[1] * math.log(2 * math.pi)


def _standard_normal_log_prob(x: Tensor) -> Tensor:
    return _normal_log_prob(x, torch.zeros_like(x), 1.0)
