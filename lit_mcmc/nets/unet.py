"""DDPM UNet of Ho et al. (pytorch-ddpm layout) and its encoder as a time-conditioned classifier.

docs/algorithms.md §8. Images are square: ``image_size`` is both height and width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_mcmc.nets.mlp import check_timesteps

# Gain of the layers that close a residual branch or the output: near-zero so each block starts close to the
# identity and the network output starts close to 0 (see docs/algorithms.md §3 on initialisation).
_SMALL_GAIN = 1e-5


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in the paper for every width >= 64 that is a multiple of 32. Smaller widths get the largest
    # divisor leaving >= 2 channels per group: with one channel per group GroupNorm would cancel the time
    # embedding, which ResBlocks add as a per-channel shift.
    groups = max(g for g in range(1, 33) if channels % g == 0 and (g == 1 or channels // g >= 2))
    return nn.GroupNorm(groups, channels)


def _xavier(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, gain: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
    _xavier(conv, gain)
    return conv


def _conv1x1(in_ch: int, out_ch: int, gain: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 1)
    _xavier(conv, gain)
    return conv


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sinusoidal table (n_steps x dim) -> Linear -> Swish -> Linear, giving ``out_dim`` features."""

    def __init__(self, n_steps: int, dim: int, out_dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the sinusoidal time embedding needs an even width, got ch={dim}; use an even ch")
        self.n_steps = n_steps
        freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        angles = torch.arange(n_steps, dtype=torch.float32)[:, None] * freqs[None, :]
        # Interleaved sin/cos as in pytorch-ddpm; fixed, so a non-persistent buffer rather than a parameter.
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n_steps, dim)
        self.register_buffer("table", table, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        _xavier(self.mlp[0])
        _xavier(self.mlp[2])

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.table[t])


class SelfAttention(nn.Module):
    """Single-head self-attention over all H*W positions with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.ModuleList(_conv1x1(channels, channels) for _ in range(3))
        self.proj = _conv1x1(channels, channels, gain=_SMALL_GAIN)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        # [B, 1, HW, C]: one head; the default scale 1/sqrt(C) is the paper's.
        q, k, v = (conv(normed).flatten(2).transpose(1, 2).unsqueeze(1) for conv in self.qkv)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class ResBlock(nn.Module):
    """GN -> Swish -> conv3x3 (+ time projection) -> GN -> Swish -> Dropout -> conv3x3, plus a shortcut.

    ``temb_dim=None`` builds a block without time conditioning (a clean classifier's encoder).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float, attention: bool) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_group_norm(in_ch), nn.SiLU(), _conv3x3(in_ch, out_ch))
        self.temb_proj = None
        if temb_dim is not None:
            self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, out_ch))
            _xavier(self.temb_proj[1])
        self.block2 = nn.Sequential(
            _group_norm(out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            _conv3x3(out_ch, out_ch, gain=_SMALL_GAIN),
        )
        self.shortcut = _conv1x1(in_ch, out_ch) if in_ch != out_ch else nn.Identity()
        self.attention = SelfAttention(out_ch) if attention else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self.block1(x)
        if self.temb_proj is not None:
            h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h) + self.shortcut(x)
        return self.attention(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels, stride=2)

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level_resolutions(image_size: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int]) -> list[int]:
    """Spatial size of each encoder level, after checking ``image_size`` and ``attn_resolutions``."""
    if len(ch_mult) == 0:
        raise ValueError("ch_mult must name at least one level, e.g. ch_mult=(1, 2, 2, 2)")
    n_down = len(ch_mult) - 1
    if image_size <= 0 or image_size % 2**n_down:
        raise ValueError(
            f"image_size={image_size} must be divisible by 2**(len(ch_mult) - 1) = {2**n_down} "
            f"(ch_mult={tuple(ch_mult)} halves the size {n_down} times); change image_size or ch_mult"
        )
    resolutions = [image_size // 2**i for i in range(len(ch_mult))]
    unknown = sorted(set(attn_resolutions) - set(resolutions))
    if unknown:
        raise ValueError(
            f"attn_resolutions={tuple(attn_resolutions)} contains {unknown}, which never occur: with "
            f"image_size={image_size} and ch_mult={tuple(ch_mult)} the levels have resolutions {resolutions}"
        )
    return resolutions


class UNetEncoder(nn.Module):
    """Head conv, down path and middle blocks of the DDPM UNet, with an optional time embedding.

    ``forward(x, t)`` returns the bottleneck features [B, out_channels, S, S] (S = image_size /
    2**(len(ch_mult)-1)), the list of skip activations the decoder consumes (head first) and the time
    embedding [B, 4*ch] (None when not time-conditioned).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        n_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        image_size: int = 32,
        n_steps: int = 1000,
        time_conditioned: bool = True,
    ) -> None:
        super().__init__()
        resolutions = _level_resolutions(image_size, ch_mult, attn_resolutions)
        self.in_channels = in_channels
        self.image_size = image_size
        self.n_steps = n_steps
        self.temb_dim = 4 * ch if time_conditioned else None
        self.time_embedding = SinusoidalTimeEmbedding(n_steps, ch, 4 * ch) if time_conditioned else None

        self.head = _conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        self.skip_channels = [ch]
        now_ch = ch
        for level, mult in enumerate(ch_mult):
            attention = resolutions[level] in attn_resolutions
            for _ in range(n_res_blocks):
                self.down.append(ResBlock(now_ch, ch * mult, self.temb_dim, dropout, attention))
                now_ch = ch * mult
                self.skip_channels.append(now_ch)
            if level != len(ch_mult) - 1:
                self.down.append(Downsample(now_ch))
                self.skip_channels.append(now_ch)
        self.middle = nn.ModuleList(
            [
                ResBlock(now_ch, now_ch, self.temb_dim, dropout, attention=True),
                ResBlock(now_ch, now_ch, self.temb_dim, dropout, attention=False),
            ]
        )
        self.out_channels = now_ch
        self.out_size = resolutions[-1]

    def forward(self, x: Tensor, t: Tensor | None) -> tuple[Tensor, list[Tensor], Tensor | None]:
        expected = [self.in_channels, self.image_size, self.image_size]
        if x.ndim != 4 or list(x.shape[1:]) != expected:
            raise ValueError(
                f"expected x of shape [B, {', '.join(map(str, expected))}] (in_channels, image_size, "
                f"image_size; images are square), got {list(x.shape)}"
            )
        temb = None
        if self.time_embedding is not None:
            if t is None:
                raise ValueError("this network is time-conditioned: call it as net(x, t) with t a [B] long tensor")
            check_timesteps(t, x.shape[0], self.n_steps)
            temb = self.time_embedding(t)
        h = self.head(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, temb)
        return h, skips, temb


class UNet(nn.Module):
    """DDPM ε-network of Ho et al. (CIFAR-10 configuration by default, ~35.7M parameters).

    ``net(x [B, in_channels, S, S], t [B] long) -> [B, out_channels, S, S]`` with S = ``image_size``
    (square images only). ``out_channels`` defaults to ``in_channels``. The tail convolution has xavier
    gain 1e-5, so the output is close to 0 at initialisation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        n_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        image_size: int = 32,
        n_steps: int = 1000,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(
            in_channels, ch, ch_mult, n_res_blocks, attn_resolutions, dropout, image_size, n_steps
        )
        temb_dim = self.encoder.temb_dim
        skip_channels = list(self.encoder.skip_channels)
        now_ch = self.encoder.out_channels
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            out_ch = ch * ch_mult[level]
            attention = image_size // 2**level in attn_resolutions
            for _ in range(n_res_blocks + 1):
                self.up.append(ResBlock(skip_channels.pop() + now_ch, out_ch, temb_dim, dropout, attention))
                now_ch = out_ch
            if level != 0:
                self.up.append(Upsample(now_ch))
        self.tail = nn.Sequential(
            _group_norm(now_ch),
            nn.SiLU(),
            _conv3x3(now_ch, out_channels or in_channels, gain=_SMALL_GAIN),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h, skips, temb = self.encoder(x, t)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)


class EncoderClassifier(nn.Module):
    """Classifier on the DDPM UNet encoder (MCMC-corr's ``ClassifierHoDrop``): encoder -> flatten -> Linear.

    With ``time_conditioned=True`` (the guidance classifier p(y | x_t, t)) call ``net(x, t)``; with False it
    is a clean classifier without time embedding, called as ``net(x)``. Returns [B, n_classes] logits.
    ``pool=True`` averages the bottleneck over space before the head (as ResNets do), so ``features(x)``, the
    head's input, is [B, out_channels] rather than the flattened [B, out_channels * S * S]: a low-dimensional
    embedding suits FID on a few thousand images. Square images only.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        n_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        image_size: int = 32,
        n_steps: int = 1000,
        n_classes: int = 100,
        time_conditioned: bool = True,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.time_conditioned = time_conditioned
        self.pool = pool
        self.encoder = UNetEncoder(
            in_channels,
            ch,
            ch_mult,
            n_res_blocks,
            attn_resolutions,
            dropout,
            image_size,
            n_steps,
            time_conditioned,
        )
        self.num_features = self.encoder.out_channels * (1 if pool else self.encoder.out_size**2)
        self.head = nn.Linear(self.num_features, n_classes)

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """The head's input: the (pooled or flattened) bottleneck, [B, num_features]."""
        if not self.time_conditioned and t is not None:
            raise ValueError(
                "this EncoderClassifier was built with time_conditioned=False: call it as net(x) without t, "
                "or build it with time_conditioned=True for a noisy-data classifier"
            )
        h, _, _ = self.encoder(x, t)
        return h.mean(dim=(2, 3)) if self.pool else h.flatten(1)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.head(self.features(x, t))
