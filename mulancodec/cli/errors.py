"""Exit codes, and how a failure becomes one line on stderr and one of them.

Errors are classified by exception type only, never by message text: a message is
written for people and may change (or quote a corrupt file's own words), a type is
the package's contract (`mulancodec.__init__` exports it).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import click

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
    """A failure the command line detects itself, with the exit code it means."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@functools.lru_cache(maxsize=None)
def exit_table() -> tuple[tuple[tuple[type[BaseException], ...], int], ...]:
    """(exception types, exit code) pairs; the first row an error is an instance of wins.

    Order matters where a class has two parents: ThreadsMismatch is a DecodeError that the
    command line asked for (--threads), and MissingModelError is both a DecodeError and a
    ModelFileError: the model is the problem, not the file. Every other DecodeError,
    a payload that does not decode included, is the file's problem. Imported lazily, so
    that `--help` does not import torch.
    """
    from ..api import DecodeError, EncodeError, ThreadsMismatch
    from ..coding.codecs import CodingError
    from ..coding.container import FormatError
    from ..imaging.image import ImageError
    from ..zoo import ModelFileError

    return (
        ((ThreadsMismatch,), EXIT_USAGE),
        ((ModelFileError,), EXIT_MODEL),
        ((ImageError, FormatError, DecodeError, EncodeError, CodingError), EXIT_INPUT),
    )


def classify(e: BaseException) -> int | None:
    """The exit code of one of the package's documented errors (None for any other)."""
    for types, code in exit_table():
        if isinstance(e, types):
            return code
    return None


def one_line(e: BaseException) -> str:
    """An error's first line (its type's name when it has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def failure(e: Exception) -> tuple[str, int]:
    """An exception as (one line, exit code); an unclassified OSError is the output's."""
    if isinstance(e, CliError):
        return str(e), e.code
    if isinstance(e, click.UsageError):
        return e.format_message(), EXIT_USAGE
    code = classify(e)
    if code is None:
        code = EXIT_OUTPUT if isinstance(e, OSError) else EXIT_ERROR
    return one_line(e), code


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one line on stderr and an exit code (a traceback only with
    MULANCODEC_DEBUG set): other tools read the code, people read the line."""

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
            msg, code = failure(e)
            click.echo(f"mulancodec: error: {msg}", err=True)
            sys.exit(code)

    return wrapper


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
        return (None, *failure(e))
