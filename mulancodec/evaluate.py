"""The model's -ELBO in bits per dimension, with each term and a confidence interval."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .data import TileSet
from .model.mulan import MuLAN, context_channels


def batch_tensors(tiles: TileSet, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B,3,S,S) pixels and the context input (None without context) of a TileSet."""
    x = torch.from_numpy(np.ascontiguousarray(tiles.x)).to(device).permute(0, 3, 1, 2)
    if tiles.window is None or tiles.known is None:
        return x, None
    w = torch.from_numpy(np.ascontiguousarray(tiles.window)).to(device).permute(0, 3, 1, 2)
    k = torch.from_numpy(np.ascontiguousarray(tiles.known)).to(device)[:, None]
    return x, context_channels(w, k)


@torch.no_grad()
def evaluate(model: MuLAN, images: TileSet | np.ndarray, steps: int = 100, batch_size: int = 256,
             device: str | torch.device = "cpu", seed: int = 0, repeats: int = 1,
             progress: Any = None) -> dict[str, Any]:
    """Monte Carlo -ELBO of tiles ((N, H, W, C) uint8 or a TileSet with context),
    continuous-time and at T = `steps`.

    Each image gets `repeats` independent samples of (c, z_0, t) per bound; the
    95% interval covers both image-to-image spread and sampling noise.
    """
    model.eval()
    if not isinstance(images, TileSet):
        images = TileSet(images)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(images)
    keys = ("diffusion", "recon", "prior", "latent")
    cont = {k: np.zeros(n) for k in keys}
    disc = np.zeros(n)
    for r in range(repeats):
        for i in range(0, n, batch_size):
            x, ctx = batch_tensors(images.take(slice(i, i + batch_size)), device)
            tc = model.terms(x, 0, gen, ctx=ctx)
            td = model.terms(x, steps, gen, ctx=ctx) if steps else tc
            for k in keys:
                cont[k][i:i + len(x)] += getattr(tc, k).double().cpu().numpy() / repeats
            disc[i:i + len(x)] += td.total.double().cpu().numpy() / repeats
            if progress is not None:
                progress.update(len(x))
    total = sum(cont[k] for k in keys)

    def ci(v: np.ndarray) -> list[float]:
        half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        return [float(v.mean() - half), float(v.mean() + half)]

    out: dict[str, Any] = {
        "bpd": float(total.mean()),
        "bpd_ci95": ci(total),
        "steps": steps,
        "bpd_T": float(disc.mean()),
        "bpd_T_ci95": ci(disc),
        "n_images": n,
        "dims_per_image": int(np.prod(images.x.shape[1:])),
        "repeats": repeats,
        "seed": seed,
    }
    for k in keys:
        out[k] = float(cont[k].mean())
    return out
