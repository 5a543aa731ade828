"""The mulancodec rows: one file per image, and all images in one stream, at each T; and one
row per effort level (the files `mulancodec encode --effort N` writes).

Each row carries the model's discrete-time -ELBO at the same T, because the
gap between the real file size and that bound (the overhead) is what the
coder, rather than the model, is responsible for.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import torch

import mulancodec
from mulancodec.api import read_header
from mulancodec.coding.chainspec import EFFORTS
from mulancodec.coding.container import METHOD_EMBED, adapt_block_bytes
from mulancodec.imaging import jxl
from mulancodec.training.data import TileSet, image_tiles
from mulancodec.training.evaluate import evaluate
from mulancodec.weights import LoadedModel

from .measure import BitExactError, Tally, bits_per_subpixel, check_exact, pixels, subpixels, timed
from .profiling import CodingProfile

PER_IMAGE = "mulancodec per-image"
STREAM = "mulancodec stream"


def elbo_set(images: Sequence[np.ndarray], tile: int, margin: int = 0) -> tuple[TileSet | None, str]:
    """The tiles the -ELBO is measured on (with their context for a context model), and what it is.

    The model is trained on tile x tile crops, so images of exactly that size
    are used as they are; larger ones contribute their full tiles (edge
    remainders that do not fill a tile are left out of the bound, while the
    codec does code them, padded).
    """
    if all(im.shape[:2] == (tile, tile) for im in images):
        return (image_tiles(list(images), tile, margin),
                f"-ELBO on the {len(images)} images themselves ({tile}x{tile})")
    try:
        arr = image_tiles(list(images), tile, margin)
    except ValueError:
        return None, f"no image holds a full {tile}x{tile} tile: -ELBO not measured"
    return arr, (f"-ELBO on the images' {len(arr)} full {tile}x{tile} tiles (the model's tile); "
                 "edge remainders smaller than a tile are not in the bound")


def elbo(lm: LoadedModel, arr: TileSet | None, steps: int, device: torch.device,
         batch_size: int, repeats: int) -> dict[str, Any]:
    """-ELBO fields of a mulancodec row at T = steps (empty when there is no set)."""
    if arr is None:
        return {"elbo_bpd": None}
    r = evaluate(lm.model, arr, steps=steps, batch_size=batch_size, device=device, seed=0,
                 repeats=repeats)
    return {"elbo_bpd": r["bpd_T"], "elbo_ci95": r["bpd_T_ci95"], "elbo_continuous_bpd": r["bpd"]}


def with_overhead(row: dict[str, Any]) -> dict[str, Any]:
    """Add actual-minus-bound columns (None when the bound is missing)."""
    e = row.get("elbo_bpd")
    row["overhead_bpd"] = None if e is None else row["bpd"] - e
    if "bits_back_bpd" in row:
        row["bits_back_overhead_bpd"] = None if e is None else row["bits_back_bpd"] - e
    return row


def warm_up(lm: LoadedModel, image: np.ndarray, device: torch.device) -> None:
    """One untimed T=1 round trip, so lazy torch start-up is not billed to the first row."""
    t = lm.config.tile
    crop = np.ascontiguousarray(image[:t, :t])
    data = mulancodec.compress(crop, steps=1, device=device, model=lm, fallback=False)
    mulancodec.decompress(data, device=device, model=lm)


def _sync_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def run_per_image(images: Sequence[np.ndarray], steps: int, lm: LoadedModel, device: torch.device,
                  tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One .mlc file per image (with the embedded PNG/WebP fallback, as users get it)."""
    tally = Tally()
    bits_back_bytes, embedded, first_bits, n_tiles = 0, 0, [], 0
    enc_prof, dec_prof = CodingProfile(_sync_cuda(device)), CodingProfile(_sync_cuda(device))
    for i, im in enumerate(images):
        with enc_prof:
            (data, st), te = timed(lambda: mulancodec.compress_with_stats(
                im, steps=steps, device=device, model=lm))
        with dec_prof:
            out, td = timed(lambda: mulancodec.decompress(data, device=device, model=lm))
        check_exact(f"{PER_IMAGE} T={steps}", i, im, out)
        tally.add(im, len(data), te, td)
        bits_back_bytes += st.bits_back_bytes if st.bits_back_bytes is not None else len(data)
        embedded += bool(st.embedded)
        first_bits.append(st.first_batch_bits)
        n_tiles += st.tiles
        tick()
    tally.extra = {
        "bits_back_bpd": bits_per_subpixel(bits_back_bytes, tally.subpixels),
        "embedded_files": embedded,
        "first_batch_bits_mean": float(np.mean(first_bits)),
        "tiles": n_tiles,
        **enc_prof.split(tally.encode_s, tally.n_images, "encode"),
        **dec_prof.split(tally.decode_s, tally.n_images, "decode"),
    }
    return tally.row(PER_IMAGE, steps)


def run_stream(images: Sequence[np.ndarray], steps: int, lm: LoadedModel, device: torch.device,
               tick: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """All images in one stream: the bits-back start-up cost is paid once."""
    enc_prof, dec_prof = CodingProfile(_sync_cuda(device)), CodingProfile(_sync_cuda(device))
    with enc_prof:
        (data, st), te = timed(lambda: mulancodec.compress_many_with_stats(
            list(images), steps=steps, device=device, model=lm))
    with dec_prof:
        outs, td = timed(lambda: mulancodec.decompress_many(data, device=device, model=lm))
    if len(outs) != len(images):
        raise BitExactError(f"{STREAM} T={steps}: decoded {len(outs)} images, expected {len(images)}")
    for i, (im, out) in enumerate(zip(images, outs)):
        check_exact(f"{STREAM} T={steps}", i, im, out)
    n = len(images)
    tally = Tally(n, subpixels(images), len(data), te, td, {
        "tiles": st.tiles,
        "first_batch_bits": st.first_batch_bits,
        "batches": len(st.plan),
        **enc_prof.split(te, n, "encode"),
        **dec_prof.split(td, n, "decode"),
    }, pixels(images))
    tick(n)
    return tally.row(STREAM, steps)


# -- effort levels: the files `mulancodec encode --effort N` writes ----------------------

EFFORT_PREFIX = "mulancodec e"


def effort_name(effort: int) -> str:
    """The row name of an effort level (`mulancodec e5`)."""
    return f"{EFFORT_PREFIX}{effort}"


def embedded_codec(data: bytes) -> str:
    """Which classical format an embedded image is, from its signature (a file's JPEG-XL is a
    bare codestream: `imaging.image.decode_lossless` reads no other)."""
    if jxl.is_jxl(data):
        return "JPEG-XL"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return "unknown"


def file_record(data: bytes, st: mulancodec.EncodeStats, te: float, td: float) -> dict[str, Any]:
    """What one effort file is, read back from its header (as `mulancodec info` would) plus the
    encoder's stats: bits-back or an embedded classical image, and the adaptation block."""
    h = read_header(data)
    rec = h.images[0]
    embedded = rec.method == METHOD_EMBED
    block = h.chain.adaptation if not h.compact else None
    a = st.adapt
    return {
        "bytes": len(data),
        "method": "embedded" if embedded else "bits-back",
        "embedded_codec": embedded_codec(rec.embedded) if embedded else None,
        "steps": st.steps,  # T the model coded with (None: no model), whether or not it was kept
        "bits_back_bytes": st.bits_back_bytes,
        "adapt_steps": a.steps if a else 0,
        "adapt_kept": bool(a and a.kept and block is not None),
        "adapt_delta_bytes": len(adapt_block_bytes(block)) if block is not None else 0,
        "adapt_note": a.note if a else "",
        "adapt_s": a.seconds if a else 0.0,
        "encode_s": te,
        "decode_s": td,
    }


def effort_extra(effort: int, files: list[dict[str, Any]], subpixels: int) -> dict[str, Any]:
    """A row's summary of its files: how many were bits-back, embedded (and as what), adapted."""
    level = EFFORTS[effort]
    embedded = [f["embedded_codec"] for f in files if f["method"] == "embedded"]
    bits_back = [f["bits_back_bytes"] if f["bits_back_bytes"] is not None else f["bytes"] for f in files]
    return {
        "effort": effort,
        "effort_settings": level.describe(),
        "adapt": level.adapt,
        "bits_back_files": len(files) - len(embedded),
        "embedded_files": len(embedded),
        "embedded_codecs": {c: embedded.count(c) for c in sorted(set(embedded))},
        "adapted_files": sum(f["adapt_kept"] for f in files),
        "adapt_delta_bytes": sum(f["adapt_delta_bytes"] for f in files),
        "bits_back_bpd": None if level.classical else bits_per_subpixel(sum(bits_back), subpixels),
        "files": files,
    }


def run_effort(images: Sequence[np.ndarray], effort: int, lm: LoadedModel, device: torch.device,
               tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One file per image at an effort level, through the public API with its defaults (the
    classical fallback included), decoded and checked like every row."""
    name = effort_name(effort)
    tally, files = Tally(), []
    for i, im in enumerate(images):
        (data, st), te = timed(functools.partial(mulancodec.compress_with_stats, im, effort=effort,
                                                 device=device, model=lm))
        out, td = timed(functools.partial(mulancodec.decompress, data, device=device, model=lm))
        check_exact(name, i, im, out)
        tally.add(im, len(data), te, td)
        files.append(file_record(data, st, te, td))
        tick()
    tally.extra = effort_extra(effort, files, tally.subpixels)
    coded = {f["steps"] for f in files if f["steps"] is not None}
    return tally.row(name, coded.pop() if len(coded) == 1 else None)
