"""One -ELBO assembly (`model.mulan.elbo`) behind the loss, the float eval and the integer
model's cost: what differs between them (draws, arithmetic) is passed in."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, smooth_image

from mulancodec.coding.chainspec import DEFAULT_STEPS
from mulancodec.exact.exactmath import EXACT
from mulancodec.exact.quantcost import StratifiedDraws, elbo_terms, evaluate_steps
from mulancodec.exact.quantize import quantize
from mulancodec.model.elementary import TORCH
from mulancodec.model.mulan import LOSS, TERMS, AntitheticDraws, Arithmetic, context_channels, elbo
from mulancodec.training.data import RandomCrops, TileSet
from mulancodec.training.evaluate import EXACT_BATCH, evaluate


class FixedDraws:
    """The same noise and one discrete step per image, in a given dtype."""

    def __init__(self, model, x: torch.Tensor, T: int, dtype: torch.dtype, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        shape = (x.shape[0], *model.latent_shape(x.shape[2], x.shape[3]))
        self.c, self.z = torch.randn(shape, generator=g), torch.randn(x.shape, generator=g)
        self.eps = torch.randn(x.shape, generator=g)
        self.i = torch.randint(1, T + 1, (x.shape[0],), generator=g).to(dtype)
        self.T, self.dtype = T, dtype

    def latent(self, shape):
        return self.c.to(self.dtype)

    def z0(self, shape):
        return self.z.to(self.dtype)

    def diffusion(self, step, shape):
        return self.T * step(self.i / self.T, (self.i - 1) / self.T, self.eps.to(self.dtype)).flatten(1).sum(1)

    def reconstruction(self, recon, batch):
        return recon(None)


def _inputs(model, n: int = 4, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    S, m = model.cfg.tile, model.cfg.context
    x = torch.randint(0, 256, (n, 3, S, S), generator=g)
    if not m:
        return x, None
    w = torch.randint(0, 256, (n, 3, S + 2 * m, S + 2 * m), generator=g)
    return x, context_channels(w, torch.rand((n, 1, S + 2 * m, S + 2 * m), generator=g) < 0.5)


@pytest.mark.parametrize("config", ["tiny", "tiny-scalar", "tiny-nolatent", "tiny-lv", "tiny-dec"])
def test_the_loss_and_the_codecs_arithmetic_differ_only_in_precision(config):
    m = make_tiny_model(1, config)
    x, ctx = _inputs(m)
    with torch.no_grad():
        loss = elbo(m, x, FixedDraws(m, x, 5, torch.float32), ctx, LOSS)
        coder = elbo(m, x, FixedDraws(m, x, 5, torch.float64), ctx, Arithmetic.coder(m))
    assert Arithmetic.coder(m) == Arithmetic(torch.float64, TORCH, True)
    for t in TERMS:
        a, b = getattr(loss, t), getattr(coder, t)
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5), t


def test_the_training_loss_is_the_assembly_with_antithetic_draws():
    m = make_tiny_model(0, "tiny-lv").train()
    x, ctx = _inputs(m)
    for steps in (0, 4):
        torch.manual_seed(0)
        a = m(x, steps, torch.Generator().manual_seed(3), ctx=ctx)
        torch.manual_seed(0)
        b = elbo(m, x, AntitheticDraws(torch.Generator().manual_seed(3), x.device, steps), ctx)
        assert all(torch.equal(getattr(a, t), getattr(b, t)) for t in TERMS)
        a.total.mean().backward()  # the loss's arithmetic keeps the graph


def test_the_integer_cost_is_the_assembly_in_the_codecs_arithmetic():
    m = make_tiny_model(0, "tiny-lv")
    x, ctx = _inputs(m, 3)
    d = StratifiedDraws.draw(torch.Generator().manual_seed(1), x, m.latent_shape(16, 16), 6, 3)
    got = elbo_terms(m, x, ctx, d)
    want = elbo(m, x, d, ctx, Arithmetic(torch.float64, m.elementary, True))
    assert all(torch.equal(got[t], getattr(want, t)) for t in TERMS)
    assert torch.equal(got["total"], want.total) and got["total"].dtype == torch.float64


@pytest.fixture(scope="module")
def integer_model():
    m = make_tiny_model(0, "tiny-lv")
    rng = np.random.default_rng(4)
    images = [smooth_image(rng, 48, 48, 3) for _ in range(4)]
    return quantize(m, RandomCrops(images, m.cfg.tile, m.cfg.context, 0).batch(0, 24))


def test_evaluate_takes_any_model_and_the_default_T(integer_model):
    """No branch on the model's class at the caller: `evaluate` gives an integer model the
    codec's cost at T (what `eval` printed for it) and a float model both bounds."""
    assert integer_model.elementary is EXACT
    rng = np.random.default_rng(5)
    S, m = 16, 8
    tiles = TileSet(np.stack([smooth_image(rng, S, S, 3) for _ in range(3)]),
                    np.stack([smooth_image(rng, S + 2 * m, S + 2 * m, 3) for _ in range(3)]),
                    rng.random((3, S + 2 * m, S + 2 * m)) < 0.5)
    res = evaluate(integer_model, tiles, 4, batch_size=256, seed=2)
    assert res == evaluate_steps(integer_model, tiles, 4, min(256, EXACT_BATCH), 2)
    assert res["bpd"] is None and res["steps"] == 4
    with pytest.raises(ValueError, match="continuous"):
        evaluate(integer_model, tiles, 0)
    float_res = evaluate(make_tiny_model(0, "tiny-lv"), tiles, batch_size=2)
    assert float_res["steps"] == DEFAULT_STEPS and float_res["bpd"] is not None
