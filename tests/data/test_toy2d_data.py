import math

import lightning as L
import pytest
import torch

from lit_mcmc.data import toy2d
from lit_mcmc.data.toy2d import (
    BAR_HIGH,
    BAR_LOW,
    GMM_MEANS,
    GMM_STD,
    Toy2DDataModule,
    sample_bar,
    sample_distribution,
    sample_gmm,
    sample_mixture,
    sample_product,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _nearest_mode(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, GMM_MEANS).argmin(dim=1)


def test_paper_constants():
    assert GMM_MEANS.shape == (8, 2)
    assert torch.allclose(GMM_MEANS.norm(dim=1), torch.full((8,), 0.5))
    assert torch.allclose(GMM_MEANS[1], torch.tensor([0.5 / math.sqrt(2), 0.5 / math.sqrt(2)]))
    assert GMM_STD == 0.03
    assert BAR_LOW.tolist() == pytest.approx([-0.2, -1.0])
    assert BAR_HIGH.tolist() == pytest.approx([0.2, 1.0])


def test_gmm_samples_have_equal_mode_weights_and_std():
    x = sample_gmm(80_000, _gen())
    assert x.shape == (80_000, 2)
    modes = _nearest_mode(x)
    assert torch.allclose(torch.bincount(modes, minlength=8) / len(x), torch.full((8,), 1 / 8), atol=0.006)
    residual = x - GMM_MEANS[modes]
    assert residual.std(dim=0).tolist() == pytest.approx([GMM_STD, GMM_STD], rel=0.02)


def test_bar_samples_are_uniform_on_the_bar():
    x = sample_bar(50_000, _gen())
    assert ((x >= BAR_LOW) & (x <= BAR_HIGH)).all()
    # Var of U(a, b) is (b - a)^2 / 12.
    assert x.var(dim=0).tolist() == pytest.approx([0.4**2 / 12, 2.0**2 / 12], rel=0.03)
    assert x.mean(dim=0).tolist() == pytest.approx([0.0, 0.0], abs=0.01)


def test_product_samples_lie_in_the_bar_and_split_between_the_two_inner_modes():
    x = sample_product(20_000, _gen())
    assert x.shape == (20_000, 2)
    assert ((x > BAR_LOW) & (x < BAR_HIGH)).all()
    assert set(_nearest_mode(x).unique().tolist()) == {2, 6}  # the modes at (0, 0.5) and (0, -0.5)
    assert (x[:, 1] > 0).float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert (x[:, 1].abs() - 0.5).std().item() == pytest.approx(GMM_STD, rel=0.03)


def test_mixture_draws_from_both_components_with_the_given_weights():
    # |x| > 0.2 happens only for the 6 GMM modes off the bar: probability w_gmm * 6/8.
    for weights in [(0.5, 0.5), (1.0, 3.0)]:
        x = sample_mixture(40_000, weights, _gen())
        w_gmm = weights[0] / sum(weights)
        assert (x[:, 0].abs() > 0.2).float().mean().item() == pytest.approx(0.75 * w_gmm, abs=0.01)
    with pytest.raises(ValueError, match="weights"):
        sample_mixture(10, (0.5, -0.5))


def test_sampling_is_reproducible_with_a_generator():
    for name in toy2d.DISTRIBUTIONS:
        first, again = sample_distribution(name, 64, _gen(3)), sample_distribution(name, 64, _gen(3))
        assert first.shape == (64, 2)
        assert torch.equal(first, again)
        assert not torch.equal(first, sample_distribution(name, 64, _gen(4)))


def test_unknown_distribution_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"name='moons'.*'gmm', 'bar', 'product', 'mixture'"):
        sample_distribution("moons", 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "foo"}, r"data.distribution='foo' is not one of"),
        ({"batch_size": 0}, r"data.batch_size=0"),
        ({"steps_per_epoch": -1}, r"data.steps_per_epoch=-1"),
        ({"val_batches": 0}, r"data.val_batches=0"),
        ({"seed": -2}, r"data.seed=-2"),
    ],
)
def test_datamodule_rejects_bad_settings_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Toy2DDataModule(**kwargs)


def _epoch(dm: Toy2DDataModule) -> list[torch.Tensor]:
    return list(dm.train_dataloader())


def test_training_batches_are_fresh_every_step_and_epoch_and_reproducible():
    dm = Toy2DDataModule("product", batch_size=32, steps_per_epoch=4, seed=1)
    loader = dm.train_dataloader()
    assert len(loader) == 4
    first, second = list(loader), list(loader)
    assert len(first) == 4
    assert all(batch.shape == (32, 2) for batch in first)
    all_batches = first + second
    for i, a in enumerate(all_batches):
        assert all(not torch.equal(a, b) for b in all_batches[i + 1 :])
    replay = _epoch(Toy2DDataModule("product", batch_size=32, steps_per_epoch=4, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(first, replay, strict=True))
    other_seed = _epoch(Toy2DDataModule("product", batch_size=32, steps_per_epoch=4, seed=2))
    assert not torch.equal(first[0], other_seed[0])


def test_each_rank_gets_its_own_stream(monkeypatch):
    rank0 = _epoch(Toy2DDataModule(batch_size=16, steps_per_epoch=2))
    monkeypatch.setattr(toy2d, "global_rank", lambda: 1)
    rank1 = _epoch(Toy2DDataModule(batch_size=16, steps_per_epoch=2))
    assert not torch.equal(rank0[0], rank1[0])


def test_resumed_datamodule_continues_with_new_epochs():
    dm = Toy2DDataModule(batch_size=16, steps_per_epoch=2)
    loader = dm.train_dataloader()
    list(loader)
    second_epoch = list(loader)
    resumed = Toy2DDataModule(batch_size=16, steps_per_epoch=2)
    resumed.load_state_dict({"train_epochs_started": 1})
    assert torch.equal(_epoch(resumed)[0], second_epoch[0])
    assert dm.state_dict() == {"train_epochs_started": 2}


def test_validation_set_is_fixed():
    dm = Toy2DDataModule("bar", batch_size=8, steps_per_epoch=2, val_batches=3)
    first, again = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 3
    assert all(batch.shape == (8, 2) for batch in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])


class _BatchRecorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.train_batches: list[torch.Tensor] = []
        self.val_batches: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.train_batches.append(batch.clone())
        return ((batch - self.weight) ** 2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_batches.append(batch.clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_gets_fresh_training_batches_and_the_same_validation_batches():
    dm = Toy2DDataModule("gmm", batch_size=8, steps_per_epoch=3, val_batches=2)
    model = _BatchRecorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.train_batches) == 6
    assert all(batch.shape == (8, 2) for batch in model.train_batches)
    assert len({tuple(batch[0].tolist()) for batch in model.train_batches}) == 6
    assert len(model.val_batches) == 4
    assert all(torch.equal(a, b) for a, b in zip(model.val_batches[:2], model.val_batches[2:], strict=True))
