"""Sample indices for distributed sampling: every global index 0..N−1 exactly once, resumable.

The index set is cut into contiguous blocks of ``batch_size`` and block b goes to rank b mod world_size: no
padding and no duplicates for any N and world size (a rank may get no block at all). Sample shards already on
disk (written by ``callbacks.sample_writer.SampleWriter`` into ``output_dir``) are skipped, so rerunning a
preempted job only samples what is missing; unreadable shards (cut short by a crash) count as missing.
Randomness is keyed by the global index, so how the indices are split does not change any sample.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lit_mcmc.data.shards import read_shard, shard_paths


def indices_on_disk(output_dir: str | Path | None) -> np.ndarray:
    """Global indices already sampled and written to ``output_dir`` (in readable shards)."""
    if output_dir is None:
        return np.zeros(0, dtype=np.int64)
    shards = [read_shard(p, ["indices"]) for p in shard_paths(output_dir)]
    found = [shard["indices"] for shard in shards if shard is not None]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


class IndexBatches(IterableDataset):
    """This rank's blocks of global indices, each block one batch (a LongTensor).

    It has no ``__len__`` on purpose: Lightning skips the whole predict loop, hooks included, on a rank whose
    dataloader has length 0 (and with DDP refuses it outright), so a rank without blocks would never reach the
    writer's end-of-epoch barrier. Without a length every rank runs the hooks, with zero batches if need be.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        blocks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        self.blocks = blocks[rank::world_size]

    def __iter__(self):  # type: ignore[override]
        for block in self.blocks:
            yield torch.from_numpy(block.copy())


class SampleIndexDataModule(L.LightningDataModule):
    """Global sample indices 0..n_samples−1 for ``predict``, split across ranks and resumable.

    Args:
        n_samples: how many samples to draw in total.
        batch_size: samples per ``predict_step``.
        output_dir: where the sample writer puts its shards (indices already there are skipped); null disables
            resuming. The CLI sets it to the run directory.
    """

    def __init__(self, n_samples: int = 2000, batch_size: int = 2000, output_dir: str | None = None) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"data.n_samples={n_samples} must be a positive integer")
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be a positive integer")
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.output_dir = output_dir
        self._remaining: np.ndarray | None = None

    def remaining_indices(self) -> np.ndarray:
        """The indices 0..n_samples−1 that have no shard in ``output_dir`` yet."""
        done = indices_on_disk(self.output_dir)
        return np.setdiff1d(np.arange(self.n_samples, dtype=np.int64), done, assume_unique=True)

    def setup(self, stage: str) -> None:
        # Lightning ends the setup hooks with a barrier, so every rank reads the disk here before any rank writes
        # a shard: all ranks then cut the same remaining indices into the same blocks.
        if stage == "predict":
            self._remaining = self.remaining_indices()

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        remaining = self._remaining if self._remaining is not None else self.remaining_indices()
        return DataLoader(IndexBatches(remaining, self.batch_size, rank, world), batch_size=None)


def as_index_tensor(batch: Tensor | dict) -> Tensor:
    """The global indices of a predict batch (a LongTensor, or a dict with key "index")."""
    indices = batch["index"] if isinstance(batch, dict) else batch
    return torch.as_tensor(indices, dtype=torch.long)
