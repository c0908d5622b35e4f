"""Local image datasets as a torch Dataset (images in [-1, 1]) and their LightningDataModule; the file readers are
in :mod:`lit_mcmc.data.image_files`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lit_mcmc.assets import shared_path
from lit_mcmc.data.image_files import (
    CIFAR100_CLASSES,
    DATASETS,
    FIXED_CLASSES,
    FIXED_SHAPES,
    LABEL_KINDS,
    SOURCES,
    SPLITS,
    check_choice,
    check_subset,
    folder_groups,
    load_arrays,
)


class ImageDataset(Dataset):
    """Images in [-1, 1] as float [C, H, W] (x / 127.5 - 1) with int64 labels, optionally flipped at random.

    ``images`` is uint8 [N, H, W, C]; ``hflip`` flips each image left-right with probability 1/2 (use it for
    training only); ``subset`` keeps the first N images.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, hflip: bool = False, subset: int | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 array [N, H, W, C], got {images.dtype} {images.shape}.")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}.")
        check_subset("subset", subset, len(images))
        images, labels = images[:subset], labels[:subset]
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 127.5 - 1.0
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


def _default_root(dataset: str) -> Path:
    defaults = {"cifar10": shared_path("data", "cifar-10-batches-py"), "mnist": shared_path("data", "mnist")}
    if dataset not in defaults:
        raise ValueError(
            f"data.root is required for data.dataset={dataset!r}: there is no shared copy of it here. Set "
            f"`data.root` to a folder holding {SOURCES[dataset]}."
        )
    return defaults[dataset]


def load_images(dataset: str, root: str | None = None, split: str = "test", subset: int | None = None,
                label_kind: str = "fine") -> ImageDataset:
    """One split of a local dataset as an :class:`ImageDataset` (no flips), e.g. the real images of an FID callback.

    In YAML: ``real_data: {class_path: lit_mcmc.data.images.load_images, init_args: {dataset: mnist}}``.
    ``root=None`` uses the shared copy (cifar10, mnist); ``subset`` keeps the first N images.
    """
    check_choice("dataset", dataset, DATASETS)
    images, labels = load_arrays(dataset, Path(root) if root is not None else _default_root(dataset), split,
                                 label_kind)
    return ImageDataset(images, labels, subset=subset)


class ImageDataModule(LightningDataModule):
    """Train/validation loaders over a local image dataset (CIFAR-10, CIFAR-100, MNIST or an image folder).

    ``root=None`` uses the shared copy for cifar10 and mnist. ``image_shape`` (C, H, W) and ``n_classes`` are
    known before ``setup`` (a folder's image shape is read from its training images on first use).
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        hflip: bool = True,
        train_split: str = "train",
        val_split: str = "test",
        label_kind: str = "fine",
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_choice("data.dataset", dataset, DATASETS)
        check_choice("data.train_split", train_split, SPLITS)
        check_choice("data.val_split", val_split, SPLITS)
        check_choice("data.label_kind", label_kind, LABEL_KINDS)
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be at least 1.")
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be 0 (load in the main process) or more.")
        check_subset("data.train_subset", train_subset)
        check_subset("data.val_subset", val_subset)
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = Path(root) if root is not None else _default_root(dataset)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hflip = hflip
        self.train_split = train_split
        self.val_split = val_split
        self.label_kind = label_kind
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.seed = seed
        self.train_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        if self.dataset in FIXED_SHAPES:
            return FIXED_SHAPES[self.dataset]
        height, width, channels = self._load(self.train_split)[0].shape[1:]
        return channels, height, width

    @property
    def n_classes(self) -> int:
        """Number of classes (CIFAR-100: 100 fine or 20 coarse; a folder: its class sub-folders, or 1)."""
        if self.dataset == "cifar100":
            return CIFAR100_CLASSES[self.label_kind]
        if self.dataset in FIXED_CLASSES:
            return FIXED_CLASSES[self.dataset]
        return len(folder_groups(self.root, self.train_split))

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._arrays:
            self._arrays[split] = load_arrays(self.dataset, self.root, split, self.label_kind)
        return self._arrays[split]

    def _dataset(self, split: str, key: str, subset: int | None, hflip: bool) -> ImageDataset:
        images, labels = self._load(split)
        check_subset(key, subset, len(images))
        return ImageDataset(images, labels, hflip=hflip, subset=subset)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self._dataset(self.train_split, "data.train_subset", self.train_subset, self.hflip)
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._dataset(self.val_split, "data.val_subset", self.val_subset, False)

    def _loader(self, dataset: ImageDataset | None, stage: str, **kwargs: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) on the ImageDataModule before asking for its loaders.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_dataset, "fit", shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "validate", shuffle=False)
