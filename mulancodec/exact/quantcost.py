"""What quantisation costs in bits: paired discrete-time -ELBO of two models.

`paired_elbo` estimates -ELBO_T per tile for a float model and its integer model
with the same random numbers (the latent's noise, z_0's, and the same steps with
the same noise at each), so most of the estimator's variance cancels in the
difference. Each tile's diffusion term is a stratified estimate: K steps, one
drawn from each of K equal runs of 1..T, each KL weighted T/K (unbiased for the
sum over all T steps when K divides T). Works with anything that offers the
codec's model interface (`MuLAN`, `IntegerMuLAN`): the terms are the loss's own
assembly (`model.mulan.elbo`) in the arithmetic the codec codes that model with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..model.mulan import TERMS, Arithmetic, ElboModel, ReconLoss, StepLoss, elbo
from ..training.data import TileSet, batch_tensors


@dataclass
class StratifiedDraws:
    """The random numbers one batch of tiles is evaluated with (shared by both models), and
    the stratified time sampling: K steps, one from each of K equal runs of 1..T."""

    c_noise: Tensor | None  # (B, C_c, h, w)
    z0_noise: Tensor  # (B, 3, S, S)
    steps: Tensor  # (B, K) step indices in 1..T
    eps: Tensor  # (K, B, 3, S, S)
    T: int

    @classmethod
    def draw(cls, gen: torch.Generator, x: Tensor, latent_shape: tuple[int, ...] | None, T: int,
             K: int) -> "StratifiedDraws":
        B = x.shape[0]
        latent = None if latent_shape is None else torch.randn((B, *latent_shape), generator=gen,
                                                              dtype=torch.float64)
        z0 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        u = torch.rand((B, K), generator=gen, dtype=torch.float64)
        steps = torch.floor((torch.arange(K, dtype=torch.float64) + u) * (T / K)).long() + 1
        eps = torch.randn((K, *x.shape), generator=gen, dtype=torch.float64)
        return cls(latent, z0, steps.clamp(1, T), eps, T)

    def latent(self, shape: tuple[int, ...]) -> Tensor:
        assert self.c_noise is not None
        return self.c_noise

    def z0(self, shape: tuple[int, ...]) -> Tensor:
        return self.z0_noise

    def diffusion(self, step: StepLoss, shape: tuple[int, ...]) -> Tensor:
        """Each step's KL summed over the tile, weighted T/K (unbiased when K divides T)."""
        T, K = self.T, self.steps.shape[1]
        total = torch.zeros(shape[0], dtype=torch.float64)
        for k in range(K):
            i = self.steps[:, k].double()
            total += (T / K) * step(i / T, (i - 1) / T, self.eps[k]).flatten(1).sum(1)
        return total

    def reconstruction(self, recon: ReconLoss, batch: int) -> Tensor:
        """Every tile's own term: a codec's cost is measured whole."""
        return recon(None)


def ci95(v: np.ndarray) -> list[float]:
    """The 95% interval of v's mean (1.96 standard errors over its entries)."""
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return [float(v.mean() - half), float(v.mean() + half)]


@torch.no_grad()
def elbo_terms(model: ElboModel, x: Tensor, ctx: Tensor | None, d: StratifiedDraws) -> dict[str, Tensor]:
    """Per-tile -ELBO_T terms (bpd, float64) of `model` for pixels x (B, 3, S, S) and draws d,
    in the arithmetic the codec codes `model`'s chain with."""
    terms = elbo(model, x, d, ctx, Arithmetic.coder(model))
    return {**{t: getattr(terms, t) for t in TERMS}, "total": terms.total}


def paired_elbo(models: dict[str, Any], tiles: TileSet, T: int, K: int, batch: int = 16,
                seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """-ELBO_T terms per tile for each model, on the same tiles with the same draws."""
    gen = torch.Generator().manual_seed(seed)
    first = next(iter(models.values()))
    per: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in models}
    for start in range(0, len(tiles), batch):
        x, ctx = batch_tensors(tiles.take(slice(start, start + batch)), "cpu")
        shape = first.latent_shape(x.shape[2], x.shape[3]) if first.cfg.latent_channels else None
        d = StratifiedDraws.draw(gen, x, shape, T, K)
        for name, model in models.items():
            for term, v in elbo_terms(model, x, ctx, d).items():
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
