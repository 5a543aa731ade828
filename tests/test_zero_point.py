"""Integer scheme 2: SiLU outputs on grids with zero points.

The grid of each channel spans [min, max] of its calibrated outputs (and 0), so
its step is about half that of scheme 1's grid symmetric about 0. The
convolutions reading such integers pad with the zero point and fold the weights'
sum times it into the bias: their real outputs must be those of the float
convolution of the dequantised input, borders included. Scheme 1 files still
load as scheme 1 (the golden version-3 files use one).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model, smooth_image, training_like_inputs
from torch import nn

from mulancodec.exact import exactmath as em
from mulancodec.exact.intnorm import Tables
from mulancodec.exact.intops import LIMB_MAX, QConv
from mulancodec.exact.quantize import quantize
from mulancodec.training.data import RandomCrops, batch_tensors
from mulancodec.weights import load_model, save_integer_model


def test_a_zero_point_convolution_is_the_float_convolution_of_its_real_input():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    scale = torch.rand(6, generator=g, dtype=torch.float64) * 0.01 + 0.001
    zero = torch.tensor([-200.0, -3.0, 0.0, 17.0, 120.0, 255.0], dtype=torch.float64)
    q = QConv(6, 5, 3, 1, 1, zero_point=True)
    q.quantize(conv, scale, in_zero=zero)
    assert q.exact()
    x = torch.randint(-LIMB_MAX, LIMB_MAX + 1, (2, 6, 7, 9), generator=g).float()
    got = q.real(q(x))
    real_in = (x.double() - zero.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)  # zero-padded below
    w = q.weight.double() * q.w_scale.view(-1, 1, 1, 1) / scale.view(1, -1, 1, 1)
    want = F.conv2d(real_in, w, conv.bias.detach().double(), padding=1)
    assert torch.allclose(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    plain = F.conv2d(x.double(), q.weight.double(), padding=1)  # padding with 0 would differ at borders
    assert not torch.allclose(got, plain * q.w_scale.view(1, -1, 1, 1) + q.bias.view(1, -1, 1, 1))


def test_silu_tables_with_zero_points_use_both_ends_of_the_grid():
    x = torch.linspace(-6, 4, 1000).view(1, 1, -1).repeat(1, 2, 1)
    x[:, 1] *= 0.5  # another range per channel
    sym, zp = Tables(2, em.silu, 1), Tables(2, em.silu, 1, zero_point=True)
    for t in (sym, zp):
        t.calibrate(x)
    assert float(sym.table.min()) > -0.2 * LIMB_MAX  # symmetric: SiLU's negative side is short
    table = zp.table.view(2, -1)
    assert torch.equal(table.amax(1), torch.full((2,), float(LIMB_MAX)))
    assert bool((table.amin(1) <= -LIMB_MAX + 1).all())
    assert bool((zp.out_scale < 0.6 * sym.out_scale).all())  # (max - min) / 2 max: about half the step
    k = torch.arange(table.shape[1], dtype=torch.float64) - (table.shape[1] // 2)
    real = (table.double() - zp.zero.view(-1, 1)) * zp.out_scale.view(-1, 1)
    want = em.silu(k.view(1, -1) * zp.step.view(-1, 1))
    y = em.silu(x.double())
    inside = (want >= y.amin(2).view(-1, 1)) & (want <= y.amax(2).view(-1, 1))  # the calibrated range
    step = zp.out_scale.view(-1, 1).expand_as(want)
    assert bool(((real - want).abs()[inside] <= 0.5 * step[inside] * (1 + 1e-9)).all())


def test_zero_points_shrink_the_integer_models_error():
    m = make_tiny_model(0, "tiny-lv")
    rng = np.random.default_rng(1)
    images = [smooth_image(rng, 48, 48, 3) for _ in range(4)]
    tiles = RandomCrops(images, m.cfg.tile, m.cfg.context, 1).batch(0, 24)
    x, ctx = batch_tensors(RandomCrops(images, m.cfg.tile, m.cfg.context, 2).batch(0, 16), "cpu")
    c, gamma, z = training_like_inputs(m, x, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m.denoise(z, gamma, c, ctx)[0].double()
        err = {k: float((quantize(m, tiles, scheme=k).denoise(z, gamma, c, ctx)[0] - ref).pow(2).mean())
               for k in (1, 2)}
    assert err[2] < 0.9 * err[1]  # (on this random tiny net other rounding weighs more than on photo)


def test_both_schemes_save_and_load(tmp_path):
    m = make_tiny_model(0, "tiny")
    rng = np.random.default_rng(4)
    tiles = RandomCrops([smooth_image(rng, 48, 48, 3) for _ in range(2)], m.cfg.tile, m.cfg.context, 0).batch(0, 8)
    for scheme in (1, 2):
        qm = quantize(m, tiles, scheme=scheme)
        p = tmp_path / f"s{scheme}.safetensors"
        mid = save_integer_model(qm, p, "f" * 16)
        lm = load_model(p)
        assert lm.model_id == mid and lm.meta["scheme"] == str(scheme) and lm.model.scheme == scheme
        has_zero = any(k.endswith("in_zero") for k in lm.model.state_dict())
        assert has_zero == (scheme == 2)


def test_a_requantised_convolution_forgets_its_padding_rings():
    g = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    scale = torch.full((3,), 0.01, dtype=torch.float64)
    q = QConv(3, 4, 3, 1, 1, zero_point=True)
    x = torch.randint(-LIMB_MAX, LIMB_MAX + 1, (1, 3, 5, 6), generator=g).float()
    outs = []
    for zero in ([0.0, 0.0, 0.0], [100.0, -50.0, 7.0]):
        q.quantize(conv, scale, in_zero=torch.tensor(zero, dtype=torch.float64))
        outs.append(q.real(q(x)))
        want = F.conv2d((x.double() - q.in_zero.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1),
                        q.weight.double() * q.w_scale.view(-1, 1, 1, 1) / scale.view(1, -1, 1, 1),
                        conv.bias.detach().double(), padding=1)
        assert torch.allclose(outs[-1], want, rtol=0, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("zero_point", [False, True])
def test_a_requantised_convolution_forgets_its_weights_in_the_carrier(zero_point):
    """QConv keeps its weights converted to the carrier; quantising other weights into it
    must give what a fresh convolution quantised from them gives."""
    g = torch.Generator().manual_seed(6)
    first, second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
    scale = torch.full((3,), 0.01, dtype=torch.float64)
    zero = torch.tensor([3.0, -2.0, 0.0], dtype=torch.float64) if zero_point else None
    x = torch.randint(-LIMB_MAX, LIMB_MAX + 1, (2, 3, 5, 6), generator=g).float()
    reused, fresh = QConv(3, 4, 3, 1, 1, zero_point=zero_point), QConv(3, 4, 3, 1, 1, zero_point=zero_point)
    reused.quantize(first, scale, in_zero=zero)
    reused(x)
    reused.quantize(second, scale, in_zero=zero)
    fresh.quantize(second, scale, in_zero=zero)
    assert torch.equal(reused(x), fresh(x))
