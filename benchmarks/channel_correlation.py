#!/usr/bin/env python
"""Would a cross-channel reverse step pay? The discrete-time loss with p(z_s | z_t)'s
covariance diagonal (today) against a full 3x3 covariance per pixel.

    python benchmarks/channel_correlation.py --model photo --fit ../shared/datasets/photos/val.npz \
        --test ../shared/datasets/photos-more/val

p's covariance in q's whitened coordinates is I + R with R_ii = r_i = e_i mse_hat_i (today's
learned variance) and R_ij = C_ij sqrt(r_i r_j): C is the correlation of the normalised
residuals (eps - eps_hat) / sqrt(mse_hat) across R, G, B, fitted per band of t (and of the
pixel's mse_hat) on --fit and measured on --test. The KL of a step is then
(log det(I + R) + tr((I + R)^-1 (I + d d^T)) - 3) / 2 per pixel, d the whitened mean error.
Only the discrete-time gap can shrink: with T -> infinity the diagonal model is optimal.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from mulancodec.model.mulan import alpha_sigma, reverse_step_kl, to_unit
from mulancodec.training.data import batch_tensors, image_tiles, load_images
from mulancodec.weights import load_model


def draws(lm, path: str, n_tiles: int, T: int, per_tile: int, bands: int, seed: int) -> list[dict]:
    """Per batch: the step's band, e, eps - eps_hat, mse_hat and today's KL, for `per_tile`
    random steps of each of `n_tiles` random tiles."""
    m = lm.model.eval()
    gen = torch.Generator().manual_seed(seed)
    ts = image_tiles(load_images([path]), lm.config.tile, lm.config.context)
    ts = ts.take(np.sort(np.random.default_rng(seed).permutation(len(ts))[:n_tiles]))
    rows = []
    with torch.no_grad():
        for b in range(0, len(ts), 16):
            x, ctx = batch_tensors(ts.take(slice(b, b + 16)), "cpu")
            xu = to_unit(x)
            post = m.latent_posterior(xu)
            c = None if post is None else post[0] + post[1] * torch.randn(post[0].shape, generator=gen)
            sched = m.schedule(c, xu, ctx)
            for _ in range(per_tile):
                i = torch.randint(1, T + 1, (len(x),), generator=gen).float()
                g_t, g_s = sched.gamma(i / T).expand_as(xu), sched.gamma((i - 1) / T).expand_as(xu)
                a_t, s_t = alpha_sigma(g_t)
                eps = torch.randn(xu.shape, generator=gen)
                eh, mh = m.denoise(a_t * xu + s_t * eps, g_t, c, ctx)
                rows.append(dict(band=((i - 1) * bands // T).long(), e=torch.expm1(g_t - g_s),
                                 d=eps - eh, mse=mh, kl=reverse_step_kl(g_s, g_t, eps, eh, mh)))
    return rows


class Groups:
    """A pixel's group: its step's band of t, times a quantile class of its mean log mse_hat."""

    def __init__(self, rows: list[dict], bands: int, classes: int) -> None:
        self.bands, self.classes = bands, classes
        self.edges = None
        if classes > 1:
            v = torch.cat([r["mse"].mean(1).log().flatten() for r in rows])
            v = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:100_000]]
            self.edges = torch.quantile(v, torch.linspace(0, 1, classes + 1)[1:-1])

    def __len__(self) -> int:
        return self.bands * self.classes

    def of(self, r: dict) -> torch.Tensor:
        B, _, H, W = r["mse"].shape
        g = r["band"][:, None, None].expand(B, H, W) * self.classes
        return g if self.edges is None else g + torch.bucketize(r["mse"].mean(1).log(), self.edges)


def fit(rows: list[dict], groups: Groups) -> np.ndarray:
    """Each group's 3x3 correlation of the normalised residuals."""
    S, n = np.zeros((len(groups), 3, 3)), np.zeros(len(groups))
    for r in rows:
        v = (r["d"] / r["mse"].sqrt()).permute(1, 0, 2, 3).double()
        g = groups.of(r)
        for k in range(len(groups)):
            sel = g == k
            if sel.any():
                w = v[:, sel]
                S[k] += (w @ w.T).numpy()
                n[k] += w.shape[1]
    S[n == 0] = np.eye(3)
    S[n > 0] /= n[n > 0, None, None]
    d = np.sqrt(np.einsum("kii->ki", S))
    return S / d[:, :, None] / d[:, None, :]


def bounds(rows: list[dict], groups: Groups, corr: np.ndarray, T: int, dims: int) -> tuple[float, float]:
    """The diffusion term (bits per subpixel) with the diagonal and with the full covariance."""
    diag = full = 0.0
    n = 0
    C = torch.from_numpy(corr)
    for r in rows:
        rr = (r["e"] * r["mse"]).double().permute(0, 2, 3, 1)
        d = (r["e"].sqrt() * r["d"]).double().permute(0, 2, 3, 1)
        q = rr.sqrt()
        R = C[groups.of(r)] * q[..., :, None] * q[..., None, :]
        L = torch.linalg.cholesky(torch.eye(3, dtype=torch.float64) + R)
        inv = torch.cholesky_inverse(L)
        kl = 0.5 * (2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
                    + torch.einsum("...ii->...", inv) + torch.einsum("...i,...ij,...j->...", d, inv, d) - 3)
        full += kl.sum().item()
        diag += r["kl"].double().sum().item()
        n += len(rr)
    k = T / (n * dims * math.log(2))  # T x one uniformly drawn step's KL estimates the sum
    return diag * k, full * k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="photo")
    p.add_argument("--fit", required=True, help="images the correlations are fitted on")
    p.add_argument("--test", action="append", required=True, help="images they are measured on (repeatable)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--tiles", type=int, default=96, help="random full tiles per set")
    p.add_argument("--per-tile", type=int, default=4, help="random steps per tile")
    p.add_argument("--bands", type=int, default=10, help="bands of t, each with its own correlation")
    p.add_argument("--classes", type=int, default=1, help="mse_hat quantile classes within a band")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="a .json to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model(a.model, "cpu")
    dims = 3 * lm.config.tile ** 2
    fit_rows = draws(lm, a.fit, a.tiles, a.steps, a.per_tile, a.bands, a.seed)
    groups = Groups(fit_rows, a.bands, a.classes)
    corr = fit(fit_rows, groups)
    res = {"model": lm.model_id, "T": a.steps, "tiles": a.tiles, "per_tile": a.per_tile, "bands": a.bands,
           "classes": a.classes, "fit": a.fit,
           "correlation_by_band": [[round(float(c[i, j]), 3) for i, j in ((0, 1), (0, 2), (1, 2))]
                                   for c in corr[::a.classes]], "sets": {}}
    for name, rows in [(a.fit, fit_rows)] + [(t, draws(lm, t, a.tiles, a.steps, a.per_tile, a.bands, a.seed))
                                             for t in a.test]:
        dg, fl = bounds(rows, groups, corr, a.steps, dims)
        res["sets"][name] = {"diagonal": dg, "full": fl, "gain": dg - fl}
        print(f"{name}: diffusion term at T={a.steps}: diagonal {dg:.4f}, full 3x3 {fl:.4f}, "
              f"gain {dg - fl:+.4f} bits per subpixel", flush=True)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
