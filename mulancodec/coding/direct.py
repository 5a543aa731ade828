"""A tile coded directly (lossless PNG, WebP or JPEG-XL bytes pushed as uniform symbols).

Bits-back needs bits on the stack before its first pops: about two steps'
worth per subpixel. A stream's first tile, coded directly, puts real
information there instead of a random seed (HiLLoC seeds with FLIF the same
way), so a mid-size image no longer pays that start-up cost in full.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..imaging.image import decode_lossless, lossless_encodings
from ..imaging.jxl import JxlUnavailable
from .codecs import CodingError, Stack, Uniform

LENGTH_BITS = 32


def block_shape(coded: np.ndarray, size: int) -> tuple[int, int, int]:
    """(h, w, C) of a tile's coded subpixels, from its (3 x size x size) coded mask."""
    mask = coded.reshape(3, size, size)
    chans = int(mask.any(axis=(1, 2)).sum())
    return int(mask[0].any(axis=1).sum()), int(mask[0].any(axis=0).sum()), chans


def block(pixels: np.ndarray, coded: np.ndarray) -> np.ndarray:
    """The tile's coded subpixels as an (h, w, C) image (C = 1 for grey tiles)."""
    h, w, chans = block_shape(coded, pixels.shape[-1])
    return np.ascontiguousarray(pixels[:chans, :h, :w].transpose(1, 2, 0))


def unblock(values: np.ndarray, src: np.ndarray, coded: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `block`: the (3, S, S) padded tile (padding and grey copies filled in)."""
    flat = np.zeros(coded.shape, np.uint8)
    flat[coded] = values.transpose(2, 0, 1).reshape(-1)
    return flat[src].reshape(3, size, size)


def _smallest_exact(b: np.ndarray) -> bytes:
    """The smallest candidate encoding that decodes back to exactly this block."""
    h, w, chans = b.shape
    for data in sorted(lossless_encodings(Image.fromarray(b[..., 0] if chans == 1 else b)), key=len):
        try:
            if np.array_equal(_decoded(data, h, w, chans), b):
                return data
        except CodingError:
            continue
    raise CodingError("no exact encoding of a directly coded tile")


def push(stack: Stack, b: np.ndarray) -> None:
    """Push an (h, w, C) uint8 block: its bytes, then their length (popped first)."""
    data = _smallest_exact(b)
    padded = data + b"\0" * (len(data) % 2)
    chunks = np.frombuffer(padded, dtype="<u2").astype(np.int64)
    Uniform(16, len(chunks)).push(stack, chunks)
    Uniform(LENGTH_BITS, 1).push(stack, np.array([len(data)]))


def _decoded(data: bytes, h: int, w: int, chans: int) -> np.ndarray:
    """A block's PNG/WebP/JPEG-XL bytes back as (h, w, chans); CodingError unless exactly that."""
    try:
        # a tile is at most 1024 x 1024 (the container's bound): its size is checked before decoding
        im = decode_lossless(data, w, h)
        out = np.asarray(im.convert("L" if chans == 1 else "RGB"))
    except JxlUnavailable as e:
        raise CodingError(str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CodingError(f"corrupt directly coded tile ({e})") from None
    return out.reshape(h, w, chans)


def pop(stack: Stack, h: int, w: int, chans: int) -> np.ndarray:
    """Pop a block pushed by `push`; refuses anything but an image of exactly that shape."""
    n = int(Uniform(LENGTH_BITS, 1).pop(stack)[0])
    if not 0 < n <= 1024 + 2 * h * w * chans:
        raise CodingError("corrupt directly coded tile")
    chunks = Uniform(16, (n + 1) // 2).pop(stack)
    return _decoded(chunks.astype("<u2").tobytes()[:n], h, w, chans)
