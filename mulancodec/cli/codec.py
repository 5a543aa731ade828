"""`encode` and `decode`: images to .mlc files and back, one file, many, or a stream.

Every input and output is checked before any coding starts; with several files, one
file's failure is reported on its own line and the others are still written.
"""
from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import click

from . import options
from .errors import EXIT_CODES, EXIT_OUTPUT, CliError, guarded
from .files import check_target, count_tiles, emit, image_input, progress_bar, read_input, run_files

ENCODE_THREADS_HELP = (
    "Torch CPU threads per file (default: torch's count, or 1 per worker with -j > 1). Files of "
    "the default photo-int (integer) model, format version 3, decode on any machine and thread "
    "count; a float model's file (--model photo, cifar10) records the count and decodes only "
    "with it, on the same kind of machine.")
DECODE_THREADS_HELP = (
    "Torch CPU threads (default: torch's count; for a float model's file, the count it was made "
    "with). Files of the default photo-int (integer) model, format version 3, decode with any "
    "count; a float model's file (photo, cifar10) only with its own.")


def _effort_epilog() -> str:
    from ..coding.chainspec import effort_table

    levels = "\n".join("  " + line for line in effort_table().splitlines())
    return f"\b\nEffort levels (--effort):\n{levels}\n\n{EXIT_CODES}"


@click.command(epilog=_effort_epilog())
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", default=None,
              help="Output file, '-' for stdout, or a folder (ending in / or existing) for many inputs.")
@click.option("--stream", is_flag=True, help="Put all inputs into one stream file (start-up cost paid once).")
@click.option("--steps", type=click.IntRange(1, 100_000), default=None,
              help="Diffusion steps T (default: the model's recommended T).")
@click.option("--no-fallback", is_flag=True,
              help="Always use bits-back, even when an embedded PNG/WebP/JPEG-XL would be smaller.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per output file.")
@click.option("--strip", is_flag=True,
              help="Drop metadata (ICC profile, EXIF, XMP, text chunks, dpi, gAMA/cHRM/sRGB); "
                   "by default it is kept and restored on decode.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help=ENCODE_THREADS_HELP)
@options.effort
@options.adapt
@options.jobs
@options.model
@options.device
@options.force
@options.quiet
@options.verbose
@options.max_pixels
@guarded
def encode(inputs: tuple[str, ...], output: str | None, stream: bool, steps: int | None,
           no_fallback: bool, as_json: bool, strip: bool, threads: int | None, effort: int | None,
           adapt: int | None, jobs_n: int, model_path: str | None, device: str | None, force: bool,
           quiet: bool, verbose: bool, max_pixels: int | None) -> None:
    """Compress images (PNG, TIFF, BMP, ... or '-' for stdin) to .mlc files.

    With several files, a file that fails is reported on its own line and the others are
    still written; the exit code is then the worst met.
    """
    from ..allocator import keep_freed_memory
    from ..api import get_model, pick_device
    from ..imaging.image import probe

    for src in inputs:  # every input is checked (format, size, mode) before any work or output
        if src != "-":
            probe(src, max_pixels)
    jobs = _encode_jobs(inputs, output, stream)
    for srcs, out in jobs:
        check_target(out, srcs, force)
    dev = pick_device(device)
    lm = get_model(model_path, dev)
    keep_freed_memory()
    opts = {"stream": stream, "steps": steps, "effort": effort, "adapt": adapt,
            "fallback": not no_fallback, "strip": strip,
            "threads": threads or (1 if jobs_n > 1 else None), "device": str(dev), "force": force,
            "max_pixels": max_pixels, "mkdir": output is not None and output.endswith("/"),
            "bar": not (quiet or as_json)}
    report = functools.partial(_report_encode, as_json=as_json, quiet=quiet, verbose=verbose)
    if len(jobs) == 1:  # errors as one line each, as they always were
        report(encode_file(jobs[0][0], jobs[0][1], opts, lm))
        return
    workers = min(jobs_n, len(jobs))
    model = lm if workers == 1 else str(lm.path)
    opts["bar"] = opts["bar"] and workers == 1
    tasks = [(encode_file, srcs, out, opts, model) for srcs, out in jobs]
    run_files([srcs[0] for srcs, _ in jobs], tasks, workers, opts["threads"], report)


def encode_file(srcs: list[str], out: str, opts: dict[str, Any], model: Any) -> dict[str, Any]:
    """Encode one output file (a stream of `srcs`, or its one image); returns what to report.
    Module-level, so that worker processes can run it."""
    from ..api import compress_many_with_stats, compress_with_stats, get_model, pick_device

    dev = pick_device(opts["device"])
    lm = get_model(model, dev)
    images = [image_input(s) for s in srcs]
    kw = dict(steps=opts["steps"], device=dev, model=lm, max_pixels=opts["max_pixels"],
              strip=opts["strip"], threads=opts["threads"], effort=opts["effort"], adapt=opts["adapt"])
    with progress_bar(count_tiles(images, lm.config.tile), not opts["bar"], "encode") as bar:
        if opts["stream"]:
            names = [Path(s).name.replace("\n", " ") if s != "-" else "" for s in srcs]
            data, st = compress_many_with_stats(images, names=names, progress=bar, **kw)
            info: dict[str, Any] = {"bytes": len(data), "images": len(images)}
        else:
            data, st = compress_with_stats(images[0], fallback=opts["fallback"], progress=bar, **kw)
            info = {"bytes": st.bytes, "bpd": round(st.bpd, 4), "embedded": st.embedded,
                    "bits_back_bytes": st.bits_back_bytes, "tiles": st.tiles}
        info.update(effort=st.effort, steps=st.steps, adapt=st.adapt.as_dict() if st.adapt else None)
    if out != "-" and opts["mkdir"]:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    emit(out, data, opts["force"])
    return {"input": srcs[0] if len(srcs) == 1 else srcs, "output": out, **info}


def _encode_jobs(inputs: tuple[str, ...], output: str | None, stream: bool) -> list[tuple[list[str], str]]:
    """(inputs, output) of each file to write: one stream, or one .mlc per input."""
    if stream:
        if output is None:
            raise click.UsageError("--stream needs -o FILE")
        return [(list(inputs), output)]
    if len(inputs) == 1:
        src = inputs[0]
        out = output or ("-" if src == "-" else str(Path(src).with_suffix(".mlc")))
        if out != "-" and (out.endswith("/") or Path(out).is_dir()):
            out = str(Path(out) / (Path(src).stem + ".mlc"))
        return [([src], out)]
    outdir = None
    if output is not None and output != "-":
        outdir = Path(output)
        if not (output.endswith("/") or outdir.is_dir()):
            raise click.UsageError("several inputs need -o FOLDER/ (or --stream -o FILE)")
        outdir.mkdir(parents=True, exist_ok=True)
    if "-" in inputs:
        raise click.UsageError("'-' (stdin) can only be used as the only input")
    jobs = [([s], str((outdir or Path(s).parent) / (Path(s).stem + ".mlc"))) for s in inputs]
    if len({o for _, o in jobs}) != len(jobs):
        raise click.UsageError("two inputs would write the same output name")
    return jobs


def _report_encode(info: dict[str, Any], as_json: bool, quiet: bool, verbose: bool) -> None:
    out = info["output"]
    if as_json:
        click.echo(json.dumps(info), err=out == "-")
    elif not quiet and out != "-":
        extra = " (embedded PNG/WebP/JPEG-XL: smaller than bits-back here)" if info.get("embedded") else ""
        src = info["input"] if isinstance(info["input"], str) else f"{len(info['input'])} images"
        click.echo(f"{src} -> {out}: {info['bytes']:,} bytes{extra}", err=True)
        if verbose and "bpd" in info:
            click.echo(f"  {info['bpd']} bits per subpixel, {info['tiles']} tiles, "
                       f"bits-back size {info['bits_back_bytes']}", err=True)
        if verbose and info.get("adapt"):
            click.echo(f"  effort {info['effort']}, T={info['steps']}: {_adapt_line(info['adapt'])}", err=True)


def _adapt_line(a: dict[str, Any]) -> str:
    """What adaptation did, in one line."""
    if not a["kept"]:
        return f"adaptation ({a['steps']} steps) not kept: {a['note']}"
    return (f"adapted ({a['steps']} steps, {a['subset']}): {a['nonzero']:,} of {a['params']:,} "
            f"parameters changed, {a['delta_bytes']:,} bytes of deltas, about "
            f"{a['saved_bits'] / 8:,.0f} bytes saved ({a['seconds']:.0f} s)")


@click.command(epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", default=None,
              help="Image file ('-' for stdout as PNG); a folder for a stream or for several inputs "
                   "(default: beside each input).")
@click.option("--format", "fmt", type=click.Choice(["PNG", "WEBP", "TIFF", "BMP", "PPM"]), default=None,
              help="Image format (default: from the output's suffix, else PNG).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help=DECODE_THREADS_HELP)
@options.jobs
@options.model
@options.device
@options.force
@options.quiet
@options.max_pixels
@options.max_work
@guarded
def decode(inputs: tuple[str, ...], output: str | None, fmt: str | None, threads: int | None,
           jobs_n: int, model_path: str | None, device: str | None, force: bool, quiet: bool,
           max_pixels: int | None, max_work: int | None) -> None:
    """Decompress .mlc files (or '-' for stdin) back to the exact original image(s).

    \b
    One input: -o names the image (a folder for a stream of several images).
    Several inputs: -o is a folder (default: beside each input); a file of one image
    becomes FOLDER/NAME.png, a stream FOLDER/NAME/ with one image per stored name. A file
    that fails is reported on its own line and the others are still written; the exit
    code is then the worst met.
    """
    from ..allocator import keep_freed_memory

    keep_freed_memory()
    opts = {"fmt": fmt, "threads": threads, "model": model_path, "device": device, "force": force,
            "max_pixels": max_pixels, "max_work": max_work, "bar": not quiet}
    if len(inputs) == 1:
        line = decode_file(inputs[0], output, False, opts)
        if not quiet and line:
            click.echo(line, err=True)
        return
    folders = _decode_folders(inputs, output)
    workers = min(jobs_n, len(inputs))
    opts["bar"] = opts["bar"] and workers == 1
    tasks = [(decode_file, src, folder, True, opts) for src, folder in zip(inputs, folders)]
    run_files(list(inputs), tasks, workers, None,
              lambda line: None if quiet else click.echo(line, err=True))


def _decode_folders(inputs: tuple[str, ...], output: str | None) -> list[str]:
    """The folder each of several inputs decodes into (checked before any work)."""
    if "-" in inputs:
        raise click.UsageError("'-' (stdin) can only be used as the only input")
    if output is not None and (output == "-" or not (output.endswith("/") or Path(output).is_dir())):
        raise click.UsageError("several inputs need -o FOLDER/ (or no -o: beside each input)")
    folders = [output or str(Path(src).parent) for src in inputs]
    stems = [(str(Path(f)), Path(src).stem) for f, src in zip(folders, inputs)]
    if len(set(stems)) != len(stems):
        raise click.UsageError("two inputs would write the same output name")
    return folders


def _decode_targets(src: str, output: str | None, several: bool, h: Any,
                    fmt: str | None) -> tuple[list[str], str | None]:
    """The image files one input decodes to, and the folder to create for them (or None).

    One input: `output` as given (a file, '-', or a folder). One of several: `output` is
    the folder; a stream goes into a subfolder named after the input.
    """
    n = len(h.images)
    ext = "." + (fmt or "PNG").lower().replace("tiff", "tif")
    if several:
        if n == 1:
            return [str(Path(output or ".") / (Path(src).stem + ext))], output  # type: ignore[arg-type]
        output = str(Path(output or ".") / Path(src).stem)
    elif n == 1:
        out = output or ("-" if src == "-" else str(Path(src).with_suffix(".png")))
        if out != "-" and (out.endswith("/") or Path(out).is_dir()):
            out = str(Path(out) / (Path(src).stem + ".png"))
        mkdir = output if output is not None and output != "-" and output.endswith("/") else None
        return [out], mkdir
    elif output is None or output == "-":
        raise click.UsageError(f"{src} holds {n} images: give -o FOLDER/")
    outdir = Path(output)
    if outdir.exists() and not outdir.is_dir():
        raise CliError(f"{output}: holds {n} images, so -o must be a folder", EXIT_OUTPUT)
    targets = [str(outdir / ((_safe_stem(rec.name) or f"{i:06d}") + ext)) for i, rec in enumerate(h.images)]
    if len(set(targets)) != n:
        targets = [str(outdir / f"{i:06d}{ext}") for i in range(n)]
    return targets, output


def _safe_stem(name: str) -> str:
    """A stored image name as a file name in the output folder ("" when it cannot be one)."""
    stem = Path(name).stem  # drops any folders: names never leave the output folder
    return stem if "\0" not in stem and len(stem.encode()) <= 200 else ""


def decode_file(src: str, output: str | None, several: bool, opts: dict[str, Any]) -> str:
    """Decode one input and write its image(s); returns the line to report ("" for none).
    Module-level, so that worker processes can run it."""
    from ..api import check_work, decompress_pictures, read_header
    from ..coding.container import tiles_in

    data = read_input(src)
    h = read_header(data, opts["max_pixels"])
    check_work(h, opts["max_work"])
    targets, folder = _decode_targets(src, output, several, h, opts["fmt"])
    for t in targets:
        check_target(t, [src], opts["force"])
    with progress_bar(sum(tiles_in(r, h.tile) for r in h.images), not opts["bar"], "decode") as bar:
        pics = decompress_pictures(data, device=opts["device"], model=opts["model"],
                                   max_pixels=opts["max_pixels"], max_work=opts["max_work"],
                                   progress=bar, threads=opts["threads"])
    blobs = [_render_image(pic, t, opts["fmt"]) for pic, t in zip(pics, targets)]  # fail before writing
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for blob, t in zip(blobs, targets):
        emit(t, blob, opts["force"])
    if targets == ["-"]:
        return ""
    return f"{src} -> {targets[0] if len(targets) == 1 else f'{len(targets)} images in {folder}'}"


def _render_image(pic: Any, out: str, fmt: str | None) -> bytes:
    """The decoded picture in the output's format, with its metadata where the format has room
    (PNG: all of it; TIFF: ICC, XMP, dpi and the EXIF tags; WebP: ICC, EXIF, XMP; BMP: dpi)."""
    im = pic.to_pil(meta=False)
    buf = io.BytesIO()
    suffix = Path(out).suffix.lower() if out != "-" else ""
    name = fmt or {".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
                   ".ppm": "PPM", ".pgm": "PPM", "": "PNG"}.get(suffix)
    if name is None:
        raise CliError(f"{out}: unknown image format '{suffix}' (use .png, .webp, .tif, .bmp, .ppm "
                       "or --format)", EXIT_OUTPUT)
    kw: dict[str, Any] = {"lossless": True, "exact": True} if name == "WEBP" else {}
    kw.update(pic.meta.save_options(name))
    if name == "PNG":
        kw["optimize"] = False
    try:
        im.save(buf, format=name, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise CliError(f"cannot save a {pic.mode} image as {name} ({e})", EXIT_OUTPUT) from None
    return buf.getvalue()
