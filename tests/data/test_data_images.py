"""Image readers (CIFAR-10/100 pickles, MNIST idx, image folders), ImageDataset and ImageDataModule."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_mcmc.assets import shared_path
from lit_mcmc.data.image_files import UnsafePickleError, load_arrays
from lit_mcmc.data.images import ImageDataModule, ImageDataset

# class counts of the complete MNIST t10k split (the canonical file)
MNIST_T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def cifar10_root() -> Path:
    root = shared_path("data", "cifar-10-batches-py")
    if not (root / "test_batch").is_file():
        pytest.skip(f"shared CIFAR-10 subset not found at {root} (see ASSETS.md; set LIT_MCMC_SHARED)")
    return root


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    root = shared_path("data", "mnist")
    if not (root / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST t10k files not found at {root} (see ASSETS.md; set LIT_MCMC_SHARED)")
    return root


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> the original N x 3072 channel-major rows."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(f">I{array.ndim}I", (0x08 << 8) | array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


# ---- CIFAR-10 (shared subset) ----


def test_cifar10_test_split_shapes_and_labels(cifar10_root: Path) -> None:
    images, labels = load_arrays("cifar10", cifar10_root, "test")
    assert images.shape == (761, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (761,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))


def test_cifar10_train_split_concatenates_five_batches(cifar10_root: Path) -> None:
    images, labels = load_arrays("cifar10", cifar10_root, "train")
    assert images.shape == (3805, 32, 32, 3) and labels.shape == (3805,)
    assert set(labels.tolist()) == set(range(10))


def test_cifar10_pixel_layout_matches_the_channel_major_rows(cifar10_root: Path) -> None:
    images, labels = load_arrays("cifar10", cifar10_root, "test")
    with (cifar10_root / "test_batch").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    row = raw["data"][5]
    # pixel (row r, column c, channel ch) sits at ch * 1024 + r * 32 + c
    for r, c, ch in [(0, 0, 0), (3, 17, 1), (31, 30, 2)]:
        assert images[5, r, c, ch] == row[ch * 1024 + r * 32 + c]
    assert labels.tolist() == list(raw["labels"])


# ---- CIFAR-100 (generated in the original layout) ----


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    truth = {}
    for split, n in [("train", 5), ("test", 3)]:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, size=n), rng.integers(0, 20, size=n)
        truth[split] = {"images": images, "fine": fine, "coarse": coarse}
        batch = {"data": _cifar_rows(images), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}
        if split == "test":  # the other key style: bytes keys, as some re-pickled copies have
            batch = {k.encode(): v for k, v in batch.items()}
        with (tmp_path / split).open("wb") as f:
            pickle.dump(batch, f)
    with (tmp_path / "meta").open("wb") as f:
        pickle.dump(
            {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f
        )
    return tmp_path, truth


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("label_kind", ["fine", "coarse"])
def test_cifar100_reads_back_exactly(cifar100_dir, split: str, label_kind: str) -> None:
    root, truth = cifar100_dir
    images, labels = load_arrays("cifar100", root, split, label_kind=label_kind)
    np.testing.assert_array_equal(images, truth[split]["images"])
    np.testing.assert_array_equal(labels, truth[split][label_kind])
    assert labels.dtype == np.int64


def test_cifar100_datamodule_class_count_follows_label_kind(cifar100_dir) -> None:
    root, _ = cifar100_dir
    assert ImageDataModule("cifar100", root=str(root), label_kind="fine").n_classes == 100
    assert ImageDataModule("cifar100", root=str(root), label_kind="coarse").n_classes == 20


# ---- CIFAR pickles: the restricted unpickler ----


class _Planted:
    """A pickle payload that would create ``marker`` when loaded by a plain pickle.load."""

    def __init__(self, call: str, marker: Path) -> None:
        self.call, self.marker = call, marker

    def __reduce__(self):
        if self.call == "os.system":
            return os.system, (f"touch {self.marker}",)
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)  # builtins.eval


def _write_cifar10_test_batch(root: Path, batch: object, protocol: int) -> None:
    with (root / "test_batch").open("wb") as f:
        pickle.dump(batch, f, protocol=protocol)


@pytest.mark.parametrize("call", ["os.system", "builtins.eval"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickle_with_a_planted_global_is_refused_without_running_it(
    tmp_path: Path, call: str, protocol: int
) -> None:
    marker = tmp_path / "marker"
    images = np.zeros((2, 32, 32, 3), np.uint8)
    batch = {"data": _cifar_rows(images), "labels": [0, 1], "batch_label": _Planted(call, marker)}
    _write_cifar10_test_batch(tmp_path, batch, protocol)
    with pytest.raises(UnsafePickleError) as error:
        load_arrays("cifar10", tmp_path, "test")
    message = str(error.value)
    # os.system pickles as posix.system; protocol 2 writes builtins under its Python-2 name __builtin__
    forbidden = r"posix\.system" if call == "os.system" else r"(builtins|__builtin__)\.eval"
    assert re.search(forbidden, message)
    for expected in [str(tmp_path / "test_batch"), "not a CIFAR batch", "tampered"]:
        assert expected in message
    assert not marker.exists()
    assert isinstance(error.value, ValueError) and isinstance(error.value, pickle.UnpicklingError)
    # the payload is live: a plain pickle.load of the same file would have created the marker
    with (tmp_path / "test_batch").open("rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


def test_cifar_pickle_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    # protocol-0 text: GLOBAL _codecs.encode applied to ("x", "rot13"), as the only value of a dict
    payload = b"(dp0\nVk\np1\nc_codecs\nencode\np2\n(Vx\nVrot13\ntp3\nRp4\ns."
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"latin-1, not 'rot13'"):
        load_arrays("cifar10", tmp_path, "test")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_cifar_layout_written_with_numpy_arrays_loads(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3])
    batch = {
        "batch_label": "testing batch 1 of 1",
        "labels": list(labels.astype(np.int64)),  # numpy scalars, as a re-pickled copy may hold
        "data": _cifar_rows(images),
        "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
    }
    _write_cifar10_test_batch(tmp_path, batch, protocol)
    read_images, read_labels = load_arrays("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(read_images, images)
    assert read_labels.tolist() == labels.tolist() and read_labels.dtype == np.int64


def test_cifar_pickle_written_by_numpy_1_loads(tmp_path: Path) -> None:
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint64).astype(np.uint8).reshape(2, 32, 32, 3)
    payload = pickle.dumps({"data": _cifar_rows(images), "labels": [1, 2]}, protocol=2)
    # numpy 1 names the module numpy.core.multiarray, as the original CIFAR files do; GLOBAL is newline-ended text
    old_payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old_payload != payload
    (tmp_path / "test_batch").write_bytes(old_payload)
    read_images, read_labels = load_arrays("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(read_images, images)
    assert read_labels.tolist() == [1, 2]


def test_cifar_pickle_that_is_not_a_dict_is_named(tmp_path: Path) -> None:
    _write_cifar10_test_batch(tmp_path, [np.zeros(3, np.uint8)], 2)
    with pytest.raises(ValueError, match=r"test_batch holds a pickled list, not the dict of a CIFAR batch"):
        load_arrays("cifar10", tmp_path, "test")


# ---- MNIST ----


def test_mnist_t10k_from_shared_gz(mnist_root: Path) -> None:
    images, labels = load_arrays("mnist", mnist_root, "test")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels[0] == 7 and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == MNIST_T10K_COUNTS
    assert images[:, 0, 0, 0].max() == 0 and images.max() == 255  # black corners, full-range strokes


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    read_images, read_labels = load_arrays("mnist", tmp_path, "train")
    np.testing.assert_array_equal(read_images, images[..., None])
    assert read_labels.tolist() == [3, 1, 4, 1] and read_labels.dtype == np.int64


def test_mnist_bad_magic_number_is_named(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), False)
    # a labels file holding a 2-d array has magic 0x00000802 instead of 0x00000801
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2, 1), np.uint8), False)
    with pytest.raises(ValueError, match=r"expected magic number 0x00000801, found 0x00000802"):
        load_arrays("mnist", tmp_path, "test")


def test_mnist_missing_train_split_suggests_test(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8), True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(1, np.uint8), True)
    with pytest.raises(FileNotFoundError) as error:
        load_arrays("mnist", tmp_path, "train")
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "data.root" in message
    assert "data.train_split: test" in message


# ---- image folders ----


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_two_classes_sorted_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pictures = {name: rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8) for name in ["c1", "c2", "a1"]}
    _save_png(tmp_path / "zebra" / "1.png", pictures["c1"])
    _save_png(tmp_path / "zebra" / "2.png", pictures["c2"])
    _save_png(tmp_path / "ant" / "1.png", pictures["a1"])
    images, labels = load_arrays("folder", tmp_path, "train")
    assert images.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(images, np.stack([pictures["a1"], pictures["c1"], pictures["c2"]]))
    assert labels.tolist() == [0, 1, 1]  # "ant" < "zebra"
    module = ImageDataModule("folder", root=str(tmp_path))
    assert module.n_classes == 2 and module.image_shape == (3, 6, 5)


def test_flat_grey_folder_has_label_zero_and_one_channel(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _save_png(tmp_path / "a.png", grey)
    _save_png(tmp_path / "b.png", 255 - grey)
    images, labels = load_arrays("folder", tmp_path, "test")
    np.testing.assert_array_equal(images[..., 0], np.stack([grey, 255 - grey]))
    assert images.shape == (2, 3, 4, 1) and labels.tolist() == [0, 0]


def test_folder_with_mixed_sizes_names_the_odd_file(tmp_path: Path) -> None:
    _save_png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    _save_png(tmp_path / "a" / "2.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2\.png is 4x5 .* resize"):
        load_arrays("folder", tmp_path, "train")


# ---- ImageDataset ----


def test_dataset_scales_to_minus_one_one_in_chw() -> None:
    images = np.zeros((1, 2, 3, 3), np.uint8)
    images[0, 0, 0] = [0, 255, 51]
    dataset = ImageDataset(images, np.array([4]))
    image, label = dataset[0]
    assert image.shape == (3, 2, 3) and image.dtype == torch.float32
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    assert label.item() == 4 and label.dtype == torch.int64


def test_dataset_hflip_returns_original_or_mirror_with_both_seen() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(1, 2, 4, 3)  # asymmetric left-right
    original = torch.from_numpy(images[0]).permute(2, 0, 1).float() / 127.5 - 1
    mirrored = original.flip(-1)
    torch.manual_seed(0)
    draws = [ImageDataset(images, np.array([0]), hflip=True)[0][0] for _ in range(40)]
    n_flipped = sum(torch.equal(d, mirrored) for d in draws)
    assert all(torch.equal(d, original) or torch.equal(d, mirrored) for d in draws)
    assert 0 < n_flipped < 40
    assert all(torch.equal(ImageDataset(images, np.array([0]))[0][0], original) for _ in range(10))


def test_dataset_subset_keeps_the_first_images() -> None:
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    dataset = ImageDataset(images, np.arange(5), subset=2)
    assert len(dataset) == 2 and [dataset[i][1].item() for i in range(2)] == [0, 1]
    with pytest.raises(ValueError, match=r"subset=9 exceeds the 5 images"):
        ImageDataset(images, np.arange(5), subset=9)


# ---- ImageDataModule ----


def test_datamodule_batches_on_cifar10(cifar10_root: Path) -> None:
    module = ImageDataModule(batch_size=8, train_subset=20, val_subset=10, hflip=False)
    assert module.image_shape == (3, 32, 32) and module.n_classes == 10  # known before setup
    module.setup("fit")
    images, labels = next(iter(module.val_dataloader()))
    raw_images, raw_labels = load_arrays("cifar10", cifar10_root, "test")
    torch.testing.assert_close(images, torch.from_numpy(raw_images[:8]).permute(0, 3, 1, 2) / 127.5 - 1)
    assert labels.tolist() == raw_labels[:8].tolist()
    train_batches = list(module.train_dataloader())
    assert [len(b[1]) for b in train_batches] == [8, 8, 4]
    for batch_images, batch_labels in train_batches:
        assert batch_images.shape[1:] == (3, 32, 32) and batch_labels.dtype == torch.int64
        assert batch_images.min() >= -1 and batch_images.max() <= 1


def test_datamodule_shuffle_is_seeded(cifar10_root: Path) -> None:
    def first_labels(seed: int) -> list[int]:
        module = ImageDataModule(root=str(cifar10_root), batch_size=16, train_subset=64, hflip=False, seed=seed)
        module.setup("fit")
        return next(iter(module.train_dataloader()))[1].tolist()

    raw_labels = load_arrays("cifar10", cifar10_root, "train")[1][:64].tolist()
    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != raw_labels[:16]  # shuffled, not in file order
    assert first_labels(3) != first_labels(4)


def test_datamodule_mnist_test_split_for_training(mnist_root: Path) -> None:
    module = ImageDataModule("mnist", batch_size=4, train_split="test", train_subset=4, val_subset=4)
    assert module.image_shape == (1, 28, 28)
    module.setup("fit")
    images, labels = next(iter(module.val_dataloader()))
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [7, 2, 1, 0]


def test_missing_root_names_config_key_and_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        load_arrays("cifar10", missing, "train")
    message = str(error.value)
    for expected in [str(missing), "data.root", "data_batch_1", "data_batch_5", "cs.toronto.edu/~kriz/cifar"]:
        assert expected in message
    module = ImageDataModule("cifar100", root=str(missing))
    with pytest.raises(FileNotFoundError, match=r"data\.root.*"):
        module.setup("fit")


def test_datamodule_rejects_bad_options_by_key() -> None:
    with pytest.raises(ValueError, match=r"data\.root is required for data\.dataset='cifar100'"):
        ImageDataModule("cifar100")
    with pytest.raises(ValueError, match=r"data\.dataset='svhn'.*'cifar10'"):
        ImageDataModule("svhn")
    with pytest.raises(ValueError, match=r"data\.val_split='valid'.*'train', 'test'"):
        ImageDataModule(val_split="valid")
    with pytest.raises(ValueError, match=r"data\.label_kind='medium'"):
        ImageDataModule(label_kind="medium")
    with pytest.raises(ValueError, match=r"data\.train_subset=0"):
        ImageDataModule(train_subset=0)


def test_loaders_before_setup_say_so() -> None:
    with pytest.raises(RuntimeError, match=r"call setup\('fit'\)"):
        ImageDataModule(root="unused").train_dataloader()
