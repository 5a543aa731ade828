"""Adaptation to each image: what fine-tuning on the image buys, and what its deltas cost.

    # tuning (never on McMaster): subsets x fine-tuning steps x quantisation steps
    python benchmarks/adapt.py tune --data ../shared/datasets/photos-more/val \\
        --data ../shared/datasets/photos/val.npz --limit 3 --steps 25 --out benchmarks/results/adapt-tune.jsonl
    # the goal: one image coded with --adapt N and without, both round trips checked
    python benchmarks/adapt.py goal --image ../shared/datasets/mcmaster/2.tif --steps 25 --adapt 100

`tune` fine-tunes each subset (`mulancodec.adapt.params.SUBSETS`) of the float model on
each image's own full tiles (`adapt.tune.finetune_snapshots`), and for each snapshot and
quantisation step exponent measures, with the integer model the file would be coded
with: the bits of the delta block (`adapt.deltas.encode`: real constriction words plus
the block's fixed fields) and the bits it saves, the paired -ELBO_T difference on the
image's tiles (`quantcost.paired_elbo`, the same draws for base and adapted model)
times the image's subpixels. One JSON line per measurement.

`goal` encodes one image with `mulancodec.compress_with_stats` at --steps with --adapt N
and with --adapt 0, decodes both, checks them bit-exact, and reports sizes and times.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mulancodec.adapt import deltas as D  # noqa: E402
from mulancodec.adapt.encoder import FACTOR_RMS  # noqa: E402
from mulancodec.adapt.params import LOWRANK_SUBSETS, SUBSET_NAMES, adapt_tensors  # noqa: E402
from mulancodec.adapt.tune import BATCH, LR_FACTOR, SCHEDULES, finetune_snapshots, own_tiles  # noqa: E402
from mulancodec.exact.quantcost import paired_elbo  # noqa: E402
from mulancodec.training.data import load_images  # noqa: E402
from mulancodec.weights import load_model  # noqa: E402


def block_bits(block) -> int:
    """Bits the block takes in a file (its words, scale codes and fixed fields)."""
    from mulancodec.coding.container import adapt_block_bytes

    return 8 * len(adapt_block_bytes(block))


def totals(model, tiles, T: int, strata: int, seed: int) -> np.ndarray:
    """-ELBO_T per tile; the same seed gives every model the same draws (paired)."""
    return paired_elbo({"m": model}, tiles, T, strata, 16, seed)["m"]["total"]


def cache_key(model_id: str, image: np.ndarray, subset: int) -> str:
    """What fine-tuning snapshots depend on besides T, lr and seed: the float model, the
    image's pixels and the parameter subset (deltas fine-tuned for another model are wrong)."""
    pixels = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:12]
    return f"{model_id[:12]}-{pixels}-{subset}"


def _snapshots(args: argparse.Namespace, fm, tiles, tensors, key: str) -> dict:
    """The fine-tuning snapshots, from --cache when they are there (the same image pixels,
    float model, subset, T, lr and seed: `key` is cache_key's), else fine-tuned (and saved
    there)."""
    sched = "" if args.schedule == "constant" else f"-{args.schedule}"
    batch = "" if args.batch == BATCH else f"-b{args.batch}"
    factor = "" if args.lr_factor == LR_FACTOR else f"-f{args.lr_factor}"
    name = f"{key}-T{args.steps}-lr{args.lr}{factor}{sched}{batch}-s{args.seed}.pt"
    path = Path(args.cache) / name if args.cache else None
    have = torch.load(path) if path is not None and path.exists() else {}
    todo = [k for k in args.snapshots if k not in have]
    if todo:
        have.update(finetune_snapshots(fm.model, tiles, tensors, sorted(set(todo) | set(have)), args.steps,
                                       lr=args.lr, batch=args.batch, seed=args.seed,
                                       schedule=args.schedule, lr_factor=args.lr_factor))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(have, path)
    return {k: have[k] for k in args.snapshots}


def _emit(row: dict, path: str | None) -> None:
    """One measurement: printed, and appended to `path` as a JSON line."""
    line = json.dumps(row)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def tune(args: argparse.Namespace) -> None:
    fm, im = load_model(args.float_model), load_model(args.int_model)
    images = load_images(args.data, args.limit)
    for n, image in enumerate(images):
        tiles = own_tiles([image], fm.config.tile, fm.config.context)
        if tiles is None:
            continue
        sub = image.size
        t0 = time.perf_counter()
        base = totals(im.model, tiles, args.steps, args.strata, args.seed)
        fbase = totals(fm.model, tiles, args.steps, args.strata, args.seed) if args.float_gain else None
        eval_s = time.perf_counter() - t0
        for subset in args.subsets:
            tensors = adapt_tensors(fm.config, subset)
            t0 = time.perf_counter()
            snaps = _snapshots(args, fm, tiles, tensors, cache_key(fm.model_id, image, subset))
            tune_s = time.perf_counter() - t0
            for k, delta in snaps.items():
                for e in args.exps:
                    exps = tuple(args.kind_exps) if args.kind_exps else (e, e, e)
                    if subset in LOWRANK_SUBSETS:  # the factors' step as the encoder picks it
                        exps += (D.factor_exp(delta, tensors, im.model, FACTOR_RMS),)
                    d = D.quantize(delta, tensors, subset, exps, im.model)
                    blk = D.encode(d, tensors)
                    adapted = totals(D.apply(im.model, tensors, d), tiles, args.steps, args.strata, args.seed)
                    diff = base - adapted
                    fl = None if fbase is None else fbase - totals(
                        D.apply_float(fm.model, tensors, d, im.model), tiles, args.steps, args.strata, args.seed)
                    row = {"image": n, "shape": list(image.shape), "tiles": len(tiles), "T": args.steps,
                           "lr": args.lr, "schedule": args.schedule, "batch": args.batch,
                           "subset": SUBSET_NAMES[subset], "params": sum(t.numel for t in tensors),
                           "adapt_steps": k, "step_exps": exps, "nonzero": d.nonzero(),
                           "delta_bits": block_bits(blk), "base_bpsp": float(base.mean()),
                           "gain_bpsp": float(diff.mean()),
                           "gain_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                           "float_gain_bpsp": None if fl is None else float(fl.mean()),
                           "saved_bits": float(diff.mean()) * sub,
                           "net_bpsp": float(diff.mean()) - block_bits(blk) / sub,
                           "tune_s": round(tune_s, 1), "eval_s": round(eval_s, 1)}
                    _emit(row, args.out)
                    if args.kind_exps:
                        break


def goal(args: argparse.Namespace) -> None:
    import mulancodec as mc
    from mulancodec.imaging.image import load

    pic = load(args.image)
    lm = mc.api.get_model(args.int_model, torch.device("cpu"))
    rows = {}
    for n in (args.adapt, 0):
        t0 = time.perf_counter()
        data, st = mc.compress_with_stats(pic.to_pil(), model=lm, steps=args.steps, adapt=n,
                                          float_model=args.float_model, fallback=False, device="cpu")
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = mc.decompress(data, model=lm, device="cpu")
        dec = time.perf_counter() - t0
        exact = bool(np.array_equal(back, pic.array()))
        h = mc.read_header(data)
        a = h.chain.adaptation
        rows[n] = {"adapt": n, "bytes": len(data), "bpsp": 8 * len(data) / pic.array().size,
                   "exact": exact, "encode_s": round(enc, 1), "decode_s": round(dec, 1),
                   "delta_bytes": None if a is None else len(a.words) + len(a.scales),
                   "adapt_report": st.adapt.as_dict() if st.adapt else None}
        print(json.dumps(rows[n], default=str), flush=True)
        if not exact:
            sys.exit(1)
    from mulancodec.imaging.image import lossless_encodings

    names = ("PNG", "WebP", "JPEG-XL")
    classical = {n: len(b) for n, b in zip(names, lossless_encodings(pic.to_pil(meta=False)))}
    print(json.dumps({"classical_bytes": classical}), flush=True)
    summary = {"image": args.image, "T": args.steps, "rows": list(rows.values()), "classical_bytes": classical,
               "adapted_minus_plain_bpsp": rows[args.adapt]["bpsp"] - rows[0]["bpsp"],
               "decode_time_ratio": rows[args.adapt]["decode_s"] / max(rows[0]["decode_s"], 1e-9)}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, default=str, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    t = sp.add_parser("tune")
    t.add_argument("--data", action="append", required=True)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--subsets", type=int, nargs="+", default=list(SUBSET_NAMES))
    t.add_argument("--snapshots", type=int, nargs="+", default=[25, 50, 100])
    t.add_argument("--exps", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    t.add_argument("--kind-exps", type=int, nargs=3, default=None,
                   help="one step exponent per kind (norm scale, norm shift, bias) instead of --exps")
    t.add_argument("--strata", type=int, default=5)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--lr-factor", type=float, default=LR_FACTOR, help="the low-rank factors' step size")
    t.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="the step size over the run (linear: falls to 0 at the last snapshot)")
    t.add_argument("--batch", type=int, default=BATCH, help="tiles per fine-tuning step")
    t.add_argument("--cache", default=None, help="folder for the fine-tuned deltas (reused by later runs)")
    t.add_argument("--float-gain", action="store_true",
                   help="also measure the float model's gain with the same quantised deltas")
    g = sp.add_parser("goal")
    g.add_argument("--image", required=True)
    g.add_argument("--adapt", type=int, default=100)
    for p in (t, g):
        p.add_argument("--steps", type=int, default=25)
        p.add_argument("--float-model", default="photo")
        p.add_argument("--int-model", default="photo-int")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune(args) if args.cmd == "tune" else goal(args)


if __name__ == "__main__":
    main()
