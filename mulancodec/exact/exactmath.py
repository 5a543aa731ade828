"""Elementary functions that give the same float64 bits on every machine.

A library's exp, expm1, sigmoid or sin may differ by an ulp between CPU kernel
families, GPUs and versions, and a decoder that rebuilds a probability from such
a value differently from its encoder cannot decode. These are built from
operations IEEE 754 rounds correctly (+, -, *, sqrt, comparisons, rounding to an
integer) and exact scaling by powers of two, applied elementwise in a fixed
order, so their results are identical wherever they run. No division by a
Python scalar appears: CUDA computes that as a multiplication by the reciprocal.

Accuracy is a few ulps over the ranges the codec uses (|x| <= 700 for exp, up to
about 1e5 for sin and cos); beyond them results saturate, deterministically.

`EXACT` is the `model.elementary.Elementary` of these functions: what the integer
codec's chain arithmetic computes the per-step Gaussians of `model.mulan` with.
"""
from __future__ import annotations

import math
from decimal import Decimal, getcontext
from typing import Callable

import torch
from torch import Tensor

from ..model.elementary import Elementary

# Cody-Waite splits of ln 2 and pi/2 (fdlibm): the high parts have enough trailing zero
# bits that k * HI is exact for the k these ranges produce.
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e+00
PIO2_1 = 1.57079632673412561417e+00
PIO2_2 = 6.07710050630396597660e-11
PIO2_3 = 2.02226624871116645580e-21
INV_PIO2 = 6.36619772367581382433e-01
EXP_LIMIT = 700.0  # |x| beyond this saturates (2^k stays a normal number)
TRIG_LIMIT = 1e5  # |x| beyond this saturates (k * PIO2_1 stays exact)
_EXPM1_TAYLOR = [1.0 / math.factorial(n) for n in range(1, 16)]  # |r| <= 0.35: error < 1e-19
_SIN_TAYLOR = [(-1.0) ** n / math.factorial(2 * n + 1) for n in range(10)]
_COS_TAYLOR = [(-1.0) ** n / math.factorial(2 * n) for n in range(10)]
_ATANH_TAYLOR = [2.0 / (2 * n + 1) for n in range(18)]  # s <= 1/3: error < 1e-18


def decimal_constant(expr: Callable[[], Decimal]) -> float:
    """A constant from Python's decimal module (correctly rounded, so the same float
    everywhere; `math.log` may differ by an ulp between C libraries)."""
    getcontext().prec = 40
    return float(expr())


LN_10000 = decimal_constant(lambda: Decimal(10000).ln())


def _horner(x: Tensor, coefs: list[float]) -> Tensor:
    """coefs[0] + x (coefs[1] + x (...)), innermost first (in place on one fresh tensor:
    the same roundings, a multiply then an add per coefficient)."""
    acc = x * coefs[-1]
    for j in range(len(coefs) - 2, -1, -1):
        acc.add_(coefs[j])
        if j:
            acc.mul_(x)
    return acc


def pow2(k: Tensor) -> Tensor:
    """2^k for integer-valued float64 k in [-1022, 1023], built from its bits (exact)."""
    bits = (k.to(torch.int64) + 1023) << 52
    return bits.view(torch.float64)


def _expm1_small(r: Tensor) -> Tensor:
    """expm1 for |r| <= 0.35 by its Taylor series."""
    return _horner(r, _EXPM1_TAYLOR).mul_(r)


def _reduce_ln2(x: Tensor) -> tuple[Tensor, Tensor]:
    """x = k ln 2 + r with integer k and |r| <= 0.35."""
    x = x.clamp(-EXP_LIMIT, EXP_LIMIT)
    k = torch.round(x * INV_LN2)
    return k, (x - k * LN2_HI) - k * LN2_LO


def exp(x: Tensor) -> Tensor:
    """e^x (float64)."""
    k, r = _reduce_ln2(x.double())
    return _expm1_small(r).add_(1.0).mul_(pow2(k))


def expm1(x: Tensor) -> Tensor:
    """e^x - 1 (float64), accurate to a few ulps near 0 too."""
    x = x.double()
    small = _expm1_small(x.clamp(-0.35, 0.35))
    return torch.where(x.abs() <= 0.35, small, exp(x) - 1.0)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + e^-x) (float64)."""
    one = torch.ones_like(x, dtype=torch.float64)
    return one / exp(-x.double()).add_(1.0)


def log1p_unit(u: Tensor) -> Tensor:
    """log(1 + u) for u in [0, 1] (float64): 2 atanh(u / (2 + u)) by its series."""
    u = u.double()
    s = u / (u + 2.0)
    return s * _horner(s * s, _ATANH_TAYLOR)


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) (float64)."""
    x = x.double()
    return x.clamp(min=0.0) + log1p_unit(exp(-x.abs()))


def silu(x: Tensor) -> Tensor:
    """x sigmoid(x) (float64)."""
    return x.double() * sigmoid(x)


def _reduce_pio2(x: Tensor) -> tuple[Tensor, Tensor]:
    """x = k pi/2 + r with integer k (as int64, mod 4) and |r| <= pi/4 (about)."""
    x = x.double().clamp(-TRIG_LIMIT, TRIG_LIMIT)
    k = torch.round(x * INV_PIO2)
    r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3
    return torch.remainder(k.to(torch.int64), 4), r


def sin_cos(x: Tensor) -> tuple[Tensor, Tensor]:
    """(sin x, cos x) (float64)."""
    q, r = _reduce_pio2(x)
    r2 = r * r
    s = r * _horner(r2, _SIN_TAYLOR)
    c = _horner(r2, _COS_TAYLOR)
    sin = torch.where(q == 0, s, torch.where(q == 1, c, torch.where(q == 2, -s, -c)))
    cos = torch.where(q == 0, c, torch.where(q == 1, -s, torch.where(q == 2, -c, s)))
    return sin, cos


EXACT = Elementary(exp, expm1, sigmoid, torch.sqrt)  # sqrt is correctly rounded by IEEE 754
