"""Images as the codec sees them: modes, canonical pixels, tiles and checksums.

An input image (numpy array, PIL image or path) becomes a `Picture`: the RGB
planes the model codes (grey replicated to three channels), plus whatever the
model does not code (alpha, a palette). Tiles carry a per-subpixel index map:
padding and grey replication are copies of coded subpixels, so only real
subpixels are ever coded.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
from PIL import Image

from . import jxl
from .metadata import Metadata

SUPPORTED_MODES = ("L", "LA", "RGB", "RGBA", "P")
MAX_SIDE = 65535
DEFAULT_MAX_PIXELS = 2 ** 28  # like Pillow's bomb limit, overridable per call

ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike]


class ImageError(ValueError):
    """The input is not an image mulancodec can code."""


@dataclass
class Picture:
    """One image in canonical form."""

    mode: str
    height: int
    width: int
    rgb: np.ndarray | None  # (H, W, 3) uint8 coded by the model; None if the model codes nothing
    alpha: np.ndarray | None = None  # (H, W) uint8 for LA / RGBA
    indices: np.ndarray | None = None  # (H, W) uint8 for P
    palette: bytes = b""  # P: raw palette in `palette_mode`
    palette_mode: str = "RGB"
    transparency: int | bytes | None = None  # P: Pillow's info["transparency"]
    name: str = ""  # a stream's stored file name, if any
    meta: Metadata = field(default_factory=Metadata)  # ICC, EXIF, text...: not in the checksum

    @property
    def grey(self) -> bool:
        return self.mode in ("L", "LA")

    def array(self) -> np.ndarray:
        """The pixels as the user gave them: (H,W) for L and P, (H,W,C) otherwise."""
        if self.mode == "P":
            assert self.indices is not None
            return self.indices
        assert self.rgb is not None
        base = self.rgb[..., :1] if self.grey else self.rgb
        if self.alpha is not None:
            base = np.concatenate([base, self.alpha[..., None]], axis=2)
        return base[..., 0] if self.mode == "L" else base

    def to_pil(self, meta: bool = True) -> Image.Image:
        """A PIL image; with `meta`, its `info` carries the metadata as a PNG reader's would."""
        if self.mode == "P":
            im = Image.fromarray(self.array(), "P")
            im.putpalette(self.palette, self.palette_mode)
            if self.transparency is not None:
                im.info["transparency"] = self.transparency
        else:
            im = Image.fromarray(self.array(), self.mode)
        if meta:
            im.info.update(self.meta.info())
        return im

    def checksum(self) -> bytes:
        """SHA-256 of everything the user gets back: mode, size, pixels, palette."""
        h = hashlib.sha256()
        h.update(f"{self.mode}:{self.width}x{self.height}:".encode())
        h.update(np.ascontiguousarray(self.array()).tobytes())
        if self.mode == "P":
            h.update(self.palette_mode.encode() + self.palette)
            t = self.transparency
            h.update(b"T" + (t if isinstance(t, bytes) else str(t).encode()))
        return h.digest()


def _check_size(h: int, w: int, max_pixels: int | None) -> None:
    if h < 1 or w < 1:
        raise ImageError(f"image has zero size ({w}x{h})")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ImageError(f"image is {w}x{h}; sides above {MAX_SIDE} are not supported")
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if limit and h * w > limit:
        raise ImageError(f"image has {h * w:,} pixels, over the limit of {limit:,} "
                         "(raise it with max_pixels / --max-pixels)")


def from_array(a: np.ndarray, max_pixels: int | None = None) -> Picture:
    if not isinstance(a, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.uint8:
        raise ImageError(f"pixels must be uint8, got {a.dtype} (16-bit and float images are not supported)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        _check_size(*a.shape, max_pixels)
        return Picture("L", a.shape[0], a.shape[1], np.repeat(a[..., None], 3, axis=2))
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise ImageError(f"array shape {a.shape} is not HxW, HxWx2, HxWx3 or HxWx4")
    h, w, ch = a.shape
    _check_size(h, w, max_pixels)
    a = np.ascontiguousarray(a)
    if ch == 2:
        return Picture("LA", h, w, np.repeat(a[..., :1], 3, axis=2), alpha=a[..., 1].copy())
    if ch == 3:
        return Picture("RGB", h, w, a.copy())
    return Picture("RGBA", h, w, a[..., :3].copy(), alpha=a[..., 3].copy())


def from_pil(im: Image.Image, max_pixels: int | None = None) -> Picture:
    """The picture of a PIL image, with the metadata its `info` holds."""
    pic = _pixels_of_pil(im, max_pixels)
    pic.meta = Metadata.from_info(im.info)
    return pic


def _pixels_of_pil(im: Image.Image, max_pixels: int | None) -> Picture:
    if getattr(im, "n_frames", 1) > 1:
        raise ImageError("animated or multi-page images are not supported (frames would be lost): "
                         "extract the frames first")
    if im.mode not in SUPPORTED_MODES:
        raise ImageError(f"unsupported image mode {im.mode!r} (supported: {', '.join(SUPPORTED_MODES)})")
    w, h = im.size
    _check_size(h, w, max_pixels)
    if im.mode != "P":
        return from_array(np.asarray(im), max_pixels)
    idx = np.array(im, dtype=np.uint8)
    pmode = im.palette.mode if im.palette is not None else "RGB"
    if pmode not in ("RGB", "RGBA"):
        raise ImageError(f"unsupported palette mode {pmode!r}")
    palette = bytes(im.getpalette(pmode) or b"")
    trans = im.info.get("transparency")
    if trans is not None and not isinstance(trans, (int, bytes)):
        raise ImageError("unsupported palette transparency")
    pic = Picture("P", h, w, None, indices=idx, palette=palette, palette_mode=pmode,
                  transparency=trans)
    step = len(pmode)
    n = len(palette) // step
    if n and int(idx.max()) < n:
        first = first_index_of_colour(palette, pmode)
        colours = np.frombuffer(palette, np.uint8).reshape(n, step)[:, :3]
        used = np.unique(idx)
        # Code palette images through RGB when every used index is the first one
        # with its colour, so the decoder maps colours back to the same indices.
        keys = (colours[used].astype(np.int64) @ np.array([65536, 256, 1]))
        if all(first[k] == u for k, u in zip(keys.tolist(), used.tolist())):
            pic.rgb = colours[idx]
    return pic


def first_index_of_colour(palette: bytes, palette_mode: str) -> dict[int, int]:
    """24-bit RGB colour -> the lowest palette index with that colour."""
    step = len(palette_mode)
    colours = np.frombuffer(palette, np.uint8).reshape(-1, step)[:, :3].astype(np.int64)
    keys = colours @ np.array([65536, 256, 1])
    out: dict[int, int] = {}
    for i, k in enumerate(keys.tolist()):
        out.setdefault(k, i)
    return out


@contextlib.contextmanager
def own_size_limit() -> Iterator[None]:
    """Suspend Pillow's decompression-bomb check: our callers have applied `max_pixels`.

    (Pillow's check would otherwise raise an undocumented error, or print a
    warning, for images our own limit allows.)
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


@contextlib.contextmanager
def _open_file(path: str | os.PathLike, max_pixels: int | None) -> Iterator[Image.Image]:
    """An image file opened lazily, its frames and size checked; ImageError for anything
    unusable, including errors raised while the caller reads it."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    try:
        with own_size_limit(), Image.open(p) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ImageError(f"{p}: animated or multi-page images are not supported (frames "
                                 "would be lost): extract the frames first")
            w, h = im.size
            _check_size(h, w, max_pixels)
            yield im
    except ImageError:
        raise
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise ImageError(f"{p}: cannot read image ({e})") from None


def load(image: ImageLike, max_pixels: int | None = None) -> Picture:
    """Any supported input to a Picture, with a clear ImageError for everything else."""
    if isinstance(image, np.ndarray):
        return from_array(image, max_pixels)
    if isinstance(image, Image.Image):
        return from_pil(image, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        with _open_file(image, max_pixels) as im:
            im.load()
            return from_pil(im, max_pixels)
    raise ImageError(f"cannot code an object of type {type(image).__name__}")


def probe(path: str | os.PathLike, max_pixels: int | None = None) -> None:
    """Check an image file's format, frames, size and mode without decoding its pixels."""
    with _open_file(path, max_pixels) as im:
        if im.mode not in SUPPORTED_MODES:
            raise ImageError(f"{path}: unsupported image mode {im.mode!r} "
                             f"(supported: {', '.join(SUPPORTED_MODES)})")


def _saved(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_bytes(plane: np.ndarray) -> bytes:
    """A greyscale plane as PNG: the side channel for alpha and for palette indices."""
    return _saved(Image.fromarray(plane, "L"), "PNG", optimize=True)


def lossless_encodings(im: Image.Image) -> list[bytes]:
    """The exact classical encodings we can fall back on: optimised PNG, lossless WebP for
    RGB / RGBA (WebP has no grey or palette mode that keeps them exactly), and lossless
    JPEG-XL for every mode but P when its library is installed. Callers verify by decoding."""
    out = [_saved(im, "PNG", optimize=True)]
    if im.mode in ("RGB", "RGBA"):
        out.append(_saved(im, "WEBP", lossless=True, quality=100, method=6, exact=True))
    if im.mode != "P" and jxl.available():
        out.append(jxl.encode(np.asarray(im)))
    return out


def decode_lossless(data: bytes, width: int, height: int) -> Image.Image:
    """A PNG, WebP or JPEG-XL candidate back as a PIL image of exactly width x height (the
    caller has checked that size against its limit; raises ValueError/OSError if it is not)."""
    if jxl.is_jxl(data):
        a = jxl.decode(data, width, height)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        mode = "L" if a.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}.get(a.shape[2])
        if mode is None:
            raise ValueError("JPEG-XL image has an unsupported channel count")
        return Image.fromarray(a, mode)
    with own_size_limit(), Image.open(io.BytesIO(data), formats=["PNG", "WEBP"]) as im:
        if im.format not in ("PNG", "WEBP") or im.size != (width, height):
            raise ValueError("embedded image does not match its header")
        im.load()
        return im.copy()


def png_plane(data: bytes, height: int, width: int) -> np.ndarray:
    """A side plane from its PNG; the caller has checked height x width against its limit."""
    with own_size_limit(), Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        if im.format != "PNG" or im.mode != "L" or im.size != (width, height):
            raise ValueError("side plane does not match the header")
        return np.asarray(im).copy()


# -- tiles ----------------------------------------------------------------------------

@dataclass
class Tile:
    """One tile of one picture: where it sits and which subpixels are coded."""

    picture: int  # index of the picture in the batch of pictures
    top: int
    left: int
    h: int  # valid rows
    w: int  # valid columns


def tile_maps(tile: Tile, size: int, grey: bool) -> tuple[np.ndarray, np.ndarray]:
    """(source index, coded mask) over the 3 x size x size subpixels of a tile.

    Every subpixel copies its source; only subpixels that are their own source
    are coded. Padding copies the nearest valid pixel; grey copies channel 0.
    """
    ys = np.minimum(np.arange(size), tile.h - 1)
    xs = np.minimum(np.arange(size), tile.w - 1)
    spatial = ys[:, None] * size + xs[None, :]
    chans = np.zeros(3, np.int64) if grey else np.arange(3)
    src = chans[:, None, None] * size * size + spatial[None]
    coded = src == np.arange(3 * size * size).reshape(3, size, size)
    return src.reshape(-1), coded.reshape(-1)


def tile_pixels(pic: Picture, tile: Tile, size: int) -> np.ndarray:
    """The tile's (3, size, size) uint8 pixels, padded by replication."""
    assert pic.rgb is not None
    ys = tile.top + np.minimum(np.arange(size), tile.h - 1)
    xs = tile.left + np.minimum(np.arange(size), tile.w - 1)
    return np.ascontiguousarray(pic.rgb[ys[:, None], xs[None, :]].transpose(2, 0, 1))


def place_tile(rgb: np.ndarray, tile: Tile, pixels: np.ndarray) -> None:
    """Write a decoded (3, size, size) tile back into an (H, W, 3) canvas."""
    rgb[tile.top:tile.top + tile.h, tile.left:tile.left + tile.w] = \
        pixels[:, :tile.h, :tile.w].transpose(1, 2, 0)


@dataclass
class TileJob:
    """One tile to code: its pixels (3,S,S) uint8 (encoder only) and its maps."""

    src: np.ndarray  # (3*S*S,) source index of every subpixel
    coded: np.ndarray  # (3*S*S,) bool: subpixels that are coded
    pixels: np.ndarray | None = None


class TileSequence(Sequence[TileJob]):
    """The tiles of the model-coded images of a stream in coding order, built on demand.

    Tiles are in raster order per image, images in stream order. A header of a few
    bytes can name a million tiles; building them all before the first batch runs
    would cost seconds and hundreds of MB even for a file that fails at once.
    shapes[i] is (height, width, grey) of picture i if the model codes it, else None.
    """

    def __init__(self, pics: Sequence[Picture] | None, shapes: Sequence[tuple[int, int, bool] | None],
                 tile: int) -> None:
        self.pics, self.shapes, self.tile = pics, shapes, tile
        self.images = [i for i, s in enumerate(shapes) if s is not None]
        self._index = {i: j for j, i in enumerate(self.images)}  # picture -> its place in images
        counts = [self.grid(i)[0] * self.grid(i)[1] for i in self.images]
        self.ends = np.cumsum(counts, dtype=np.int64)
        self.maps: dict[tuple[int, int, bool], tuple[np.ndarray, np.ndarray]] = {}  # shared, read-only

    def grid(self, picture: int) -> tuple[int, int]:
        """(rows, cols) of tiles of a model-coded picture."""
        h, w, _ = self.shapes[picture]  # type: ignore[misc]
        return -(-h // self.tile), -(-w // self.tile)

    def first(self, picture: int) -> int:
        """Coding position of a model-coded picture's first tile."""
        j = self._index[picture]
        return int(self.ends[j - 1]) if j else 0

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def where(self, k: int) -> Tile:
        """The k-th tile: its picture and position."""
        j = int(np.searchsorted(self.ends, k, side="right"))
        i, S = self.images[j], self.tile
        n = k - (int(self.ends[j - 1]) if j else 0)
        h, w, _ = self.shapes[i]  # type: ignore[misc]
        cols = self.grid(i)[1]
        top, left = (n // cols) * S, (n % cols) * S
        return Tile(i, top, left, min(S, h - top), min(S, w - left))

    def job(self, k: int) -> TileJob:
        t = self.where(k)
        key = (t.h, t.w, bool(self.shapes[t.picture][2]))  # type: ignore[index]
        if key not in self.maps:
            self.maps[key] = tile_maps(t, self.tile, key[2])
        px = tile_pixels(self.pics[t.picture], t, self.tile) if self.pics is not None else None
        return TileJob(*self.maps[key], px)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self.job(x) for x in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self.job(k % len(self))
