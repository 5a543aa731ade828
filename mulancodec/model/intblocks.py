"""The integer U-Net's blocks: residual-stream convolutions, ResBlocks, attention.

Each mirrors its float module in `denoiser` and is built from the config alone (so
a file's tensors load into it); `calibrate` quantises the float module's weights
and fits its activation grids to the float activations it sees, returning the
float output (what the next block calibrates on) and the output's per-channel
scale. The arithmetic is exact (`intops`): outputs are identical on every
machine, for any batch composition.

Grids: the residual stream holds `limbs`-limb integers; SiLU outputs, which the
3x3 convolutions read, one limb (with `zero_point`, spanning each channel's
[min, max]: integer scheme 2); every grid has one scale per channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import exactmath as em
from .denoiser import _groups
from .intops import (LIMB_MAX, ROUNDER_BITS, QConv, QNorm, WideLinear, carrier_dtype, limb_max,
                     per_channel, round_bits, table_at, tensor_like)

LOGIT_BITS, WEIGHT_BITS = 8, 20  # attention: logits on a 2^-8 grid, weights up to 2^20
RESIDUAL_MARGIN = 2.0  # residual grids cover twice the calibrated range


def residual_scale(out: Tensor, limbs: int) -> Tensor:
    """Per-channel grid steps for a residual-stream tensor fitted to float values `out`."""
    return RESIDUAL_MARGIN * out.abs().amax((0, 2, 3)).double() / limb_max(limbs) + 1e-12


def narrow_step(h: Tensor) -> Tensor:
    """Per-channel steps of a one-limb copy of a residual-stream tensor (float values h)."""
    return h.abs().amax((0, 2, 3)).double() / LIMB_MAX + 1e-12


def narrow(q: Tensor, scale: Tensor, step: Tensor) -> Tensor:
    """The one-limb copy (grid `step`) of residual-stream integers q (grid `scale`): what
    the convolutions reading the stream see (two limbs there cost twice the time, for an
    error of 0.002 rms in eps-hat on the photo model)."""
    return (q * per_channel(scale / step)).round_().clamp_(-LIMB_MAX, LIMB_MAX)


def _residual(base: Tensor, m1: Tensor, acc: Tensor, m2: Tensor, o: Tensor, limbs: int,
              own_base: bool = False) -> Tensor:
    """round(acc m2 + base m1 + o) (per-channel factors), on the residual grid; acc (a
    convolution's fresh output) is overwritten, and base too with `own_base`."""
    scaled = base.mul_(per_channel(m1)) if own_base else base * per_channel(m1)
    out = acc.mul_(per_channel(m2)).add_(scaled).add_(per_channel(o))
    return out.round_().clamp_(-limb_max(limbs), limb_max(limbs))


class QStage(nn.Module):
    """A 3x3 convolution onto the residual stream: the input convolution (its inputs on
    fixed grids, in `groups`), or a down- or upsampling one reading a one-limb copy
    of the stream."""

    def __init__(self, cin: int, cout: int, stride: int, limbs: int,
                 groups: list[tuple[int, int]] | None = None, wlimbs: int = 1,
                 upsample: bool = False, source: list[int] | None = None) -> None:
        super().__init__()
        self.conv = QConv(cin, cout, 3, stride, 1, groups, wlimbs)
        self.limbs, self.upsample, self.narrow, self.source = limbs, upsample, groups is None, source
        self.register_buffer("in_scale", torch.ones(cin, dtype=torch.float64))
        self.register_buffer("in_step", torch.ones(cin, dtype=torch.float64))
        self.register_buffer("out_scale", torch.ones(cout, dtype=torch.float64))

    @torch.no_grad()
    def calibrate(self, conv: nn.Conv2d, h: Tensor, in_scale: Tensor,
                  emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.in_scale.copy_(in_scale)
        self.in_step.copy_(narrow_step(h) if self.narrow else in_scale)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        self.conv.quantize(conv, self.in_step, self.source)
        out = conv(h)
        self.out_scale.copy_(residual_scale(out, self.limbs))
        return out, self.out_scale

    def forward(self, q: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.narrow:
            q = narrow(q, self.in_scale, self.in_step)
        if self.upsample:
            q = F.interpolate(q, scale_factor=2, mode="nearest")
        return self.conv.requant(self.conv(q), self.out_scale, limb_max(self.limbs))


class QResBlock(nn.Module):
    """`denoiser.ResBlock`; its input may be a concatenation of parts (channel counts)."""

    def __init__(self, cin: int, cout: int, temb: int, limbs: int, parts: tuple[int, ...] = (),
                 zero_point: bool = False) -> None:
        super().__init__()
        self.limbs = limbs
        self.norm1 = QNorm(cin, _groups(cin), act=True, zero_point=zero_point)
        self.conv1 = QConv(cin, cout, 3, 1, 1, zero_point=zero_point)
        self.emb = WideLinear(temb, 2 * cout)
        self.norm2 = QNorm(cout, _groups(cout), act=True, zero_point=zero_point)
        self.conv2 = QConv(cout, cout, 3, 1, 1, zero_point=zero_point)
        self.skip = QConv(cin, cout, 1, groups=[(n, 1) for n in parts or (cin,)]) if cin != cout else None
        self.register_buffer("in_scale", torch.ones(cin, dtype=torch.float64))
        self.register_buffer("in_step", torch.ones(cin, dtype=torch.float64))  # the skip's input grid
        self.register_buffer("out_scale", torch.ones(cout, dtype=torch.float64))

    @torch.no_grad()
    def calibrate(self, blk: nn.Module, h: Tensor, in_scale: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        self.in_scale.copy_(in_scale)
        a1 = self.norm1.calibrate(blk.norm1, h)
        self.conv1.quantize(blk.conv1, self.norm1.out_scale, in_zero=self.norm1.out_zero)
        y = blk.conv1(a1)
        self.emb.quantize(blk.emb)
        scale, shift = blk.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        a2 = self.norm2.calibrate(blk.norm2, y, (scale, shift))
        self.conv2.quantize(blk.conv2, self.norm2.out_scale, in_zero=self.norm2.out_zero)
        if self.skip is not None:
            self.in_step.copy_(narrow_step(h))
            self.skip.quantize(blk.skip, self.in_step)
        out = blk.skip(h) + blk.conv2(a2)
        self.out_scale.copy_(residual_scale(out, self.limbs))
        return out, self.out_scale

    def forward(self, q: Tensor, emb: Tensor) -> Tensor:
        a1 = self.norm1(q, self.in_scale)
        scale, shift = self.emb(emb).chunk(2, dim=1)
        a2 = self.norm2(self.conv1(a1), self.conv1.w_scale, self.conv1.bias, (scale, shift), own=True)
        acc = self.conv2(a2)
        s = self.out_scale
        if self.skip is None:
            base, m1, o = q, self.in_scale / s, self.conv2.bias / s
        else:
            spans = self.skip._spans()  # each part's one-limb copy made dense by narrow
            base = self.skip.forward_groups([narrow(q[:, lo:hi], self.in_scale[lo:hi], self.in_step[lo:hi])
                                             for lo, hi, _ in spans])
            m1, o = self.skip.w_scale / s, (self.conv2.bias + self.skip.bias) / s
        return _residual(base, m1, acc, self.conv2.w_scale / s, o, self.limbs,
                         own_base=self.skip is not None)  # the skip's output is fresh


def exp_table() -> Tensor:
    """round(2^20 e^(-d 2^-8)) for d = 0.. until it rounds to 0 (the last entry)."""
    n = int((WEIGHT_BITS + 1) * math.log(2) * (1 << LOGIT_BITS)) + 2
    d = torch.arange(n, dtype=torch.float64) * (1.0 / (1 << LOGIT_BITS))
    t = torch.round(em.exp(-d) * float(1 << WEIGHT_BITS))
    assert t[-1] == 0
    return t


class QAttention(nn.Module):
    """Single-head self-attention: exact integer scores, softmax weights from a table of
    e^-d (integers up to 2^20), weighted sums exact in float64."""

    def __init__(self, ch: int, limbs: int) -> None:
        super().__init__()
        assert ch * LIMB_MAX * LIMB_MAX <= 1 << 24  # scores are exact float32 sums
        self.limbs = limbs
        self.norm = QNorm(ch, _groups(ch), act=False)
        self.qkv = QConv(ch, 3 * ch, 1)
        self.out = QConv(ch, ch, 1)
        self.register_buffer("in_scale", torch.ones(ch, dtype=torch.float64))
        self.register_buffer("qkv_scale", torch.ones(3, dtype=torch.float64))
        self.register_buffer("o_scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("out_scale", torch.ones(ch, dtype=torch.float64))
        self.register_buffer("table", torch.zeros(0), persistent=False)

    def prepare(self) -> None:
        """The table of e^-d (derived: after calibration or loading)."""
        self.table = exp_table().to(self.in_scale.device)

    @torch.no_grad()
    def calibrate(self, att: nn.Module, h: Tensor, in_scale: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        B, C, H, W = h.shape
        self.in_scale.copy_(in_scale)
        a = self.norm.calibrate(att.norm, h)
        self.qkv.quantize(att.qkv, self.norm.out_scale)
        q, k, v = att.qkv(a).reshape(B, 3, C, H * W).unbind(1)
        self.qkv_scale.copy_(torch.stack([x.abs().max() for x in (q, k, v)]).double() / LIMB_MAX + 1e-12)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(C), dim=-1)
        o = torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W)
        self.o_scale.fill_(float(o.abs().max()) / LIMB_MAX + 1e-12)
        self.out.quantize(att.out, self.o_scale.expand(C))
        self.prepare()
        out = h + att.out(o)
        self.out_scale.copy_(residual_scale(out, self.limbs))
        return out, self.out_scale

    def _qkv(self, h: Tensor) -> list[Tensor]:
        B, C = h.shape[:2]
        acc = self.qkv(self.norm(h, self.in_scale))
        out = []
        for i in range(3):
            part = slice(i * C, (i + 1) * C)
            m = (self.qkv.w_scale[part] / self.qkv_scale[i]).float().view(1, C, 1, 1)
            o = (self.qkv.bias[part] / self.qkv_scale[i]).float().view(1, C, 1, 1)
            out.append((acc[:, part] * m).add_(o).round_().clamp_(-LIMB_MAX, LIMB_MAX).reshape(B, C, -1))
        return out

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = h.shape
        q, k, v = self._qkv(h)
        dt = carrier_dtype()  # one-limb operands, C * 255^2 <= 2^24: exact in either carrier
        scores = torch.bmm(q.transpose(1, 2).to(dt), k.to(dt)).float()
        kappa = (self.qkv_scale[0] * self.qkv_scale[1] * float(1 << LOGIT_BITS)
                 / torch.sqrt(tensor_like(C, h))).float()
        t = scores.mul_(kappa).round_()  # in place (a fresh tensor): the same operations
        top = t.amax(-1, keepdim=True)
        d = t.neg_().add_(top).clamp_(max=len(self.table) - 1)  # top - t: a - b is a + (-b)
        idx = round_bits(d).sub_(ROUNDER_BITS)  # the integers d in [0, len) as int32
        p = table_at(self.table, idx)
        # p @ [v; 1]^T: the weighted sums (|sum| < 255 * 2^20 * HW) and the weights' sums
        # (< 2^20 HW), both exact in float64 whatever the order, in one product
        vt = torch.ones(B, H * W, C + 1, dtype=torch.float64, device=h.device)
        vt[:, :, :C] = v.transpose(1, 2)
        r = torch.bmm(p, vt)
        a = r[:, :, :C] / r[:, :, C:] * (self.qkv_scale[2] / self.o_scale)
        a = torch.round(a).clamp_(-LIMB_MAX, LIMB_MAX).float().transpose(1, 2)
        acc = self.out(a.reshape(B, C, H, W))
        s = self.out_scale
        return _residual(h, self.in_scale / s, acc, self.out.w_scale / s, self.out.bias / s, self.limbs)
