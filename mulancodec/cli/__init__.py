"""The `mulancodec` command line: the click group and where each command lives.

    codec.py     encode, decode          images to .mlc files and back
    check.py     info, verify, demo      look into files, check round trips
    research.py  train, eval, quantize,  make and measure models
                 pack
    errors.py    exit codes; a failure as one line on stderr and its code (by exception type)
    files.py     atomic outputs, inputs, progress, one task per file
    options.py   the options several commands share

Errors are one line on stderr and a documented exit code, never a traceback
(set MULANCODEC_DEBUG=1 to see one). Outputs are written to a temporary file
and renamed into place, so an interrupted or failed run leaves no partial file.
The console script `mulancodec` is `mulancodec.cli:main`.
"""
from __future__ import annotations

import click

from .. import __version__
from .check import demo, info, verify
from .codec import decode, encode
from .errors import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INPUT,
    EXIT_INTERRUPT,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    CliError,
    classify,
    guarded,
)
from .files import check_target, emit, read_input, write_atomic
from .research import eval_cmd, pack, quantize, train

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INPUT", "EXIT_MODEL", "EXIT_OUTPUT",
           "EXIT_INTERRUPT", "EXIT_CODES", "CliError", "classify", "guarded", "check_target", "emit",
           "read_input", "write_atomic"]


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


for _command in (encode, decode, info, verify, demo, train, eval_cmd, quantize, pack):
    main.add_command(_command)
