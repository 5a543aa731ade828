"""Lossless JPEG-XL, the strongest classical fallback, through imagecodecs (optional).

imagecodecs is the library the benchmarks already measure JPEG-XL with (a
maintained binding of libjxl, with wheels for the usual platforms), so the
fallback codes exactly what the benchmark tables report. It is optional
(`pip install mulancodec[jxl]`): without it the encoder skips JPEG-XL, and a
decoder given a file that holds one says which package to install.

Files hold a bare codestream (FF 0A). Its size header is read here before any
decoding, so a few hostile bytes cannot make libjxl allocate a huge image.
"""
from __future__ import annotations

import numpy as np

SIGNATURE = b"\xff\x0a"
PACKAGE = "imagecodecs"
EFFORT = 9  # as the benchmarks; large images use FAST_EFFORT (effort 9 takes minutes there)
FAST_EFFORT = 7
FAST_ABOVE = 1 << 18  # pixels


class JxlUnavailable(ImportError):
    """The JPEG-XL library is not installed."""


def _codec():  # noqa: ANN202 - the imagecodecs module
    try:
        import imagecodecs
    except ImportError:
        raise JxlUnavailable(f"this file holds a JPEG-XL image: decoding it needs {PACKAGE} "
                             f"(pip install {PACKAGE}, or pip install mulancodec[jxl])") from None
    if not imagecodecs.JPEGXL.available:
        raise JxlUnavailable(f"this file holds a JPEG-XL image, but the installed {PACKAGE} has no "
                             f"JPEG-XL codec (pip install -U {PACKAGE})")
    return imagecodecs


def available() -> bool:
    """Whether JPEG-XL can be encoded and decoded here."""
    try:
        _codec()
    except JxlUnavailable:
        return False
    return True


def is_jxl(data: bytes) -> bool:
    return data[:2] == SIGNATURE


def encode(a: np.ndarray) -> bytes:
    """Lossless JPEG-XL of an (H, W) or (H, W, C) uint8 array."""
    effort = EFFORT if a.shape[0] * a.shape[1] <= FAST_ABOVE else FAST_EFFORT
    return bytes(_codec().jpegxl_encode(a, lossless=True, effort=effort))


def size(data: bytes) -> tuple[int, int]:
    """(width, height) from the codestream's SizeHeader (JPEG-XL spec, ISO 18181-1 A.3)."""
    if not is_jxl(data):
        raise ValueError("not a JPEG-XL codestream")
    pos = 16

    def bits(n: int) -> int:
        nonlocal pos
        if (pos + n + 7) >> 3 > len(data):
            raise ValueError("truncated JPEG-XL header")
        v = sum(((data[(pos + k) >> 3] >> ((pos + k) & 7)) & 1) << k for k in range(n))
        pos += n
        return v

    def u32() -> int:
        return bits((9, 13, 18, 30)[bits(2)]) + 1

    small = bits(1)
    h = (bits(5) + 1) * 8 if small else u32()
    ratio = bits(3)
    if ratio == 0:
        return ((bits(5) + 1) * 8 if small else u32()), h
    num, den = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))[ratio - 1]
    return h * num // den, h


def decode(data: bytes, width: int, height: int) -> np.ndarray:
    """The pixels of a codestream that must be width x height (checked before decoding)."""
    codec = _codec()
    if size(data) != (width, height):
        raise ValueError("JPEG-XL image does not match its header")
    try:
        a = np.asarray(codec.jpegxl_decode(data))
    except Exception as e:  # noqa: BLE001 - imagecodecs raises its own error types
        raise ValueError(f"corrupt JPEG-XL image ({type(e).__name__})") from None
    if a.dtype != np.uint8 or a.shape[:2] != (height, width):
        raise ValueError("JPEG-XL image does not match its header")
    return a
