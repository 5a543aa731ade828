"""The denoiser: a downsampling U-Net predicting epsilon from z_t, gamma_t and c.

Inputs per pixel: z_t, VDM's Fourier features of z_t (they carry the fine,
sub-bin structure that dominates likelihood at low noise), the per-subpixel
noise level gamma_t (normalised), and the latent c upsampled to full size.
The normalised mean of gamma_t is the time embedding, as in MuLAN.
Fully convolutional (attention is resolution-agnostic), so it runs on any tile
whose sides are a multiple of 2^(levels-1).

With a context margin m (`ModelConfig.context`) the net runs on the tile's
window of side S + 2m: the tile's own inputs sit in the centre (zero outside),
and four more channels carry the context, the pixels the decoder already has
around the tile (zero where unknown) and their mask. Only the centre is output.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import ModelConfig

CONTEXT_CHANNELS = 4  # the window's pixels where known (3) and the known mask (1)


# mse-hat starts near 0 (sigmoid(-3) = 0.047): a learned-variance model warm-started
# from a fixed-variance one starts out coding as that model did
MSE_LOGIT_INIT = -3.0


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to [0, 1000] like DDPM's steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def fourier_features(z: Tensor, powers: tuple[int, ...]) -> Tensor:
    """sin/cos of 2^n * pi * z for each power n: periods of 2^(8-n) data bins.

    z spans [-1, 1], 256 bins, so a bin is 2^-7 wide and sin(2^n pi z) repeats every
    2^(1-n) = 2^(8-n) bins: the shipped powers (6, 7) see periods of 4 and 2 grey levels.
    """
    if not powers:
        return z.new_zeros(z.shape[0], 0, *z.shape[2:])
    freqs = torch.tensor([2.0 ** n * math.pi for n in powers], device=z.device, dtype=z.dtype)
    h = z[:, :, None] * freqs[None, None, :, None, None]  # B, C, P, H, W
    h = h.flatten(1, 2)
    return torch.cat([torch.sin(h), torch.cos(h)], dim=1)


def with_context(h: Tensor, ctx: Tensor | None, margin: int,
                 prepare: Callable[[Tensor], Tensor] = lambda c: c) -> Tensor:
    """A context model's input: the tile's channels zero-padded to its window, then the
    context channels (`prepare`d; zeros when the decoder has no pixel around the tile)."""
    h = F.pad(h, (margin, margin, margin, margin))
    if ctx is None:
        ctx = h.new_zeros(h.shape[0], CONTEXT_CHANNELS, *h.shape[2:])
    return torch.cat([h, prepare(ctx.to(h.dtype))], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        y = self.norm2(y) * (1 + scale) + shift
        y = self.conv2(self.drop(F.silu(y)))
        return self.skip(h) + y


class Attention(nn.Module):
    """Single-head self-attention over pixels, written with plain matmuls."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        B, C, H, W = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(C), dim=-1)
        a = torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W)
        return h + self.out(a)


class Flow(Protocol):
    """What `unet_flow` walks: the U-Net's blocks, float or integer (or pairs of both)."""

    down: Sequence[Any]
    mid: Any
    up: Sequence[Any]
    up_joins: Sequence[bool]
    full: Any


def unet_flow(net: Flow, state: Any, step: Callable[[Any, Any], Any],
              join: Callable[[Any, Any], Any]) -> Any:
    """The U-Net's data flow, written once for the float net, its integer version
    (`intunet`) and calibration: each down block's output is kept as a skip, the
    middle runs, each up block that joins takes the last skip first (`join`), and the
    full-resolution blocks end it. `step(block, state)` runs one block."""
    skips = [state]
    for blk in net.down:
        state = step(blk, state)
        skips.append(state)
    state = step(net.mid, state)
    for blk, joins in zip(net.up, net.up_joins):
        if joins:
            state = join(state, skips.pop())
        state = step(blk, state)
    return step(net.full, state)


def run_block(blk: Sequence[nn.Module], h: Tensor, emb: Tensor) -> Tensor:
    """A block's layers in turn; residual blocks also read the time embedding."""
    for layer in blk:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h


class UNet(nn.Module):
    """The layout of the network: the one definition its integer version is derived from."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, ch = cfg.channels, cfg.width
        temb = 4 * ch
        n_in = C + 2 * C * len(cfg.fourier_powers) + C + cfg.latent_channels
        n_in += CONTEXT_CHANNELS if cfg.context else 0
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(n_in, ch, 3, padding=1)
        res = cfg.tile
        chans = [ch]
        cur = ch
        self.down = nn.ModuleList()
        for level, m in enumerate(cfg.mults):
            for _ in range(cfg.blocks):
                blk = nn.ModuleList([ResBlock(cur, ch * m, temb, cfg.dropout)])
                cur = ch * m
                if res in cfg.attn_res:
                    blk.append(Attention(cur))
                self.down.append(blk)
                chans.append(cur)
            if level < len(cfg.mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                chans.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb, cfg.dropout), Attention(cur),
                                  ResBlock(cur, cur, temb, cfg.dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(cfg.mults))):
            for _ in range(cfg.blocks + 1):
                blk = nn.ModuleList([ResBlock(cur + chans.pop(), ch * m, temb, cfg.dropout)])
                cur = ch * m
                if res in cfg.attn_res:
                    blk.append(Attention(cur))
                self.up.append(blk)
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(cur, cur, 3, padding=1)]))
                res *= 2
        self.up_joins = tuple(isinstance(blk[0], ResBlock) for blk in self.up)
        # blocks at the window's full resolution (zero-initialised residuals: a net warm-started
        # from one without them starts out computing what that one did)
        self.full = nn.ModuleList([ResBlock(cur, cur, temb, cfg.dropout) for _ in range(cfg.full_blocks)])
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        # eps-hat, and for a learned-variance model the logit of mse-hat (`MuLAN.denoise`)
        self.conv_out = nn.Conv2d(cur, C * (2 if cfg.learned_variance else 1), 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if cfg.learned_variance:
            with torch.no_grad():
                self.conv_out.bias[C:] = MSE_LOGIT_INIT

    def inputs(self, z: Tensor, gamma_norm: Tensor, c: Tensor | None, ctx: Tensor | None) -> Tensor:
        """The first convolution's input: z, its Fourier features, gamma, the upsampled
        latent and, for a context model, the window's context channels (zero-padded z)."""
        cfg = self.cfg
        feats = [z, fourier_features(z, cfg.fourier_powers), gamma_norm.expand_as(z)]
        if cfg.latent_channels:
            assert c is not None
            feats.append(F.interpolate(c, scale_factor=cfg.latent_factor, mode="nearest"))
        h = torch.cat(feats, dim=1)
        return with_context(h, ctx, cfg.context) if cfg.context else h

    def forward(self, z: Tensor, gamma_norm: Tensor, c: Tensor | None,
                ctx: Tensor | None = None) -> Tensor:
        """eps-hat (and mse-hat's logit) for z (B,C,H,W); gamma_norm is gamma mapped to [0,1], per subpixel.

        ctx: (B, 4, H+2m, W+2m) context channels (`mulan.context_channels`), or None
        when the decoder has no pixel around the tile.
        """
        cfg = self.cfg
        m = cfg.context
        h = self.conv_in(self.inputs(z, gamma_norm, c, ctx))
        emb = self.temb(timestep_embedding(gamma_norm.mean(dim=(1, 2, 3)), cfg.width))
        h = unet_flow(self, h, lambda blk, h: run_block(blk, h, emb),
                      lambda a, b: torch.cat([a, b], dim=1))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[:, :, m:out.shape[2] - m, m:out.shape[3] - m] if m else out
