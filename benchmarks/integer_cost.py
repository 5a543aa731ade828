"""What the integer model costs against its float model: bits (paired -ELBO_T) and coding time.

    python benchmarks/integer_cost.py --float photo --int photo-int \
        --data ../shared/datasets/photos/val.npz --steps 100 --k 10 --time-images 1

Bits: `mulancodec.exact.quantcost.paired_elbo` on every full tile of the images (with
their context under the nominal plan), the same draws for both models, K
stratified steps per tile; prints each model's -ELBO_T terms and the paired
difference (integer - float) with its standard error over tiles.
Time: the first `--time-images` images encoded and decoded with each model
(float: format version 2, integer: version 3), alternately, each output checked
bit-exact; wall-clock seconds of compress and decompress.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mulancodec as mc  # noqa: E402
from mulancodec.exact.quantcost import difference, paired_elbo
from mulancodec.training.data import image_tiles, load_images
from mulancodec.weights import load_model


def bits(args: argparse.Namespace, fm, im, images: list[np.ndarray]) -> dict:
    tiles = image_tiles(images, fm.config.tile, fm.config.context, args.limit)
    t0 = time.perf_counter()
    res = paired_elbo({"float": fm.model, "int": im.model}, tiles, args.steps, args.k, args.batch, args.seed)
    out = {"tiles": len(tiles), "seconds": round(time.perf_counter() - t0, 1)}
    for term in ("total", "diffusion", "recon", "prior", "latent"):
        d, se = difference(res["float"][term], res["int"][term])
        out[term] = {"float": float(res["float"][term].mean()), "int": float(res["int"][term].mean()),
                     "int_minus_float": d, "se": se}
    return out


def timing(args: argparse.Namespace, fm, im, images: list[np.ndarray]) -> list[dict]:
    rows = []
    for img in images[:args.time_images]:
        row: dict = {"shape": list(img.shape)}
        for name, lm in (("float", fm), ("int", im)):
            t0 = time.perf_counter()
            data = mc.compress(img, model=lm, steps=args.steps, fallback=False, device="cpu")
            t1 = time.perf_counter()
            ok = np.array_equal(mc.decompress(data, model=lm, device="cpu"), img)
            t2 = time.perf_counter()
            row[name] = {"encode_s": round(t1 - t0, 2), "decode_s": round(t2 - t1, 2), "exact": ok,
                         "bpd": 8 * len(data) / img.size, "version": data[4]}
        row["ratio_encode"] = row["int"]["encode_s"] / row["float"]["encode_s"]
        row["ratio_decode"] = row["int"]["decode_s"] / row["float"]["decode_s"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float", dest="float_model", default="photo")
    p.add_argument("--int", dest="int_model", default="photo-int")
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=None, help="images")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--k", type=int, default=10, help="stratified steps per tile")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-images", type=int, default=0)
    p.add_argument("--no-bits", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fm, im = load_model(args.float_model), load_model(args.int_model)
    images = load_images(args.data, args.limit)
    out = {"float_model": fm.model_id, "int_model": im.model_id, "steps": args.steps, "k": args.k,
           "threads": args.threads, "cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    if not args.no_bits:
        out["bits"] = bits(args, fm, im, images)
    if args.time_images:
        out["time"] = timing(args, fm, im, images)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
