"""Residual MLP for 2D diffusion models (R3's ``ResnetDiffusionModel``; docs/algorithms.md §7)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_timesteps(t: Tensor, batch_size: int, n_steps: int) -> None:
    """Raise a clear error unless ``t`` is an integer tensor of shape [batch_size] with values in 0..n_steps-1.

    Networks index embedding tables with ``t``; an out-of-range index would otherwise fail with an opaque
    ``IndexError`` (or a device-side assert on CUDA).
    """
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(
            f"timesteps t must be an integer (long) tensor of 0-based indices, got dtype {t.dtype}; "
            "pass e.g. torch.full((B,), t, dtype=torch.long)"
        )
    if t.shape != (batch_size,):
        raise ValueError(
            f"timesteps t must have shape [B] = [{batch_size}] to match the batch of x, got {list(t.shape)}"
        )
    # The value check reads t on the host: on an accelerator that is a sync per network call on the sampling hot
    # path, and in a compiled network a graph break, so it runs eagerly on CPU only (an out-of-range index still
    # fails in the embedding lookup, with a device-side assert on CUDA).
    if t.numel() > 0 and t.device.type == "cpu" and not torch.compiler.is_compiling():
        t_min, t_max = int(t.min()), int(t.max())
        if t_min < 0 or t_max >= n_steps:
            raise ValueError(
                f"timesteps t must lie in [0, n_steps - 1] = [0, {n_steps - 1}] (n_steps={n_steps}), "
                f"got values in [{t_min}, {t_max}]; build the network with n_steps equal to the schedule's T"
            )


def _haiku_linear_init(layer: nn.Linear) -> None:
    # The reference is a Haiku model: weights ~ N(0, 1/fan_in) truncated at 2 std, zero bias.
    std = 1.0 / math.sqrt(layer.in_features)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResMLPBlock(nn.Module):
    """One residual block: h + Linear(SiLU(Linear(SiLU(Linear(SiLU(LN(h))) + Linear(emb))))).

    The last linear layer is zero-initialised, so the block is the identity at initialisation.
    """

    def __init__(self, hidden: int, widen: int, emb_dim: int) -> None:
        super().__init__()
        wide = hidden * widen
        self.norm = nn.LayerNorm(hidden)
        self.in_proj = nn.Linear(hidden, wide)
        self.emb_proj = nn.Linear(emb_dim, wide)
        self.mid = nn.Linear(wide, wide)
        self.out_proj = _zero_linear(wide, hidden)
        for layer in (self.in_proj, self.emb_proj, self.mid):
            _haiku_linear_init(layer)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        a = self.in_proj(self.act(self.norm(h))) + self.emb_proj(emb)
        a = self.mid(self.act(a))
        return h + self.out_proj(self.act(a))


class ResMLP(nn.Module):
    """Residual MLP ε-network ``net(x [B, dim], t [B] long) -> [B, dim]`` with a learned time embedding.

    Architecture of R3's 2D experiment (docs/algorithms.md §7): a learned (n_steps x emb_dim) embedding table,
    an input Linear(dim -> hidden), ``n_blocks`` residual blocks of width ``hidden * widen`` and an output
    Linear(hidden -> dim). With ``zero_init_last`` the output layer starts at zero, so the network outputs
    exactly 0 at initialisation (for an energy ‖f − x‖² this is a Gaussian-like start).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        widen: int = 2,
        n_blocks: int = 4,
        emb_dim: int = 32,
        n_steps: int = 100,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_steps = n_steps
        self.time_embedding = nn.Embedding(n_steps, emb_dim)
        # Haiku's Embed default: N(0, 1) truncated at 2 std.
        nn.init.trunc_normal_(self.time_embedding.weight, std=1.0, a=-2.0, b=2.0)
        self.in_proj = nn.Linear(dim, hidden)
        _haiku_linear_init(self.in_proj)
        self.blocks = nn.ModuleList(ResMLPBlock(hidden, widen, emb_dim) for _ in range(n_blocks))
        if zero_init_last:
            self.out_proj = _zero_linear(hidden, dim)
        else:
            self.out_proj = nn.Linear(hidden, dim)
            _haiku_linear_init(self.out_proj)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ResMLP expects x of shape [B, dim] = [B, {self.dim}], got {list(x.shape)}")
        check_timesteps(t, x.shape[0], self.n_steps)
        emb = self.time_embedding(t)
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(h)
