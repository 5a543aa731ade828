"""Post-training quantisation: an IntegerMuLAN (format version 3's model) from a float MuLAN.

The float model's weights are rounded to integers and each activation grid is
fitted to what the float model computes on calibration tiles: training-like
inputs (c drawn from q(c | x), t spread over [0, 1], z_t drawn from q(z_t | x),
context masks as training draws them). The result depends on the tiles and the
seed, so it is stored (`weights.save_integer_model`), never rebuilt by a decoder.
"""
from __future__ import annotations

import numpy as np
import torch

from ..model.mulan import MuLAN, alpha_sigma, to_unit
from ..training.data import RandomCrops, TileSet, batch_tensors, load_images
from .integer import SCHEME, IntegerMuLAN

CALIBRATION_TILES = 48


def calibration_tiles(paths: str | list[str], tile: int, margin: int, n: int = CALIBRATION_TILES,
                      seed: int = 0) -> TileSet:
    """n random training-style crops (with context masks) from these images."""
    return RandomCrops(load_images(paths), tile, margin, seed).batch(0, n)


@torch.no_grad()
def quantize(model: MuLAN, tiles: TileSet | np.ndarray, seed: int = 0, scheme: int = SCHEME) -> IntegerMuLAN:
    """The integer model of `model` (integer `scheme`), with grids calibrated on `tiles` (CPU)."""
    model = model.eval().cpu()
    if not isinstance(tiles, TileSet):
        tiles = TileSet(tiles)
    x, ctx = batch_tensors(tiles, "cpu")
    gen = torch.Generator().manual_seed(seed)
    xu = to_unit(x)
    post = model.latent_posterior(xu)
    c = None if post is None else post[0] + post[1] * torch.randn(post[0].shape, generator=gen)
    sched = model.schedule(c, xu, ctx)
    B = len(x)
    t = (torch.arange(B) + torch.rand(B, generator=gen)) / B
    g = sched.gamma(t).expand_as(xu)
    a, s = alpha_sigma(g)
    z = a * xu + s * torch.randn(xu.shape, generator=gen)
    qm = IntegerMuLAN(model.cfg, scheme)
    if qm.encoder is not None:
        qm.encoder.calibrate(model.encoder, xu)
    qm.schedule_net.calibrate(model.schedule_net, c, ctx)
    qm.denoiser.calibrate(model.denoiser, z, model.gamma_norm(g), c, ctx)
    return qm.prepare().eval()
