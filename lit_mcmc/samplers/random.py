"""Sources of randomness for samplers.

Kernels draw all their randomness through a :class:`RandomStream`: standard normals shaped like the state, and
one uniform per sample. A ``torch.Generator`` is wrapped as :class:`TorchRandom`. :class:`PerSampleRandom` is a
counter-based stream keyed by (base seed, global sample index, draw number, element): sample i's randomness does
not depend on which other samples share its batch, on the batch size, on the process that draws it, or on the
device, which is what makes distributed and resumed sampling reproduce an uninterrupted single-process run.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class RandomStream(Protocol):
    """What kernels draw from."""

    def normal(self, like: Tensor) -> Tensor:
        """Standard normal draws shaped like ``like`` (same dtype and device)."""
        ...

    def uniform(self, like: Tensor) -> Tensor:
        """One U(0, 1) draw per sample (row) of ``like``: shape [B]."""
        ...


class TorchRandom:
    """A RandomStream backed by one ``torch.Generator`` (on the same device as the tensors it draws for)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def normal(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)

    def uniform(self, like: Tensor) -> Tensor:
        return torch.rand(like.shape[0], generator=self.generator, dtype=like.dtype, device=like.device)


_MASK62 = (1 << 62) - 1


def _mix(z: Tensor) -> Tensor:
    """A bijective 62-bit integer hash (splitmix-style), kept non-negative so that int64 shifts are logical."""
    z = z & _MASK62
    z = ((z ^ (z >> 31)) * 0x2545F4914F6CDD1D) & _MASK62
    z = ((z ^ (z >> 29)) * 0x1B873593D5A4F1E7) & _MASK62
    return z ^ (z >> 32)


class PerSampleRandom:
    """Counter-based per-sample randomness: draw k of sample i depends only on (seed, i, k).

    Args:
        seed: the base seed of the run.
        sample_ids: [B] global indices of the samples in this batch.
    """

    def __init__(self, seed: int, sample_ids: Tensor) -> None:
        self.seed = int(seed)
        self.sample_ids = torch.as_tensor(sample_ids, dtype=torch.long).flatten()
        self.counter = 0
        self._seed_key = int(_mix(torch.tensor(self.seed)))
        self._keys: dict[torch.device, Tensor] = {}  # per device: the ids' keys, copied there once, not per draw

    def _sample_keys(self, device: torch.device) -> Tensor:
        if device not in self._keys:
            self._keys[device] = _mix(self.sample_ids.to(device)[:, None] + self._seed_key)
        return self._keys[device]

    def _bits(self, n_per_sample: int, device: torch.device) -> Tensor:
        """[B, n] hashed 62-bit integers for the next draw, then advance the draw counter."""
        elems = torch.arange(n_per_sample, device=device)[None, :]
        key = _mix(self._sample_keys(device) + self.counter)
        self.counter += 1
        return _mix(key + _mix(elems + 0x5851F42D4C957F2D))

    def _uniform_open(self, bits: Tensor) -> Tensor:
        """Map to (0, 1) in float64 with 52 random bits."""
        return ((bits >> 10).double() + 0.5) / float(1 << 52)

    def _check(self, like: Tensor) -> None:
        if like.shape[0] != self.sample_ids.numel():
            raise ValueError(f"batch of {like.shape[0]} samples but {self.sample_ids.numel()} sample_ids")

    def normal(self, like: Tensor) -> Tensor:
        self._check(like)
        n = math.prod(like.shape[1:])
        bits = self._bits(2 * n, like.device)
        u1, u2 = self._uniform_open(bits[:, :n]), self._uniform_open(bits[:, n:])
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)  # Box-Muller
        return z.to(like.dtype).view(like.shape)

    def uniform(self, like: Tensor) -> Tensor:
        self._check(like)
        return self._uniform_open(self._bits(1, like.device)[:, 0]).to(like.dtype)


def as_random_stream(generator: torch.Generator | RandomStream | None) -> RandomStream:
    """Accept a torch.Generator, a RandomStream, or None (torch's global generator)."""
    if isinstance(generator, RandomStream):
        return generator
    if generator is None or isinstance(generator, torch.Generator):
        return TorchRandom(generator)
    raise TypeError(f"generator must be a torch.Generator or a RandomStream, got {type(generator).__name__}")
