"""The `mulancodec` command line: encode, decode, info, verify, demo, train, eval.

Errors are one line on stderr and a documented exit code, never a traceback
(set MULANCODEC_DEBUG=1 to see one). Outputs are written to a temporary file
and renamed into place, so an interrupted or failed run leaves no partial file.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from . import __version__
from .parallel import run_all

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERRUPT = 0, 1, 2, 3, 4, 5, 130
EXIT_CODES = """\b
Exit codes:
  0    success
  1    internal error
  2    bad command line
  3    bad input (unreadable or unsupported image, corrupt or foreign .mlc file)
  4    model problem (missing, unreadable, or not the model a file was made with)
  5    output problem (exists without -f, is the input, cannot be written)
  130  interrupted"""


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _classify(e: BaseException) -> int | None:
    from .api import DecodeError, EncodeError, ThreadsMismatch
    from .coding.codecs import CodingError
    from .coding.container import FormatError
    from .image import ImageError
    from .weights import ModelFileError

    if isinstance(e, ThreadsMismatch):
        return EXIT_USAGE
    if isinstance(e, ModelFileError):
        return EXIT_MODEL
    if isinstance(e, DecodeError) and "model" in str(e) and "made with" in str(e):
        return EXIT_MODEL
    if isinstance(e, (ImageError, FormatError, DecodeError, EncodeError, CodingError)):
        return EXIT_INPUT
    return None


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CliError as e:
            click.echo(f"mulancodec: error: {e}", err=True)
            sys.exit(e.code)
        except KeyboardInterrupt:
            click.echo("mulancodec: interrupted", err=True)
            sys.exit(EXIT_INTERRUPT)
        except Exception as e:  # noqa: BLE001 - the point is to never show a traceback
            if os.environ.get("MULANCODEC_DEBUG"):
                raise
            msg, code = _failure(e)
            click.echo(f"mulancodec: error: {msg}", err=True)
            sys.exit(code)

    return wrapper


def _failure(e: Exception) -> tuple[str, int]:
    """An exception as (one line, exit code)."""
    if isinstance(e, CliError):
        return str(e), e.code
    if isinstance(e, click.UsageError):
        return e.format_message(), EXIT_USAGE
    code = _classify(e)
    if code is None:
        code = EXIT_OUTPUT if isinstance(e, OSError) else EXIT_ERROR
    return (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__), code


def per_file(fn: Callable[..., Any], *args: Any) -> tuple[Any, str | None, int]:
    """fn(*args) as (result, None, 0), or a failure as (None, one line, exit code): one file's
    problem must not stop the others (nor cross a process boundary as an exception)."""
    try:
        return fn(*args), None, EXIT_OK
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - reported as that file's one-line error
        if os.environ.get("MULANCODEC_DEBUG") and not isinstance(e, (CliError, click.UsageError)):
            raise
        return (None, *_failure(e))


def _worker_died(e: BaseException) -> tuple[None, str, int]:
    return None, f"its worker process died ({type(e).__name__})", EXIT_ERROR


def _run_files(srcs: list[str], tasks: list[tuple[Any, ...]], workers: int, threads: int | None,
               ok: Callable[[Any], Any]) -> None:
    """Run one task per file (`per_file`, up to `workers` processes); `ok` each result in
    order, one line per failed file (named by `srcs`), and exit with the worst code met."""
    worst = EXIT_OK
    for src, (result, err, code) in zip(srcs, run_all(per_file, tasks, workers, threads, _worker_died)):
        if err is None:
            ok(result)
        else:
            _file_error(src, err)
            worst = max(worst, code)
    if worst:
        sys.exit(worst)


def _file_error(src: str, err: str) -> None:
    """One file's one-line error, naming the file (once)."""
    click.echo(f"mulancodec: error: {err if err.startswith(src + ':') else f'{src}: {err}'}", err=True)


# -- output helpers ---------------------------------------------------------------------

def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write via a temporary file in the same folder, then rename into place."""
    if path.exists() and not force:
        raise CliError(f"{path} exists (use -f to overwrite)", EXIT_OUTPUT)
    if path.is_dir():
        raise CliError(f"{path} is a directory", EXIT_OUTPUT)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise CliError(f"cannot write to {parent} ({e.strerror})", EXIT_OUTPUT) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_target(out: str, inputs: list[str], force: bool) -> None:
    """Before any work: an output may replace an existing file only with -f, and never
    one of its own inputs (even with -f: the input would be lost)."""
    if out == "-" or not Path(out).exists():
        return
    for src in inputs:
        if src != "-" and Path(src).exists() and os.path.samefile(src, out):
            raise CliError(f"{out} is also the input: refusing to overwrite it (choose another -o)",
                           EXIT_OUTPUT)
    if not force:
        raise CliError(f"{out} exists (use -f to overwrite)", EXIT_OUTPUT)


def emit(out: str, data: bytes, force: bool) -> None:
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(Path(out), data, force)


def read_input(src: str) -> bytes:
    if src == "-":
        return sys.stdin.buffer.read()
    p = Path(src)
    if not p.is_file():
        raise CliError(f"{src}: no such file", EXIT_INPUT)
    return p.read_bytes()


def _image_input(src: str) -> Any:
    """A path, or the decoded stdin bytes as a PIL image."""
    if src != "-":
        return src
    from PIL import Image

    from .image import ImageError

    data = sys.stdin.buffer.read()
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"stdin: cannot read image ({e})") from None
    return im


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, label: str) -> Iterator[Callable[[int], None] | None]:
    if quiet or total <= 1 or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="tile", desc=label, file=sys.stderr, leave=False) as bar:
        yield bar.update


def _tiles(paths: list[Any], tile: int) -> int:
    from PIL import Image

    n = 0
    for p in paths:
        try:
            size = p.size if hasattr(p, "size") else Image.open(p).size
        except Exception:  # noqa: BLE001 - the encoder reports unreadable files itself
            return 0
        n += -(-size[0] // tile) * -(-size[1] // tile)
    return n


def _verbosity(quiet: bool, verbose: bool) -> int:
    return -1 if quiet else (1 if verbose else 0)


# -- commands ---------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="mulancodec")
def main() -> None:
    """Lossless image compression with a MuLAN diffusion model and bits-back ANS coding.

    \b
      mulancodec encode photo.png -o photo.mlc
      mulancodec decode photo.mlc -o photo.png
      mulancodec encode --stream a.png b.png c.png -o set.mlc
      mulancodec decode set.mlc -o outdir/
    """


_common_model = click.option("--model", "model_path", default=None,
                             help="NAME|PATH: a shipped model's name (photo-int, photo, cifar10, ...) "
                                  "or a model file or directory. Encoding default: $MULANCODEC_MODEL, "
                                  "else photo-int (its files decode on any machine); decoding default: "
                                  "the installed model with the file's model id.")
_common_device = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                              help="Where the model runs (default: cuda if present). Decoding must use "
                                   "the encoder's kind.")
_common_quiet = click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
_common_verbose = click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
_common_force = click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
_common_pixels = click.option("--max-pixels", type=int, default=None,
                              help="Refuse images (or files) with more pixels than this (default 2^28; "
                                   "0 = no limit).")
_common_jobs = click.option("-j", "--jobs", "jobs_n", type=click.IntRange(min=1), default=1, show_default=True,
                            help="Code this many files at once, in worker processes (each file's "
                                 "output is the same as with -j 1 and the same --threads).")


@main.command(epilog=EXIT_CODES)
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
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Torch CPU threads per file (default: torch's count, or 1 per worker with -j > 1). "
                   "The file records it and, until files are machine-independent, decodes only with it.")
@_common_jobs
@_common_model
@_common_device
@_common_force
@_common_quiet
@_common_verbose
@_common_pixels
@guarded
def encode(inputs: tuple[str, ...], output: str | None, stream: bool, steps: int | None,
           no_fallback: bool, as_json: bool, strip: bool, threads: int | None, jobs_n: int,
           model_path: str | None, device: str | None, force: bool, quiet: bool, verbose: bool,
           max_pixels: int | None) -> None:
    """Compress images (PNG, TIFF, BMP, ... or '-' for stdin) to .mlc files.

    With several files, a file that fails is reported on its own line and the others are
    still written; the exit code is then the worst met.
    """
    from .allocator import keep_freed_memory
    from .api import get_model, pick_device
    from .image import probe

    for src in inputs:  # every input is checked (format, size, mode) before any work or output
        if src != "-":
            probe(src, max_pixels)
    jobs = _encode_jobs(inputs, output, stream)
    for srcs, out in jobs:
        check_target(out, srcs, force)
    dev = pick_device(device)
    lm = get_model(model_path, dev)
    keep_freed_memory()
    opts = {"stream": stream, "steps": steps, "fallback": not no_fallback, "strip": strip,
            "threads": threads or (1 if jobs_n > 1 else None), "device": str(dev), "force": force,
            "max_pixels": max_pixels, "mkdir": output is not None and output.endswith("/"),
            "bar": not (quiet or as_json)}
    report = functools.partial(_report_encode, as_json=as_json, quiet=quiet, verbose=verbose)
    if len(jobs) == 1:  # errors as one line each, as they always were
        report(_encode_file(jobs[0][0], jobs[0][1], opts, lm))
        return
    workers = min(jobs_n, len(jobs))
    model = lm if workers == 1 else str(lm.path)
    opts["bar"] = opts["bar"] and workers == 1
    tasks = [(_encode_file, srcs, out, opts, model) for srcs, out in jobs]
    _run_files([srcs[0] for srcs, _ in jobs], tasks, workers, opts["threads"], report)


def _encode_file(srcs: list[str], out: str, opts: dict[str, Any], model: Any) -> dict[str, Any]:
    """Encode one output file (a stream of `srcs`, or its one image); returns what to report."""
    from .api import compress_many, compress_with_stats, get_model, pick_device

    dev = pick_device(opts["device"])
    lm = get_model(model, dev)
    images = [_image_input(s) for s in srcs]
    kw = dict(steps=opts["steps"], device=dev, model=lm, max_pixels=opts["max_pixels"],
              strip=opts["strip"], threads=opts["threads"])
    with progress_bar(_tiles(images, lm.config.tile), not opts["bar"], "encode") as bar:
        if opts["stream"]:
            names = [Path(s).name.replace("\n", " ") if s != "-" else "" for s in srcs]
            data = compress_many(images, names=names, progress=bar, **kw)
            info: dict[str, Any] = {"bytes": len(data), "images": len(images)}
        else:
            data, st = compress_with_stats(images[0], fallback=opts["fallback"], progress=bar, **kw)
            info = {"bytes": st.bytes, "bpd": round(st.bpd, 4), "embedded": st.embedded,
                    "bits_back_bytes": st.bits_back_bytes, "tiles": st.tiles}
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


def _safe_stem(name: str) -> str:
    """A stored image name as a file name in the output folder ("" when it cannot be one)."""
    stem = Path(name).stem  # drops any folders: names never leave the output folder
    return stem if "\0" not in stem and len(stem.encode()) <= 200 else ""


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


_common_work = click.option("--max-work", type=click.IntRange(min=0), default=None,
                            help="Refuse files whose decoding takes more tile-steps (tiles x steps) than "
                                 "this (default 2^24, e.g. 4096x4096 at T=1000; 0 = no limit).")


@main.command(epilog=EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", default=None,
              help="Image file ('-' for stdout as PNG); a folder for a stream or for several inputs "
                   "(default: beside each input).")
@click.option("--format", "fmt", type=click.Choice(["PNG", "WEBP", "TIFF", "BMP", "PPM"]), default=None,
              help="Image format (default: from the output's suffix, else PNG).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Torch CPU threads (default: the count the file was made with, the only one it "
                   "decodes with until files are machine-independent).")
@_common_jobs
@_common_model
@_common_device
@_common_force
@_common_quiet
@_common_pixels
@_common_work
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
    from .allocator import keep_freed_memory

    keep_freed_memory()
    opts = {"fmt": fmt, "threads": threads, "model": model_path, "device": device, "force": force,
            "max_pixels": max_pixels, "max_work": max_work, "bar": not quiet}
    if len(inputs) == 1:
        line = _decode_file(inputs[0], output, False, opts)
        if not quiet and line:
            click.echo(line, err=True)
        return
    folders = _decode_folders(inputs, output)
    workers = min(jobs_n, len(inputs))
    opts["bar"] = opts["bar"] and workers == 1
    tasks = [(_decode_file, src, folder, True, opts) for src, folder in zip(inputs, folders)]
    _run_files(list(inputs), tasks, workers, None,
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


def _decode_file(src: str, output: str | None, several: bool, opts: dict[str, Any]) -> str:
    """Decode one input and write its image(s); returns the line to report ("" for none)."""
    from .api import check_work, decompress_pictures, read_header
    from .coding.container import tiles_in

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


@main.command(epilog=EXIT_CODES)
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_common_pixels
@guarded
def info(file: str, as_json: bool, max_pixels: int | None) -> None:
    """Describe an .mlc file without decoding it."""
    from .api import read_header
    from .coding.codecs import CONSTRICTION_VERSION, constriction_version
    from .coding.container import DEFAULT_MAX_WORK, METHOD_EMBED, tiles_in

    data = read_input(file)
    h = read_header(data, max_pixels)
    chans = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}
    sub = sum(r.width * r.height * chans[r.mode] for r in h.images)
    d = {
        "file": file, "bytes": len(data), "format_version": h.version, "compact": bool(h.compact),
        "model_id": h.model_id,
        # version 3 (an integer model's file) pins no backend, precision or thread count
        "backend": h.backend, "precision": "integer" if h.version >= 3 else "bf16" if h.bf16 else "fp32",
        "threads": h.threads or None,
        "steps": h.steps, "tile": h.tile, "kappa": h.kappa, "images": len(h.images),
        "bits_per_subpixel": round(8 * len(data) / sub, 4),
        "batches": len(h.plan), "seed_words": h.seed_words,
        # decoding cost: one network evaluation per model-coded tile and step
        "network_evaluations": sum(tiles_in(r, h.tile) for r in h.images) * h.steps,
        # what this decoder would run with (files decode only with the pinned constriction)
        "constriction": constriction_version(), "constriction_required": CONSTRICTION_VERSION,
        "image_list": [{"name": r.name, "mode": r.mode, "width": r.width, "height": r.height,
                        "method": "embedded" if r.method == METHOD_EMBED else "bits-back",
                        "tiles": tiles_in(r, h.tile), "metadata": _meta_list(r.meta)}
                       for r in h.images],
    }
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
    pin = "" if d["constriction"] == CONSTRICTION_VERSION else f" (files need {CONSTRICTION_VERSION})"
    click.echo(f"  decoder here: constriction {d['constriction']}{pin}")
    for r in d["image_list"][:20]:
        name = f" {r['name']}" if r["name"] else ""
        click.echo(f"  {r['mode']:4} {r['width']}x{r['height']} {r['method']}{name}")
        if r["metadata"]:
            click.echo(f"       metadata: {'; '.join(r['metadata'])}")
    if len(h.images) > 20:
        click.echo(f"  ... and {len(h.images) - 20} more images")


def _meta_list(items: list[tuple[int, bytes]]) -> list[str]:
    """What metadata an image record carries, one phrase per field."""
    from .metadata import Metadata, MetadataError

    try:
        return Metadata.from_items(items).describe()
    except MetadataError as e:
        return [f"corrupt ({e})"]


@main.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True)
@_common_model
@_common_device
@_common_pixels
@_common_work
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
    from .api import check_work, decompress_pictures, read_header

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
        code = _classify(e)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if code == EXIT_MODEL:
            return f"CANNOT CHECK ({msg})", EXIT_MODEL
        if code is None and os.environ.get("MULANCODEC_DEBUG"):
            raise
        return f"CORRUPT ({msg})", EXIT_INPUT if code is not None else EXIT_ERROR
    return f"ok ({len(pics)} image{'s' if len(pics) != 1 else ''})", EXIT_OK


@main.command(epilog=EXIT_CODES)
@click.argument("image", required=False)
@click.option("--steps", type=click.IntRange(1, 100_000), default=None, help="Diffusion steps T.")
@_common_model
@_common_device
@guarded
def demo(image: str | None, steps: int | None, model_path: str | None, device: str | None) -> None:
    """Compress a sample photograph (or IMAGE), decode it, check it, compare with PNG and WebP."""
    import time

    import numpy as np

    from .api import compress_with_stats, decompress_pictures, default_steps, get_model, pick_device
    from .image import load
    from .sample import landscape, photo

    if image:
        src, pic = image, load(image)
    else:
        arr, src = photo()
        if arr is None:  # no dependency ships a photograph here: the painted sample
            arr, src = landscape(), f"{src}; a 128x96 landscape painted by mulancodec/sample.py"
        pic = load(arr)
    dev = pick_device(device)
    lm = get_model(model_path, dev)
    click.echo(f"image: {src}, {pic.mode} {pic.width}x{pic.height}")
    click.echo(f"model: {lm.model_id} ({lm.path.name}), device {dev}")
    t0 = time.time()
    data, st = compress_with_stats(pic.to_pil(), steps=steps, device=dev, model=lm, fallback=False)
    t1 = time.time()
    back = decompress_pictures(data, device=dev, model=lm)[0]
    t2 = time.time()
    exact = np.array_equal(back.array(), pic.array()) and back.mode == pic.mode
    if not exact:
        raise CliError("round trip was not exact", EXIT_ERROR)
    sub = pic.array().size

    def size(fmt: str, **kw: Any) -> int:
        buf = io.BytesIO()
        pic.to_pil().save(buf, format=fmt, **kw)
        return len(buf.getvalue())

    rows = [("mulancodec (bits-back)", len(data))]
    rows.append(("PNG (optimize)", size("PNG", optimize=True)))
    with contextlib.suppress(OSError, KeyError, ValueError):
        if pic.mode in ("RGB", "RGBA"):
            rows.append(("WebP lossless (method 6)", size("WEBP", lossless=True, quality=100, method=6)))
    with contextlib.suppress(ImportError, RuntimeError, ValueError):  # imagecodecs: the bench extra
        import imagecodecs

        rows.append(("JPEG-XL lossless (effort 9)",
                     len(imagecodecs.jpegxl_encode(pic.array(), lossless=True, effort=9))))
    click.echo(f"round trip exact: yes (encode {t1 - t0:.1f}s, decode {t2 - t1:.1f}s, "
               f"T={steps or default_steps(lm)})")
    click.echo(f"{'codec':26} {'bytes':>8} {'bits/subpixel':>14}")
    for name, n in rows:
        click.echo(f"{name:26} {n:>8,} {8 * n / sub:>14.3f}")
    if st.first_batch_bits:
        click.echo(f"(bits-back start-up cost included above: {st.first_batch_bits:,} bits; "
                   "it is paid once per file, so larger images and streams amortise it)")


@main.command()
@click.option("--data", "data", multiple=True, required=True,
              help="Training images: .npz with array x (N,H,W,3), a folder, or a glob. Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--config", default=None, help="Config name (tiny, small, base, large, ...) or JSON file.")
@click.option("--max-steps", type=int, default=None, help="Stop at this total step count.")
@click.option("--minutes", type=float, default=None, help="Stop after this many minutes of this run.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--eval-data", multiple=True, help="Test images for periodic EMA test bpd.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (long runs on GPU).")
@click.option("--compact", is_flag=True,
              help="Checkpoint in float16 without optimizer state (1/4 the size, to move runs "
                   "between machines; resuming restarts Adam with a short warmup).")
@click.option("--init", default=None,
              help="Start a new run from this model file's weights (e.g. a context model from a "
                   "model without context: the context inputs start at zero).")
@click.option("--quantize", "quantize_", is_flag=True,
              help="Quantisation-aware training: round as the integer model will (fine-tune a "
                   "model with --init, then make its integer model with `mulancodec quantize`).")
def train(data: tuple[str, ...], out: Path, config: str | None, max_steps: int | None,
          minutes: float | None, resume: bool, eval_data: tuple[str, ...], device: str | None,
          compile_: bool, compact: bool, init: str | None, quantize_: bool) -> None:
    """Train (or resume) a MuLAN model; works under torchrun for several GPUs."""
    from .train import TrainArgs, train as run

    try:
        code = run(TrainArgs(list(data), out, config, max_steps, minutes, resume, list(eval_data),
                             device, compile_, compact=compact, init=init, quantize=quantize_))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@main.command("eval")
@click.option("--data", "data", multiple=True, required=True, help="Images (.npz, folder, glob).")
@click.option("--model", "model_path", default=None,
              help="NAME|PATH: a shipped model (photo-int, photo, cifar10, ...), a model file or run "
                   "directory (default: $MULANCODEC_MODEL, else photo-int: an integer model has only "
                   "the bound at T).")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@click.option("--steps", type=int, default=None, help="T for the discrete-time bound (default: model's).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda if present).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Samples per image.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--tile", type=int, default=None,
              help="Tile side to evaluate at (default: the model's; the nets run on any multiple "
                   "of their downsampling factor).")
@click.option("--no-context", is_flag=True,
              help="Withhold every tile's context (a context model's ablation: as if each tile "
                   "were coded alone).")
@guarded
def eval_cmd(data: tuple[str, ...], model_path: str | None, limit: int | None, steps: int | None,
             device: str | None, batch_size: int, repeats: int, seed: int, as_json: bool,
             tile: int | None, no_context: bool) -> None:
    """The model's -ELBO in bits per dimension (continuous and discrete time; an integer
    model's at T only)."""
    import torch

    from .data import image_tiles, load_images
    from .api import default_steps
    from .evaluate import evaluate
    from .model.integer import IntegerMuLAN
    from .quantcost import evaluate_steps
    from .weights import load_model

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(model_path, dev)
    size = tile or lm.config.tile
    if size < 1 or size % lm.config.multiple_of():
        raise CliError(f"--tile must be a positive multiple of {lm.config.multiple_of()}", EXIT_USAGE)
    try:
        images = image_tiles(load_images(list(data)), size, lm.config.context, limit)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e), EXIT_INPUT) from None
    if no_context and images.known is not None:
        images.known[:] = False
    T = steps if steps is not None else default_steps(lm)
    from tqdm import tqdm

    with tqdm(total=len(images) * repeats, unit="img", disable=as_json or not sys.stderr.isatty(),
              file=sys.stderr, leave=False) as bar:
        if isinstance(lm.model, IntegerMuLAN):
            if T < 1:
                raise CliError("an integer model has no continuous bound: give --steps T >= 1", EXIT_USAGE)
            res = evaluate_steps(lm.model, images, T, min(batch_size, 64), seed, repeats, bar.update)
        else:
            res = evaluate(lm.model, images, T, batch_size, dev, seed, repeats, bar)
    res.update({"model_id": lm.model_id, "model": str(lm.path), "device": str(dev), "tile": size,
                "context": bool(lm.config.context and not no_context)})
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"model {lm.model_id} ({lm.path}) on {res['n_images']} images, device {dev}")
    if res["bpd"] is not None:
        click.echo(f"  -ELBO continuous : {res['bpd']:.4f} bpd  (95% CI {res['bpd_ci95'][0]:.4f}"
                   f"..{res['bpd_ci95'][1]:.4f})")
    click.echo(f"  -ELBO at T={T:<5}: {res['bpd_T']:.4f} bpd  (95% CI {res['bpd_T_ci95'][0]:.4f}"
               f"..{res['bpd_T_ci95'][1]:.4f})")
    click.echo(f"  terms: diffusion {res['diffusion']:.4f}, reconstruction {res['recon']:.4f}, "
               f"prior {res['prior']:.5f}, latent {res['latent']:.4f}")



@main.command()
@click.option("--model", "model_path", required=True, help="NAME|PATH of the float model to quantise.")
@click.option("--data", "data", multiple=True, required=True,
              help="Calibration images (training images, never test ones): .npz, folder or glob.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Integer model file to write.")
@click.option("--tiles", type=click.IntRange(1, 4096), default=48, show_default=True,
              help="Random training-style tiles to fit the activation grids on.")
@click.option("--seed", type=int, default=0, show_default=True)
@guarded
def quantize(model_path: str, data: tuple[str, ...], out: Path, tiles: int, seed: int) -> None:
    """Make the integer model of a float one: its files (format version 3) decode on any machine."""
    from .coding.exact import is_exact
    from .quantize import calibration_tiles, quantize as run
    from .weights import load_model, save_integer_model

    lm = load_model(model_path)
    if is_exact(lm.model):
        raise CliError(f"{lm.path} is already an integer model", EXIT_USAGE)
    try:
        cal = calibration_tiles(list(data), lm.config.tile, lm.config.context, tiles, seed)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e), EXIT_INPUT) from None
    extra = {"default_steps": lm.meta.get("default_steps", "100"),
             "calibration": json.dumps({"data": [Path(d).name for d in data], "tiles": tiles, "seed": seed})}
    mid = save_integer_model(run(lm.model, cal, seed), out, lm.model_id, extra)
    click.echo(f"{out}: integer model {mid} of {lm.model_id}")


if __name__ == "__main__":
    main()
