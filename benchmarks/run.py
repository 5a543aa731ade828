#!/usr/bin/env python
"""Benchmark mulancodec against classical lossless codecs on the same images, in one run.

    python benchmarks/run.py --data ../shared/datasets/cifar10/test.npz --limit 100 --steps 10 50 100
    python benchmarks/run.py --data ../shared/datasets/mcmaster --limit 1 --crop 128 --steps 5 10
    python benchmarks/run.py --data ../shared/datasets/mcmaster --efforts 1 2 3 4 5 6 7 8 9 --jxl-efforts 1 3 5 7 9

Writes results.json, results.md and plots (frontier.png: size against encode time) to --out (default
benchmarks/results/<data>-n<N>). Every output is decoded and checked
bit-exact; a mismatch fails the run with exit status 1.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable as a package
    ROOT = Path(__file__).resolve().parents[1]
    sys.path[0] = str(ROOT)  # (and keep benchmarks/ itself off the path: no shadowed modules)

import numpy as np
import torch
from tqdm import tqdm

import mulancodec
from benchmarks import classical, mulan_bench, plots, report
from benchmarks.measure import BitExactError, centre_crop, measure_codec
from mulancodec.allocator import keep_freed_memory
from mulancodec.api import default_steps, pick_device
from mulancodec.training.data import load_images
from mulancodec.weights import LoadedModel, load_model

RESULTS = Path(__file__).resolve().parent / "results"
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=".npz with array x, a folder of images, or a glob")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--crop", type=int, default=None, metavar="N",
                   help="code the centred N x N crop of each image (a side shorter than N is kept)")
    p.add_argument("--steps", type=int, nargs="+", default=None, metavar="T",
                   help="diffusion steps, one row per T (default: the model's T/10, T/2, T; none "
                        "when --efforts is given)")
    p.add_argument("--efforts", type=int, nargs="+", default=None, metavar="N", choices=range(1, 10),
                   help="mulancodec effort levels 1..9, one row per level ('mulancodec eN'): the files "
                        "`mulancodec encode --effort N` writes, one per image")
    p.add_argument("--jxl-efforts", type=int, nargs="+", default=None, metavar="N",
                   choices=classical.JXL_EFFORTS,
                   help="JPEG-XL effort levels 1..10, one row per level ('JPEG-XL eN'; default: the "
                        "single 'JPEG-XL' row at effort 9)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--model", default=None,
                   help="shipped model name (photo-int, photo, cifar10, ...) or model file (default: "
                        "$MULANCODEC_MODEL, else photo-int)")
    p.add_argument("--codecs", nargs="*", default=None, metavar="NAME",
                   help="classical codecs to run (default all: "
                        + ", ".join(repr(c.name) for c in classical.CODECS) + "); none with no names")
    p.add_argument("--no-mulan", action="store_true", help="classical codecs only")
    p.add_argument("--modes", nargs="+", choices=["per-image", "stream"], default=["per-image", "stream"],
                   help="which mulancodec rows to run (default both)")
    p.add_argument("--per-image-limit", type=int, default=None, metavar="N",
                   help="run the per-image rows on the first N images only (they are the slow ones)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for mulancodec (default: torch's choice); stored in each "
                        "file and used again to decode it")
    p.add_argument("--elbo-batch", type=int, default=64, help="batch size for the -ELBO")
    p.add_argument("--elbo-repeats", type=int, default=1, help="Monte Carlo samples per tile")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def default_out(data: str, n: int) -> Path:
    """benchmarks/results/<last two path parts of the data, slugged>-n<N>."""
    parts = [x for x in Path(data.rstrip("/")).with_suffix("").parts if x not in ("", ".", "..")]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts[-2:])).strip("-") or "data"
    return RESULTS / f"{slug}-n{n}"


def steps_list(args: argparse.Namespace, lm: LoadedModel) -> list[int]:
    """The T of the per-T rows: those asked for, none when only effort rows are, else the
    model's T/10, T/2, T."""
    if args.steps:
        return list(dict.fromkeys(args.steps))
    if args.efforts:
        return []
    d = default_steps(lm)
    return sorted({max(1, d // 10), max(1, d // 2), d})


def run_classical(codecs: list[classical.ClassicalCodec], images: list[np.ndarray], bar: tqdm,
                  notes: list[str]) -> list[dict[str, Any]]:
    """One row per codec; a codec that errors (not mismatches) is noted and left out."""
    rows = []
    for c in codecs:
        bar.set_description(c.name)
        try:
            tally = measure_codec(c.name, c.encode, c.decode, images, tick=lambda: bar.update(1))
        except BitExactError:
            raise
        except Exception as e:  # a library limitation, e.g. an image size it refuses
            notes.append(f"{c.name} left out: {type(e).__name__}: {e}")
            continue
        effort = classical.jxl_effort(c.name)
        rows.append({**tally.row(c.name), "settings": c.settings,
                     **({"effort": effort} if effort is not None else {})})
    return rows


def run_mulan(images: list[np.ndarray], lm: LoadedModel, steps: list[int], device: torch.device,
              args: argparse.Namespace, bar: tqdm, notes: list[str]) -> list[dict[str, Any]]:
    """One untimed warm-up, then the per-T rows and the effort rows."""
    bar.set_description("warm-up")
    mulan_bench.warm_up(lm, images[0], device)
    rows = run_steps(images, lm, steps, device, args, bar, notes) if steps else []
    for e in efforts_list(args):
        bar.set_description(f"effort {e}")
        rows.append(mulan_bench.run_effort(images, e, lm, device, tick=lambda: bar.update(1)))
    return rows


def efforts_list(args: argparse.Namespace) -> list[int]:
    return list(dict.fromkeys(args.efforts or []))


def run_steps(images: list[np.ndarray], lm: LoadedModel, steps: list[int], device: torch.device,
              args: argparse.Namespace, bar: tqdm, notes: list[str]) -> list[dict[str, Any]]:
    """Per T: the -ELBO, then the per-image and stream rows with their overheads."""
    arr, elbo_note = mulan_bench.elbo_set(images, lm.config.tile, lm.config.context)
    notes.append(elbo_note)
    rows = []
    for T in steps:
        bar.set_description(f"-ELBO T={T}")
        bound = mulan_bench.elbo(lm, arr, T, device, args.elbo_batch, args.elbo_repeats)
        if "per-image" in args.modes:
            bar.set_description(f"per-image T={T}")
            subset = images[:args.per_image_limit] if args.per_image_limit else images
            r = mulan_bench.run_per_image(subset, T, lm, device, tick=lambda: bar.update(1))
            if len(subset) < len(images):  # the bound on the same images as the row
                sub_arr, _ = mulan_bench.elbo_set(subset, lm.config.tile, lm.config.context)
                r.update(mulan_bench.elbo(lm, sub_arr, T, device, args.elbo_batch, args.elbo_repeats))
                rows.append(mulan_bench.with_overhead(r))
            else:
                rows.append(mulan_bench.with_overhead({**r, **bound}))
        if "stream" in args.modes:
            bar.set_description(f"stream T={T}")
            r = mulan_bench.run_stream(images, T, lm, device, tick=bar.update)
            rows.append(mulan_bench.with_overhead({**r, **bound}))
    return rows


def build_meta(args: argparse.Namespace, argv: Sequence[str] | None, images: list[np.ndarray],
               device: torch.device, lm: LoadedModel | None, steps: list[int],
               codecs: list[classical.ClassicalCodec], skipped: dict[str, str],
               notes: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": report.now(),
        "command": report.command_line(argv),
        "data": args.data,
        "limit": args.limit,
        "crop": args.crop,
        "N": len(images),
        "images": report.image_summary(images),
        "device": str(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "mulancodec": mulancodec.__version__,
        "imagecodecs": classical.library_version(),
        "hardware": report.hardware(device),
        "codec_settings": {c.name: c.settings for c in codecs},
        "skipped_codecs": skipped,
        "steps": steps,
        "efforts": efforts_list(args) if lm is not None else [],
        "jxl_efforts": list(dict.fromkeys(args.jxl_efforts or [classical.DEFAULT_JXL_EFFORT])),
        "notes": notes,
    }
    if lm is not None:
        meta.update(model_id=lm.model_id, model_path=str(lm.path), model_tile=lm.config.tile,
                    elbo={"seed": 0, "repeats": args.elbo_repeats, "batch_size": args.elbo_batch})
    return meta


MULAN_NOTES = [
    "mulancodec: the model is loaded once and one untimed T=1 round trip warms torch up before timing.",
    "mulancodec per-image files use the embedded PNG/WebP fallback when it is smaller (as users get "
    "them); 'bits-back only' is the size the pure bits-back files had.",
    "mulancodec runs with glibc's malloc tuned as the command line tunes it "
    "(mulancodec/allocator.py: freed activations are kept for the next step).",
    "Time split: network = TileBatch.denoise + MuLAN.latent_posterior + MuLAN.schedule; ANS = push/pop "
    "of WindowedGaussian and PixelGaussian; other = the rest of the wall clock (codec parameter "
    "setup, chain arithmetic, container, fallback encode).",
]


EFFORT_NOTES = [
    ("mulancodec eN rows: one file per image made by the public API at effort N "
     "(`compress(image, effort=N)`, what `mulancodec encode --effort N` writes: embedded "
     "PNG/WebP/JPEG-XL when smaller, adaptation where the level asks for it and it pays); "
     "their seconds include the fallback's encodes and any fine-tuning. No -ELBO is measured for them."),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0 ok, 1 not bit-exact, 2 bad arguments)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests) get their setting back


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    try:
        codecs, skipped = classical.select(args.codecs)
        codecs = classical.with_jxl_efforts(codecs, args.jxl_efforts)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    if args.crop is not None and args.crop < 1:
        print("error: --crop must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        images = [centre_crop(im, args.crop) for im in load_images(args.data, args.limit)]
        device = pick_device(args.device)
    except (FileNotFoundError, ValueError, mulancodec.EncodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not images:
        print(f"error: no images in {args.data}", file=sys.stderr)
        return EXIT_USAGE

    notes = [f"{name} skipped: {why}" for name, why in skipped.items()]
    lm, steps = None, []
    if not args.no_mulan:
        keep_freed_memory()
        lm = load_model(args.model, device)
        steps = steps_list(args, lm)
        notes += MULAN_NOTES + (EFFORT_NOTES if args.efforts else [])
    n = len(images)
    n_mulan = 0 if lm is None else len(args.modes) * len(steps) + len(efforts_list(args))
    bar = tqdm(total=n * (len(codecs) + n_mulan), unit="img", file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True)
    try:
        rows = run_classical(codecs, images, bar, notes)
        if lm is not None:
            rows += run_mulan(images, lm, steps, device, args, bar, notes)
    except (BitExactError, mulancodec.DecodeError) as e:
        bar.close()
        print(f"FAILED: decoded output is not bit-exact: {e}", file=sys.stderr)
        return EXIT_FAIL
    bar.close()

    meta = build_meta(args, argv, images, device, lm, steps, codecs, skipped, notes)
    meta["frontier"] = report.frontier_points(rows)
    out = args.out or default_out(args.data, n)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", rows, meta)
    md = report.markdown(rows, meta)
    (out / "results.md").write_text(md)
    crop = f", centred {args.crop}x{args.crop} crops" if args.crop else ""
    title = f"{args.data} ({n} images{crop}, {device})"
    meta["plots"] = [p.name for p in plots.make_all(rows, title, out)]
    report.write_json(out / "results.json", rows, meta)
    print(md)
    print(f"wrote {out}/results.json, results.md, {', '.join(meta['plots'])}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
