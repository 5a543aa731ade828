"""The integer denoiser: `denoiser.UNet` evaluated exactly on integers.

Inputs go onto fixed grids: z at 2^-14 (|z| < 4), its Fourier features
sin/cos(2^n pi z) at 1/65280 from tables indexed by z's phase on a 2^-20 grid
(both two limbs, each limb an input channel of its own scale); gamma normalised,
c and the context (pixels exactly: 2x + 1 - 256, and the mask) one limb. The input
convolution has two-limb weights (it is the most sensitive layer, and small). The time embedding's sin, cos and exp are `exactmath`'s, of the exact mean
of the gamma grid. The blocks are `intblocks`'; the output is the last
convolution's exact sums, scaled to reals in float64.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.configs import ModelConfig
from ..model.denoiser import (
    CONTEXT_CHANNELS,
    Attention,
    ResBlock,
    UNet,
    _groups,
    timestep_embedding,
    unet_flow,
    with_context,
)
from . import exactmath as em
from .intblocks import QAttention, QResBlock, QStage
from .intnorm import QNorm
from .intops import LIMB, LIMB_MAX, Derived, QConv, WideLinear, host, limb_max, split_limbs, tensor_like

Z_BITS, GAMMA_BITS = 20, 20  # z's phase and gamma's mean (the time): steps of 2^-bits
Z_INPUT_BITS = 14  # z as an input: two limbs, |z| < 4 (beyond: clamped)
PIXEL_SCALE = 1.0 / 256  # context pixels (2x + 1)/256 - 1: integers 2x + 1 - 256 at this scale
LATENT_RANGE = 4.0  # c as an input: |c| <= 4 (beyond: clamped)
RESIDUAL_LIMBS = 2  # the residual stream (one limb there: 0.04 rms error in eps-hat)


def _one_limb(x: Tensor, top: float) -> Tensor:
    """x in [-top, top] on a one-limb grid (clamped)."""
    return torch.round(x.double() * (LIMB_MAX / top)).clamp_(-LIMB_MAX, LIMB_MAX).float()


def fourier_tables(power: int, limbs: int) -> tuple[Tensor, Tensor]:
    """sin and cos(2 pi k / P) * limb_max for the P = 2^(Z_BITS + 1 - power) phases of
    sin/cos(2^power pi z) on z's grid."""
    period = 1 << (Z_BITS + 1 - power)
    x = torch.arange(period, dtype=torch.float64) * (math.pi * 2.0 ** (power - Z_BITS))
    s, c = em.sin_cos(x)
    q = float(limb_max(limbs))
    return torch.round(s * q).float(), torch.round(c * q).float()


def sinusoid(t: Tensor, dim: int) -> Tensor:
    """`denoiser.timestep_embedding` with exactmath's exp, sin and cos (float64)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = em.exp(i * -em.LN_10000 / tensor_like(half, t))
    s, c = em.sin_cos(t.double()[:, None] * 1000.0 * freqs[None])
    emb = torch.cat([s, c], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def exact_block(blk: nn.ModuleList, parts: tuple[int, ...], temb: int, zero_point: bool) -> nn.ModuleList:
    """A float block's exact counterpart, layer for layer: residual blocks, attention, and
    the down- and upsampling convolutions (an upsampling block, nearest 2x then a 3x3
    convolution, becomes one QStage). `parts`: the channel counts the block's input is
    joined from (a skip's join gives two)."""
    L, layers = RESIDUAL_LIMBS, list(blk)
    if layers and isinstance(layers[0], nn.Upsample) and len(layers) == 2 and isinstance(layers[1], nn.Conv2d):
        c = layers[1]
        return nn.ModuleList([QStage(c.in_channels, c.out_channels, 1, L, upsample=True)])
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, ResBlock):
            cin, cout = layer.conv1.in_channels, layer.conv1.out_channels
            out.append(QResBlock(cin, cout, temb, L, parts if len(parts) > 1 else (), zero_point))
            parts = (cout,)
        elif isinstance(layer, Attention):
            out.append(QAttention(layer.qkv.in_channels, L))
        elif isinstance(layer, nn.Conv2d) and layer.stride == (2, 2) and layer.kernel_size == (3, 3):
            out.append(QStage(layer.in_channels, layer.out_channels, 2, L))
            parts = (layer.out_channels,)
        else:
            raise ValueError(f"no exact counterpart for {type(layer).__name__} in the U-Net")
    return nn.ModuleList(out)


def _float_layers(blk: nn.ModuleList) -> list[nn.Module]:
    """A float block's layers as its exact counterpart has them (upsampling is in QStage)."""
    return [layer for layer in blk if not isinstance(layer, nn.Upsample)]


def _channels(blk: nn.ModuleList, parts: tuple[int, ...]) -> tuple[int, ...]:
    """A float block's output channels, given its input's parts."""
    for layer in blk:
        if isinstance(layer, ResBlock):
            parts = (layer.conv1.out_channels,)
        elif isinstance(layer, nn.Conv2d):
            parts = (layer.out_channels,)
    return parts


class QUNet(Derived):
    """The U-Net's integer version, derived from the float `UNet` of the same config: its
    layout (`UNet.__init__`) and data flow (`unet_flow`) are the float net's; each layer
    is swapped for its exact counterpart (`exact_block`). `zero_point`: SiLU grids with
    zero points (integer scheme 2)."""

    def __init__(self, cfg: ModelConfig, zero_point: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.device("meta"):  # the layout only: no weights are made
            layout = UNet(cfg)
        temb = layout.temb[2].out_features
        scales, source = self.input_grid()
        self.register_buffer("in_scale", scales, persistent=False)
        self.conv_in = QStage(len(scales), cfg.width, 1, RESIDUAL_LIMBS, [(len(scales), 1)], wlimbs=2,
                              source=source)
        self.temb0 = WideLinear(layout.temb[0].in_features, layout.temb[0].out_features)
        self.temb2 = WideLinear(layout.temb[2].in_features, temb)
        made: dict[int, nn.ModuleList] = {}

        def convert(blk: nn.ModuleList, parts: tuple[int, ...]) -> tuple[int, ...]:
            made[id(blk)] = exact_block(blk, parts, temb, zero_point)
            return _channels(blk, parts)

        unet_flow(layout, (cfg.width,), convert, lambda a, b: a + b)
        self.down = nn.ModuleList(made[id(b)] for b in layout.down)
        self.mid, self.full = made[id(layout.mid)], made[id(layout.full)]
        self.up = nn.ModuleList(made[id(b)] for b in layout.up)
        self.up_joins = layout.up_joins
        cur = layout.norm_out.num_channels
        self.register_buffer("h_scale", torch.ones(cur, dtype=torch.float64))
        self.norm_out = QNorm(cur, _groups(cur), act=True, zero_point=zero_point)
        self.conv_out = QConv(cur, layout.conv_out.out_channels, 3, 1, 1, zero_point=zero_point)
        for i in range(len(cfg.fourier_powers)):
            self.register_buffer(f"fsin{i}", torch.zeros(0), persistent=False)
            self.register_buffer(f"fcos{i}", torch.zeros(0), persistent=False)

    def _h_scale(self) -> Any:
        return self.derived("h_scale", self.h_scale.device, lambda: host(self.h_scale))

    def prepare(self) -> None:
        """The Fourier feature tables (derived: after calibration or loading)."""
        super().prepare()
        for i, n in enumerate(self.cfg.fourier_powers):
            s, c = fourier_tables(n, 2)
            setattr(self, f"fsin{i}", s.to(self.in_scale.device))
            setattr(self, f"fcos{i}", c.to(self.in_scale.device))

    def input_grid(self) -> tuple[Tensor, list[int]]:
        """Each input channel's scale (all one limb: z's two limbs, high then low, the
        Fourier features' likewise, gamma, c, the context), and the float UNet's input
        channel it stands for."""
        cfg, C = self.cfg, self.cfg.channels
        nf = 2 * C * len(cfg.fourier_powers)
        z, f = 2.0 ** -Z_INPUT_BITS, 1.0 / limb_max(2)
        scales = [z * LIMB] * C + [z] * C + [f * LIMB] * nf + [f] * nf
        source = [*range(C), *range(C), *range(C, C + nf), *range(C, C + nf)]
        rest = [1.0 / LIMB_MAX] * C + [LATENT_RANGE / LIMB_MAX] * cfg.latent_channels
        if cfg.context:
            rest += [PIXEL_SCALE] * (CONTEXT_CHANNELS - 1) + [1.0]
        source += [C + nf + i for i in range(len(rest))]
        return torch.tensor(scales + rest, dtype=torch.float64), source

    def _fourier(self, z: Tensor) -> Tensor:
        phase = torch.round(z * float(1 << Z_BITS)).to(torch.int64)
        sins, coss = [], []
        for i, n in enumerate(self.cfg.fourier_powers):
            idx = torch.remainder(phase, 1 << (Z_BITS + 1 - n))
            sins.append(getattr(self, f"fsin{i}").take(idx))
            coss.append(getattr(self, f"fcos{i}").take(idx))
        if not sins:
            return z.new_zeros(z.shape[0], 0, *z.shape[2:]).float()
        return torch.cat([torch.stack(sins, 2).flatten(1, 2), torch.stack(coss, 2).flatten(1, 2)], 1)

    def inputs(self, z: Tensor, gamma_norm: Tensor, c: Tensor | None,
               ctx: Tensor | None) -> tuple[Tensor, Tensor]:
        """The input integers (B, n_in, S+2m, S+2m) and the time t (B,) of the embedding."""
        cfg = self.cfg
        z = z.double()
        gn = gamma_norm.double().expand_as(z)
        g = torch.round(gn.clamp(-1024.0, 1024.0) * float(1 << GAMMA_BITS))  # the sum is exact
        t = g.sum((1, 2, 3)) / tensor_like(g[0].numel() * (1 << GAMMA_BITS), g)
        zq = torch.round(z * float(1 << Z_INPUT_BITS)).clamp_(-limb_max(2), limb_max(2)).float()
        feats = [*reversed(split_limbs(zq, 2)), *reversed(split_limbs(self._fourier(z), 2)),
                 _one_limb(gn, 1.0)]
        if cfg.latent_channels:
            assert c is not None
            cq = F.interpolate(_one_limb(c, LATENT_RANGE), scale_factor=cfg.latent_factor, mode="nearest")
            feats.append(cq)
        h = torch.cat(feats, dim=1)
        if cfg.context:  # the window's pixels as the integers 2x + 1 - 256 (PIXEL_SCALE), and the mask
            h = with_context(h, ctx, cfg.context, lambda k: torch.cat(
                [torch.round(k[:, :-1] * (1.0 / PIXEL_SCALE)), k[:, -1:]], dim=1))
        return h, t

    @staticmethod
    def _run(blk: nn.ModuleList, q: Tensor, emb: Tensor) -> Tensor:
        for layer in blk:
            q = layer(q, emb)
        return q

    def forward(self, z: Tensor, gamma_norm: Tensor, c: Tensor | None,
                ctx: Tensor | None = None) -> Tensor:
        """`UNet.forward`'s output as exact reals (float64)."""
        x, t = self.inputs(z, gamma_norm, c, ctx)
        emb = em.silu(self.temb2(em.silu(self.temb0(sinusoid(t, self.cfg.width)))))
        h = unet_flow(self, self.conv_in(x), lambda blk, q: self._run(blk, q, emb),
                      lambda a, b: torch.cat([a, b], dim=1))
        out = self.conv_out.real(self.conv_out(self.norm_out(h, self._h_scale(), own=True)))
        m = self.cfg.context
        return out[:, :, m:out.shape[2] - m, m:out.shape[3] - m] if m else out

    @torch.no_grad()
    def calibrate(self, unet: UNet, z: Tensor, gamma_norm: Tensor, c: Tensor | None,
                  ctx: Tensor | None) -> None:
        """Quantise `unet` with grids fitted to its activations on these (float) inputs."""
        cfg = self.cfg
        x = unet.inputs(z, gamma_norm, c, ctx)
        emb = unet.temb(timestep_embedding(gamma_norm.expand_as(z).mean(dim=(1, 2, 3)), cfg.width))
        self.temb0.quantize(unet.temb[0])
        self.temb2.quantize(unet.temb[2])
        state = self.conv_in.calibrate(unet.conv_in, x, self.in_scale)

        def step(pair: tuple[nn.ModuleList, nn.ModuleList], st: tuple[Tensor, Tensor]) -> Any:
            for layer, float_layer in zip(pair[0], _float_layers(pair[1])):
                st = layer.calibrate(float_layer, st[0], st[1], emb)
            return st

        pairs = SimpleNamespace(down=list(zip(self.down, unet.down)), mid=(self.mid, unet.mid),
                                up=list(zip(self.up, unet.up)), up_joins=self.up_joins,
                                full=(self.full, unet.full))
        h, scale = unet_flow(pairs, state, step,
                             lambda a, b: (torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]])))
        self.h_scale.copy_(scale)
        self.norm_out.calibrate(unet.norm_out, h)
        self.conv_out.quantize(unet.conv_out, self.norm_out.out_scale, in_zero=self.norm_out.out_zero)
        self.prepare()
