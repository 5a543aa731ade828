"""The coder pays what the loss reports: stream size against the model's -ELBO at T.

Bits-back round-trips exactly under any pair of distributions the encoder and
decoder agree on, so a wrong distribution only makes files bigger, and no
round-trip test can see it. This test can: it compares the bits the chain
adds to the stack with the model's -ELBO_T on the same tiles, and shows that
a 1.5x error in the reverse step's std is caught. (A wrong std can make a file
smaller than the loss says, when the model's errors exceed the fixed reverse
variance: what matters is that the coder pays exactly what the loss reports.)
"""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import CIFAR10_LV_MODEL, CIFAR10_MODEL, smooth_image

from mulancodec.coding import bitsback
from mulancodec.coding.bitsback import ChainSpec, TileBatch, encode_batch
from mulancodec.coding.codecs import Stack
from mulancodec.imaging.image import TileJob

T = 20
# The coder may cost a little more than -ELBO_T (measured +0.18 bpd at T = 20 here: the
# coding windows' minimum symbol mass, which grows with the window, so a finer grid costs
# more: +0.35 at kappa = 0.5, +0.50 at 0.25), never less; beyond 3 standard errors.
MAX_OVERHEAD = 0.25
N_TILES = 48


def elbo_T(model, tiles: np.ndarray, repeats: int) -> tuple[float, float]:
    """-ELBO_T per subpixel summed over every step (no sampled step): mean, standard error."""
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(0)
    per_tile = torch.zeros(repeats, len(tiles), dtype=torch.float64)
    with torch.no_grad():
        for r in range(repeats):
            for i in range(1, T + 1):
                t = torch.full((len(tiles),), i / T)
                per_tile[r] += model.terms(x, T, gen, t=t).total.double() / T
    m = per_tile.mean(0)
    return float(m.mean()), float(m.std() / len(m) ** 0.5)


def learned_variance_model(model):
    """The trained model with a learned reverse variance (mse-hat varying by subpixel around
    0.3) and learned end points moved off the config's: the chain must still pay -ELBO_T."""
    from mulancodec.model.mulan import MuLAN
    from mulancodec.training.loop import warm_start

    cfg = dataclasses.replace(model.cfg, reverse_variance="learned", learned_ends=True)
    lv = MuLAN(cfg).eval()
    warm_start(lv, str(CIFAR10_MODEL))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = lv.denoiser.conv_out
        out.weight[3:] = 0.02 * torch.randn(out.weight[3:].shape, generator=g)
        out.bias[3:] = -0.85
        lv.schedule_net.ends += torch.tensor([0.4, -0.05])
    return lv


@pytest.fixture(scope="module", params=["fixed variance", "learned variance", "T-trained", "denoiser decoder"])
def setup(request):
    """A trained model (a random one's -ELBO_T is too heavy-tailed to estimate) on smooth tiles."""
    from mulancodec.weights import load_model

    torch.set_num_threads(1)
    model = load_model(CIFAR10_LV_MODEL if request.param == "T-trained" else CIFAR10_MODEL).model
    if request.param in ("learned variance", "denoiser decoder"):
        model = learned_variance_model(model)
    if request.param == "denoiser decoder":  # p(x | z_0) through the network (`decoder_params`)
        from mulancodec.model.mulan import MuLAN

        dec = MuLAN(dataclasses.replace(model.cfg, decoder="denoiser")).eval()
        dec.load_state_dict(model.state_dict())
        model = dec
    S = model.cfg.tile
    rng = np.random.default_rng(11)
    tiles = np.stack([smooth_image(rng, S, S, 3) for _ in range(N_TILES)])
    return model, tiles, elbo_T(model, tiles, repeats=2)


def coded_rate(model, tiles) -> float:
    """Net bits the chain adds to the stack per subpixel (its expected value is -ELBO_T)."""
    S = model.cfg.tile
    src = np.arange(3 * S * S)
    coded = np.ones(3 * S * S, bool)
    stack = Stack(seed=1 << 16)
    start = stack.bits()
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        for i in range(0, len(tiles), 16):
            jobs = [TileJob(src, coded)] * len(x[i:i + 16])
            tb = TileBatch(model, ChainSpec(steps=T), jobs, S, torch.device("cpu"))
            encode_batch(stack, tb, x[i:i + 16])
    return (stack.bits() - start) / tiles.size


def test_rate_matches_elbo(setup):
    model, tiles, elbo = setup
    rate = coded_rate(model, tiles)
    mean, se = elbo
    print(f"rate {rate:.4f} bpd, -ELBO_T {mean:.4f} +- {se:.4f}")
    assert -3 * se * 2 ** 0.5 < rate - mean < MAX_OVERHEAD + 3 * se * 2 ** 0.5


def test_rate_test_catches_a_wrong_std(setup, monkeypatch):
    model, tiles, elbo = setup
    right = bitsback.reverse_step

    def wide(z_t, eps_hat, g_s, g_t, mse_hat=None, **kw):
        mean, std = right(z_t, eps_hat, g_s, g_t, mse_hat, **kw)
        return mean, 1.5 * std

    monkeypatch.setattr(bitsback, "reverse_step", wide)
    rate = coded_rate(model, tiles)
    mean, se = elbo
    print(f"rate with a 1.5x reverse std {rate:.4f} bpd, -ELBO_T {mean:.4f} +- {se:.4f}")
    assert not -3 * se * 2 ** 0.5 < rate - mean < MAX_OVERHEAD + 3 * se * 2 ** 0.5
