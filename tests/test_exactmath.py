"""exactmath: close to torch's functions, and the same bits whatever kernel path computes them.

A tensor of one element runs torch's scalar code, a long one its vectorised code,
and a strided view yet another loop: elementwise IEEE operations must give the
same bits in all three (a library exp or an FMA-contracted kernel need not).
"""
import math
from decimal import Decimal, getcontext

import pytest
import torch
import torch.nn.functional as F

from mulancodec.exact import exactmath as em
from mulancodec.model.mulan import alpha_sigma, decoder_params, forward_step, reverse_step

X = torch.cat([torch.linspace(-40, 40, 40_001, dtype=torch.float64),
               torch.logspace(-12, -1, 1001, dtype=torch.float64)])

CASES = [("exp", em.exp, torch.exp, X), ("expm1", em.expm1, torch.expm1, X.clamp(-5, 5)),
         ("sigmoid", em.sigmoid, torch.sigmoid, X), ("softplus", em.softplus, F.softplus, X.clamp(-15, 15)),
         ("silu", em.silu, F.silu, X), ("sin", lambda v: em.sin_cos(v)[0], torch.sin, X * 25),
         ("cos", lambda v: em.sin_cos(v)[1], torch.cos, X * 25)]


@pytest.mark.parametrize("name,ours,ref,x", CASES, ids=[c[0] for c in CASES])
def test_close_to_torch(name, ours, ref, x):
    got, want = ours(x), ref(x)
    assert got.dtype == torch.float64
    tol = 4e-16 * want.abs() + (2e-16 if name in ("sin", "cos", "silu") else 1e-300)
    assert bool(((got - want).abs() <= 4 * tol).all()), float(((got - want).abs() / tol).max())


@pytest.mark.parametrize("name,ours,ref,x", CASES, ids=[c[0] for c in CASES])
def test_same_bits_on_every_kernel_path(name, ours, ref, x):
    whole = ours(x)
    strided = ours(x.repeat_interleave(3)[::3])
    ones = torch.stack([ours(x[i:i + 1])[0] for i in range(0, len(x), 997)])
    assert torch.equal(whole, strided)
    assert torch.equal(whole[::997], ones)


def test_constants_come_from_decimal():
    getcontext().prec = 40
    assert em.LN_10000 == float(Decimal(10000).ln())
    assert em.pow2(torch.tensor([-1022.0, 0.0, 1023.0], dtype=torch.float64)).tolist() == [
        2.0 ** -1022, 1.0, 2.0 ** 1023]


def test_the_chain_gaussians_agree_with_torchs():
    """The codec's exact Gaussians are the loss's, up to rounding."""
    g = torch.linspace(-13.3, 5.0, 101, dtype=torch.float64)
    z = torch.linspace(-2, 2, 100, dtype=torch.float64)
    pairs = [(alpha_sigma(g), alpha_sigma(g, em.EXACT)),
             (forward_step(z, g[:-1], g[1:]), forward_step(z, g[:-1], g[1:], em.EXACT)),
             (reverse_step(z, z / 3, g[:-1], g[1:], z.abs() / 2),
              reverse_step(z, z / 3, g[:-1], g[1:], z.abs() / 2, fns=em.EXACT)),
             (decoder_params(z[:1], g), decoder_params(z[:1], g, em.EXACT))]
    for want, got in pairs:
        for a, b in zip(want, got):
            assert torch.allclose(a, b, rtol=1e-14, atol=0)


def test_saturates_beyond_its_range():
    big = torch.tensor([-1e6, 1e6], dtype=torch.float64)
    assert torch.equal(em.exp(big), em.exp(big.clamp(-em.EXP_LIMIT, em.EXP_LIMIT)))
    assert bool(torch.isfinite(em.sigmoid(big)).all()) and bool(torch.isfinite(em.sin_cos(big)[0]).all())
    assert math.isclose(float(em.sigmoid(torch.tensor(0.0, dtype=torch.float64))), 0.5)


@pytest.mark.parametrize("coefs", [em._EXPM1_TAYLOR, em._SIN_TAYLOR, em._ATANH_TAYLOR], ids=["expm1", "sin", "atanh"])
def test_horner_in_place_rounds_like_the_textbook_loop(coefs):
    """`_horner` works in place on one tensor; its roundings must be the textbook loop's
    (acc = acc * x + c), or every exact function would change its bits."""
    x = torch.cat([X, -X, X * 1e-3]) / 40
    acc = torch.full_like(x, coefs[-1])
    for c in reversed(coefs[:-1]):
        acc = acc * x + c
    assert torch.equal(em._horner(x, coefs).view(torch.int64), acc.view(torch.int64))
