"""Norms and activations of the integer network: GroupNorm statistics and SiLU through
tables of exact values, onto per-channel integer grids (see `intops` for why every
result is the same on every machine)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from . import exactmath as em
from .intops import (
    LIMB_MAX,
    ROUNDER_BITS,
    SHORT_MAX,
    TABLE_HALF,
    Derived,
    QConv,
    chunk_sums,
    host,
    limb_max,
    round_bits,
    sum_in_order,
    table_at,
    zero_point_grid,
)


class Tables(nn.Module):
    """One table per channel of round(fn(k step_c) / out_scale_c) + zero_c, k =
    -TABLE_HALF..TABLE_HALF (clamped to +-qmax), laid end to end (int16 where the values
    fit); `lookup` maps each channel's integers through its own. An output integer q stands
    for (q - zero_c) out_scale_c: with `zero_point` the grid spans [min, max] of the
    calibrated outputs and 0 (SiLU's lie in [-0.28, max], so this halves the step of a grid
    symmetric about 0), and |zero_c| <= qmax; without, zero_c = 0."""

    def __init__(self, channels: int, fn: Callable[[Tensor], Tensor], limbs: int,
                 zero_point: bool = False) -> None:
        super().__init__()
        self.fn, self.qmax = fn, limb_max(limbs)
        self.register_buffer("step", torch.ones(channels, dtype=torch.float64))
        self.register_buffer("out_scale", torch.ones(channels, dtype=torch.float64))
        if zero_point:
            self.register_buffer("zero", torch.zeros(channels, dtype=torch.float64))
        else:
            self.zero: Tensor | None = None
        self.register_buffer("table", torch.zeros(0), persistent=False)
        self.register_buffer("index_base", torch.zeros(0, dtype=torch.int32), persistent=False)

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> Tensor:
        """Fit the grids to float inputs x (B, C, ...) of the function; returns fn(x)."""
        y = self.fn(x.double()).to(x.dtype)
        dims = [0] + list(range(2, x.dim()))
        self.step.copy_(1.25 * x.abs().amax(dims).double() / TABLE_HALF + 1e-12)
        if self.zero is None:
            self.out_scale.copy_(y.abs().amax(dims).double() / self.qmax + 1e-12)
        else:
            step, zero = zero_point_grid(y.amin(dims).double(), y.amax(dims).double(), self.qmax)
            self.out_scale.copy_(step)
            self.zero.copy_(zero)
        self.prepare()
        return y

    def prepare(self) -> None:
        C, n = self.step.numel(), 2 * TABLE_HALF + 1
        k = torch.arange(-TABLE_HALF, TABLE_HALF + 1, dtype=torch.float64, device=self.step.device)
        y = torch.round(self.fn(k[None, :] * self.step[:, None]) / self.out_scale[:, None])
        if self.zero is not None:
            y += self.zero[:, None]
        # int16 where the values fit (one-limb grids): half the memory a lookup touches, and
        # lookups are bound by cache misses in the tables (exact: integers of at most 16 bits)
        dtype = torch.int16 if self.qmax <= SHORT_MAX else torch.float32
        self.table = y.clamp_(-self.qmax, self.qmax).to(dtype).reshape(-1)
        start = torch.arange(C, dtype=torch.int32, device=self.step.device) * n + TABLE_HALF
        self.index_base = start - ROUNDER_BITS  # channel c's k = 0 at round_bits' k + this

    def lookup(self, v: Tensor) -> Tensor:
        """The tables at round(v) for float32 v (B, C, H, W), each clamped to its table's
        range; v is overwritten. (Clamping to integer bounds before rounding gives what
        rounding first does: rounding is monotone and keeps integers.)"""
        bits = round_bits(v.clamp_(-TABLE_HALF, TABLE_HALF))
        out = table_at(self.table, bits.add_(self.index_base.view(1, -1, 1, 1)))  # int32: |sum| < 2^31
        return v.copy_(out)  # float32, into v's memory (the indices are used up)


def _stats(x: Tensor, scale: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (batch, channel) sums of y and y^2 over positions, y = x scale + bias, from each
    (batch, channel)'s one-limb view r = round(x 255 / max|x|) (exact sums; float64)."""
    top = np.maximum(host(x.amax((2, 3))), -host(x.amin((2, 3)))).astype(np.float64)
    u = LIMB_MAX / np.maximum(top, 1e-30)
    r = x * torch.from_numpy(u.astype(np.float32)).to(x.device)[:, :, None, None]
    s1, s2 = (host(s) for s in chunk_sums(r.round_()))
    a, n = scale / u, float(x.shape[2] * x.shape[3])
    return a * s1 + bias * n, a * a * s2 + 2.0 * a * bias * s1 + bias * bias * n


class QNorm(Derived):
    """GroupNorm of integers x (real value x scale + bias per channel), an optional
    per-sample affine, then SiLU through tables (`act`) or nothing, onto per-channel
    grids of `limbs` limbs (with zero points: `Tables`)."""

    def __init__(self, channels: int, groups: int, act: bool, limbs: int = 1, eps: float = 1e-5,
                 zero_point: bool = False) -> None:
        super().__init__()
        self.groups, self.act, self.eps, self.qmax = groups, act, eps, limb_max(limbs)
        self.register_buffer("gamma", torch.ones(channels, dtype=torch.float64))
        self.register_buffer("beta", torch.zeros(channels, dtype=torch.float64))
        self.tables = Tables(channels, em.silu if act else (lambda v: v), limbs, zero_point and act)

    @property
    def out_scale(self) -> Tensor:
        return self.tables.out_scale

    @property
    def out_zero(self) -> Tensor | None:
        return self.tables.zero

    @torch.no_grad()
    def calibrate(self, norm: nn.GroupNorm, x: Tensor,
                  scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Fit the grids to the float input x of `norm`; returns the float output."""
        self.gamma.copy_(norm.weight.detach().double())
        self.beta.copy_(norm.bias.detach().double())
        self.eps = float(norm.eps)
        n = norm(x)
        if scale_shift is not None:
            n = n * (1 + scale_shift[0]) + scale_shift[1]
        out = self.tables.calibrate(n)
        self.prepare()
        return out

    def _host(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """gamma, beta and the grid the affine output is divided by, on the host."""
        return self.derived("host", self.gamma.device, lambda: (
            host(self.gamma), host(self.beta), host(self.tables.step if self.act else self.tables.out_scale)))

    def _affine(self, x: Tensor, scale: np.ndarray, bias: np.ndarray,
                scale_shift: tuple[Tensor, Tensor] | None) -> tuple[np.ndarray, np.ndarray]:
        """Per (batch, channel) (M, O): the normalised (and affine) output is x M + O. These
        (B, C) vectors are computed with numpy on the host: the same IEEE operations as
        torch's, at a fraction of the per-call cost."""
        B, C = x.shape[:2]
        s1, s2 = _stats(x, scale, bias)
        cg = C // self.groups
        count = float(cg * x.shape[2] * x.shape[3])
        mean = sum_in_order(s1.reshape(B, self.groups, cg)) / count
        var = np.maximum(sum_in_order(s2.reshape(B, self.groups, cg)) / count - mean * mean, 0.0)
        inv = 1.0 / np.sqrt(var + self.eps)
        gamma, beta, _ = self._host()
        g = gamma * inv.repeat(cg, 1)
        m = scale * g
        o = beta + (bias - mean.repeat(cg, 1)) * g
        if scale_shift is not None:
            s, t = host(scale_shift[0]), host(scale_shift[1])
            m = m * (1.0 + s)
            o = o * (1.0 + s) + t
        return m, o

    def forward(self, x: Tensor, scale: np.ndarray, bias: np.ndarray | None = None,
                scale_shift: tuple[Tensor, Tensor] | None = None, own: bool = False) -> Tensor:
        """The output integers for input integers x of per-channel scale and bias (float64, on
        the host: `host`); `own`: the caller is done with x, which then holds the scaled input
        (no fresh tensor)."""
        m, o = self._affine(x, scale, np.zeros_like(scale) if bias is None else bias, scale_shift)
        to = self._host()[2]
        a, b = (torch.from_numpy((v / to).astype(np.float32)).to(x.device)[:, :, None, None] for v in (m, o))
        n = x.mul_(a) if own else x * a
        n.add_(b)
        return self.tables.lookup(n) if self.act else n.round_().clamp_(-self.qmax, self.qmax)


class QAct(Derived):
    """SiLU of a convolution's real output through per-channel tables, onto `limbs` limbs."""

    def __init__(self, channels: int, limbs: int = 1) -> None:
        super().__init__()
        self.tables = Tables(channels, em.silu, limbs)

    @property
    def out_scale(self) -> Tensor:
        return self.tables.out_scale

    def calibrate(self, x: Tensor) -> Tensor:
        """Fit the tables to x, the real output of the convolution this follows (quantised first)."""
        out = self.tables.calibrate(x)
        self.prepare()
        return out

    def forward(self, acc: Tensor, conv: QConv) -> Tensor:
        """The output for the sums `acc` of `conv` (always the same convolution); acc is overwritten."""
        m, o = self.derived("factors", acc.device, lambda: conv.requant_factors(self.tables.step))
        return self.tables.lookup(acc.mul_(m).add_(o))
