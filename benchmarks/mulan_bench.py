"""The mulancodec rows: one file per image, and all images in one stream, at each T.

Each row carries the model's discrete-time -ELBO at the same T, because the
gap between the real file size and that bound (the overhead) is what the
coder, rather than the model, is responsible for.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

import mulancodec
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
        tally.n_images += 1
        tally.subpixels += im.size
        tally.pixels += im.shape[0] * im.shape[1]
        tally.bytes += len(data)
        tally.encode_s += te
        tally.decode_s += td
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
