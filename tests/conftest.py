"""Shared fixtures: the paper's 2D analytic product target (8-mode GMM x bar) on the cosine T=100 schedule."""

from __future__ import annotations

import math
import os

import pytest
import torch

from lit_mcmc.compose import Product
from lit_mcmc.diffusion import NoiseSchedule
from lit_mcmc.targets import DiffusedGaussianMixture, DiffusedUniformBox

torch.set_num_threads(1)  # tiny tensors: threads only add contention on the shared 2-core machine


@pytest.fixture(scope="session")
def cosine100() -> NoiseSchedule:
    return NoiseSchedule.cosine(100)


@pytest.fixture(scope="session")
def gmm8(cosine100: NoiseSchedule) -> DiffusedGaussianMixture:
    k = torch.arange(8)
    means = 0.5 * torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1)
    return DiffusedGaussianMixture(means, 0.03, cosine100)


@pytest.fixture(scope="session")
def bar(cosine100: NoiseSchedule) -> DiffusedUniformBox:
    return DiffusedUniformBox([-0.2, -1.0], [0.2, 1.0], cosine100)


@pytest.fixture(scope="session")
def product(gmm8: DiffusedGaussianMixture, bar: DiffusedUniformBox) -> Product:
    return Product([gmm8, bar])


@pytest.fixture
def restore_environ():
    """In-process CLI runs set PL_GLOBAL_SEED (tests set SLURM_*): later tests and subprocesses must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def score_checkpoints(tmp_path_factory):
    """The two 2D score models, tiny, trained by `lit-mcmc fit` (<root>/<name>/checkpoints/last.ckpt): a
    checkpoint_root for the configs/toy2d/sample_score_* configs."""
    from tests.e2e.test_cli import lit_mcmc, tiny_fit_args

    root = tmp_path_factory.mktemp("train")
    for name in ("gmm_score", "bar_score"):
        result = lit_mcmc(*tiny_fit_args(name, root))
        assert result.returncode == 0, result.stderr[-3000:]
    return root
