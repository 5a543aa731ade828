"""Inputs, outputs and progress: what every coding command shares.

Outputs are written to a temporary file and renamed into place, so an interrupted or
failed run leaves no partial file; an output never replaces its own input.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ..parallel import run_all
from .errors import EXIT_ERROR, EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, CliError, per_file


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
    """Write an output: to stdout for '-', else atomically."""
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(Path(out), data, force)


def read_input(src: str) -> bytes:
    """An input's bytes ('-': stdin); a missing file is bad input, not an output problem."""
    if src == "-":
        return sys.stdin.buffer.read()
    p = Path(src)
    if not p.is_file():
        raise CliError(f"{src}: no such file", EXIT_INPUT)
    return p.read_bytes()


def image_input(src: str) -> Any:
    """A path, or the decoded stdin bytes as a PIL image (stdin can be read only once)."""
    if src != "-":
        return src
    from PIL import Image

    from ..imaging.image import ImageError

    data = sys.stdin.buffer.read()
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"stdin: cannot read image ({e})") from None
    return im


@contextlib.contextmanager
def progress_bar(total: int, quiet: bool, label: str) -> Iterator[Callable[[int], None] | None]:
    """A tile counter on a terminal's stderr (None when quiet, piped or a single tile)."""
    if quiet or total <= 1 or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="tile", desc=label, file=sys.stderr, leave=False) as bar:
        yield bar.update


def count_tiles(paths: list[Any], tile: int) -> int:
    """Tiles the images (paths or PIL images) split into: the progress bar's total."""
    from PIL import Image

    n = 0
    for p in paths:
        try:
            size = p.size if hasattr(p, "size") else Image.open(p).size
        except Exception:  # noqa: BLE001 - the encoder reports unreadable files itself
            return 0
        n += -(-size[0] // tile) * -(-size[1] // tile)
    return n


def _worker_died(e: BaseException) -> tuple[None, str, int]:
    return None, f"its worker process died ({type(e).__name__})", EXIT_ERROR


def run_files(srcs: list[str], tasks: list[tuple[Any, ...]], workers: int, threads: int | None,
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
