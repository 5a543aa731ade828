"""Sizes and times turned into table rows, and the bit-exact check every codec must pass.

Every number comes from real bytes (headers included) and real decodes, so a
row can be trusted without reading the codec's own claims.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


class BitExactError(Exception):
    """A codec returned pixels that differ from the input: the benchmark is void."""


def bits_per_subpixel(total_bytes: int, total_subpixels: int) -> float:
    """8 * bytes / subpixels: the unit of the table (bits per dimension)."""
    if total_subpixels <= 0:
        raise ValueError("no subpixels")
    return 8.0 * total_bytes / total_subpixels


def subpixels(images: Sequence[np.ndarray]) -> int:
    return int(sum(im.size for im in images))


def centre_crop(im: np.ndarray, n: int | None) -> np.ndarray:
    """The centred n x n crop of an image (a side shorter than n is kept whole)."""
    if not n:
        return im
    h, w = im.shape[:2]
    top, left = max(0, (h - n) // 2), max(0, (w - n) // 2)
    return np.ascontiguousarray(im[top:top + n, left:left + n])


def pixels(images: Sequence[np.ndarray]) -> int:
    """Pixels (H x W) over all images, whatever their channels."""
    return int(sum(im.shape[0] * im.shape[1] for im in images))


def check_exact(codec: str, index: int, original: np.ndarray, decoded: Any) -> None:
    """Raise BitExactError unless `decoded` is exactly `original` (shape, dtype, values)."""
    dec = np.asarray(decoded)
    if dec.shape != original.shape or dec.dtype != original.dtype:
        raise BitExactError(f"{codec}: image {index} decoded as {dec.dtype}{dec.shape}, "
                            f"expected {original.dtype}{original.shape}")
    if not np.array_equal(dec, original):
        n = int((dec != original).sum())
        raise BitExactError(f"{codec}: image {index} is not bit-exact after decoding "
                            f"({n} of {original.size} subpixels differ)")


@dataclass
class Tally:
    """What one codec row accumulates: bytes and encode/decode seconds over all images."""

    n_images: int = 0
    subpixels: int = 0
    bytes: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    pixels: int = 0  # H x W summed over the images (subpixels / channels)

    def add(self, im: np.ndarray, nbytes: int, encode_s: float, decode_s: float) -> None:
        """Count one image's file: its size and its coding times."""
        self.n_images += 1
        self.subpixels += im.size
        self.pixels += im.shape[0] * im.shape[1]
        self.bytes += nbytes
        self.encode_s += encode_s
        self.decode_s += decode_s

    def row(self, codec: str, steps: int | None = None) -> dict[str, Any]:
        """The common row fields; times are per image (and per megapixel), images_per_s is
        encode throughput."""
        n = max(1, self.n_images)
        mpx = self.pixels / 1e6
        return {
            "codec": codec,
            "steps": steps,
            "bpd": bits_per_subpixel(self.bytes, self.subpixels),
            "bytes": self.bytes,
            "n_images": self.n_images,
            "subpixels": self.subpixels,
            "encode_s": self.encode_s / n,
            "decode_s": self.decode_s / n,
            "images_per_s": self.n_images / self.encode_s if self.encode_s > 0 else float("inf"),
            "decode_images_per_s": self.n_images / self.decode_s if self.decode_s > 0 else float("inf"),
            "megapixels": mpx,
            "encode_s_per_mpx": self.encode_s / mpx if mpx else None,
            "decode_s_per_mpx": self.decode_s / mpx if mpx else None,
            "bit_exact": True,  # rows exist only for codecs that passed check_exact
            **self.extra,
        }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure_codec(name: str, encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], Any],
                  images: Sequence[np.ndarray], tick: Callable[[], None] = lambda: None) -> Tally:
    """Encode, decode and check every image one at a time (one file per image)."""
    tally = Tally()
    for i, im in enumerate(images):
        data, te = timed(lambda: encode(im))
        out, td = timed(lambda: decode(bytes(data)))
        check_exact(name, i, im, out)
        tally.add(im, len(data), te, td)
        tick()
    return tally
