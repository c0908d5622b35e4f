"""The ADM networks of Dhariwal & Nichol (2021), "Diffusion Models Beat GANs", as in openai/guided-diffusion.

``ADMUNet`` is the original's ``UNetModel`` (the ε / learned-σ UNet) and ``ADMEncoderClassifier`` its
``EncoderUNetModel`` (the noisy-image classifier used for classifier guidance). Both take the original
constructor's keyword arguments and name their modules as it does, so the published checkpoints
(``256x256_diffusion_uncond.pt``, ``256x256_classifier.pt``, ``64x64_diffusion.pt``, ...) load with
``load_state_dict(..., strict=True)``; the numerics follow the original (float32 GroupNorm, sinusoidal embedding
with cos before sin, the "legacy" or "new" qkv head layout, scale-shift norm, attention pooling).

``attention_resolutions`` are downsampling *rates*, as in the original constructor: 2 puts attention at 1/2 of
the image size, 8 at 1/8. (The original's command-line flag "32,16,8" is in pixels; its ``script_util`` converts
it with ``image_size // res`` before calling the constructor, and so must a caller here.)

Only 2D images are supported (``dims=2``). ``use_checkpoint=True`` recomputes ResBlocks and attention blocks in the
backward pass with ``torch.utils.checkpoint`` (a memory saving only; outputs are unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """The original's sinusoidal embedding [N] -> [N, dim] in float32: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))  # an odd width gets a zero column, as in the original


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 and cast back to the input's dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters (the original's initialisation of layers that close a residual branch)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _qkv_attention(qkv: Tensor, num_heads: int, legacy: bool) -> Tensor:
    """Multi-head attention on a [B, 3*H*C, T] qkv tensor, returning [B, H*C, T].

    ``legacy`` (the original's ``QKVAttentionLegacy``) splits heads first and then q/k/v within each head; otherwise
    (``QKVAttention``) q/k/v first and heads within each. q and k are both scaled by 1/sqrt(sqrt(C)).
    """
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.reshape(b * num_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(b * num_heads, ch, length) for z in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """x2 downsampling: a stride-2 3x3 convolution, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    With ``use_scale_shift_norm`` the embedding gives a per-channel scale and shift, ``norm(h) * (1 + scale) +
    shift``; otherwise it is added before the second norm. Resampling is applied to both the branch (between the
    first SiLU and conv) and the skip path.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm, act, conv = self.in_layers
        h = conv(self.h_upd(act(norm(x))))
        x = self.x_upd(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
        else:
            h = self.out_layers[0](h + emb_out)
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions with a residual connection.

    ``num_head_channels`` (when not -1) fixes the width of each head and overrides ``num_heads``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"channels={channels} is not a multiple of num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.legacy = not use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(_qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """The classifier's head: attention pooling (CLIP style) of the mean token over the HW positions."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(2)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding.to(x.dtype)
        x = self.c_proj(_qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False))
        return x[:, :, 0]


class _EmbedSequential(nn.Sequential):
    """A sequence of layers in which ResBlocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class _ADMTrunk(nn.Module):
    """What both networks share: time (and label) embedding, input blocks and middle block."""

    _FP16_BLOCKS: tuple[str, ...] = ("input_blocks", "middle_block")

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float,
        channel_mult: Sequence[float],
        conv_resample: bool,
        dims: int,
        num_classes: int | None,
        use_checkpoint: bool,
        num_heads: int,
        num_head_channels: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
    ) -> None:
        super().__init__()
        if dims != 2:
            raise ValueError(f"only 2D images are supported (dims=2), got dims={dims}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self._res_kwargs = dict(
            emb_channels=4 * model_channels,
            dropout=dropout,
            use_scale_shift_norm=use_scale_shift_norm,
            use_checkpoint=use_checkpoint,
        )
        self._attn_kwargs = dict(
            num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order,
            use_checkpoint=use_checkpoint,
        )

        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self._skip_channels = [ch]  # channels of each input block's output, in order
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [self._res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_resolutions:
                    layers.append(self._attention(ch, num_heads))
                self.input_blocks.append(_EmbedSequential(*layers))
                self._skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = self._res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(_EmbedSequential(down))
                self._skip_channels.append(ch)
                ds *= 2
        self.middle_block = _EmbedSequential(
            self._res_block(ch, ch), self._attention(ch, num_heads), self._res_block(ch, ch)
        )
        self._ds, self._ch = ds, ch  # downsampling rate and width at the bottom

    def _res_block(self, channels: int, out_channels: int, up: bool = False, down: bool = False) -> ResBlock:
        return ResBlock(channels, out_channels=out_channels, up=up, down=down, **self._res_kwargs)

    def _attention(self, channels: int, num_heads: int) -> AttentionBlock:
        return AttentionBlock(channels, num_heads=num_heads, **self._attn_kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The body's compute dtype (float16 after ``convert_to_fp16``), like the original's ``dtype``."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_fp16(self) -> None:
        """Cast the body's convolutions to float16, as the original (norms, linears and the head stay float32)."""
        self._convert_body(torch.float16)

    def convert_to_fp32(self) -> None:
        """Cast the body's convolutions back to float32."""
        self._convert_body(torch.float32)

    def _convert_body(self, dtype: torch.dtype) -> None:
        for name in self._FP16_BLOCKS:
            for module in getattr(self, name).modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)

    def _embed(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps t must have shape [B] = [{x.shape[0]}], got {list(t.shape)}")
        if (y is None) != (self.num_classes is None):
            raise ValueError(
                f"class labels y are required for a class-conditional model (num_classes={self.num_classes}) and "
                f"must be omitted for an unconditional one; got y={'None' if y is None else 'a tensor'}"
            )
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        return emb


class ADMUNet(_ADMTrunk):
    """The ADM UNet (guided-diffusion's ``UNetModel``), with its constructor arguments and state-dict layout.

    ``forward(x, t, y=None)`` maps images [B, in_channels, H, W], timesteps [B] (integer or float) and, when
    ``num_classes`` is set, labels [B] to [B, out_channels, H, W] in ``x``'s dtype. With ``out_channels ==
    2 * in_channels`` (``learn_sigma``) the first half is ε and the second the variance interpolation ``v``.
    ``use_fp16=True`` runs the body in float16 (see ``convert_to_fp16``).
    """

    _FP16_BLOCKS = ("input_blocks", "middle_block", "output_blocks")

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__(
            image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, num_classes, use_checkpoint, num_heads, num_head_channels,
            use_scale_shift_norm, resblock_updown, use_new_attention_order,
        )  # fmt: skip
        num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        skips, ds, ch = list(self._skip_channels), self._ds, self._ch
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [self._res_block(ch + skips.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_resolutions:
                    layers.append(self._attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(self._res_block(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(_EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))
        if use_fp16:
            self.convert_to_fp16()

    @property
    def learn_sigma(self) -> bool:
        """Whether the network also outputs the variance (``out_channels == 2 * in_channels``)."""
        return self.out_channels == 2 * self.in_channels

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self._embed(x, t, y)
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class ADMEncoderClassifier(_ADMTrunk):
    """The ADM noisy-image classifier (guided-diffusion's ``EncoderUNetModel``): the UNet's encoder and a head.

    ``pool`` picks the head: "adaptive" (norm, SiLU, global average, 1x1 conv), "attention" (norm, SiLU,
    ``AttentionPool2d``: the published classifiers; needs ``num_head_channels``), "spatial" / "spatial_v2" (an MLP
    on the spatial means of every block's output). ``forward(x, t)`` gives logits [B, out_channels] in ``x``'s
    dtype. ``num_heads_upsample`` is accepted, and unused, as in the original.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError('pool="attention" needs num_head_channels (the width of each pooling head)')
        super().__init__(
            image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions, dropout,
            channel_mult, conv_resample, dims, None, use_checkpoint, num_heads, num_head_channels,
            use_scale_shift_norm, resblock_updown, use_new_attention_order,
        )  # fmt: skip
        self.pool = pool
        ch = self._ch
        feature_size = sum(self._skip_channels) + ch  # the spatial heads see every input block and the middle
        if pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), _zero(nn.Conv2d(ch, out_channels, 1)), nn.Flatten()
            )
        elif pool == "attention":
            pool_head = AttentionPool2d(image_size // self._ds, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), pool_head)
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), GroupNorm32(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self._embed(x, t, None)
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.to(x.dtype))
