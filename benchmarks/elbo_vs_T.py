#!/usr/bin/env python
"""-ELBO against T for one or more models on the same tiles, with paired intervals.

    python benchmarks/elbo_vs_T.py --data ../shared/datasets/photos/val.npz --model photo --model photo-lv

Every bound of every model is drawn from one seed (the same c, z_0, t and eps), so
the gap to the continuous bound and the difference between two models are paired:
their intervals are far tighter than either bound's. Writes elbo_vs_T.md and .json
to --out (default benchmarks/results/elbo-<data>).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from mulancodec.exact.quantcost import paired_elbo
from mulancodec.training.data import TileSet, image_tiles, load_images
from mulancodec.training.evaluate import elbo_by_steps
from mulancodec.weights import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help=".npz with array x, a folder of images, or a glob")
    p.add_argument("--model", action="append", required=True,
                   help="shipped model name or model file/run directory (repeatable; the first is the baseline)")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100], help="T values (0: continuous)")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--flat", type=int, default=None,
                   help="only the N flattest tiles (least mean |horizontal gradient|): where smooth "
                        "regions pay, and where the discrete-time gap is largest")
    p.add_argument("--repeats", type=int, default=1, help="samples per tile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strata", type=int, default=0,
                   help="K > 0: each tile's T-step bound from K steps, one from each of K equal runs of "
                        "1..T (K must divide T), as the integer cost is measured: far less noisy than one "
                        "step, which matters when two models' schedules differ (their single steps pair "
                        "badly); K network calls per tile and repeat. The continuous bound is unchanged")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reuse", type=Path, default=None,
                   help="an earlier run's elbo_vs_T.json: a model whose per-tile bounds it holds, for the "
                        "same weights, tiles, seed and repeats, is read from it instead of measured again")
    return p.parse_args(argv)


def mean_ci(v: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval."""
    return float(v.mean()), 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v))


def flatness(x: np.ndarray) -> np.ndarray:
    """Mean |horizontal difference| per tile (N, S, S, 3) uint8, in grey levels."""
    return np.abs(np.diff(x.astype(np.int16), axis=2)).mean(axis=(1, 2, 3))


def flattest(x: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n tiles (N, S, S, 3) of least mean |horizontal gradient|, in order."""
    return np.sort(np.argsort(flatness(x), kind="stable")[:n])


def table(names: list[str], res: dict[str, dict[int, np.ndarray]], steps: list[int]) -> str:
    """Markdown: each model's bound per T (+- 95%), its paired gap to continuous, and the
    paired difference from the first model."""
    head = "| model | " + " | ".join("continuous" if T == 0 else f"T = {T}" for T in steps) + " |"
    lines = [head, "|---" * (len(steps) + 1) + "|"]
    base = res[names[0]]
    for name in names:
        cells = []
        for T in steps:
            m, h = mean_ci(res[name][T])
            cell = f"{m:.4f} ± {h:.3f}"
            if T and 0 in res[name]:
                g, gh = mean_ci(res[name][T] - res[name][0])
                cell += f" (gap {g:+.3f} ± {gh:.3f})"
            if name != names[0]:
                d, dh = mean_ci(res[name][T] - base[T])
                cell += f"; vs {names[0]} {d:+.3f} ± {dh:.3f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reusable(path: Path | None, args: argparse.Namespace, n_tiles: int) -> dict[str, dict]:
    """The per-tile bounds an earlier run stored, by model id (a model renamed since is still
    found), if its draws are this run's."""
    if path is None:
        return {}
    old = json.loads(path.read_text())
    same = {"data": args.data, "tiles": n_tiles, "repeats": args.repeats, "seed": args.seed,
            "flat": args.flat, "limit": args.limit, "strata": args.strata or None}
    if any(old.get(k) != v for k, v in same.items()):
        raise SystemExit(f"{path}: measured on other draws than this run ({same}); nothing reused")
    return {old["models"][n]["model_id"]: v for n, v in old.get("per_tile", {}).items()}


def bounds(model: torch.nn.Module, tiles: TileSet, args: argparse.Namespace) -> dict[int, np.ndarray]:
    """Per-tile bounds for each T of args.steps, from args.seed (paired across models)."""
    if not args.strata:
        return elbo_by_steps(model, tiles, args.steps, args.batch_size, "cpu", args.seed, args.repeats)
    out = {}
    for T in args.steps:
        if not T:
            out[T] = elbo_by_steps(model, tiles, [0], args.batch_size, "cpu", args.seed, args.repeats)[0]
            continue
        if T % args.strata:
            raise SystemExit(f"--strata {args.strata} does not divide T = {T}")
        runs = [paired_elbo({"m": model}, tiles, T, args.strata, args.batch_size, args.seed + r)["m"]["total"]
                for r in range(args.repeats)]
        out[T] = sum(runs) / args.repeats
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images([args.data])
    res: dict[str, dict[int, np.ndarray]] = {}
    meta: dict[str, dict] = {}
    tiles_of = None
    for name in args.model:
        lm = load_model(name, "cpu")
        tiles = image_tiles(images, lm.config.tile, lm.config.context, args.limit)
        if args.flat:
            tiles = tiles.take(flattest(tiles.x, args.flat))
        if tiles_of is None:
            tiles_of = (lm.config.tile, lm.config.context, len(tiles))
            stored = reusable(args.reuse, args, len(tiles))
        if tiles_of != (lm.config.tile, lm.config.context, len(tiles)):
            raise SystemExit(f"{name}: other tiles than {args.model[0]}; models must share tile and context")
        old = stored.get(lm.model_id, {})
        if all(str(T) in old for T in args.steps):
            res[name] = {T: np.asarray(old[str(T)]) for T in args.steps}
            print(name, "reused from", args.reuse, flush=True)
        else:
            res[name] = bounds(lm.model, tiles, args)
        meta[name] = {"model_id": lm.model_id, "path": str(lm.path)}
        print(name, {T: round(float(v.mean()), 4) for T, v in res[name].items()}, flush=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(Path(args.data.rstrip("/")).with_suffix("").parts[-2:]))
    slug += f"-flat{args.flat}" if args.flat else ""
    out = args.out or RESULTS / f"elbo-{slug.strip('-')}"
    out.mkdir(parents=True, exist_ok=True)
    md = table(args.model, res, args.steps)
    cmd = "python benchmarks/elbo_vs_T.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "elbo_vs_T.md").write_text(
        f"# -ELBO (bits per subpixel) against T: {args.data}, {tiles_of[2]} tiles of "
        f"{tiles_of[0]}x{tiles_of[0]}, {args.repeats} sample(s) each, seed {args.seed}"
        f"{f', {args.strata} stratified steps per T-step bound' if args.strata else ''}\n\n{md}\n\n"
        "± is the 95% interval; gaps and differences are paired (same draws).\n\n"
        f"Models: {json.dumps(meta)}\n\nCommand: `{cmd}`\n")
    (out / "elbo_vs_T.json").write_text(json.dumps({
        "data": args.data, "tiles": tiles_of[2], "repeats": args.repeats, "seed": args.seed,
        "flat": args.flat, "limit": args.limit, "strata": args.strata or None, "models": meta,
        "bpd": {n: {str(T): mean_ci(v)[0] for T, v in r.items()} for n, r in res.items()},
        "per_tile": {n: {str(T): [round(float(b), 6) for b in v] for T, v in r.items()}
                     for n, r in res.items()}}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
