"""Exact integer arithmetic on float carriers: the integer network's layers.

Every activation the integer network passes on is a tensor of integers (held in
float32) with per-channel scales fixed when the model was quantised; every weight
is an integer. What makes the results identical on every machine, thread count
and batch composition:

* Reductions are exact. Convolutions take integer operands of magnitude at most
  255 ("limbs": exact in fp32, TF32 and bf16 inputs alike), and each output's sum
  of |weight| * 255 is at most 2^24, checked when the weights are made, so every
  partial sum is an exact float32 integer whatever order, blocking or FMA use the
  kernel chooses (oneDNN's direct convolution, BLAS), and whether it reads the
  operands as float32, TF32 or bf16 (`exact_kernels`). Wider integers are split
  into limbs, q = sum 256^j l_j, one convolution per pair of limbs. Transform
  algorithms (Winograd, FFT: NNPACK, cuDNN) are not exact: they are off while the
  network runs (`exact_kernels`). Norm statistics are float32 sums of at most 258
  one-limb integers (exact), added up in float64; attention's weighted sums and
  the small dense layers run in float64 on operands bounded below 2^53.
* Everything else is elementwise: fixed sequences of correctly rounded IEEE
  operations on tensors (rescale, round, clamp, add), or on the host with numpy
  for the small per-(batch, channel) vectors of the norms, and lookups in integer
  tables computed with `exactmath`. Such a sequence gives the same bits anywhere.
  No fused operation (addcmul, lerp) is used: whether it rounds once (FMA) or
  twice depends on the kernel. Chains run in place where they can: a fresh large
  tensor costs more than the arithmetic on it.

For speed on a CPU the convolutions read channels-last activations, with bf16
operands where the CPU has bf16 units (AMX, AVX512-BF16), and their outputs and
everything computed from them stay channels-last; no result depends on the
layout. The carrier of the convolutions (float32, or float64 to check that it
does not matter) is set with `carrier`.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Hashable, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_T = TypeVar("_T")

LIMB = 256
LIMB_MAX = 255  # a limb's magnitude bound (activations and weights)
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
WEIGHT_BUDGET = F32_EXACT // LIMB_MAX  # sum of |weight limb| per output: exact with 255-limbs
STAT_CHUNK = F32_EXACT // (LIMB_MAX * LIMB_MAX)  # 258 squares of one-limb integers sum exactly
TABLE_HALF = 4096  # a table covers integer inputs -TABLE_HALF..TABLE_HALF
SHORT_MAX = 32767  # tables whose values fit are held as int16
WIDE_BITS = 20  # operands of the float64 dense layers: |q| <= 2^20
ROUNDER = 12582912.0  # 1.5 * 2^23: see `round_bits`
ROUNDER_BITS = 0x4B400000  # the float32 bits of ROUNDER

_CARRIER: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar("carrier", default=torch.float32)
_BF16: contextvars.ContextVar[bool] = contextvars.ContextVar("bf16_operands", default=True)


def limb_max(limbs: int) -> int:
    """The largest magnitude a `limbs`-limb integer holds (its top limb within +-255)."""
    return LIMB_MAX * LIMB ** (limbs - 1)


def carrier_dtype() -> torch.dtype:
    """The float dtype convolutions and exact matmuls currently run in."""
    return _CARRIER.get()


@contextlib.contextmanager
def carrier(dtype: torch.dtype) -> Iterator[None]:
    """Run the convolutions in this float dtype (the results do not change)."""
    token = _CARRIER.set(dtype)
    try:
        yield
    finally:
        _CARRIER.reset(token)


@contextlib.contextmanager
def bf16_operands(enabled: bool = True) -> Iterator[None]:
    """Whether `exact_kernels` lets oneDNN read float32 convolution operands as bf16 (on by
    default; off to check that it changes nothing)."""
    token = _BF16.set(enabled)
    try:
        yield
    finally:
        _BF16.reset(token)


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """No gradients, and no transform-based convolution (NNPACK, cuDNN's Winograd/FFT).

    oneDNN may read the operands of float32 convolutions as bf16 (AMX, AVX512-BF16:
    up to twice the speed): limbs (|l| <= 255, 8 significant bits) are exact in bf16 and the
    products are summed in float32, so the sums are the same. A CPU without bf16 units
    keeps float32. The setting is torch's global one, restored on exit: a float model
    run meanwhile in another thread would see it (its file would then be refused where
    its results do not repeat, as always for float files)."""
    conv = getattr(torch.backends.mkldnn, "conv", None)
    saved = getattr(conv, "fp32_precision", None)
    with torch.no_grad(), torch.backends.nnpack.flags(enabled=False), \
            torch.backends.cudnn.flags(enabled=False):
        if saved is None:
            yield
            return
        conv.fp32_precision = "bf16" if _BF16.get() else "none"
        try:
            yield
        finally:
            conv.fp32_precision = saved


def tensor_like(v: float | Tensor, like: Tensor) -> Tensor:
    """v as a float64 tensor on like's device (dividing by a Python number is not exact on
    CUDA: it multiplies by the reciprocal)."""
    return torch.as_tensor(v, dtype=torch.float64, device=like.device)


def per_channel(v: Tensor) -> Tensor:
    """A (C,) vector as float32 (1, C, 1, 1), to scale activations with."""
    return v.float().view(1, -1, 1, 1)


def split_limbs(q: Tensor, limbs: int) -> list[Tensor]:
    """q = sum_j 256^j l_j: l_j in [0, 255] below the top limb, which keeps the sign."""
    out = []
    for _ in range(limbs - 1):
        hi = torch.floor(q * (1.0 / LIMB))
        out.append(q - hi * LIMB)
        q = hi
    out.append(q)
    return out


def split_weight(w: Tensor, limbs: int) -> list[Tensor]:
    """w = sum_j 256^j w_j with balanced limbs w_j in [-128, 127] below the top one."""
    out = []
    for _ in range(limbs - 1):
        hi = torch.floor((w + LIMB // 2) * (1.0 / LIMB))
        out.append(w - hi * LIMB)
        w = hi
    out.append(w)
    return out


def dense(t: Tensor) -> tuple[Tensor, bool]:
    """t as a contiguous tensor with its dimensions in memory order: t itself (contiguous,
    any shape), or for a channels-last (B, C, H, W) its (B, H, W, C) view (True). No copy
    for either layout."""
    if t.is_contiguous():
        return t, False
    return t.permute(0, 2, 3, 1).contiguous(), True


def table_at(table: Tensor, idx: Tensor) -> Tensor:
    """table[idx] for a 1-D table and int32 indices, in idx's shape and layout (contiguous,
    or a channels-last (B, C, H, W))."""
    d, last = dense(idx)
    out = table.index_select(0, d.view(-1)).view(d.shape)
    return out.permute(0, 3, 1, 2) if last else out


@functools.lru_cache(maxsize=None)
def _chunk(n: int) -> int:
    """The largest divisor of n whose chunk sums of squared one-limb integers are exact."""
    return max(d for d in range(1, STAT_CHUNK + 1) if n % d == 0)


def chunk_sums(r: Tensor) -> tuple[Tensor, Tensor]:
    """Per (batch, channel) sums of r and r^2 over positions, exact (float64), for integers
    |r| <= 255: float32 sums of chunks of at most 258 (exact in any order), then float64.
    r is overwritten with its squares (exact: < 2^16; in place, no fresh tensor)."""
    B, C = r.shape[:2]
    n = r.shape[2] * r.shape[3]
    chunk = _chunk(n)
    d, last = dense(r)
    v = d.view(B, n // chunk, chunk, C) if last else d.view(B, C, n // chunk, chunk)
    within, across = (2, 1) if last else (3, 2)
    s1 = v.sum(within).sum(across, dtype=torch.float64)
    return s1, v.mul_(v).sum(within).sum(across, dtype=torch.float64)


def round_bits(v: Tensor) -> Tensor:
    """ROUNDER_BITS + round(v) as int32, for float32 v with |v| <= 2^22; v is overwritten and
    the result shares its memory (one pass, where round and a conversion take two and a
    fresh tensor). Exact: v + ROUNDER lies in [2^23, 2^24], where float32's spacing is 1,
    so IEEE addition gives the integer nearest to it, ties to even: ROUNDER + round(v) with
    torch.round's rounding (half to even; ROUNDER is even). A float32 x in [2^23, 2^24] has
    the bits 0x4B000000 + (x - 2^23)."""
    assert v.dtype == torch.float32
    return v.add_(ROUNDER).view(torch.int32)


def sum_in_order(x: np.ndarray) -> np.ndarray:
    """Sum over the last (small) dimension one element after another: a fixed order."""
    acc = x[..., 0]
    for j in range(1, x.shape[-1]):
        acc = acc + x[..., j]
    return acc


def zero_point_grid(lo: Tensor, hi: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    """(step, zero) of the grid of 2 qmax steps over [min(lo, 0), max(hi, 0)] whose integer
    `zero` stands for 0 (q stands for (q - zero) step): `Tables`' zero-point grids, and what
    quantisation-aware training rounds to (`qat`)."""
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    step = (hi - lo) / (2 * qmax) + 1e-12
    return step, torch.round(-(hi + lo) / (2 * step))


class Derived(nn.Module):
    """A module whose forward uses values derived from its buffers (factors in float32,
    weights in the carrier, host copies): made on first use, per device, and forgotten by
    `prepare`, which runs after calibration and loading. Made once, they are the same bits
    as made on every call, without a dozen small tensor operations per call."""

    def __init__(self) -> None:
        super().__init__()
        self._derived: dict[tuple[Hashable, torch.device], Any] = {}

    def derived(self, key: Hashable, device: torch.device, make: Callable[[], _T]) -> _T:
        """make() the first time (key, device) is asked for, then its saved result."""
        k = (key, device)
        if k not in self._derived:
            self._derived[k] = make()
        return self._derived[k]

    def prepare(self) -> None:
        """Forget the derived values (after calibration or loading)."""
        self._derived.clear()


def host(t: Tensor) -> np.ndarray:
    """A tensor's values in a numpy array on the host (for the norms' small vectors)."""
    return t.detach().cpu().numpy()


class QConv(Derived):
    """A convolution with integer weights on integer inputs.

    The input channels form `groups`, runs of (channels, limbs) sharing an input
    scale (a concatenation, or the network's inputs); each group has its own
    per-output weight scale, its weights `wlimbs` limbs. forward gives the sums in
    units of the first group's weight scale (`w_scale`): exact integers for one
    one-limb group and one-limb weights, otherwise the exact sums of each group and
    pair of limbs combined in float32 in a fixed order. `real` gives the layer's
    real-valued output.

    With `zero_point` the (one-limb) input integers q stand for (q - zero_c) scale_c
    (a `Tables` grid with zero points): the padding is zero_c, not 0, and the bias
    absorbs the weights' sum times zero_c, so the sums stay those of one-limb operands.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
                 groups: Sequence[tuple[int, int]] | None = None, wlimbs: int = 1,
                 zero_point: bool = False) -> None:
        super().__init__()
        self.stride, self.padding, self.wlimbs = stride, padding, wlimbs
        self.groups = list(groups) if groups is not None else [(cin, 1)]
        assert sum(n for n, _ in self.groups) == cin
        wtype = torch.int16 if wlimbs == 1 else torch.int32  # |w| <= 255, or two limbs
        self.register_buffer("weight", torch.zeros(cout, cin, k, k, dtype=wtype))
        self.register_buffer("g_scale", torch.ones(len(self.groups), cout, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(cout, dtype=torch.float64))
        if zero_point:
            assert self.groups == [(cin, 1)] and wlimbs == 1
            self.register_buffer("in_zero", torch.zeros(cin, dtype=torch.float64))
        else:
            self.in_zero: Tensor | None = None

    @property
    def w_scale(self) -> Tensor:
        """The scale of forward's sums (per output channel)."""
        return self.g_scale[0]

    def _spans(self) -> list[tuple[int, int, int]]:
        out, lo = [], 0
        for n, limbs in self.groups:
            out.append((lo, lo + n, limbs))
            lo += n
        return out

    @torch.no_grad()
    def quantize(self, conv: nn.Conv2d, in_scale: Tensor, source: Sequence[int] | None = None,
                 in_zero: Tensor | None = None) -> None:
        """Integer weights for `conv` reading integers of per-channel scale `in_scale` (and zero
        points `in_zero`); input channel i is conv's channel source[i] (the limbs of one input
        are channels of their own)."""
        w = conv.weight.detach().double()
        if source is not None:
            w = w[:, list(source)]
        w = w * in_scale.double().view(1, -1, 1, 1).to(w.device)
        for g, (lo, hi, _) in enumerate(self._spans()):
            flat = w[:, lo:hi].flatten(1).abs()
            k = flat.shape[1]
            top = LIMB ** (self.wlimbs - 1)  # the top limb carries |w| / top
            scale = torch.maximum(flat.amax(1) / limb_max(self.wlimbs),
                                  flat.sum(1) / (top * (WEIGHT_BUDGET - 2 * k)))
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(w[:, lo:hi] / scale.view(-1, 1, 1, 1))
            for part in split_weight(q, self.wlimbs):  # every partial sum is exact
                assert int(part.abs().flatten(1).sum(1).max()) <= WEIGHT_BUDGET
            self.weight[:, lo:hi] = q.to(self.weight.dtype)
            self.g_scale[g] = scale
        self.bias.copy_(conv.bias.detach().double() if conv.bias is not None else 0.0)
        self.prepare()
        if self.in_zero is not None:
            assert in_zero is not None
            self.in_zero.copy_(in_zero)
            offset = (self.weight.double().sum((2, 3)) * in_zero.view(1, -1)).sum(1)  # integers
            self.bias.sub_(offset * self.w_scale)

    def exact(self) -> bool:
        """Whether every partial sum is provably exact: weight limbs within +-255 and each
        output's within the budget, and finite positive scales (a loaded file is checked)."""
        for lo, hi, _ in self._spans():
            for part in split_weight(self.weight[:, lo:hi].double(), self.wlimbs):
                mag = part.abs().flatten(1)
                if float(mag.max()) > LIMB_MAX or float(mag.sum(1).max()) > WEIGHT_BUDGET:
                    return False
        zero_ok = self.in_zero is None or bool(
            (self.in_zero.abs() <= LIMB_MAX).all() and (self.in_zero == self.in_zero.round()).all())
        return bool(torch.isfinite(self.g_scale).all() and (self.g_scale > 0).all()
                    and torch.isfinite(self.bias).all() and zero_ok)

    def _conv(self, x: Tensor, w: Tensor, padding: int) -> Tensor:
        """The convolution in the carrier (w: `_weights`'), channels-last (oneDNN's fastest
        layout; the output stays channels-last, and so do the elementwise operations after it)."""
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x.to(w.dtype), w, None, self.stride, padding).float()

    def _weights(self) -> list[Tensor]:
        """Per group, its weights in the carrier: the limbs stacked as output channels (limb k
        is outputs k Cout..(k+1) Cout - 1), channels-last like the activations (else torch
        copies them into that layout on every call). Made once per carrier and device."""
        dtype = _CARRIER.get()
        return self.derived(("weights", dtype), self.weight.device, lambda: [
            torch.cat(split_weight(self.weight[:, lo:hi].double(), self.wlimbs)).to(dtype)
            .contiguous(memory_format=torch.channels_last) for lo, hi, _ in self._spans()])

    def _border(self, H: int, W: int, like: Tensor) -> Tensor:
        """(1, Cout, H', W'): what padding with the zero points (which stand for 0) adds to
        each output over padding with 0: the convolution of the zero points on the padding
        ring. Exact integers (one-limb operands), made once per input size."""
        assert self.in_zero is not None

        def make() -> Tensor:
            p, C = self.padding, self.in_zero.numel()
            ring = per_channel(self.in_zero).expand(1, C, H + 2 * p, W + 2 * p).clone().to(like.device)
            ring[:, :, p:p + H, p:p + W] = 0.0
            return self._conv(ring, self._weights()[0], 0)
        return self.derived(("border", H, W), like.device, make)

    def forward(self, q: Tensor) -> Tensor:
        if self.in_zero is not None and self.padding:
            # The sums over q padded with 0, plus the padding ring's: both exact integers, and
            # so is their total, the sums over q padded with the zero points (within the same
            # bound: each is a sum of one-limb operands times the weights).
            acc = self._conv(q, self._weights()[0], self.padding)
            return acc.add_(self._border(q.shape[2], q.shape[3], q))
        if self.groups == [(q.shape[1], 1)] and self.wlimbs == 1:
            return self._conv(q, self._weights()[0], self.padding)
        return self.forward_groups([q[:, lo:hi] for lo, hi, _ in self._spans()])

    def forward_groups(self, parts: Sequence[Tensor]) -> Tensor:
        """forward for the input given as its groups' channels, one tensor per group (made
        dense, channels-last, by their producer, they need no copy: a convolution's input is)."""
        B, cout = parts[0].shape[0], self.weight.shape[0]
        acc = None
        factors = self.derived("ratios", parts[0].device, self._ratios)
        for g, ((lo, hi, limbs), w) in enumerate(zip(self._spans(), self._weights())):
            limb_list = split_limbs(parts[g], limbs)
            x = limb_list[0] if limbs == 1 else torch.cat(limb_list)  # the limbs as more batch entries
            sums = self._conv(x, w, self.padding)  # input limb j, weight limb k: sums[jB:, kCout:]
            for k in range(self.wlimbs):
                for j in range(limbs):
                    term = sums[j * B:(j + 1) * B, k * cout:(k + 1) * cout].mul_(factors[g][j + k])
                    acc = term if acc is None else acc.add_(term)
        assert acc is not None
        return acc

    def _ratios(self) -> list[list[Tensor]]:
        """Per group g and limb weight 256^n: g's scale over the first group's, times 256^n
        (float32, per output channel)."""
        n = max(limbs for _, limbs in self.groups) + self.wlimbs - 1
        return [[per_channel(self.g_scale[g] / self.g_scale[0]) * float(LIMB ** i) for i in range(n)]
                for g in range(len(self.groups))]

    def real(self, acc: Tensor) -> Tensor:
        """The real-valued output (float64) of forward's sums `acc`."""
        return acc.double() * self.w_scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def requant_factors(self, out_scale: Tensor) -> tuple[Tensor, Tensor]:
        """`requant`'s factors for the grid of per-channel step out_scale."""
        return per_channel(self.w_scale / out_scale), per_channel(self.bias / out_scale)

    def requant(self, acc: Tensor, factors: tuple[Tensor, Tensor], qmax: int) -> Tensor:
        """The output on the integer grid of `requant_factors`, clamped to +-qmax; acc (fresh
        sums) is overwritten."""
        return acc.mul_(factors[0]).add_(factors[1]).round_().clamp_(-qmax, qmax)


class WideLinear(Derived):
    """A small dense layer in float64: inputs and weights rounded to 20-bit integers
    (the input's scale chosen per row, so a row's result does not depend on its batch)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(cout, cin, dtype=torch.int32))
        self.register_buffer("w_scale", torch.ones(cout, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(cout, dtype=torch.float64))

    @torch.no_grad()
    def quantize(self, lin: nn.Linear) -> None:
        w = lin.weight.detach().double()
        scale = w.abs().amax(1) / (1 << WIDE_BITS)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(w / scale.view(-1, 1))
        assert float(q.abs().sum(1).max()) * (1 << WIDE_BITS) < F64_EXACT
        self.weight.copy_(q.to(torch.int32))
        self.w_scale.copy_(scale)
        self.bias.copy_(lin.bias.detach().double())
        self.prepare()

    def forward(self, x: Tensor) -> Tensor:
        x = x.double()
        top = x.abs().amax(1, keepdim=True)
        s = torch.where(top > 0, top, torch.ones_like(top)) / tensor_like(1 << WIDE_BITS, x)
        w = self.derived("weight", x.device, lambda: self.weight.double().t())
        acc = torch.round(x / s) @ w
        return acc * s * self.w_scale + self.bias
