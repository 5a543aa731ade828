#!/usr/bin/env python
"""Seconds per tile-step of each model's network, in alternating rounds (fair on a busy machine).

    python benchmarks/net_time.py --model photo --model runs/photo-full --threads 1

One tile-step is one denoiser call on one tile's window (the codec makes one per tile
and diffusion step, so it sets the coding time); the latent and schedule nets run
once per tile and are left out. Each round times every model once on the same batch,
models in turn, so drifting machine load hits all alike; the median over rounds is
reported, with each model's ratio to the first.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from mulancodec.weights import load_model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="repeatable; the first is the baseline")
    p.add_argument("--batch", type=int, default=8, help="tiles per network call (the codec's batches)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    nets, times = {}, {}
    for name in args.model:
        lm = load_model(name, "cpu")
        cfg = lm.config
        S, W = cfg.tile, cfg.window(cfg.tile)
        z = torch.randn(args.batch, cfg.channels, S, S, generator=gen)
        g = torch.full_like(z, -5.0)
        c = torch.randn(args.batch, *lm.model.latent_shape(S, S), generator=gen) if cfg.latent_channels else None
        ctx = torch.rand(args.batch, 4, W, W, generator=gen) if cfg.context else None
        nets[name] = (lm.model, (z, g, c, ctx))
        times[name] = []
    with torch.no_grad():
        for r in range(args.rounds + 1):  # the first round warms up
            for name, (model, inputs) in nets.items():
                t0 = time.perf_counter()
                model.denoise(*inputs)
                if r:
                    times[name].append((time.perf_counter() - t0) / args.batch)
    base = float(np.median(times[args.model[0]]))
    print("| model | ms per tile-step (median) | min-max | vs first |\n|---|---:|---|---:|")
    for name, t in times.items():
        m = float(np.median(t))
        print(f"| {name} | {1e3 * m:.1f} | {1e3 * min(t):.1f}-{1e3 * max(t):.1f} | {m / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
