"""Kernels and MH corrections: exactness, invariance, NFE accounting, per-sample decisions, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lit_mcmc.compose import Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.samplers import (
    HMC,
    MALA,
    UHMC,
    ULA,
    AnnealedSampler,
    CurveIntegral,
    LineIntegral,
    PerSampleRandom,
    TorchRandom,
)
from lit_mcmc.samplers.corrections import dot
from lit_mcmc.targets import DiffusedGaussianMixture, Evaluation, Target, sample_box_product


class ScoreOnly(Target):
    """Hides a target's log-density, as a score model would: MH corrections must integrate its score."""

    has_log_prob = False

    def __init__(self, inner: Target) -> None:
        self.inner = inner

    def evaluate(self, x, t, with_log_prob=False):
        if with_log_prob:
            self.require_log_prob("with_log_prob=True")
        ev = self.inner.evaluate(x, t)
        return Evaluation(ev.score, ev.integrand, ev.exact, None)


class Counting(Target):
    """Counts target evaluations (evaluate and integrand calls), and how many asked for log p̃."""

    def __init__(self, inner: Target, hide_log_prob: bool = False) -> None:
        self.inner = ScoreOnly(inner) if hide_log_prob else inner
        self.has_log_prob = self.inner.has_log_prob
        self.calls = 0
        self.log_prob_calls = 0

    def evaluate(self, x, t, with_log_prob=False):
        self.calls += 1
        self.log_prob_calls += int(with_log_prob)
        return self.inner.evaluate(x, t, with_log_prob)


@pytest.fixture(scope="module")
def gaussian(cosine100):
    """An anisotropic-mean Gaussian: its score is linear, so every trapezoid rule is exact."""
    return DiffusedGaussianMixture(torch.tensor([[0.3, -0.2]]), 0.2, cosine100)


# --- 1. exactness on a linear score and identical decisions -----------------------------------------------------


@pytest.mark.parametrize("correction", [LineIntegral(0), LineIntegral(1), LineIntegral(5), CurveIntegral(0),
                                        CurveIntegral(2)])
def test_trapezoid_is_exact_for_linear_scores(gaussian, correction):
    g = torch.Generator().manual_seed(1)
    path = [torch.randn(50, 2, dtype=torch.float64, generator=g) for _ in range(4)]
    evals = [gaussian.evaluate(p, 10, with_log_prob=True) for p in path]
    exact = evals[-1].log_prob - evals[0].log_prob
    estimate, _ = correction.delta(gaussian, 10, path, evals)
    assert torch.allclose(estimate, exact, atol=1e-5)


MALA_MAKER = lambda c, n: MALA(0.01, c, n)  # noqa: E731
HMC_MAKER = lambda c, n: HMC(0.3, n_leapfrog=3, damping=0.5, correction=c, n_points=n)  # noqa: E731


@pytest.mark.parametrize("make,correction,n_points", [
    (MALA_MAKER, "line", 0), (MALA_MAKER, "line", 3),
    (HMC_MAKER, "line", 0), (HMC_MAKER, "line", 3), (HMC_MAKER, "curve", 0), (HMC_MAKER, "curve", 1),
], ids=["MALA-line-0", "MALA-line-3", "HMC-line-0", "HMC-line-3", "HMC-curve-0", "HMC-curve-1"])
def test_integrated_corrections_take_the_energy_decisions(gaussian, make, correction, n_points):
    x0 = gaussian.sample(500, 10, torch.Generator().manual_seed(0)).double()
    exact_kernel, integrated_kernel = make("energy", 0), make(correction, n_points)
    x_exact, info_exact = exact_kernel.run(gaussian, x0, 10, 15, torch.Generator().manual_seed(7))
    x_int, info_int = integrated_kernel.run(ScoreOnly(gaussian), x0, 10, 15, torch.Generator().manual_seed(7))
    assert 0.2 < info_exact.accept_rate < 0.99  # decisions are not trivial
    assert torch.equal(info_exact.accepted_per_sample, info_int.accepted_per_sample)
    assert torch.allclose(x_exact, x_int, atol=1e-10)


# --- 2. O(1/n²) trapezoid error on a non-linear conservative field ----------------------------------------------


def test_line_integral_error_decays_quadratically(gmm8):
    g = torch.Generator().manual_seed(3)
    t = 20
    x = 0.6 * torch.randn(200, 2, dtype=torch.float64, generator=g)
    x_new = x + 0.3 * torch.randn(200, 2, dtype=torch.float64, generator=g)
    exact = gmm8.log_prob(x_new, t) - gmm8.log_prob(x, t)
    start, end = gmm8.evaluate(x, t), gmm8.evaluate(x_new, t)
    errors = []
    for intervals in (4, 8, 16, 32):
        est, nfe = LineIntegral(intervals - 1).delta(gmm8, t, [x, x_new], [start, end])
        assert nfe == intervals - 1
        errors.append((est - exact).abs().mean().item())
    ratios = [errors[i + 1] / errors[i] for i in range(len(errors) - 1)]
    assert errors[0] > 1e-3  # the field is far from linear at this scale
    assert all(0.2 < r < 0.3 for r in ratios), (errors, ratios)  # halving h divides the error by ≈ 4


# --- 3. invariance of the target, and the drift of unadjusted kernels ------------------------------------------


INVARIANCE_T = 0


@pytest.fixture(scope="module")
def product_samples(gmm8, bar):
    g = torch.Generator().manual_seed(11)
    start = sample_box_product(gmm8, bar, 4000, INVARIANCE_T, g)
    reference = sample_box_product(gmm8, bar, 100_000, INVARIANCE_T, g)
    return start, reference


def moment_z_scores(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """z-scores of E[x], E[x²] and P(y > 0) against a large exact reference (chains are i.i.d. across rows)."""
    feats = lambda z: torch.cat([z, z**2, (z[:, 1:] > 0).to(z)], 1)  # noqa: E731
    fx, fr = feats(x.double()), feats(reference.double())
    se = fr.std(0) * math.sqrt(1 / len(x) + 1 / len(reference))
    return ((fx.mean(0) - fr.mean(0)) / se).abs()


def w2(x: torch.Tensor, y: torch.Tensor) -> float:
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x.double(), y.double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(cost[rows, cols].mean())


ADJUSTED = {
    "MALA-energy": lambda: MALA(0.002, "energy"),
    "MALA-line-3": lambda: MALA(0.002, "line", 3),
    "HMC-energy": lambda: HMC(0.04, 3, 0.5, correction="energy"),
    "HMC-line-3": lambda: HMC(0.04, 3, 0.5, correction="line", n_points=3),
    "HMC-curve-1": lambda: HMC(0.04, 3, 0.5, correction="curve", n_points=1),
}


@pytest.mark.parametrize("name", list(ADJUSTED))
def test_adjusted_kernels_leave_the_product_invariant(product, product_samples, name):
    start, reference = product_samples
    kernel = ADJUSTED[name]()
    target = product if kernel.needs_log_prob else ScoreOnly(product)
    x, info = kernel.run(target, start, INVARIANCE_T, 20, torch.Generator().manual_seed(5))
    assert 0.3 < info.accept_rate < 0.99
    z = moment_z_scores(x, reference)
    assert z.max() < 4.5, z  # tolerance: |z| < 4.5 on 5 moments
    floor = w2(reference[:2000], reference[2000:4000])
    assert w2(x[:2000], reference[:2000]) < 1.5 * floor


# Large but stable steps: the box edge's curvature 1/σ_0² ≈ 1600 makes ULA diverge from ε ≈ 0.00125 on.
@pytest.mark.parametrize("kernel", [ULA(0.001), UHMC(0.045, 3, 0.0)], ids=["ULA", "UHMC"])
def test_unadjusted_kernels_with_a_large_step_drift(product, product_samples, kernel):
    start, reference = product_samples
    x, info = kernel.run(product, start, INVARIANCE_T, 20, torch.Generator().manual_seed(5))
    assert info.accept_rate == 1.0 and not info.adjusted
    assert torch.isfinite(x).all()
    assert moment_z_scores(x, reference).max() > 10
    assert x[:, 0].var() > 1.3 * reference[:, 0].var()  # the chains spread beyond the target


# --- 4. the closed form of HMC-curve's acceptance ---------------------------------------------------------------


class RecordingRandom(TorchRandom):
    def __init__(self, generator):
        super().__init__(generator)
        self.normals = []

    def normal(self, like):
        z = super().normal(like)
        self.normals.append(z)
        return z


def test_hmc_curve_log_ratio_closed_form(product):
    """log α = −(ε²/8)(‖g(x_L)‖²_{M⁻¹} − ‖g(x_0)‖²_{M⁻¹}) for any field (docs/algorithms.md §5)."""
    eps, n_leapfrog, damping = 0.05, 4, 0.3
    mass = torch.tensor([0.5, 2.0], dtype=torch.float64)
    kernel = HMC(eps, n_leapfrog, damping, mass=mass, correction="curve")
    target = ScoreOnly(product)
    x = 0.5 * torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rng = RecordingRandom(torch.Generator().manual_seed(3))
    state, _ = kernel.init(target, x, 5, generator=rng)
    _, info = kernel.step(target, state, rng)
    # an independent leapfrog from the recorded refresh noise
    v = damping * state.momentum + math.sqrt(1 - damping**2) * mass.sqrt() * rng.normals[-1]
    x_l = x
    for _ in range(n_leapfrog):
        v = v + 0.5 * eps * product.score(x_l, 5)
        x_l = x_l + eps * v / mass
        v = v + 0.5 * eps * product.score(x_l, 5)
    g0, g_l = product.score(x, 5), product.score(x_l, 5)
    closed = -(eps**2 / 8) * (dot(g_l, g_l / mass) - dot(g0, g0 / mass))
    assert closed.abs().max() > 1e-2  # not trivially zero on this non-Gaussian target
    assert torch.allclose(info.log_ratio, closed, atol=1e-9)


# --- 5. NFE accounting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel,per_step,hide", [
    (HMC(0.03, 3, 0.5, correction="curve"), 3, True),
    (HMC(0.03, 3, 0.5, correction="curve", n_points=2), 3 + 3 * 2, True),
    (HMC(0.03, 3, 0.5, correction="line", n_points=2), 3 + 2, True),
    (MALA(0.001, "line", 0), 1, True),
    (MALA(0.001, "line", 3), 1 + 3, True),
    (MALA(0.001, "energy"), 1, False),
    (ULA(0.001), 1, False),
    (UHMC(0.03, 3, 0.5), 3, False),
], ids=["HMC-curve", "HMC-curve-2", "HMC-line-2", "MALA-line-0", "MALA-line-3", "MALA-energy", "ULA", "UHMC"])
def test_nfe_accounting(product, kernel, per_step, hide):
    target = Counting(product, hide_log_prob=hide)
    x = sample_box_product(product.parts[0], product.parts[1], 64, 0, torch.Generator().manual_seed(0))
    n_steps = 7
    _, info = kernel.run(target, x, 0, n_steps, torch.Generator().manual_seed(1))
    assert target.calls == 1 + n_steps * per_step  # the initial point, then per_step per step: nothing twice
    assert info.nfe == target.calls
    if isinstance(kernel, MALA) and kernel.needs_log_prob:
        assert target.log_prob_calls == target.calls  # one energy-and-gradient per step


# --- per-sample decisions -------------------------------------------------------------------------------------


class NaNAbove(Target):
    """A Gaussian whose log-density is NaN where x₀ > 0.5 (a broken model region)."""

    has_log_prob = True

    def __init__(self, inner: Target) -> None:
        self.inner = inner

    def evaluate(self, x, t, with_log_prob=False):
        ev = self.inner.evaluate(x, t, with_log_prob)
        if ev.log_prob is not None:
            ev.log_prob = torch.where(x[:, 0] > 0.5, torch.nan, ev.log_prob)
        return ev


def test_accept_is_per_sample_and_nan_rejects(gaussian):
    target = NaNAbove(gaussian)
    x = torch.zeros(4000, 2, dtype=torch.float64)
    x[:2000, 0] = 0.4  # these rows propose across the NaN boundary half of the time
    kernel = MALA(0.02, "energy")
    x_new, info = kernel.run(target, x, 10, 1, torch.Generator().manual_seed(0))
    assert not (x_new[:, 0] > 0.5).any()  # no chain ever moved into the NaN region
    assert info.n_nonfinite > 0
    rates = info.accepted_per_sample
    assert 0 < rates.mean() < 1 and rates[:2000].mean() < rates[2000:].mean()


def test_per_sample_random_does_not_depend_on_the_batch(product):
    x = 0.3 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    kernel = HMC(0.03, 3, 0.5, correction="curve")
    full, _ = kernel.run(product, x, 3, 5, PerSampleRandom(42, torch.arange(8)))
    part, _ = kernel.run(product, x[5:], 3, 5, PerSampleRandom(42, torch.arange(5, 8)))
    assert torch.allclose(full[5:], part, atol=1e-6)
    other_seed, _ = kernel.run(product, x, 3, 5, PerSampleRandom(43, torch.arange(8)))
    assert not torch.allclose(full, other_seed)


def test_per_sample_random_is_standard_normal_and_uniform():
    rng = PerSampleRandom(0, torch.arange(20000))
    z = rng.normal(torch.empty(20000, 3))
    u = rng.uniform(torch.empty(20000, 1))
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert abs((z[:, 0] * z[:, 1]).mean().item()) < 0.02  # elements are independent
    assert abs(u.mean().item() - 0.5) < 0.01 and 0 < u.min() and u.max() < 1


# --- 6. clear errors --------------------------------------------------------------------------------------------


def test_errors_name_the_parameter(gaussian):
    score_only = ScoreOnly(gaussian)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="correction='energy'.*score-parameterised"):
        MALA(0.01, "energy").run(score_only, x, 0, 1)
    with pytest.raises(ValueError, match="correction='energy'"):
        AnnealedSampler(NoiseSchedule.cosine(100), HMC(0.01, correction="energy"), 1).check_target(score_only)
    with pytest.raises(ValueError, match="step_size must be positive"):
        ULA(-0.1)
    with pytest.raises(ValueError, match="damping=1.5"):
        HMC(0.01, damping=1.5)
    with pytest.raises(ValueError, match="n_leapfrog=0"):
        UHMC(0.01, n_leapfrog=0)
    with pytest.raises(ValueError, match="n_points=-1"):
        MALA(0.01, "line", -1)
    with pytest.raises(ValueError, match="correction='curve'"):
        MALA(0.01, "curve")
    with pytest.raises(ValueError, match="correction='exact'"):
        HMC(0.01, correction="exact")
    with pytest.raises(ValueError, match="mass of shape"):
        HMC(0.01, mass=torch.ones(3)).run(gaussian, x, 0, 1)
    with pytest.raises(ValueError, match="momentum shape"):
        HMC(0.01).run(gaussian, x, 0, 1, momentum=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        MALA(0.01).run(gaussian, torch.zeros(4, 3), 0, 1)

    class WrongShape(Target):
        def evaluate(self, x, t, with_log_prob=False):
            return Evaluation(torch.zeros(x.shape[0], 1), torch.zeros(x.shape[0], 1), torch.zeros(x.shape[0]))

    with pytest.raises(ValueError, match="score returned shape"):
        ULA(0.01).run(WrongShape(), x, 0, 1)
    with pytest.raises(ValueError, match="step_size must be positive, got .* at level t=3"):
        ULA(lambda t: -1.0).run(gaussian, x, 3, 1)


# --- the annealed driver ----------------------------------------------------------------------------------------


KERNELS = {
    "ULA": lambda: ULA(0.001), "MALA": lambda: MALA(0.001), "UHMC": lambda: UHMC(0.03, 3, 0.5),
    "HMC": lambda: HMC(0.03, 3, 0.5, correction="curve"),
}


@pytest.mark.parametrize("reverse", [False, True])
def test_every_kernel_visits_the_same_levels(product, cosine100, reverse):
    plans = {name: AnnealedSampler(cosine100, make(), 10, reverse=reverse).mcmc_levels()
             for name, make in KERNELS.items()}
    expected = list(range(99, -1, -1)) if not reverse else list(range(98, -1, -1))
    assert all(levels == expected for levels in plans.values())


class LevelCounting(Target):
    has_log_prob = True

    def __init__(self, inner):
        self.inner, self.levels = inner, []

    def evaluate(self, x, t, with_log_prob=False):
        self.levels.append(t)
        return self.inner.evaluate(x, t, with_log_prob)


def test_annealed_calls_per_level(product):
    sched = NoiseSchedule.cosine(6)
    target = LevelCounting(Product(product.parts))
    sampler = AnnealedSampler(sched, MALA(1e-4, "energy"), n_steps=3, reverse=True)
    _, info = sampler.sample(target, (16, 2), torch.Generator().manual_seed(0))
    # reverse from 5 (1 evaluation), then at each level 4..0: init + 3 steps; the kernel's cached score at
    # level l serves the reverse step from l, so no further evaluation is needed.
    expected = [5] + [lvl for lvl in range(4, -1, -1) for _ in range(4)]
    assert target.levels == expected
    assert info.nfe == len(expected)
    assert sorted(info.levels["accept_rate"]) == [0, 1, 2, 3, 4]


def test_reverse_process_with_exact_score_recovers_the_data(cosine100):
    data = DiffusedGaussianMixture(torch.tensor([[1.0, -0.5]]), 0.2, cosine100)
    sampler = AnnealedSampler(cosine100, None, reverse=True, reverse_variance="posterior")
    x, info = sampler.sample(data, (4000, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert info.nfe == 100
    assert x.mean(0).tolist() == pytest.approx([1.0, -0.5], abs=0.02)
    assert x.std(0).tolist() == pytest.approx([0.2, 0.2], abs=0.02)


def test_annealed_per_sample_random_is_batch_invariant(product):
    sched = NoiseSchedule.cosine(8)
    sampler = AnnealedSampler(sched, HMC(0.03, 3, 0.5, correction="energy", carry_momentum=True), 2, reverse=False)
    full, _ = sampler.sample(product, (6, 2), PerSampleRandom(7, torch.arange(6)))
    part, _ = sampler.sample(product, (2, 2), PerSampleRandom(7, torch.arange(4, 6)))
    assert torch.allclose(full[4:], part, atol=1e-6)
