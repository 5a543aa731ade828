"""The model's -ELBO in bits per dimension, with each term and a confidence interval.

The terms are `model.mulan.elbo`'s, the training loss's own assembly: for a float
model with the loss's arithmetic and draws (`AntitheticDraws`), for an integer
model (exact, no training loss) with the codec's (`quantcost.evaluate_steps`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..coding.chainspec import chain_steps
from ..coding.exact import is_exact
from ..exact.quantcost import ci95, evaluate_steps
from ..model.mulan import TERMS, AntitheticDraws, ElboModel, MuLAN, elbo
from .data import TileSet, batch_tensors

EXACT_BATCH = 64  # tiles per batch at most for an integer model's eval (its networks are wide)


def _bound(model: MuLAN, images: TileSet, steps: int, batch_size: int, device: str | torch.device,
           seed: int, repeats: int, progress: Any = None) -> dict[str, np.ndarray]:
    """Per-image -ELBO terms (bpd) at T = steps (0: continuous), averaged over `repeats`.

    The generator restarts at `seed`, so two calls (another T, another model with the
    same latent shape) draw the same c, z_0, t and eps: their difference is paired.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(images)
    out = {k: np.zeros(n) for k in TERMS}
    for _ in range(repeats):
        for i in range(0, n, batch_size):
            x, ctx = batch_tensors(images.take(slice(i, i + batch_size)), device)
            terms = elbo(model, x, AntitheticDraws(gen, x.device, steps), ctx)
            for k in TERMS:
                out[k][i:i + len(x)] += getattr(terms, k).double().cpu().numpy() / repeats
            if progress is not None:
                progress.update(len(x))
    return out


@torch.no_grad()
def evaluate(model: ElboModel, images: TileSet | np.ndarray, steps: int | None = None,
             batch_size: int = 256, device: str | torch.device = "cpu", seed: int = 0, repeats: int = 1,
             progress: Any = None) -> dict[str, Any]:
    """Monte Carlo -ELBO of tiles ((N, H, W, C) uint8 or a TileSet with context),
    continuous-time and at T = `steps` (default: `chain_steps`).

    Each image gets `repeats` independent samples of (c, z_0, t) per bound, the same
    ones for both bounds (so their difference, the discrete-time gap, is paired); the
    95% interval covers both image-to-image spread and sampling noise. An integer model
    has no training loss, hence no continuous bound: its fields are the codec's cost at
    T (`quantcost.evaluate_steps`, on the CPU; "bpd" is None), and T must be at least 1.
    """
    steps = chain_steps(steps=steps)
    model.eval()
    if not isinstance(images, TileSet):
        images = TileSet(images)
    if is_exact(model):  # an integer model
        return _exact_bound(model, images, steps, batch_size, seed, repeats, progress)
    cont = _bound(model, images, 0, batch_size, device, seed, repeats, progress)
    disc = _bound(model, images, steps, batch_size, device, seed, repeats, progress) if steps else cont
    total = sum(cont[k] for k in TERMS)
    disc_total = sum(disc[k] for k in TERMS)
    out: dict[str, Any] = {
        "bpd": float(total.mean()),
        "bpd_ci95": ci95(total),
        "steps": steps,
        "bpd_T": float(disc_total.mean()),
        "bpd_T_ci95": ci95(disc_total),
        "n_images": len(images),
        "dims_per_image": int(np.prod(images.x.shape[1:])),
        "repeats": repeats,
        "seed": seed,
    }
    for k in TERMS:
        out[k] = float(cont[k].mean())
    return out


def _exact_bound(model: ElboModel, images: TileSet, steps: int, batch_size: int, seed: int,
                 repeats: int, progress: Any) -> dict[str, Any]:
    """An integer model's eval: -ELBO_T in the arithmetic its files are coded with."""

    if steps < 1:
        raise ValueError("an integer model has no continuous bound: give steps T >= 1")
    update = None if progress is None else progress.update
    return evaluate_steps(model, images, steps, min(batch_size, EXACT_BATCH), seed, repeats, update)


@torch.no_grad()
def elbo_by_steps(model: MuLAN, images: TileSet, steps: Sequence[int], batch_size: int = 256,
                  device: str | torch.device = "cpu", seed: int = 0, repeats: int = 1,
                  progress: Any = None) -> dict[int, np.ndarray]:
    """Per-image -ELBO (bpd) for each T in `steps` (0: continuous), all drawn from one seed:
    differences between two T, or two models, are paired (far less noisy than either)."""
    model.eval()
    return {T: sum(_bound(model, images, T, batch_size, device, seed, repeats, progress)[k] for k in TERMS)
            for T in steps}
