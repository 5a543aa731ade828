"""The model's -ELBO in bits per dimension, with each term and a confidence interval."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .model.mulan import MuLAN


@torch.no_grad()
def evaluate(model: MuLAN, images: np.ndarray, steps: int = 100, batch_size: int = 256,
             device: str | torch.device = "cpu", seed: int = 0, repeats: int = 1,
             progress: Any = None) -> dict[str, Any]:
    """Monte Carlo -ELBO of (N, H, W, C) uint8 images, continuous-time and at T = `steps`.

    Each image gets `repeats` independent samples of (c, z_0, t) per bound; the
    95% interval covers both image-to-image spread and sampling noise.
    """
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(images)
    keys = ("diffusion", "recon", "prior", "latent")
    cont = {k: np.zeros(n) for k in keys}
    disc = np.zeros(n)
    for r in range(repeats):
        for i in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
            x = x.permute(0, 3, 1, 2)
            tc = model.terms(x, 0, gen)
            td = model.terms(x, steps, gen) if steps else tc
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
        "dims_per_image": int(np.prod(images.shape[1:])),
        "repeats": repeats,
        "seed": seed,
    }
    for k in keys:
        out[k] = float(cont[k].mean())
    return out
