"""What a chain at one level carries and what it reports: the state a kernel steps, one transition's record, and the
running statistics over transitions and levels (the per-level ones in ``samplers/levels.py``'s record)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lit_mcmc.samplers.levels import LevelRecord, level_stat, record
from lit_mcmc.samplers.particles import ParticleInfo
from lit_mcmc.targets import Evaluation

# Per level (lit_mcmc/samplers/levels.py): the acceptance over the level's steps; for MH kernels the mean finite
# log-ratio and the share of non-finite ones (the degeneracy check's, not reported); for line/curve corrections
# the quadrature error estimate |Q − Q_low|; the driver adds the share of non-finite samples after the level.
ACCEPT_RATE = level_stat("accept_rate")
LOG_RATIO_MEAN = level_stat("log_ratio_mean")
NONFINITE_LOG_RATIO_SHARE = level_stat("nonfinite_log_ratio_share", reported=False)
QUADRATURE_ERROR = level_stat("quadrature_error")
NONFINITE_SAMPLE_SHARE = level_stat("nonfinite_sample_share")


@dataclass
class ChainState:
    """The chain at one level: the point, the target's evaluation there, and (HMC) the momentum."""

    x: Tensor
    evaluation: Evaluation
    t: int
    momentum: Tensor | None = None


@dataclass
class StepInfo:
    """What one transition did: per-sample acceptance, log-ratios (MH kernels) and evaluations per sample."""

    accepted: Tensor
    log_ratio: Tensor | None
    nfe: int
    quadrature_error: Tensor | None = None  # |Q − Q_low| per sample (line/curve corrections), see corrections.py


@dataclass
class ChainInfo:
    """Running statistics over many transitions (and levels) of a batch of chains; per level in ``levels``
    (``{stat: {level: value}}``, see ``samplers/levels.py``).

    Within a level the sums stay on the chains' device (no host synchronisation per step); :meth:`sync` moves them
    to host numbers, once per level (``Kernel.run_chain`` calls it at the end of its steps).
    """

    batch_size: int
    adjusted: bool = False
    n_steps: int = 0
    nfe: int = 0
    accepted_per_sample: Tensor | None = None
    log_ratio_sum: float = 0.0
    log_ratio_count: int = 0
    n_nonfinite: int = 0
    quadrature_error_sum: float = 0.0
    quadrature_error_count: int = 0
    levels: LevelRecord = field(default_factory=dict)
    particles: ParticleInfo | None = None  # with particle resampling: ESS, resampling, log Ẑ, weights
    _pending: Tensor | None = field(default=None, repr=False)  # [non-finite, sum, count] not yet synced
    _pending_quadrature: Tensor | None = field(default=None, repr=False)  # [error sum, count] not yet synced

    def update(self, step: StepInfo) -> None:
        self.n_steps += 1
        self.nfe += step.nfe
        acc = step.accepted.detach().double()
        self.accepted_per_sample = acc if self.accepted_per_sample is None else self.accepted_per_sample + acc
        if step.log_ratio is not None:
            self.adjusted = True
            log_ratio = step.log_ratio.detach().double()
            finite = torch.isfinite(log_ratio)
            sums = torch.stack([(~finite).sum().double(), torch.where(finite, log_ratio, 0.0).sum(),
                                finite.sum().double()])
            self._pending = sums if self._pending is None else self._pending + sums
        if step.quadrature_error is not None:
            error = step.quadrature_error.detach().double()
            finite = torch.isfinite(error)
            sums = torch.stack([torch.where(finite, error, 0.0).sum(), finite.sum().double()])
            self._pending_quadrature = sums if self._pending_quadrature is None else self._pending_quadrature + sums

    def sync(self) -> None:
        """Fold the device-side sums into the host statistics (one synchronisation)."""
        if self._pending is not None:
            n_nonfinite, total, count = self._pending.tolist()
            self.n_nonfinite += int(n_nonfinite)
            self.log_ratio_sum += total
            self.log_ratio_count += int(count)
            self._pending = None
        if self._pending_quadrature is not None:
            total, count = self._pending_quadrature.tolist()
            self.quadrature_error_sum += total
            self.quadrature_error_count += int(count)
            self._pending_quadrature = None
        if self.accepted_per_sample is not None:
            self.accepted_per_sample = self.accepted_per_sample.cpu()

    def merge(self, other: ChainInfo, level: int | None = None) -> None:
        """Add another run's statistics (e.g. one level of an annealed run), recording its rate per level."""
        self.sync()
        other.sync()
        self.adjusted = self.adjusted or other.adjusted
        self.n_steps += other.n_steps
        self.nfe += other.nfe
        if other.accepted_per_sample is not None:
            self.accepted_per_sample = (other.accepted_per_sample if self.accepted_per_sample is None
                                        else self.accepted_per_sample + other.accepted_per_sample)
        self.log_ratio_sum += other.log_ratio_sum
        self.log_ratio_count += other.log_ratio_count
        self.n_nonfinite += other.n_nonfinite
        self.quadrature_error_sum += other.quadrature_error_sum
        self.quadrature_error_count += other.quadrature_error_count
        if level is not None and other.n_steps:
            record(self.levels, ACCEPT_RATE, level, other.accept_rate)
            if other.adjusted:
                record(self.levels, NONFINITE_LOG_RATIO_SHARE, level,
                       other.n_nonfinite / (other.n_steps * other.batch_size))
                record(self.levels, LOG_RATIO_MEAN, level, other.log_ratio_mean)
        if level is not None and other.quadrature_error_count:
            record(self.levels, QUADRATURE_ERROR, level, other.quadrature_error_mean)

    @property
    def accept_rate_per_sample(self) -> Tensor:
        if self.accepted_per_sample is None or self.n_steps == 0:
            return torch.ones(self.batch_size, dtype=torch.float64)
        return self.accepted_per_sample / self.n_steps

    @property
    def accept_rate(self) -> float:
        """Mean acceptance over samples and steps (1.0 for unadjusted kernels, which accept every proposal)."""
        return float(self.accept_rate_per_sample.mean())

    @property
    def log_ratio_mean(self) -> float:
        return self.log_ratio_sum / self.log_ratio_count if self.log_ratio_count else math.nan

    @property
    def quadrature_error_mean(self) -> float:
        """Mean |Q − Q_low| of the line/curve correction over samples and steps (NaN without one)."""
        return self.quadrature_error_sum / self.quadrature_error_count if self.quadrature_error_count else math.nan

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary."""
        return {
            "adjusted": self.adjusted,
            "accept_rate": self.accept_rate,
            "nfe": self.nfe,
            "n_steps": self.n_steps,
            "log_ratio_mean": self.log_ratio_mean,
            "n_nonfinite": self.n_nonfinite,
            "quadrature_error_mean": self.quadrature_error_mean,
            **{f"{stat}_per_level": {str(k): v for k, v in values.items()} for stat, values in self.levels.items()},
        }
