"""The classical lossless codecs a user already knows, all through imagecodecs.

Each codec is run at its maximum-compression lossless setting, so the table
compares mulancodec with the best each format can do, not with its defaults.
A codec whose encoder is missing from this imagecodecs build is skipped with a
reason (the run never crashes on it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

try:
    import imagecodecs
except ImportError:  # the whole library missing: every classical codec is skipped
    imagecodecs = None


@dataclass(frozen=True)
class ClassicalCodec:
    """One row of the table: how to encode/decode an (H, W, 3) uint8 image."""

    name: str  # the row name in results (fixed: users compare runs by it)
    lib: str  # the imagecodecs class whose .available says if the build has it
    settings: str  # what "max compression" means for this codec, for the meta
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]


def _ic(fn: str) -> Callable:
    """Late lookup, so the table can be built even when imagecodecs lacks a function."""
    return lambda *a, **k: getattr(imagecodecs, fn)(*a, **k)


CODECS: list[ClassicalCodec] = [
    ClassicalCodec("PNG", "PNG", "level=9",
                   lambda x: _ic("png_encode")(x, level=9), _ic("png_decode")),
    ClassicalCodec("WebP", "WEBP", "lossless=True, method=6, level=100",
                   lambda x: _ic("webp_encode")(x, level=100, lossless=True, method=6),
                   _ic("webp_decode")),
    ClassicalCodec("JPEG-XL", "JPEGXL", "lossless=True, effort=9 (bare codestream)",
                   lambda x: _ic("jpegxl_encode")(x, lossless=True, effort=9), _ic("jpegxl_decode")),
    ClassicalCodec("JPEG 2000", "JPEG2K", "reversible=True (5/3 wavelet, RCT), .jp2 file",
                   lambda x: _ic("jpeg2k_encode")(x, level=0, reversible=True), _ic("jpeg2k_decode")),
    ClassicalCodec("JPEG-LS", "JPEGLS", "level=0 (lossless, NEAR=0)",
                   lambda x: _ic("jpegls_encode")(x, level=0), _ic("jpegls_decode")),
    ClassicalCodec("AVIF", "AVIF", "level=100 (lossless), speed=0 (slowest, smallest)",
                   lambda x: _ic("avif_encode")(x, level=100, speed=0), _ic("avif_decode")),
    ClassicalCodec("QOI", "QOI", "(no settings)", _ic("qoi_encode"), _ic("qoi_decode")),
]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {"jxl": "JPEG-XL", "j2k": "JPEG 2000", "jp2": "JPEG 2000", "jpeg2k": "JPEG 2000",
            "jls": "JPEG-LS"}


def lookup(name: str) -> ClassicalCodec:
    """A codec by row name, forgiving case, spaces and dashes ('jpeg2000', 'jpegxl', 'jxl')."""
    want = _ALIASES.get(_key(name), name)
    for c in CODECS:
        if _key(c.name) == _key(want):
            return c
    raise KeyError(f"unknown codec {name!r} (known: {', '.join(c.name for c in CODECS)})")


def unavailable_reason(codec: ClassicalCodec) -> str | None:
    """Why this codec cannot run here, or None when it can."""
    if imagecodecs is None:
        return "imagecodecs is not installed"
    cls = getattr(imagecodecs, codec.lib, None)
    if cls is None or not getattr(cls, "available", False):
        return f"this imagecodecs build ({imagecodecs.__version__}) has no {codec.lib} codec"
    return None


def select(names: list[str] | None) -> tuple[list[ClassicalCodec], dict[str, str]]:
    """(codecs that can run, {skipped row name: reason}); None means all of them."""
    wanted = CODECS if names is None else [lookup(n) for n in names]
    ok, skipped = [], {}
    for c in dict.fromkeys(wanted):  # dedupe, keep order
        reason = unavailable_reason(c)
        if reason is None:
            ok.append(c)
        else:
            skipped[c.name] = reason
    return ok, skipped


JXL_NAME = "JPEG-XL"
JXL_EFFORTS = range(1, 11)  # libjxl's -e: 1 fastest .. 10 slowest (9 is the table's default)
DEFAULT_JXL_EFFORT = 9


def jpegxl(effort: int) -> ClassicalCodec:
    """JPEG-XL at one effort level, named `JPEG-XL eN`: a point on its own size/time curve."""
    if effort not in JXL_EFFORTS:
        raise ValueError(f"JPEG-XL effort must be 1..10, not {effort}")
    return ClassicalCodec(f"{JXL_NAME} e{effort}", "JPEGXL",
                          f"lossless=True, effort={effort} (bare codestream)",
                          lambda x: _ic("jpegxl_encode")(x, lossless=True, effort=effort),
                          _ic("jpegxl_decode"))


def with_jxl_efforts(codecs: list[ClassicalCodec], efforts: list[int] | None) -> list[ClassicalCodec]:
    """The JPEG-XL row replaced by one row per effort. None (the default) keeps today's single
    `JPEG-XL` row at effort 9, so results stay comparable by name with earlier runs."""
    if efforts is None:
        return codecs
    out: list[ClassicalCodec] = []
    for c in codecs:
        out += [jpegxl(e) for e in dict.fromkeys(efforts)] if c.name == JXL_NAME else [c]
    return out


def jxl_effort(name: str) -> int | None:
    """The effort of a JPEG-XL row (`JPEG-XL` is effort 9), None for any other codec."""
    if name == JXL_NAME:
        return DEFAULT_JXL_EFFORT
    m = re.fullmatch(re.escape(JXL_NAME) + r" e(\d+)", name)
    return int(m.group(1)) if m else None


def library_version() -> str:
    return "not installed" if imagecodecs is None else str(imagecodecs.__version__)
