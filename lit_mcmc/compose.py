"""Compositions of targets: products (conjunction), negation and mixtures. Each composition is itself a Target.

Products and negations are linear in the parts' log-densities, so their score, integrand and exact part are the
weighted sums of the parts': the MH correction then evaluates exactly what each part knows exactly and integrates
only the rest. A mixture needs every part's absolute log-density (log-sum-exp), so score-only parts are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_mcmc.targets import Evaluation, Target


def _weighted_sum(weights: Sequence[float], tensors: Sequence[Tensor]) -> Tensor:
    total = weights[0] * tensors[0]
    for w, tensor in zip(weights[1:], tensors[1:], strict=True):
        total = total + w * tensor
    return total


class Product(Target):
    """p̃_t(x) = ∏_i p̃_{i,t}(x)^{w_i}: log-densities, scores and exact parts add with weights w_i (default 1)."""

    def __init__(self, parts: Sequence[Target], weights: Sequence[float] | None = None) -> None:
        if len(parts) == 0:
            raise ValueError("Product needs at least one part")
        weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(parts):
            raise ValueError(f"Product got {len(parts)} parts but {len(weights)} weights")
        self.parts = list(parts)
        self.weights = weights
        self.has_log_prob = all(p.has_log_prob for p in self.parts)

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        evals = [p.evaluate(x, t, with_log_prob) for p in self.parts]
        w = self.weights
        return Evaluation(
            score=_weighted_sum(w, [e.score for e in evals]),
            integrand=_weighted_sum(w, [e.integrand for e in evals]),
            exact=_weighted_sum(w, [e.exact for e in evals]),
            log_prob=_weighted_sum(w, [e.log_prob for e in evals]) if with_log_prob else None,  # type: ignore[misc]
        )

    def integrand(self, x: Tensor, t: int) -> Tensor:
        return _weighted_sum(self.weights, [p.integrand(x, t) for p in self.parts])


class Negation(Product):
    """p̃₁^{1+α} / p̃₂^{α}: "p₁ but not p₂" (R3's 2D negation uses α = 0.3, i.e. weights 1.3 and −0.3)."""

    def __init__(self, positive: Target, negative: Target, alpha: float = 0.3) -> None:
        if alpha < 0:
            raise ValueError(f"Negation alpha={alpha} must be >= 0")
        super().__init__([positive, negative], [1.0 + alpha, -alpha])


class Mixture(Target):
    """p̃_t(x) = Σ_i w_i p̃_{i,t}(x), via log-sum-exp; the score is the responsibility-weighted sum of the parts'.

    Needs every part's log-density (an absolute one, so parts should be normalised or share a common scale),
    hence score-parameterised parts are an error. Line/curve MH corrections integrate its score as a whole.
    """

    has_log_prob = True

    def __init__(self, parts: Sequence[Target], weights: Sequence[float] | None = None) -> None:
        if len(parts) == 0:
            raise ValueError("Mixture needs at least one part")
        for i, part in enumerate(parts):
            if not part.has_log_prob:
                raise ValueError(
                    f"Mixture part {i} ({type(part).__name__}) has no log-density (has_log_prob=False): a mixture "
                    "needs each part's log p̃ (log-sum-exp), so use energy models or analytic targets for its parts"
                )
        weights = [1.0] * len(parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(parts) or any(w <= 0 for w in weights):
            raise ValueError(f"Mixture needs {len(parts)} positive weights, got {weights}")
        total = sum(weights)
        self.parts = list(parts)
        self.log_weights = torch.tensor([w / total for w in weights], dtype=torch.float64).log()

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        evals = [p.evaluate(x, t, with_log_prob=True) for p in self.parts]
        log_joint = torch.stack([e.log_prob for e in evals], dim=1) + self.log_weights.to(x)  # type: ignore[misc]
        resp = torch.softmax(log_joint, dim=1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        score = sum(resp[:, i].view(shape) * e.score for i, e in enumerate(evals))
        return Evaluation(score, score, x.new_zeros(x.shape[0]), torch.logsumexp(log_joint, dim=1))  # type: ignore[arg-type]
