"""`info`, `verify` and `demo`: look into .mlc files and check that they round-trip.

`verify` reports every file on its own status line rather than stopping at the first
bad one: it is the command to run over an archive.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..coding.container import ADAPT_KIND_NAMES
from . import options
from .errors import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_OK,
    CliError,
    classify,
    guarded,
    one_line,
)
from .files import read_input


@click.command(epilog=EXIT_CODES)
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@options.max_pixels
@guarded
def info(file: str, as_json: bool, max_pixels: int | None) -> None:
    """Describe an .mlc file without decoding it."""
    from ..coding.container import DEFAULT_MAX_WORK

    data = read_input(file)
    d, h = _describe(file, data, max_pixels)
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(f"{file}: mulancodec v{h.version} file, {len(data):,} bytes, "
               f"{d['bits_per_subpixel']} bits per subpixel")
    over = " (over the default work limit: decode with --max-work)" if (
        d["network_evaluations"] > DEFAULT_MAX_WORK) else ""
    if h.compact:
        click.echo("  compact file: one embedded image, no model needed to decode")
    else:
        click.echo(f"  model {h.model_id}, {h.backend} {d['precision']}, T={h.steps}, tile {h.tile}, "
                   f"{len(h.plan)} batches, {d['network_evaluations']:,} tile evaluations to decode{over}")
    a = d["adaptation"]
    if a:
        click.echo(f"  adapted to the image: {a['subset']}, {a['tensors']} tensors, {a['params']:,} "
                   f"parameters, step exponents {'/'.join(map(str, a['step_exps']))} "
                   f"({'/'.join(ADAPT_KIND_NAMES[:len(a['step_exps'])])}), "
                   f"{a['bytes']:,} bytes of deltas")
    _echo_images(d, len(h.images))


def _describe(file: str, data: bytes, max_pixels: int | None) -> tuple[dict[str, Any], Any]:
    """What `info` reports (its JSON object), and the file's header."""
    from ..api import read_header
    from ..coding.codecs import CONSTRICTION_VERSION, constriction_version
    from ..coding.container import METHOD_EMBED, tiles_in

    h = read_header(data, max_pixels)
    chans = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}
    sub = sum(r.width * r.height * chans[r.mode] for r in h.images)
    d = {
        "file": file, "bytes": len(data), "format_version": h.version, "compact": bool(h.compact),
        "model_id": h.model_id,
        # version 3 (an integer model's file) pins no backend, precision or thread count
        "backend": h.backend, "precision": "integer" if h.chain.exact else "bf16" if h.bf16 else "fp32",
        "threads": h.threads or None,
        "steps": h.steps, "tile": h.tile, "kappa": h.kappa, "images": len(h.images),
        "bits_per_subpixel": round(8 * len(data) / sub, 4),
        "batches": len(h.plan), "seed_words": h.seed_words, "adaptation": _adaptation(h.chain.adaptation),
        # decoding cost: one network evaluation per model-coded tile and step
        "network_evaluations": sum(tiles_in(r, h.tile) for r in h.images) * h.steps,
        # what this decoder would run with (files decode only with the pinned constriction)
        "constriction": constriction_version(), "constriction_required": CONSTRICTION_VERSION,
        "image_list": [{"name": r.name, "mode": r.mode, "width": r.width, "height": r.height,
                        "method": "embedded" if r.method == METHOD_EMBED else "bits-back",
                        "tiles": tiles_in(r, h.tile), "metadata": _meta_list(r.meta)}
                       for r in h.images],
    }
    return d, h


def _adaptation(a: Any) -> dict[str, Any] | None:
    """What a version-4 file's adaptation block says (None for a file without one)."""
    from ..adapt.params import SUBSET_NAMES
    from ..coding.container import adapt_block_bytes

    if a is None:
        return None
    return {"subset": SUBSET_NAMES.get(a.subset, f"unknown ({a.subset})"), "subset_id": a.subset,
            "tensors": a.tensors, "params": a.params, "step_exps": list(a.step_exps),
            "coded_tensors": sum(1 for c in a.scales if c), "bytes": len(adapt_block_bytes(a))}


def _echo_images(d: dict[str, Any], n: int) -> None:
    """The decoder's constriction and the first 20 images, one line each."""
    from ..coding.codecs import CONSTRICTION_VERSION

    pin = "" if d["constriction"] == CONSTRICTION_VERSION else f" (files need {CONSTRICTION_VERSION})"
    click.echo(f"  decoder here: constriction {d['constriction']}{pin}")
    for r in d["image_list"][:20]:
        name = f" {r['name']}" if r["name"] else ""
        click.echo(f"  {r['mode']:4} {r['width']}x{r['height']} {r['method']}{name}")
        if r["metadata"]:
            click.echo(f"       metadata: {'; '.join(r['metadata'])}")
    if n > 20:
        click.echo(f"  ... and {n - 20} more images")


def _meta_list(items: list[tuple[int, bytes]]) -> list[str]:
    """What metadata an image record carries, one phrase per field."""
    from ..imaging.metadata import Metadata, MetadataError

    try:
        return Metadata.from_items(items).describe()
    except MetadataError as e:
        return [f"corrupt ({e})"]


@click.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True)
@options.model
@options.device
@options.max_pixels
@options.max_work
@guarded
def verify(files: tuple[str, ...], model_path: str | None, device: str | None, max_pixels: int | None,
           max_work: int | None) -> None:
    """Decode every image of each .mlc file and check its checksum, writing nothing.

    Prints one line per file ("a.mlc: ok (3 images)" or "a.mlc: CORRUPT (reason)");
    exits 0 only if every file is intact, else with the worst exit code met
    (3 corrupt or missing, 4 model problem). Run it on an archive now and then.
    """
    worst = EXIT_OK
    for f in files:
        status, code = _verify_one(f, model_path, device, max_pixels, max_work)
        click.echo(f"{f}: {status}")
        worst = max(worst, code)
    sys.exit(worst)


def _verify_one(f: str, model_path: str | None, device: str | None, max_pixels: int | None,
                max_work: int | None) -> tuple[str, int]:
    """("ok (n images)", 0) or a status naming the problem and its exit code."""
    from ..api import check_work, decompress_pictures, read_header

    if f != "-" and not Path(f).is_file():
        return "MISSING (no such file)", EXIT_INPUT
    try:
        data = read_input(f)
        check_work(read_header(data, max_pixels), max_work)
        pics = decompress_pictures(data, device=device, model=model_path, max_pixels=max_pixels,
                                   max_work=max_work)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a status line, never a traceback
        code = classify(e)
        if code == EXIT_MODEL:
            return f"CANNOT CHECK ({one_line(e)})", EXIT_MODEL
        if code is None and os.environ.get("MULANCODEC_DEBUG"):
            raise
        return f"CORRUPT ({one_line(e)})", EXIT_INPUT if code is not None else EXIT_ERROR
    return f"ok ({len(pics)} image{'s' if len(pics) != 1 else ''})", EXIT_OK


DEMO_EFFORT = 3  # T=15 on a 128x128 crop: a real round trip in well under a minute on a CPU
DEMO_CROP = 128


@click.command(epilog=EXIT_CODES)
@click.argument("image", required=False)
@click.option("--steps", type=click.IntRange(1, 100_000), default=None, help="Diffusion steps T.")
@click.option("-e", "--effort", type=click.IntRange(1, 9), default=DEMO_EFFORT, show_default=True,
              help="Effort level, as for encode (the demo's default is quick; 7 is encode's).")
@options.adapt
@options.model
@options.device
@guarded
def demo(image: str | None, steps: int | None, effort: int, adapt: int | None, model_path: str | None,
         device: str | None) -> None:
    """Compress a sample photograph (or IMAGE), decode it, check it, compare with PNG, WebP and
    JPEG-XL (a 128x128 crop of the photograph at effort 3: well under a minute on a CPU)."""
    import time

    import numpy as np

    from ..api import compress_with_stats, decompress_pictures, get_model, pick_device

    src, pic = _demo_image(image)
    dev = pick_device(device)
    lm = get_model(model_path, dev)
    click.echo(f"image: {src}, {pic.mode} {pic.width}x{pic.height}")
    click.echo(f"model: {lm.model_id} ({lm.path.name}), device {dev}")
    t0 = time.time()
    data, st = compress_with_stats(pic.to_pil(), steps=steps, device=dev, model=lm, fallback=False,
                                   effort=effort, adapt=adapt)
    t1 = time.time()
    back = decompress_pictures(data, device=dev, model=lm)[0]
    t2 = time.time()
    exact = np.array_equal(back.array(), pic.array()) and back.mode == pic.mode
    if not exact:
        raise CliError("round trip was not exact", EXIT_ERROR)
    sub = pic.array().size
    how = f"T={st.steps}" if st.steps else "no model"
    rows = _compare(pic, len(data), f"mulancodec (e{st.effort}, {how})")
    click.echo(f"round trip exact: yes (effort {st.effort}, {how}; encode {t1 - t0:.1f}s, "
               f"decode {t2 - t1:.1f}s)")
    click.echo(f"{'codec':26} {'bytes':>8} {'bits/subpixel':>14}")
    for name, n in rows:
        click.echo(f"{name:26} {n:>8,} {8 * n / sub:>14.3f}")
    if st.first_batch_bits:
        click.echo(f"(bits-back start-up cost included above: {st.first_batch_bits:,} bits; "
                   "it is paid once per file, so larger images and streams amortise it; "
                   "encode --effort 7..9 codes with more steps)")


def _demo_image(image: str | None) -> tuple[str, Any]:
    """(what it is, the Picture) of IMAGE, else of a sample photograph."""
    from ..imaging.image import load
    from ..imaging.sample import landscape, photo

    if image:
        return image, load(image)
    arr, src = photo(DEMO_CROP)
    if arr is None:  # no dependency ships a photograph here: the painted sample
        arr, src = landscape(), f"{src}; a 128x96 landscape painted by mulancodec/imaging/sample.py"
    return src, load(arr)


def _compare(pic: Any, mlc_bytes: int, label: str = "mulancodec") -> list[tuple[str, int]]:
    """(codec, bytes) of the .mlc file and of the lossless codecs installed here."""

    def size(fmt: str, **kw: Any) -> int:
        buf = io.BytesIO()
        pic.to_pil().save(buf, format=fmt, **kw)
        return len(buf.getvalue())

    rows = [(label, mlc_bytes)]
    rows.append(("PNG (optimize)", size("PNG", optimize=True)))
    with contextlib.suppress(OSError, KeyError, ValueError):
        if pic.mode in ("RGB", "RGBA"):
            rows.append(("WebP lossless (method 6)", size("WEBP", lossless=True, quality=100, method=6)))
    with contextlib.suppress(ImportError, RuntimeError, ValueError):  # imagecodecs: the bench extra
        import imagecodecs

        rows.append(("JPEG-XL lossless (effort 9)",
                     len(imagecodecs.jpegxl_encode(pic.array(), lossless=True, effort=9))))
    return rows
