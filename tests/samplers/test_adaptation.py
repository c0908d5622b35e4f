"""Step-size adaptation: dual averaging, the tuning pass on an analytic 2D target, the step table and its file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lit_mcmc.compose import Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.samplers import PerSampleRandom, SamplerConfig
from lit_mcmc.samplers.adaptation import (
    TABLE_FILE,
    DualAveraging,
    StepTuning,
    acceptance_probability,
    load_step_table,
    obtain_step_table,
    tune_step_sizes,
    tuning_indices,
)
from lit_mcmc.samplers.schedules import StepTable
from lit_mcmc.targets import DiffusedGaussianMixture, DiffusedUniformBox, Evaluation, Target

LEVELS = 20  # the 2D product on a 20-level cosine schedule: the same shapes of target, 5× fewer levels


class ScoreOnly(Target):
    has_log_prob = False

    def __init__(self, inner: Target) -> None:
        self.inner = inner

    def evaluate(self, x, t, with_log_prob=False):
        ev = self.inner.evaluate(x, t)
        return Evaluation(ev.score, ev.integrand, ev.exact, None)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.cosine(LEVELS)


@pytest.fixture(scope="module")
def product20(schedule) -> Product:
    k = torch.arange(8)
    means = 0.5 * torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1)
    return Product([DiffusedGaussianMixture(means, 0.03, schedule), DiffusedUniformBox([-0.2, -1.0], [0.2, 1.0],
                                                                                       schedule)])


def config(kernel: str, target_accept: float | None = None, **kwargs) -> SamplerConfig:
    """The papers' 2D samplers (docs/algorithms.md §7), MCMC at every level, no reverse step."""
    base = {"mala": {"step_size": 0.001, "correction": "energy"},
            "hmc": {"step_size": 0.03, "n_leapfrog": 3, "damping": 0.5, "carry_momentum": True,
                    "correction": "energy", "flip_on_reject": False},
            "uhmc": {"step_size": 0.03, "n_leapfrog": 3, "damping": 0.5, "carry_momentum": True}}[kernel]
    return SamplerConfig(kernel=kernel, target_accept=target_accept, **{"reverse": False, **base, **kwargs})


def tune(spec: SamplerConfig, target: Target, schedule: NoiseSchedule, seed: int = 0) -> StepTuning:
    return tune_step_sizes(spec.build(schedule), target, spec.initial_steps(schedule),
                           spec.target_accept, spec.tune_samples, spec.tune_steps, seed, (2,))  # type: ignore[arg-type]


# ----- dual averaging -------------------------------------------------------------------------------------------


def test_dual_averaging_finds_the_step_of_a_known_acceptance_curve():
    """accept(ε) = exp(−ε) reaches 0.8 at ε = −log 0.8 ≈ 0.223, from a guess 100× too small."""
    averaging = DualAveraging(0.002, 0.8)
    for _ in range(200):
        averaging.update(math.exp(-averaging.step))
    assert averaging.final_step == pytest.approx(-math.log(0.8), rel=0.1)


def test_dual_averaging_is_capped_and_treats_nan_as_a_rejection():
    averaging = DualAveraging(0.1, 0.8, min_step=0.01, max_step=0.5)
    for _ in range(100):
        averaging.update(1.0)  # always accepting: the step would grow without bound
    assert averaging.step == 0.5 and averaging.final_step == pytest.approx(0.5, rel=1e-3)
    fresh = DualAveraging(0.1, 0.8)
    fresh.update(math.nan)  # counted as no acceptance: the step shrinks
    assert fresh.step < 0.1
    assert acceptance_probability(torch.tensor([0.3, -math.log(2), math.nan, -math.inf])).tolist() == [1.0, 0.5,
                                                                                                        0.0, 0.0]


# ----- the tuning pass on an analytic 2D target -----------------------------------------------------------------


CASES = {
    "MALA-energy": ("mala", 0.65, {}),
    "HMC-energy": ("hmc", 0.8, {}),
    "HMC-curve": ("hmc", 0.8, {"correction": "curve"}),
    "MALA-1-line-simpson": ("mala", 0.65, {"correction": "line", "n_points": 1, "quadrature": "simpson"}),
}


@pytest.fixture(scope="module")
def tuned(product20, schedule) -> dict[str, tuple[SamplerConfig, Target, StepTuning]]:
    results = {}
    for name, (kernel, accept, extra) in CASES.items():
        spec = config(kernel, accept, tune_samples=128, **extra)
        target = product20 if spec.correction == "energy" else ScoreOnly(product20)
        results[name] = (spec, target, tune(spec, target, schedule))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_tuned_steps_reach_the_target_acceptance(tuned, schedule, name):
    """The sampling pass with the tuned table (fresh chains, other streams) accepts within ±0.05 of the target on
    at least 80 % of the levels; the tuning pass reports the same acceptance."""
    spec, target, tuning = tuned[name]
    assert sorted(tuning.table.steps) == list(range(LEVELS))
    _, info = spec.build(schedule).sample(target, (256, 2), PerSampleRandom(1, torch.arange(256)), tuning.table)
    rates = info.levels["accept_rate"]
    near = [abs(rates[t] - spec.target_accept) <= 0.05 for t in rates]  # type: ignore[operator]
    assert sum(near) >= 0.8 * LEVELS, rates
    assert sum(abs(tuning.accept_rate_per_level[t] - rates[t]) <= 0.1 for t in rates) >= 0.8 * LEVELS


def test_tuned_steps_span_the_range_the_levels_need(tuned):
    """MALA's steps fall by ~two orders of magnitude towards the sharp data level; the cap does not bind."""
    steps = tuned["MALA-energy"][2].table.steps
    assert steps[LEVELS - 1] > 0.2 and steps[0] < 0.02 and steps[LEVELS - 1] > 50 * steps[0]
    hmc = tuned["HMC-energy"][2].table.steps
    assert hmc[LEVELS - 1] > 5 * hmc[0]


def test_the_table_drives_the_samples(tuned, schedule):
    """Sampling with a table is deterministic given it; another table gives other samples."""
    spec, target, tuning = tuned["HMC-energy"]
    random = lambda: PerSampleRandom(3, torch.arange(32))  # noqa: E731
    sampler = spec.build(schedule)
    first, _ = sampler.sample(target, (32, 2), random(), tuning.table)
    again, _ = sampler.sample(target, (32, 2), random(), StepTable(dict(tuning.table.steps)))
    assert torch.equal(first, again)
    scaled = StepTable({t: 1.3 * v for t, v in tuning.table.steps.items()})
    other, _ = sampler.sample(target, (32, 2), random(), scaled)
    assert not torch.allclose(first, other)


def test_tuning_is_deterministic_and_uses_its_own_streams(product20, schedule):
    spec = config("mala", 0.65, tune_samples=16, tune_steps=10)
    first, again = tune(spec, product20, schedule), tune(spec, product20, schedule)
    assert first.table == again.table
    assert tune(spec, product20, schedule, seed=1).table != first.table
    assert (tuning_indices(16) < 0).all()  # no sample index (>= 0) shares a tuning chain's stream


def test_tuning_with_reverse_steps_covers_the_mcmc_levels(product20, schedule):
    spec = config("hmc", 0.8, reverse=True, tune_samples=16, tune_steps=5)
    tuning = tune(spec, product20, schedule)
    assert sorted(tuning.table.steps, reverse=True) == spec.build(schedule).mcmc_levels()


# ----- step_sizes.json: reuse, resume, errors --------------------------------------------------------------------


def test_obtain_tunes_once_then_reuses_the_saved_table(tmp_path: Path, product20, schedule):
    spec = config("mala", 0.65, tune_samples=8, tune_steps=4)
    levels = spec.build(schedule).mcmc_levels()
    calls = []

    def tune_once() -> StepTuning:
        calls.append(1)
        return tune(spec, product20, schedule)

    record = obtain_step_table(spec, tmp_path, 0, levels, tune_once)
    assert (tmp_path / TABLE_FILE).is_file() and len(calls) == 1
    assert obtain_step_table(spec, tmp_path, 0, levels, tune_once) == record and len(calls) == 1  # resumed
    with pytest.raises(ValueError, match="tuned with other settings \\(target_accept differ\\)"):
        obtain_step_table(config("mala", 0.5, tune_samples=8, tune_steps=4), tmp_path, 0, levels, tune_once)
    # an unadjusted twin at the same steps: the table is copied into its own run directory
    twin = SamplerConfig(kernel="ula", step_size=0.001, reverse=False, step_table=str(tmp_path / TABLE_FILE))
    reused = obtain_step_table(twin, tmp_path / "twin", 0, levels, tune_once)
    assert reused["step_sizes"] == record["step_sizes"] and len(calls) == 1
    assert json.loads((tmp_path / "twin" / TABLE_FILE).read_text())["step_sizes"] == record["step_sizes"]


@pytest.mark.parametrize("content,message", [
    (None, "sampler.step_table=.*no such file"),
    ("{not json", "sampler.step_table=.*is not valid JSON"),
    ('{"format": "x"}', "sampler.step_table=.*is malformed: it needs a non-empty 'step_sizes'"),
    ('{"step_sizes": {"a": 0.1}}', "sampler.step_table=.*must map integer levels to numbers"),
    ('{"step_sizes": {"3": -0.1}}', "sampler.step_table=.*step sizes must be positive and finite"),
])
def test_malformed_tables_are_clear_errors(tmp_path: Path, content, message):
    path = tmp_path / "steps.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_step_table(path)


def test_a_table_for_other_levels_is_an_error(tmp_path: Path, product20, schedule):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps({"step_sizes": {"5": 0.1, "4": 0.1}}))
    spec = SamplerConfig(kernel="uhmc", step_size=0.03, reverse=False, step_table=str(path))
    levels = spec.build(schedule).mcmc_levels()
    with pytest.raises(ValueError, match=r"sampler.step_table=.*lacks step sizes for levels \[19, 18"):
        obtain_step_table(spec, tmp_path, 0, levels, lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="has no step size for level t=7"):
        load_step_table(path)[0](7)


@pytest.mark.parametrize("kwargs,message", [
    ({"kernel": "hmc", "target_accept": 0.0}, r"sampler.target_accept=0.0 must lie in \(0, 1\)"),
    ({"kernel": "hmc", "target_accept": 1.0}, r"sampler.target_accept=1.0 must lie in \(0, 1\)"),
    ({"kernel": "mala", "target_accept": 1.5}, r"sampler.target_accept=1.5 must lie in \(0, 1\)"),
    ({"kernel": "hmc", "target_accept": 0.8, "tune_samples": 0}, "sampler.tune_samples=0 must be an integer >= 1"),
    ({"kernel": "hmc", "target_accept": 0.8, "tune_steps": 0}, "sampler.tune_steps=0 must be an integer >= 1"),
    ({"kernel": "uhmc", "target_accept": 0.8}, "sampler.target_accept tunes the steps of an MH kernel"),
    ({"kernel": "hmc", "target_accept": 0.8, "step_table": "a.json"}, "sampler.target_accept and sampler.step_table"),
])
def test_bad_adaptation_settings_name_the_key(kwargs, message):
    correction = {"correction": "energy"} if kwargs["kernel"] in ("mala", "hmc") else {}
    with pytest.raises(ValueError, match=message):
        SamplerConfig(step_size=0.03, **correction, **kwargs)


class LinearClassifier(torch.nn.Module):
    """logits = W x + b_t: a noisy classifier with a closed form."""

    def __init__(self, n_levels: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(3.0 * torch.randn(3, 2, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(n_levels, 3, generator=g))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias[t]


def test_tuning_a_guided_score_target(product20, schedule):
    """Classifier guidance on score models (exact classifier term, integrated score): tuning works unchanged."""
    from lit_mcmc.compose import ClassifierGuidance

    guided = ClassifierGuidance(ScoreOnly(product20), LinearClassifier(LEVELS), schedule, 2.0)
    n_chains = 64
    target = guided.with_labels(tuning_indices(n_chains) % 3)
    spec = config("hmc", 0.8, correction="line", n_points=1, tune_samples=n_chains)
    tuning = tune(spec, target, schedule)
    rates = tuning.accept_rate_per_level
    assert sum(abs(rate - 0.8) <= 0.05 for rate in rates.values()) >= 0.8 * LEVELS, rates
