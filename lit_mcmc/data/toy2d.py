"""2D toy distributions of the product-composition experiment (docs/algorithms.md §7) and their DataModule.

The two factors are an 8-mode Gaussian mixture on a circle of radius 0.5 and a uniform vertical bar; their
product keeps the two GMM modes at (0, ±0.5). The constants below are the single source of these numbers, so
analytic targets and the 2D metrics are built from exactly what the data is sampled from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

GMM_N_MODES = 8
GMM_RADIUS = 0.5
GMM_STD = 0.03
_ANGLES = 2 * math.pi * torch.arange(GMM_N_MODES, dtype=torch.float64) / GMM_N_MODES
#: Means of the equally weighted GMM modes, 0.5·(cos 2πk/8, sin 2πk/8), shape [8, 2].
GMM_MEANS: Tensor = (GMM_RADIUS * torch.stack([_ANGLES.cos(), _ANGLES.sin()], dim=1)).to(torch.float32)
#: Lower and upper corners of the uniform bar U([-0.2, 0.2] x [-1, 1]), shape [2] each.
BAR_LOW: Tensor = torch.tensor([-0.2, -1.0])
BAR_HIGH: Tensor = torch.tensor([0.2, 1.0])

# Rejection sampling of the product keeps P_GMM(bar) = 0.25 of the GMM draws; draw this many per wanted sample.
_PRODUCT_OVERSAMPLING = 5


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"n={n} must be a non-negative number of samples")


def sample_gmm(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact samples [n, 2] of the 8-mode GMM (equal weights, isotropic std ``GMM_STD``)."""
    _check_count(n)
    modes = torch.randint(GMM_N_MODES, (n,), generator=generator)
    return GMM_MEANS[modes] + GMM_STD * torch.randn(n, 2, generator=generator)


def sample_bar(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact samples [n, 2] of the uniform bar U([BAR_LOW, BAR_HIGH])."""
    _check_count(n)
    return BAR_LOW + (BAR_HIGH - BAR_LOW) * torch.rand(n, 2, generator=generator)


def inside_bar(x: Tensor) -> Tensor:
    """Boolean mask [N]: which points of ``x`` [N, 2] lie in the open bar (BAR_LOW, BAR_HIGH)."""
    return ((x > BAR_LOW) & (x < BAR_HIGH)).all(dim=1)


def sample_product(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact samples [n, 2] of the normalised product GMM x bar.

    The bar density is constant on its support, so the product is the GMM restricted to the bar: GMM samples
    are drawn and kept when they fall inside it (rejection sampling, acceptance 0.25).
    """
    _check_count(n)
    kept: list[Tensor] = []
    n_kept = 0
    while n_kept < n:
        draws = sample_gmm(_PRODUCT_OVERSAMPLING * (n - n_kept) + 16, generator)
        accepted = draws[inside_bar(draws)]
        kept.append(accepted)
        n_kept += len(accepted)
    return torch.cat(kept)[:n] if kept else torch.empty(0, 2)


def sample_mixture(n: int, weights: Sequence[float] = (0.5, 0.5), generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact samples [n, 2] of the mixture weights[0]·GMM + weights[1]·bar (weights are normalised)."""
    _check_count(n)
    if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights={tuple(weights)} must be two non-negative numbers (GMM, bar) with a positive sum")
    p_gmm = weights[0] / sum(weights)
    from_gmm = torch.rand(n, generator=generator) < p_gmm
    return torch.where(from_gmm[:, None], sample_gmm(n, generator), sample_bar(n, generator))


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "gmm": sample_gmm,
    "bar": sample_bar,
    "product": sample_product,
    "mixture": lambda n, generator: sample_mixture(n, generator=generator),
}
DISTRIBUTIONS: tuple[str, ...] = tuple(_SAMPLERS)


def _check_distribution(name: str, key: str) -> None:
    if name not in _SAMPLERS:
        raise ValueError(f"{key}={name!r} is not one of {list(DISTRIBUTIONS)}; set {key} to one of them")


def sample_distribution(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact samples [n, 2] of the toy distribution ``name`` ("gmm", "bar", "product" or "mixture")."""
    _check_distribution(name, "name")
    return _SAMPLERS[name](n, generator)


# Stream tags keep the training and validation seeds apart.
_TRAIN_STREAM = 0
_VAL_STREAM = 1


def seeded_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the integers of ``stream`` via numpy's SeedSequence.

    SeedSequence hashes its inputs, so nearby tuples (epoch 0 vs 1, rank 0 vs 1) give unrelated streams.
    """
    state = np.random.SeedSequence(seed, spawn_key=stream).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def global_rank() -> int:
    """This process's rank in ``torch.distributed`` when it is initialised, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class FreshSampleStream(IterableDataset):
    """An endless supply of fresh exact samples, served as ``steps_per_epoch`` full batches per pass.

    Each pass over the stream (one training epoch) draws from a generator seeded by
    (seed, epoch, rank, worker id): reproducible for a given seed, different on every DDP rank, epoch and
    DataLoader worker. ``epoch`` is the number of passes already started in this process; it advances at the
    start of each pass (``set_epoch`` overrides it). With DataLoader workers, each worker serves an
    interleaved share of the steps; worker copies do not report their pass count back, so use
    ``set_epoch`` or ``num_workers=0`` (sampling is cheap) to get new samples every epoch.
    """

    def __init__(self, distribution: str, batch_size: int, steps_per_epoch: int, seed: int, rank: int) -> None:
        _check_distribution(distribution, "distribution")
        self.distribution = distribution
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the samples of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Tensor]:
        epoch = self.epoch
        self.epoch += 1
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        generator = seeded_generator(self.seed, _TRAIN_STREAM, epoch, self.rank, worker_id)
        for _ in range(worker_id, self.steps_per_epoch, n_workers):
            yield sample_distribution(self.distribution, self.batch_size, generator)


class Toy2DDataModule(L.LightningDataModule):
    """Fresh exact samples of a 2D toy distribution for training; a fixed sample set for validation.

    Every training step gets a new batch [batch_size, 2] (a ``FreshSampleStream``; one epoch is
    ``steps_per_epoch`` steps). Validation uses ``val_batches`` batches that are the same every epoch (seeded
    from ``seed`` and the global rank, so DDP ranks validate on different points). Batches are plain tensors.
    The number of training epochs already started is saved in checkpoints, so a resumed run continues with
    new samples instead of replaying the first epochs.
    """

    def __init__(
        self,
        distribution: str = "gmm",
        batch_size: int = 2000,
        steps_per_epoch: int = 1000,
        val_batches: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_distribution(distribution, "data.distribution")
        for key, value in [
            ("batch_size", batch_size),
            ("steps_per_epoch", steps_per_epoch),
            ("val_batches", val_batches),
        ]:
            if value < 1:
                raise ValueError(f"data.{key}={value} must be a positive integer")
        if seed < 0:
            raise ValueError(f"data.seed={seed} must be a non-negative integer")
        self.save_hyperparameters()
        self.distribution = distribution
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.val_batches = val_batches
        self.seed = seed
        self._train_epochs_started = 0
        self._train_stream: FreshSampleStream | None = None

    def train_dataloader(self) -> DataLoader:
        # Built here, after DDP initialisation, so the stream knows its rank.
        self._train_stream = FreshSampleStream(
            self.distribution, self.batch_size, self.steps_per_epoch, self.seed, global_rank()
        )
        self._train_stream.set_epoch(self._train_epochs_started)
        return DataLoader(self._train_stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        generator = seeded_generator(self.seed, _VAL_STREAM, global_rank())
        batches = [sample_distribution(self.distribution, self.batch_size, generator) for _ in range(self.val_batches)]
        return DataLoader(batches, batch_size=None)

    def state_dict(self) -> dict[str, int]:
        epochs = self._train_stream.epoch if self._train_stream is not None else self._train_epochs_started
        return {"train_epochs_started": epochs}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._train_epochs_started = state_dict["train_epochs_started"]
        if self._train_stream is not None:
            self._train_stream.set_epoch(self._train_epochs_started)
