"""The package's documented errors (exported by `mulancodec` and `mulancodec.api`): what
callers catch, and what the command line maps to exit codes by type."""
from __future__ import annotations

from .zoo import ModelFileError


class DecodeError(Exception):
    """A file could not be decoded into exactly the image that was encoded."""


class EncodeError(Exception):
    """An image could not be encoded."""


class MissingModelError(DecodeError, ModelFileError):
    """The model a file was made with is not installed (or not the one given)."""


class ThreadsMismatch(DecodeError):
    """A decode was asked to run with another CPU thread count than the file was made with."""
