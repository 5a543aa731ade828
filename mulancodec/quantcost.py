"""What quantisation costs in bits: paired discrete-time -ELBO of two models.

`paired_elbo` estimates -ELBO_T per tile for a float model and its integer model
with the same random numbers (the latent's noise, z_0's, and the same steps with
the same noise at each), so most of the estimator's variance cancels in the
difference. Each tile's diffusion term is a stratified estimate: K steps, one
drawn from each of K equal runs of 1..T, each KL weighted T/K (unbiased for the
sum over all T steps when K divides T). Works with anything that offers the
codec's model interface (`MuLAN`, `IntegerMuLAN`): the terms are the same
definitions the loss and the codec use (`model.mulan`), in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .data import TileSet
from .evaluate import batch_tensors, ci95
from .model.latent import std_normal_kl
from .model.mulan import (LN2, alpha_sigma, decoder_params, discretized_gaussian_nll,
                          reverse_step_kl, to_unit)


@dataclass
class Draws:
    """The random numbers one batch of tiles is evaluated with (shared by both models)."""

    latent: Tensor | None  # (B, C_c, h, w)
    z0: Tensor  # (B, 3, S, S)
    steps: Tensor  # (B, K) step indices in 1..T
    eps: Tensor  # (K, B, 3, S, S)

    @classmethod
    def draw(cls, gen: torch.Generator, x: Tensor, latent_shape: tuple[int, ...] | None, T: int,
             K: int) -> "Draws":
        B = x.shape[0]
        latent = None if latent_shape is None else torch.randn((B, *latent_shape), generator=gen,
                                                              dtype=torch.float64)
        z0 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        u = torch.rand((B, K), generator=gen, dtype=torch.float64)
        steps = torch.floor((torch.arange(K, dtype=torch.float64) + u) * (T / K)).long() + 1
        eps = torch.randn((K, *x.shape), generator=gen, dtype=torch.float64)
        return cls(latent, z0, steps.clamp(1, T), eps)


@torch.no_grad()
def elbo_terms(model: Any, x: Tensor, ctx: Tensor | None, T: int, d: Draws) -> dict[str, Tensor]:
    """Per-tile -ELBO_T terms (bpd, float64) of `model` for pixels x (B, 3, S, S) and draws d."""
    fns = model.elementary
    xu = to_unit(x).double()
    dims, K = x[0].numel(), d.steps.shape[1]
    post = model.latent_posterior(xu.float())
    if post is None:
        c, latent = None, torch.zeros(x.shape[0], dtype=torch.float64)
    else:
        cm, cs = (v.double() for v in post)
        c = (cm + cs * d.latent).float()
        latent = std_normal_kl(cm, cs).flatten(1).sum(1)
    sched = model.schedule(c, xu.float()).double()
    g0, g1 = sched.gamma(0.0).expand_as(xu), sched.gamma(1.0).expand_as(xu)
    a0, s0 = alpha_sigma(g0, fns)
    dm, ds = decoder_params(a0 * xu + s0 * d.z0, g0, fns)
    recon = discretized_gaussian_nll(x, dm, ds).double().flatten(1).sum(1)
    a1, s1 = alpha_sigma(g1, fns)
    prior = std_normal_kl(a1 * xu, s1).flatten(1).sum(1)
    diffusion = torch.zeros_like(latent)
    for k in range(K):
        i = d.steps[:, k].double()
        g_t, g_s = sched.gamma(i / T).expand_as(xu), sched.gamma((i - 1) / T).expand_as(xu)
        a_t, s_t = alpha_sigma(g_t, fns)
        eps = d.eps[k]
        eps_hat, mse_hat = model.denoise((a_t * xu + s_t * eps).float(), g_t.float(), c, ctx)
        mse_hat = None if mse_hat is None else mse_hat.double()
        kl = reverse_step_kl(g_s, g_t, eps, eps_hat.double(), mse_hat)
        diffusion += (T / K) * kl.flatten(1).sum(1)
    k = 1.0 / (dims * LN2)
    terms = {"diffusion": diffusion * k, "recon": recon * k, "prior": prior * k, "latent": latent * k}
    terms["total"] = sum(terms.values())  # type: ignore[assignment]
    return terms


def paired_elbo(models: dict[str, Any], tiles: TileSet, T: int, K: int, batch: int = 16,
                seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """-ELBO_T terms per tile for each model, on the same tiles with the same draws."""
    gen = torch.Generator().manual_seed(seed)
    first = next(iter(models.values()))
    per: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in models}
    for start in range(0, len(tiles), batch):
        x, ctx = batch_tensors(tiles.take(slice(start, start + batch)), "cpu")
        shape = first.latent_shape(x.shape[2], x.shape[3]) if first.cfg.latent_channels else None
        d = Draws.draw(gen, x, shape, T, K)
        for name, model in models.items():
            for term, v in elbo_terms(model, x, ctx, T, d).items():
                per[name].setdefault(term, []).append(v.numpy())
        if progress is not None:
            progress(len(x))
    return {name: {t: np.concatenate(v) for t, v in terms.items()} for name, terms in per.items()}


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of b - a over tiles and its standard error."""
    diff = b - a
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))


def stratified_k(T: int, most: int = 10) -> int:
    """The largest K <= most dividing T: K strata of equal length keep the estimate unbiased."""
    return max(k for k in range(1, min(T, most) + 1) if T % k == 0)


def evaluate_steps(model: Any, tiles: TileSet, T: int, batch: int = 16, seed: int = 0, repeats: int = 1,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """-ELBO_T of any model with the codec's interface (an integer model has no training loss,
    so no continuous bound): `evaluate`'s discrete-time fields, each tile's diffusion term from
    `stratified_k(T)` steps, averaged over `repeats` draws."""
    K = stratified_k(T)
    runs = [paired_elbo({"m": model}, tiles, T, K, batch, seed + r, progress)["m"] for r in range(repeats)]
    terms = {t: sum(run[t] for run in runs) / repeats for t in runs[0]}
    total = terms["total"]
    out: dict[str, Any] = {"bpd": None, "bpd_ci95": None, "steps": T, "bpd_T": float(total.mean()),
                           "bpd_T_ci95": ci95(total), "n_images": len(tiles),
                           "dims_per_image": int(np.prod(tiles.x.shape[1:])), "repeats": repeats,
                           "seed": seed, "strata": K}
    out.update({t: float(v.mean()) for t, v in terms.items() if t != "total"})
    return out
