"""How the components of a sampling run combine: ``model.composition`` (:class:`CompositionConfig`), the checks
of components against it (made before any network is loaded), and the composed target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lit_mcmc.compose import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Mixture,
    Negation,
    Product,
    ReconstructionGuidance,
)
from lit_mcmc.diffusion import NoiseSchedule, ScheduleConfig
from lit_mcmc.modules.components import ComponentConfig, has_exact_log_prob
from lit_mcmc.samplers import SamplerConfig
from lit_mcmc.targets import Target

COMPOSITIONS = ("single", "product", "negation", "mixture", "classifier_guidance", "classifier_free_guidance",
                "reconstruction_guidance", "prompt_product", "tapestry")
# Compositions made inside one diffusers component (its prompts / regions), with the component key that defines them.
PROMPT_COMPOSITIONS = {"prompt_product": "prompts", "tapestry": "regions"}
GUIDED = ("classifier_guidance", "classifier_free_guidance", "reconstruction_guidance")
# Compositions guided by a classifier component, with the role it must have.
CLASSIFIER_ROLE = {"classifier_guidance": "classifier", "reconstruction_guidance": "clean_classifier"}


@dataclass
class CompositionConfig:
    """How the components combine.

    ``kind``: "single" (one part), "product", "negation" (parts [p, q]: p^{1+α}/q^α), "mixture" (needs energy
    models or analytic parts), "classifier_guidance" (the product of ``parts`` times p_φ(y | x_t)^``scale``, with
    the noisy classifier component named by ``classifier``), "classifier_free_guidance" (parts
    [conditional, unconditional], weights (``scale``, 1 − ``scale``)), or "reconstruction_guidance" (one part times
    p(y | x̂_0(x_t))^``scale`` with the clean classifier named by ``classifier`` applied to the Tweedie estimate),
    "prompt_product" or "tapestry" (one ``pretrained: diffusers`` part whose ``prompts`` / ``regions`` define it).

    ``mh_scale`` (classifier guidance only) is the classifier's weight in the MH test (null: ``scale``; 1.0
    reproduces the reference code, docs/algorithms.md §11.9). With either classifier: sample i is guided towards class
    ``labels[i % len(labels)]`` when ``labels`` is given, else ``i % n_classes``; ``n_classes`` defaults to the
    classifier's output width.
    """

    kind: Literal["single", "product", "negation", "mixture", "classifier_guidance", "classifier_free_guidance",
                  "reconstruction_guidance", "prompt_product", "tapestry"] = "product"
    parts: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    alpha: float = 0.3
    classifier: str | None = None
    scale: float | None = None
    mh_scale: float | None = None
    labels: list[int] | None = None
    n_classes: int | None = None

    def __post_init__(self) -> None:
        key = "model.composition"
        if self.kind not in COMPOSITIONS:
            raise ValueError(f"{key}.kind={self.kind!r} is not one of {list(COMPOSITIONS)}")
        if self.kind in GUIDED and self.scale is None:
            raise ValueError(f"{key}.scale must be set for kind={self.kind!r} (the guidance weight, e.g. 20)")
        if self.kind not in GUIDED and self.scale is not None:
            raise ValueError(f"{key}.scale applies only to kinds {list(GUIDED)} (kind is {self.kind!r}): remove it")
        if self.kind in PROMPT_COMPOSITIONS and self.weights is not None:
            where = (f"model.components.{self.parts[0]}.weights" if len(self.parts) == 1
                     else "the weights of the diffusers component in model.components")
            raise ValueError(f"{key}.weights does not apply to kind={self.kind!r}: the prompt weights are {where} "
                             "(or each region's)")
        if self.kind != "classifier_guidance" and self.mh_scale is not None:
            raise ValueError(f"{key}.mh_scale applies only to kind='classifier_guidance' (kind is {self.kind!r}): "
                             "remove it")
        with_classifier = {"classifier": self.classifier, "labels": self.labels, "n_classes": self.n_classes}
        if self.kind not in CLASSIFIER_ROLE:
            given = [name for name, value in with_classifier.items() if value is not None]
            if given:
                raise ValueError(f"{key}.{given[0]} applies only to kinds {list(CLASSIFIER_ROLE)} (kind is "
                                 f"{self.kind!r}): remove it")
            return
        if self.classifier is None:
            raise ValueError(f"{key}.classifier must name the component (with role: {CLASSIFIER_ROLE[self.kind]}) "
                             f"that guides the sampling, for kind={self.kind!r}")
        if self.n_classes is not None and self.n_classes < 1:
            raise ValueError(f"{key}.n_classes={self.n_classes} must be >= 1")
        if self.labels is not None:
            if len(self.labels) == 0:
                raise ValueError(f"{key}.labels=[] needs at least one class (or null for index % n_classes)")
            self.check_labels(self.n_classes)

    def check_labels(self, n_classes: int | None) -> None:
        """Labels must be classes in [0, n_classes − 1] (or >= 0 while n_classes is unknown)."""
        if self.labels is None:
            return
        bad = [y for y in self.labels if y < 0 or (n_classes is not None and y >= n_classes)]
        if bad:
            valid = f"[0, {n_classes - 1}]" if n_classes is not None else ">= 0"
            raise ValueError(f"model.composition.labels contains {bad}, outside the classifier's classes {valid}")


def check_names(components: dict[str, ComponentConfig], spec: CompositionConfig) -> None:
    diffusion = [n for n, c in components.items() if c.role == "diffusion"]
    classifiers = [n for n, c in components.items() if c.role != "diffusion"]
    unknown = [n for n in spec.parts if n not in components]
    if unknown:
        raise ValueError(f"model.composition.parts names unknown components {unknown}; known: {list(components)}")
    misused = [n for n in spec.parts if n in classifiers]
    if misused:
        raise ValueError(f"model.composition.parts names classifier components {misused}; parts are diffusion "
                         f"models ({diffusion}); name the classifier in model.composition.classifier instead")
    if not diffusion:
        raise ValueError("model.components needs at least one diffusion model (role: diffusion)")
    if spec.kind in CLASSIFIER_ROLE:
        role = CLASSIFIER_ROLE[spec.kind]
        if spec.classifier not in components:
            raise ValueError(f"model.composition.classifier={spec.classifier!r} is not a component; add it to "
                             f"model.components with role: {role} (known: {list(components)})")
        if components[spec.classifier].role != role:
            raise ValueError(f"model.composition.classifier={spec.classifier!r} has role: "
                             f"{components[spec.classifier].role}, but kind={spec.kind!r} needs a "
                             f"{'noisy' if role == 'classifier' else 'clean'} classifier; set "
                             f"model.components.{spec.classifier}.role: {role}")
        if len(classifiers) > 1:
            raise ValueError(f"model.components has several classifiers {classifiers}; keep only "
                             f"model.composition.classifier={spec.classifier!r}")
    elif classifiers:
        raise ValueError(f"components {classifiers} are classifiers, which only kinds {list(CLASSIFIER_ROLE)} "
                         "use; remove them or change model.composition.kind")
    labelled = [n for n, c in components.items() if getattr(c, "class_labels", None) is not None]
    if labelled and (spec.kind != "single" or (spec.parts or diffusion) != labelled):
        raise ValueError(f"model.components.{labelled[0]}.class_labels (per-sample classes of a class-conditional "
                         "UNet) needs model.composition.kind: single with that component as the only part")
    if spec.kind in PROMPT_COMPOSITIONS:
        names = spec.parts or diffusion
        field = PROMPT_COMPOSITIONS[spec.kind]
        if len(names) != 1 or getattr(components[names[0]], field) is None:
            raise ValueError(f"model.composition.kind={spec.kind!r} needs one part, a pretrained: diffusers "
                             f"component with '{field}' (model.components.{names[0] if names else 'X'}.{field}); "
                             f"got parts {names}")

def check_exact_log_probs(components: dict[str, ComponentConfig], spec: CompositionConfig,
                           sampler: SamplerConfig, root: str) -> None:
    """Mixtures and the exact-energy MH correction need every diffusion part's log-density: a score model among
    them is a config error, found before any network is built."""
    parts = spec.parts or [n for n, c in components.items() if c.role == "diffusion"]
    needs = [what for what, needed in (("model.composition.kind='mixture'", spec.kind == "mixture"),
                                       ("model.sampler.correction='energy'", sampler.correction == "energy"))
             if needed]
    for what in needs:
        for name in parts:
            if has_exact_log_prob(components[name], root) is False:
                raise ValueError(
                    f"{what} needs an exact log-density from every part, but model.components.{name} is a score "
                    "model (its log-density is unknown): use energy models or analytic targets"
                    + (", or correction: line / curve" if "correction" in what else ""))

def common_schedule(schedules: dict[str, NoiseSchedule], config: ScheduleConfig | None) -> NoiseSchedule:
    candidates = list(schedules.items())
    if config is not None:
        candidates.append(("model.schedule", config.build()))
    if not candidates:
        raise ValueError("model.schedule must be set when every component is analytic")
    ref_name, ref = candidates[0]
    for name, other in candidates[1:]:
        if other.T != ref.T or not torch.allclose(other.betas, ref.betas) or other.path != ref.path:
            raise ValueError(f"noise schedules differ between {ref_name!r} ({ref}) and {name!r} ({other}): "
                             "components of a composition must share one schedule")
    return ref

def compose(parts: dict[str, Target], spec: CompositionConfig) -> Target:
    names = spec.parts or list(parts)
    chosen = [parts[n] for n in names]
    if spec.kind in ("single", *PROMPT_COMPOSITIONS):  # a prompt composition is its component's own target
        if len(chosen) != 1:
            raise ValueError(f"model.composition.kind='single' needs one part, got {names}")
        return chosen[0]
    if spec.kind == "product":
        return Product(chosen, spec.weights)
    if spec.kind in ("negation", "classifier_free_guidance"):
        if len(chosen) != 2:
            roles = "[keep, remove]" if spec.kind == "negation" else "[conditional, unconditional]"
            raise ValueError(f"model.composition.kind={spec.kind!r} needs two parts {roles}, got {names}")
        if spec.kind == "negation":
            return Negation(chosen[0], chosen[1], spec.alpha)
        return ClassifierFreeGuidance(chosen[0], chosen[1], spec.scale)  # type: ignore[arg-type]
    return Mixture(chosen, spec.weights)

def classifier_guidance(parts: dict[str, Target], spec: CompositionConfig, classifier: nn.Module,
                        schedule: NoiseSchedule) -> ClassifierGuidance | ReconstructionGuidance:
    """The guided target: the diffusion part(s) (a product when several or weighted) times the classifier."""
    names = spec.parts or list(parts)
    if spec.kind == "reconstruction_guidance" and (len(names) != 1 or spec.weights is not None):
        raise ValueError(f"model.composition.kind='reconstruction_guidance' needs one diffusion model in "
                         f"model.composition.parts (its score forms the Tweedie estimate), got {names}")
    inner = parts[names[0]] if len(names) == 1 and spec.weights is None else Product(
        [parts[n] for n in names], spec.weights)
    if spec.kind == "reconstruction_guidance":
        return ReconstructionGuidance(inner, classifier, spec.scale)  # type: ignore[arg-type]
    return ClassifierGuidance(inner, classifier, schedule, spec.scale, mh_scale=spec.mh_scale)  # type: ignore[arg-type]


def classifier_width(classifier: nn.Module, name: str, sample_shape: list[int], noisy: bool,
                     schedule: NoiseSchedule, spec: CompositionConfig) -> int:
    """The number of classes, from one forward pass on a zero image of ``sample_shape`` (at the noisiest level
    for a noisy classifier), checked against ``spec.n_classes`` and ``spec.labels``."""
    x = torch.zeros(1, *sample_shape)
    args = (schedule.model_t(schedule.T - 1, 1),) if noisy else ()
    try:
        with torch.no_grad():
            logits = classifier(x, *args)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"classifier {name!r} does not accept samples of model.sample_shape="
                         f"{sample_shape}: {err}") from None
    if logits.dim() != 2:
        raise ValueError(f"classifier {name!r} must return logits [B, n_classes], got {tuple(logits.shape)}")
    n_classes = int(logits.shape[1])
    if spec.n_classes is not None and spec.n_classes != n_classes:
        raise ValueError(f"model.composition.n_classes={spec.n_classes} but classifier {spec.classifier!r} "
                         f"returns {n_classes} logits; set it to {n_classes} or null")
    spec.check_labels(n_classes)
    return n_classes
