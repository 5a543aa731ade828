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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.denoiser import _groups
from . import exactmath as em
from .intnorm import QNorm
from .intops import (
    LIMB_MAX,
    ROUNDER_BITS,
    Derived,
    QConv,
    WideLinear,
    carrier_dtype,
    host,
    limb_max,
    per_channel,
    round_bits,
    table_at,
    tensor_like,
)

LOGIT_BITS, WEIGHT_BITS = 8, 20  # attention: logits on a 2^-8 grid, weights up to 2^20
RESIDUAL_MARGIN = 2.0  # residual grids cover twice the calibrated range


def residual_scale(out: Tensor, limbs: int) -> Tensor:
    """Per-channel grid steps for a residual-stream tensor fitted to float values `out`."""
    return RESIDUAL_MARGIN * out.abs().amax((0, 2, 3)).double() / limb_max(limbs) + 1e-12


def narrow_step(h: Tensor) -> Tensor:
    """Per-channel steps of a one-limb copy of a residual-stream tensor (float values h)."""
    return h.abs().amax((0, 2, 3)).double() / LIMB_MAX + 1e-12


def narrow_factor(scale: Tensor, step: Tensor) -> Tensor:
    """`narrow`'s factor from a residual grid `scale` to a one-limb grid `step`."""
    return per_channel(scale / step)


def narrow(q: Tensor, factor: Tensor) -> Tensor:
    """The one-limb copy (grid `step`) of residual-stream integers q (grid `scale`; factor:
    `narrow_factor`): what the convolutions reading the stream see (two limbs there cost
    twice the time, for an error of 0.002 rms in eps-hat on the photo model)."""
    return (q * factor).round_().clamp_(-LIMB_MAX, LIMB_MAX)


def residual_factors(m1: Tensor, m2: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`_residual`'s per-channel factors in float32."""
    return per_channel(m1), per_channel(m2), per_channel(o)


def _residual(base: Tensor, acc: Tensor, factors: tuple[Tensor, Tensor, Tensor], limbs: int,
              own_base: bool = False) -> Tensor:
    """round(acc m2 + base m1 + o) (factors (m1, m2, o): `residual_factors`), on the residual
    grid; acc (a convolution's fresh output) is overwritten, and base too with `own_base`."""
    m1, m2, o = factors
    scaled = base.mul_(m1) if own_base else base * m1
    out = acc.mul_(m2).add_(scaled).add_(o)
    return out.round_().clamp_(-limb_max(limbs), limb_max(limbs))


class QStage(Derived):
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
        self.prepare()
        return out, self.out_scale

    def _factors(self) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return narrow_factor(self.in_scale, self.in_step), self.conv.requant_factors(self.out_scale)

    def forward(self, q: Tensor, emb: Tensor | None = None) -> Tensor:
        to_step, requant = self.derived("factors", q.device, self._factors)
        if self.narrow:
            q = narrow(q, to_step)
        if self.upsample:
            q = F.interpolate(q, scale_factor=2, mode="nearest")
        return self.conv.requant(self.conv(q), requant, limb_max(self.limbs))


class QResBlock(Derived):
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
        self.prepare()
        return out, self.out_scale

    def _factors(self) -> dict[str, Any]:
        """The norms' inputs' scales on the host, the skip's parts' narrowing factors and the
        residual sum's factors."""
        s = self.out_scale
        if self.skip is None:
            m1, o = self.in_scale / s, self.conv2.bias / s
            parts = []
        else:
            m1, o = self.skip.w_scale / s, (self.conv2.bias + self.skip.bias) / s
            parts = [(lo, hi, narrow_factor(self.in_scale[lo:hi], self.in_step[lo:hi]))
                     for lo, hi, _ in self.skip._spans()]
        return {"in": host(self.in_scale), "conv1": (host(self.conv1.w_scale), host(self.conv1.bias)),
                "parts": parts, "residual": residual_factors(m1, self.conv2.w_scale / s, o)}

    def forward(self, q: Tensor, emb: Tensor) -> Tensor:
        f = self.derived("factors", q.device, self._factors)
        a1 = self.norm1(q, f["in"])
        scale, shift = self.emb(emb).chunk(2, dim=1)
        a2 = self.norm2(self.conv1(a1), *f["conv1"], (scale, shift), own=True)
        acc = self.conv2(a2)
        if self.skip is None:
            return _residual(q, acc, f["residual"], self.limbs)
        # each part's one-limb copy, made dense by narrow; the skip's output is fresh
        base = self.skip.forward_groups([narrow(q[:, lo:hi], factor) for lo, hi, factor in f["parts"]])
        return _residual(base, acc, f["residual"], self.limbs, own_base=True)


def exp_table() -> Tensor:
    """round(2^20 e^(-d 2^-8)) for d = 0.. until it rounds to 0 (the last entry)."""
    n = int((WEIGHT_BITS + 1) * math.log(2) * (1 << LOGIT_BITS)) + 2
    d = torch.arange(n, dtype=torch.float64) * (1.0 / (1 << LOGIT_BITS))
    t = torch.round(em.exp(-d) * float(1 << WEIGHT_BITS))
    assert t[-1] == 0
    return t


class QAttention(Derived):
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
        super().prepare()
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
        out = h + att.out(o)
        self.out_scale.copy_(residual_scale(out, self.limbs))
        self.prepare()
        return out, self.out_scale

    def _factors(self) -> dict[str, Any]:
        """The q, k, v grids' factors, the logits' scale kappa, and the residual sum's factors."""
        C, s = self.in_scale.numel(), self.out_scale
        qkv = [(per_channel(self.qkv.w_scale[i * C:(i + 1) * C] / self.qkv_scale[i]),
                per_channel(self.qkv.bias[i * C:(i + 1) * C] / self.qkv_scale[i])) for i in range(3)]
        kappa = (self.qkv_scale[0] * self.qkv_scale[1] * float(1 << LOGIT_BITS)
                 / torch.sqrt(tensor_like(C, self.in_scale))).float()
        return {"in": host(self.in_scale), "qkv": qkv, "kappa": kappa,
                "residual": residual_factors(self.in_scale / s, self.out.w_scale / s, self.out.bias / s)}

    def _qkv(self, h: Tensor, f: dict[str, Any]) -> list[Tensor]:
        B, C = h.shape[:2]
        acc = self.qkv(self.norm(h, f["in"]))
        return [(acc[:, i * C:(i + 1) * C] * m).add_(o).round_().clamp_(-LIMB_MAX, LIMB_MAX).reshape(B, C, -1)
                for i, (m, o) in enumerate(f["qkv"])]

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = h.shape
        f = self.derived("factors", h.device, self._factors)
        q, k, v = self._qkv(h, f)
        dt = carrier_dtype()  # one-limb operands, C * 255^2 <= 2^24: exact in either carrier
        scores = torch.bmm(q.transpose(1, 2).to(dt), k.to(dt)).float()
        t = scores.mul_(f["kappa"]).round_()  # in place (a fresh tensor): the same operations
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
        return _residual(h, acc, f["residual"], self.limbs)
