#!/usr/bin/env python
"""Does the per-pixel noise schedule adapt to the image, and would a per-tile gamma(0) pay?

    python benchmarks/schedule_adapt.py --data ../shared/datasets/photos-more/val --model photo

MuLAN's schedule gamma(t) depends on the latent c (and, with `schedule_context`, on the
decoder's context), so smooth and busy tiles could get different schedules. Two
measurements on validation tiles, split into the flattest and busiest quarters by mean
|horizontal difference|:
  1. gamma(t) at a few t: its spread across tiles, within tiles, and the quarters' means
     (with c at its posterior mean);
  2. the T-step bound (stratified, paired draws) with gamma(0) shifted by each --g0-shift
     (gamma(1) kept): whether flat and busy tiles would want different end points. The
     per-tile best of the shifts is an optimistic bound on what adapting gamma(0) per tile
     could save (it picks on the same draws);
  3. with --flatten, the same bound with the schedule's shape made uniform (the end points
     kept): over each tile's pixels, a schedule per colour channel ("channel"), within each
     tile ("tile": each tile's own scalar schedule, its subpixels' mean coefficients) and
     across all tiles too ("global": one scalar schedule for every tile).
     A post-hoc ablation of the trained model (not one at equal training): what its
     per-pixel and per-image schedules are worth to it.
Writes schedule_adapt.json to --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.elbo_vs_T import flatness
from mulancodec.exact.quantcost import paired_elbo
from mulancodec.model.mulan import MuLAN, to_unit
from mulancodec.model.schedule import Schedule
from mulancodec.training.data import batch_tensors, image_tiles, load_images
from mulancodec.weights import load_model

RESULTS = Path(__file__).resolve().parent / "results"
TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def gamma_spread(model: MuLAN, x: torch.Tensor, ctx: torch.Tensor | None, order: np.ndarray) -> list[dict]:
    """gamma(t) per subpixel at TIMES: spread across tiles and within them, and the flattest
    and busiest quarters' means."""
    xu = to_unit(x)
    post = model.latent_posterior(xu)
    sched = model.schedule(None if post is None else post[0], xu, ctx)
    q = max(1, len(order) // 4)
    rows = []
    for t in TIMES:
        g = sched.gamma(t).expand_as(xu)
        per_tile = g.mean(dim=(1, 2, 3)).double().numpy()
        rows.append({"t": t, "mean": float(per_tile.mean()), "across_tiles_std": float(per_tile.std()),
                     "within_tile_std": float(g.flatten(1).std(1).mean()),
                     "flattest_quarter": float(per_tile[order[:q]].mean()),
                     "busiest_quarter": float(per_tile[order[-q:]].mean())})
    return rows


def shifted(model: MuLAN, shift: float) -> MuLAN:
    """A copy whose learned gamma(0) is moved by `shift`, gamma(1) kept."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        e = m.schedule_net.ends
        top = float(e[0] + torch.exp(e[1]))
        e[0] += shift
        e[1] = math.log(top - float(e[0]))
    return m


def _coeffs(sched: Schedule) -> tuple[torch.Tensor, ...]:
    return sched.a, sched.b, sched.d


def flattened(model: MuLAN, scope: str, like_all: torch.Tensor | None = None,
              ctx_all: torch.Tensor | None = None) -> MuLAN:
    """A copy whose schedule has the same end points but a shape uniform over each tile's
    pixels (scope "channel": the mean of each channel's coefficient map), within each tile
    ("tile": the mean of each tile's coefficient maps) or over all tiles ("global": the mean
    over `like_all`'s tiles, c at its posterior mean)."""
    m = copy.deepcopy(model)
    own = m.schedule
    fixed = None
    if scope == "global":
        with torch.no_grad():
            xu = to_unit(like_all)
            post = model.latent_posterior(xu)
            sched = model.schedule(None if post is None else post[0], xu, ctx_all)
            fixed = [v.mean() for v in _coeffs(sched)]

    def schedule(c: torch.Tensor | None, like: torch.Tensor, ctx: torch.Tensor | None = None) -> Schedule:
        sched = own(c, like, ctx)
        dims = (2, 3) if scope == "channel" else (1, 2, 3)
        means = fixed if fixed is not None else [v.mean(dim=dims, keepdim=True) for v in _coeffs(sched)]
        a, b, d = (mu.expand_as(v).to(v.dtype) for mu, v in zip(means, _coeffs(sched)))
        return Schedule(a, b, d, sched.g0, sched.g1, sched.eps)

    m.schedule = schedule  # type: ignore[method-assign]
    return m


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help=".npz with array x, a folder of images, or a glob")
    p.add_argument("--model", default="photo", help="shipped model name or file (a float model)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--steps", type=int, default=50, help="T of the bounds")
    p.add_argument("--strata", type=int, default=5, help="stratified steps per tile")
    p.add_argument("--g0-shift", type=float, nargs="*", default=[-0.75, 0.75],
                   help="gamma(0) shifts to bound (0 is always included); none: skip the bounds")
    p.add_argument("--flatten", action="store_true",
                   help="also bound the schedule made uniform within each tile, and across tiles")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    model = lm.model.eval()
    if not isinstance(model, MuLAN) or not model.cfg.learned_ends:
        p.error("--model must be a float model with learned end points")
    tiles = image_tiles(load_images(a.data), model.cfg.tile, model.cfg.context, a.limit)
    order = np.argsort(flatness(tiles.x), kind="stable")
    q = max(1, len(order) // 4)
    x, ctx = batch_tensors(tiles, "cpu")
    out: dict = {"model": lm.model_id, "data": a.data, "tiles": len(tiles), "T": a.steps, "strata": a.strata,
                 "seed": a.seed, "gamma": gamma_spread(model, x, ctx, order), "bounds": {}}
    if a.g0_shift:
        shifts = sorted({0.0, *a.g0_shift})
        models = {s: shifted(model, s) for s in shifts}
        if a.flatten:
            models.update({"uniform_per_channel": flattened(model, "channel"),
                           "uniform_within_tile": flattened(model, "tile"),
                           "uniform_everywhere": flattened(model, "global", x, ctx)})
        res = paired_elbo(models, tiles, a.steps, a.strata, a.batch_size, a.seed)

        def summary(t: np.ndarray) -> dict[str, float]:
            return {"all": float(t.mean()), "flattest_quarter": float(t[order[:q]].mean()),
                    "busiest_quarter": float(t[order[-q:]].mean())}

        for name in models:
            t = res[name]["total"]
            if isinstance(name, float):
                out["bounds"][f"{name:+g}"] = {**summary(t), "recon": float(res[name]["recon"].mean())}
            else:
                diff = t - res[0.0]["total"]
                out["bounds"][name] = {**summary(t), "minus_as_trained": float(diff.mean()),
                                       "ci95": float(1.96 * diff.std(ddof=1) / math.sqrt(len(diff)))}
        best = np.min(np.stack([res[s]["total"] for s in shifts]), axis=0)
        out["per_tile_best_of_shifts"] = float(best.mean())
    folder = a.out or RESULTS / f"schedule-adapt-{Path(a.data).stem}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schedule_adapt.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
