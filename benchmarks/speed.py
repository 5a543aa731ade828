#!/usr/bin/env python
"""Time one encode and decode of a centred crop, several times, and split the time.

    python benchmarks/speed.py /work/shared/datasets/mcmaster/1.tif --crop 128 --steps 20 --runs 3

Prints the minimum (and all) encode / decode seconds over the runs (and the least
CPU time an encode took: steadier than the wall clock on a busy machine), the network /
ANS / other split of the fastest encode (benchmarks/profiling.py), and the SHA-256
of the encoded bytes, so two builds can be compared for both speed and output.
Every decode is checked against the input.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
from PIL import Image

import mulancodec
from benchmarks.measure import centre_crop
from benchmarks.profiling import CodingProfile
from mulancodec.allocator import keep_freed_memory
from mulancodec.api import get_model, pick_device


def main(argv: Sequence[str] | None = None) -> int:
    """Run the timing; returns 0, or 1 when a decode is not exact."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc as it is (see mulancodec/allocator.py)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.default_malloc:
        keep_freed_memory()
    im = centre_crop(np.asarray(Image.open(a.image).convert("RGB")), a.crop)
    dev = pick_device(a.device)
    lm = get_model(a.model, dev)
    mulancodec.compress(im[:lm.config.tile, :lm.config.tile], steps=1, device=dev, model=lm)  # warm
    enc, enc_cpu, dec, splits, digest = [], [], [], [], None
    for _ in range(a.runs):
        with CodingProfile() as prof:
            t, c = time.perf_counter(), time.process_time()
            data = mulancodec.compress(im, steps=a.steps, device=dev, model=lm, fallback=False)
            enc.append(time.perf_counter() - t)
            enc_cpu.append(time.process_time() - c)
        splits.append(prof.split(enc[-1], 1, "encode"))
        digest = hashlib.sha256(data).hexdigest()[:16]
        if not a.no_decode:
            t = time.perf_counter()
            out = mulancodec.decompress(data, device=dev, model=lm)
            dec.append(time.perf_counter() - t)
            if not np.array_equal(out, im):
                print("DECODE NOT EXACT", file=sys.stderr)
                return 1
    best = splits[int(np.argmin(enc))]
    print(f"{a.image} crop {a.crop} T={a.steps} threads={a.threads} bytes={len(data)} sha={digest}")
    print(f"encode min {min(enc):.2f}s  all {' '.join(f'{x:.2f}' for x in enc)}  "
          f"(CPU seconds: min {min(enc_cpu):.2f})")
    if dec:
        print(f"decode min {min(dec):.2f}s  all {' '.join(f'{x:.2f}' for x in dec)}")
    print("split of the fastest encode: " + ", ".join(
        f"{k.removeprefix('encode_')} {v:.2f}" for k, v in best.items() if k.endswith("_s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
