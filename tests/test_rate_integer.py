"""An integer model's coder pays its -ELBO_T too (see test_rate.py for the float model).

The version-3 chain computes the same per-step Gaussians as the loss, with
exactmath's functions and the integer networks; its net stack growth on smooth
tiles is compared with the integer model's -ELBO_T summed over every step
(quantcost.elbo_terms with one step from each of T strata: all of them).
"""
import numpy as np
import torch
from conftest import CIFAR10_INT_MODEL, smooth_image
from test_rate import MAX_OVERHEAD, N_TILES, T, coded_rate

from mulancodec.exact.quantcost import StratifiedDraws, elbo_terms
from mulancodec.weights import load_model


def test_integer_rate_matches_its_elbo():
    torch.set_num_threads(1)
    model = load_model(CIFAR10_INT_MODEL).model
    S = model.cfg.tile
    rng = np.random.default_rng(11)
    tiles = np.stack([smooth_image(rng, S, S, 3) for _ in range(N_TILES)])
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(0)
    per_tile = []
    for i in range(0, N_TILES, 16):
        d = StratifiedDraws.draw(gen, x[i:i + 16], model.latent_shape(S, S), T, T)  # every step once
        per_tile.append(elbo_terms(model, x[i:i + 16], None, d)["total"])
    elbo = torch.cat(per_tile)
    mean, se = float(elbo.mean()), float(elbo.std() / len(elbo) ** 0.5)
    rate = coded_rate(model, tiles)
    print(f"integer model: rate {rate:.4f} bpd, -ELBO_T {mean:.4f} +- {se:.4f}")
    assert -3 * se * 2 ** 0.5 < rate - mean < MAX_OVERHEAD + 3 * se * 2 ** 0.5
