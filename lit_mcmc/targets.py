"""Targets: families of unnormalised densities p̃_t indexed by the diffusion level t.

Every sampler talks to a :class:`Target`. A target is evaluated at a batch x ([B, ...]) and a level t and returns
an :class:`Evaluation`: the score the proposals use, the part of the score that a line/curve MH correction
integrates, the part of log p̃ that is known exactly (a classifier's log-probability, say), and, on request, the
whole log p̃ when the target has one. Model adapters (score and energy networks), analytic diffused
distributions (exact at every level: the oracle for tests and benchmarks) and compositions (``compose.py``) are
all targets. Plain PyTorch; works when called under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.nets.energy import EnergyNet


@dataclass
class Evaluation:
    """What a target knows at a batch of points.

    Attributes:
        score: ∇ₓ log p̃_t(x), shaped like x; the proposals use it.
        integrand: the part of the score a line/curve MH correction integrates (equal to ``score`` unless part of
            log p̃ is known exactly).
        exact: the exactly known part of log p̃_t(x), shape [B] (zeros when there is none).
        log_prob: the whole log p̃_t(x), shape [B], when asked for and available; otherwise None.
        variance_output: a learned-σ model's variance output v ∈ [−1, 1], shaped like x (the reverse step's
            ``variance="learned"`` uses it; the MCMC kernels ignore it); None for other targets.
        parts_sq_norm: Σ_i w_i ‖s_i‖², shape [B], over the diffused densities q_i whose weighted scores the score
            sums (compositions set it); None for one diffused density, where it is ‖score‖². Feynman–Kac particle
            weights use it (docs/algorithms.md §14).
    """

    score: Tensor
    integrand: Tensor
    exact: Tensor
    log_prob: Tensor | None = None
    variance_output: Tensor | None = None
    parts_sq_norm: Tensor | None = None

    def where(self, mask: Tensor, other: Evaluation) -> Evaluation:
        """Per-sample choice: rows of ``self`` where ``mask`` is True, rows of ``other`` elsewhere."""
        lp = None
        if self.log_prob is not None and other.log_prob is not None:
            lp = torch.where(mask, self.log_prob, other.log_prob)
        var = None
        if self.variance_output is not None and other.variance_output is not None:
            var = where_rows(mask, self.variance_output, other.variance_output)
        sq = None
        if self.parts_sq_norm is not None and other.parts_sq_norm is not None:
            sq = torch.where(mask, self.parts_sq_norm, other.parts_sq_norm)
        return Evaluation(
            score=where_rows(mask, self.score, other.score),
            integrand=where_rows(mask, self.integrand, other.integrand),
            exact=torch.where(mask, self.exact, other.exact),
            log_prob=lp,
            variance_output=var,
            parts_sq_norm=sq,
        )

    def rows(self, index: Tensor) -> Evaluation:
        """The evaluation of the samples ``index`` ([B] rows, repeats allowed): what resampling keeps."""
        def pick(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.index_select(0, index)

        return Evaluation(pick(self.score), pick(self.integrand), pick(self.exact), pick(self.log_prob),  # type: ignore[arg-type]
                          pick(self.variance_output), pick(self.parts_sq_norm))

    def weighted_sq_norm(self) -> Tensor:
        """Σ_i w_i ‖s_i‖² per sample: ``parts_sq_norm``, or ‖score‖² for a single diffused density."""
        return self.parts_sq_norm if self.parts_sq_norm is not None else self.score.flatten(1).pow(2).sum(1)

    def sq_norm_gap(self) -> Tensor:
        """‖S‖² − Σ_i w_i ‖s_i‖² per sample: the Feynman–Kac weight rate over ½β (zero for one diffused density)."""
        if self.parts_sq_norm is None:
            return self.score.new_zeros(self.score.shape[0])
        return self.score.flatten(1).pow(2).sum(1) - self.parts_sq_norm


class Target(ABC):
    """A family of unnormalised densities p̃_t(x), t = 0..T-1, as seen by the samplers.

    Subclasses implement :meth:`evaluate`. ``has_log_prob`` is False for score-parameterised models, whose
    log-density is unknown: exact-energy MH corrections and mixtures refuse them.
    """

    has_log_prob: bool = False
    # Whether its evaluations carry what Feynman–Kac weights need (``Evaluation.parts_sq_norm`` where it combines
    # several diffused densities); a composition that is not a weighted product of them sets it False.
    feynman_kac: bool = True

    @abstractmethod
    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        """Score, integrand and exact part at (x, t); also log p̃ if ``with_log_prob`` (needs has_log_prob)."""

    def score(self, x: Tensor, t: int) -> Tensor:
        """∇ₓ log p̃_t(x), shaped like x."""
        return self.evaluate(x, t).score

    def log_prob(self, x: Tensor, t: int) -> Tensor:
        """log p̃_t(x) up to a constant in x, shape [B]."""
        self.require_log_prob("log_prob")
        return self.evaluate(x, t, with_log_prob=True).log_prob  # type: ignore[return-value]

    def integrand(self, x: Tensor, t: int) -> Tensor:
        """The part of the score that MH corrections integrate along a path (see :class:`Evaluation`)."""
        return self.evaluate(x, t).integrand

    def require_log_prob(self, what: str) -> None:
        if not self.has_log_prob:
            raise ValueError(
                f"{what} needs an exact log-density, but {type(self).__name__} is score-parameterised "
                "(has_log_prob=False): use an energy model or an analytic target, or an integrated correction "
                "(correction='line' or 'curve')"
            )


class DensityTarget(Target):
    """A target with no exactly-known sub-term: the whole score is integrated by line/curve corrections."""

    @abstractmethod
    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, Tensor | None]:
        """(score, log p̃ or None)."""

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        score, log_prob = self.score_and_log_prob(x, t, with_log_prob)
        return Evaluation(score, score, x.new_zeros(x.shape[0]), log_prob)


# --------------------------------------------------------------------------------------------------------------
# Learned models
# --------------------------------------------------------------------------------------------------------------


class ScoreModelTarget(DensityTarget):
    """An ε-prediction network as a target: score = −ε̂(x, t)/σ_t. Its log-density is unknown.

    ``learned_variance``: the network returns [ε̂, v] stacked on dim 1 (twice x's channels, guided-diffusion's
    learned σ); the score uses ε̂ and v is passed on as :attr:`Evaluation.variance_output` for the reverse step.
    """

    has_log_prob = False

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, learned_variance: bool = False) -> None:
        self.net = net
        self.schedule = schedule
        self.learned_variance = learned_variance

    def _network(self, x: Tensor, t: int) -> tuple[Tensor, Tensor | None]:
        out = self.net(x, self.schedule.model_t(t, x.shape[0], x.device))
        if not self.learned_variance:
            return out, None
        if out.shape[1] != 2 * x.shape[1]:
            raise ValueError(f"learned_variance=True needs a network output with twice x's {x.shape[1]} channels "
                             f"(ε̂ and the variance), got {out.shape[1]}")
        eps, var = out.chunk(2, dim=1)
        return eps, var

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, None]:
        return -self._network(x, t)[0] / float(self.schedule.marginal_std[t]), None

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        eps, var = self._network(x, t)
        score = -eps / float(self.schedule.marginal_std[t])
        return Evaluation(score, score, x.new_zeros(x.shape[0]), None, var)


class EnergyModelTarget(DensityTarget):
    """An energy network as a target: log p̃_t = −E(x, t)/σ_t, score = −∇ₓE/σ_t (one forward + backward)."""

    has_log_prob = True

    def __init__(self, net: EnergyNet, schedule: NoiseSchedule) -> None:
        if not isinstance(net, EnergyNet):
            raise TypeError(f"EnergyModelTarget needs an EnergyNet (got {type(net).__name__}): wrap the network "
                            "with lit_mcmc.nets.energy.EnergyNet(net, form=...)")
        self.net = net
        self.schedule = schedule

    def score_and_log_prob(self, x: Tensor, t: int, with_log_prob: bool) -> tuple[Tensor, Tensor]:
        sigma = float(self.schedule.marginal_std[t])
        energy, grad = self.net.energy_and_grad(x, self.schedule.model_t(t, x.shape[0], x.device))
        return -grad / sigma, -energy / sigma


# --------------------------------------------------------------------------------------------------------------
# Analytic targets: data distributions diffused in closed form
# --------------------------------------------------------------------------------------------------------------


class DiffusedDistribution(DensityTarget):
    """A data distribution whose diffused marginals p_t = q(x_t) have closed forms (exact scores and log-densities).

    Level ``t=None`` means the data themselves ("level −1"). Exact samples at any level come from diffusing exact
    data samples: x_t = α_t x_0 + σ_t ε.
    """

    has_log_prob = True

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    def level_coefficients(self, t: int | None) -> tuple[float, float]:
        """(α_t, σ_t) of the schedule's Gaussian path (√ᾱ_t, √(1 − ᾱ_t) on DDPM), with (1, 0) for the data level
        t=None."""
        if t is None:
            return 1.0, 0.0
        return self.schedule.level_coefficients(t)

    @abstractmethod
    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of the data distribution."""

    def sample(self, n: int, t: int | None, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of p_t (of the data for t=None)."""
        x0 = self.sample_data(n, generator)
        scale, sigma = self.level_coefficients(t)
        return scale * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)


class DiffusedGaussianMixture(DiffusedDistribution):
    """A Gaussian mixture Σ_k w_k N(μ_k, s_k² I), diffused: component k at level t is N(α_t μ_k, (α_t² s_k² + σ_t²) I).

    Args:
        means: [K, D] component means.
        std: one std for all components, or [K].
        weights: [K] mixture weights (normalised here); equal weights by default.
        schedule: the noise schedule defining the levels.
    """

    def __init__(self, means: Tensor, std: float | Tensor, schedule: NoiseSchedule,
                 weights: Tensor | None = None) -> None:
        super().__init__(schedule)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(self.means.shape)}")
        n_comp = self.means.shape[0]
        self.stds = torch.as_tensor(std, dtype=torch.float64).expand(n_comp).clone()
        if not bool((self.stds > 0).all()):
            raise ValueError("std must be positive")
        weights = torch.full((n_comp,), 1.0 / n_comp, dtype=torch.float64) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n_comp,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {n_comp} positive numbers")
        self.weights = weights / weights.sum()

    def _check_dim(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.means.shape[1]:
            raise ValueError(f"x must have shape [B, {self.means.shape[1]}], got {tuple(x.shape)}")

    def score_and_log_prob(self, x: Tensor, t: int | None, with_log_prob: bool) -> tuple[Tensor, Tensor]:
        self._check_dim(x)
        scale, sigma = self.level_coefficients(t)
        means = (scale * self.means).to(x)  # [K, D]
        var = (scale**2 * self.stds**2 + sigma**2).to(x)  # [K]
        diff = x[:, None, :] - means[None]  # [B, K, D]
        dim = x.shape[1]
        log_comp = (self.weights.log().to(x) - 0.5 * diff.pow(2).sum(-1) / var
                    - 0.5 * dim * torch.log(2 * math.pi * var))  # [B, K]
        log_prob = torch.logsumexp(log_comp, dim=1)
        resp = torch.softmax(log_comp, dim=1)
        score = -(resp[..., None] * diff / var[None, :, None]).sum(1)
        return score, log_prob

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * noise).float()


class DiffusedUniformBox(DiffusedDistribution):
    """The uniform distribution on a box [low, high] ⊂ R^D, diffused in closed form.

    Per dimension, p_t(y) = [Φ((y − √ᾱ_t l)/σ_t) − Φ((y − √ᾱ_t h)/σ_t)] / (√ᾱ_t (h − l)); the difference of normal
    CDFs is taken in log space on the tail that keeps it accurate. Level t=None (the data) has no score.
    """

    def __init__(self, low: Tensor, high: Tensor, schedule: NoiseSchedule) -> None:
        super().__init__(schedule)
        self.low = torch.as_tensor(low, dtype=torch.float64).flatten()
        self.high = torch.as_tensor(high, dtype=torch.float64).flatten()
        if self.low.shape != self.high.shape or not bool((self.high > self.low).all()):
            raise ValueError("box bounds must have the same shape with high > low in every dimension")

    def _log_mass_and_score(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """log[Φ(a) − Φ(b)] per dimension and its derivative in x, with a = (x − √ᾱ l)/σ, b = (x − √ᾱ h)/σ."""
        if x.dim() != 2 or x.shape[1] != self.low.numel():
            raise ValueError(f"x must have shape [B, {self.low.numel()}], got {tuple(x.shape)}")
        scale, sigma = self.level_coefficients(t)
        a = (x - scale * self.low.to(x)) / sigma
        b = (x - scale * self.high.to(x)) / sigma
        # Φ(a) − Φ(b) = Φ(−b) − Φ(−a): use the lower tail of whichever pair is smaller, so neither CDF is ≈ 1.
        upper = b > 0
        hi, lo = torch.where(upper, -b, a), torch.where(upper, -a, b)
        log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
        log_mass = log_hi + torch.log1p(-torch.exp(log_lo - log_hi))
        log_phi = -0.5 * math.log(2 * math.pi)
        d_mass = (torch.exp(log_phi - 0.5 * a**2 - log_mass) - torch.exp(log_phi - 0.5 * b**2 - log_mass)) / sigma
        return log_mass, d_mass

    def score_and_log_prob(self, x: Tensor, t: int | None, with_log_prob: bool) -> tuple[Tensor, Tensor]:
        if t is None:
            raise ValueError("the undiffused box (t=None) has no score; use a level t >= 0")
        log_mass, score = self._log_mass_and_score(x, t)
        scale, _ = self.level_coefficients(t)
        log_norm = torch.log(scale * (self.high - self.low)).sum().to(x)
        return score, log_mass.sum(1) - log_norm

    def acceptance_probability(self, x: Tensor, t: int) -> Tensor:
        """p_t(x) / max-bound ∈ [0, 1]: the rejection-sampling weight for a product with this box."""
        return self._log_mass_and_score(x, t)[0].sum(1).exp()

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, self.low.numel(), generator=generator, dtype=torch.float64)
        return (self.low + u * (self.high - self.low)).float()


def sample_box_product(proposal: DiffusedDistribution, box: DiffusedUniformBox, n: int, t: int,
                       generator: torch.Generator | None = None, max_rounds: int = 1000) -> Tensor:
    """Exact samples of p_t ∝ proposal_t · box_t by rejection (proposal samples kept w.p. ∝ box_t density)."""
    kept: list[Tensor] = []
    count = 0
    for _ in range(max_rounds):
        x = proposal.sample(max(4 * n, 1000), t, generator)
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype)
        x = x[u < box.acceptance_probability(x, t)]
        kept.append(x)
        count += x.shape[0]
        if count >= n:
            return torch.cat(kept)[:n]
    raise RuntimeError(f"rejection sampling kept only {count} of {n} samples in {max_rounds} rounds")


def where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample choice between two batches: a's rows where mask [B] is True, b's elsewhere."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)
