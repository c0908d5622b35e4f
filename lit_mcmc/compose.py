"""Compositions of targets: products (conjunction), negation and mixtures. Each composition is itself a Target.

Products and negations are linear in the parts' log-densities, so their score, integrand and exact part are the
weighted sums of the parts': the MH correction then evaluates exactly what each part knows exactly and integrates
only the rest. A mixture needs every part's absolute log-density (log-sum-exp), so score-only parts are refused.

Guidance is composition too: classifier guidance multiplies a target by p_φ(y|x, t)^λ, whose log-probability is
known exactly (the MH correction evaluates it instead of integrating it); classifier-free guidance is a product
with weights (1 − w, w); reconstruction guidance applies a clean classifier to the Tweedie estimate x̂_0(x_t).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from lit_mcmc.diffusion import NoiseSchedule
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
        self.feynman_kac = all(p.feynman_kac for p in self.parts)

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
            # A learned reverse variance is one model's: the first part that has one (the unconditional model
            # under classifier-free guidance, as that one comes first).
            variance_output=next((e.variance_output for e in evals if e.variance_output is not None), None),
            parts_sq_norm=_weighted_sum(w, [e.weighted_sq_norm() for e in evals]),
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
    feynman_kac = False  # not a weighted product of diffused densities: particle weights must be exact

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


# --------------------------------------------------------------------------------------------------------------
# Guidance
# --------------------------------------------------------------------------------------------------------------


def class_log_prob_and_grad(classifier: nn.Module, x: Tensor, labels: Tensor,
                            *args: Tensor) -> tuple[Tensor, Tensor]:
    """(log softmax(classifier(x, *args))_y [B], its gradient in x), from one forward and one backward pass.

    Runs under ``torch.enable_grad()``, so it works inside a sampler's ``no_grad``; both results are detached, and
    only the input gradient is taken (the classifier's parameter ``.grad`` are left untouched).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, *args)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits of shape [B={x.shape[0]}, n_classes], got "
                             f"{tuple(logits.shape)}")
        # Host-side check on CPU only: on an accelerator it would sync every evaluation (SamplingModule checks the
        # labels against the classifier's classes once, up front; gather asserts on the device otherwise).
        if labels.device.type == "cpu" and (bool((labels < 0).any()) or bool((labels >= logits.shape[1]).any())):
            raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] (the classifier's classes), got values "
                             f"in [{int(labels.min())}, {int(labels.max())}]")
        log_prob = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(log_prob.sum(), x_in)
    return log_prob.detach(), grad.detach()


def _check_labels(labels: Tensor) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape [B] (one class per sample), got dtype "
                         f"{labels.dtype} and shape {tuple(labels.shape)}")
    return labels.long()


def _check_scale(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value} must be a finite number >= 0 (the guidance weight λ on log p(y|x))")
    return value


LabelledGuidanceT = TypeVar("LabelledGuidanceT", bound="LabelledGuidance")


class Guidance(NamedTuple):
    """What a classifier adds to its inner target's evaluation: to the score, to the exactly known log-density
    (the MH test's and the log-density's), and to Σ w_i ‖s_i‖² (None when the guidance has no such form)."""

    score: Tensor
    log_prob: Tensor
    parts_sq_norm: Tensor | None = None


class LabelledGuidance(Target):
    """Shared by the classifier-based guidances: a class label per sample, set per batch by :meth:`with_labels`,
    and one :meth:`evaluate` (the inner target's evaluation plus the subclass's :meth:`guidance`). Interior
    quadrature nodes of a line/curve correction need only the integrated part: no classifier evaluation."""

    def __init__(self, target: Target, classifier: nn.Module, schedule: NoiseSchedule, scale: float,
                 labels: Tensor | None) -> None:
        self.target = target
        self.classifier = classifier
        self.schedule = schedule
        self.scale = _check_scale(scale, "scale")
        self.labels = None if labels is None else _check_labels(labels)
        self.has_log_prob = target.has_log_prob

    def with_labels(self: LabelledGuidanceT, labels: Tensor) -> LabelledGuidanceT:
        """A shallow copy guiding towards ``labels`` (LongTensor [B]); the networks are shared, not copied."""
        guided = copy.copy(self)
        guided.labels = _check_labels(labels)
        if hasattr(self.target, "with_labels"):  # a class-conditional model is conditioned on the same classes
            guided.target = self.target.with_labels(guided.labels)
        return guided

    def guidance(self, x: Tensor, t: int, inner: Evaluation, labels: Tensor) -> Guidance:
        raise NotImplementedError

    def evaluate(self, x: Tensor, t: int, with_log_prob: bool = False) -> Evaluation:
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        labels = self.labels_for(x)
        inner = self.target.evaluate(x, t, with_log_prob)
        guided = self.guidance(x, t, inner, labels)
        return Evaluation(
            score=inner.score + guided.score,
            integrand=inner.integrand,
            exact=inner.exact + guided.log_prob,
            log_prob=inner.log_prob + guided.log_prob if with_log_prob else None,  # type: ignore[operator]
            variance_output=inner.variance_output,
            parts_sq_norm=guided.parts_sq_norm,
        )

    def integrand(self, x: Tensor, t: int) -> Tensor:
        return self.target.integrand(x, t)

    def labels_for(self, x: Tensor) -> Tensor:
        """The labels on x's device, checked against x's batch size."""
        if self.labels is None:
            raise ValueError(f"{type(self).__name__} has no labels: pass labels=... or call .with_labels(labels)")
        if self.labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels has {self.labels.shape[0]} entries but x has a batch of {x.shape[0]}: give one "
                             "label per sample (use .with_labels(labels) for each batch)")
        return self.labels.to(x.device)


class ClassifierGuidance(LabelledGuidance):
    """p̃_t(x) · p_φ(y | x, t)^λ with a time-conditioned ("noisy") classifier: ``classifier(x, t_model) -> logits``.

    score = inner score + λ ∇ₓ log softmax(classifier(x, t))_y (docs/algorithms.md §2, guided reverse step). The
    classifier's log-probability is known exactly, so it is the ``exact`` part (λ_mh · log p_φ) and ``integrand``
    is the inner target's alone: a line/curve MH correction evaluates the classifier at the path's two ends and
    integrates only the diffusion model's score (§5 (c)).

    Args:
        target: the unconditional target p̃_t.
        classifier: ``classifier(x, t_model)`` with ``t_model = schedule.model_t(t, B)``; returns [B, C] logits.
        schedule: the noise schedule that maps levels to the classifier's time input.
        scale: the guidance scale λ >= 0 used by the score (the proposals and reverse steps).
        labels: the class of each sample, LongTensor [B]; usually set per batch with :meth:`with_labels`.
        mh_scale: the classifier's weight in the density the MH test sees (``exact`` and ``log_prob``); by default
            ``scale``. A compatibility switch: ``mh_scale=1.0`` reproduces the reference code, which omits λ from
            the MH term (§11.9), so its chains target p̃·p_φ¹ while the proposals follow p̃·p_φ^λ.
    """

    def __init__(self, target: Target, classifier: nn.Module, schedule: NoiseSchedule, scale: float,
                 labels: Tensor | None = None, mh_scale: float | None = None) -> None:
        super().__init__(target, classifier, schedule, scale, labels)
        self.mh_scale = self.scale if mh_scale is None else _check_scale(mh_scale, "mh_scale")
        self.feynman_kac = target.feynman_kac

    def guidance(self, x: Tensor, t: int, inner: Evaluation, labels: Tensor) -> Guidance:
        t_model = self.schedule.model_t(t, x.shape[0], x.device)
        class_log_prob, class_grad = class_log_prob_and_grad(self.classifier, x, labels, t_model)
        # p_t(y|x) = q_{c,t}/q_{u,t} up to a constant, taking the inner target's score for q_u's: the classifier adds
        # λ(‖s_c‖² − ‖s_u‖²) = λ(2⟨s_u, g⟩ + ‖g‖²) to Σ w_i ‖s_i‖², g = ∇ log p_t(y|x) (Feynman–Kac weights).
        class_sq = self.scale * (2 * (inner.score * class_grad).flatten(1).sum(1) + class_grad.flatten(1).pow(2).sum(1))
        return Guidance(self.scale * class_grad, self.mh_scale * class_log_prob, inner.weighted_sq_norm() + class_sq)


class ClassifierFreeGuidance(Product):
    """(1 − w) log p̃_u + w log p̃_c: classifier-free guidance with scale w, as a product with weights (1 − w, w).

    For ε-models its score is −[ε̂_u + w(ε̂_c − ε̂_u)]/σ_t; w > 1 gives the unconditional model a negative
    exponent. The MH correction integrates the weighted integrands and adds the weighted exact parts.
    """

    def __init__(self, conditional: Target, unconditional: Target, scale: float) -> None:
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale={scale} must be a finite number (the classifier-free guidance weight w)")
        super().__init__([unconditional, conditional], [1.0 - scale, scale])
        self.conditional = conditional
        self.unconditional = unconditional
        self.scale = scale


class ReconstructionGuidance(LabelledGuidance):
    """p̃_t(x) · p(y | x̂_0(x))^λ with a clean classifier applied to the Tweedie estimate of the data.

    x̂_0 = (x_t − σ_t ε̂)/√ᾱ_t with ε̂ = −σ_t · (inner score), i.e. x̂_0 = (x_t + σ_t² s(x_t))/√ᾱ_t: the inner
    target's own evaluation gives ε̂ (no second network call). As in the reference code, ε̂ is treated as a
    constant in the guidance gradient: score = inner score + (λ/√ᾱ_t) ∇_{x̂_0} log p(y | x̂_0), which ignores ε̂'s
    Jacobian. log p(y | x̂_0(x)) itself is evaluable, so it is the exact part (λ · log p) and the MH test stays
    valid: the approximate gradient only shapes the proposals.

    Args:
        target: the unconditional target; needs a ``schedule`` attribute (e.g. a ScoreModelTarget).
        classifier: a clean classifier, ``classifier(x0) -> [B, C]`` logits.
        scale: the guidance scale λ >= 0.
        labels: the class of each sample, LongTensor [B]; usually set per batch with :meth:`with_labels`.
    """

    feynman_kac = False  # a classifier on x̂_0 is not a ratio of diffused densities

    def __init__(self, target: Target, classifier: nn.Module, scale: float, labels: Tensor | None = None) -> None:
        schedule = getattr(target, "schedule", None)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"ReconstructionGuidance needs a target with a noise schedule (a ScoreModelTarget or "
                            f"EnergyModelTarget) to form x̂_0; {type(target).__name__} has no .schedule")
        super().__init__(target, classifier, schedule, scale, labels)

    def guidance(self, x: Tensor, t: int, inner: Evaluation, labels: Tensor) -> Guidance:
        sqrt_abar = float(self.schedule.signal_scale[t])  # α_t (√ᾱ_t on DDPM)
        variance = float(self.schedule.marginal_std[t]) ** 2
        denoised = (x + variance * inner.score) / sqrt_abar
        class_log_prob, grad_denoised = class_log_prob_and_grad(self.classifier, denoised, labels)
        return Guidance((self.scale / sqrt_abar) * grad_denoised, self.scale * class_log_prob)
