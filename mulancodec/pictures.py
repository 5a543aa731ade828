"""Pictures and their file records: what the model codes of an image, what is stored
beside it (embedded PNG/WebP/JPEG-XL, alpha, palette, metadata), and the way back."""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

from .coding import container as fmt
from .failures import DecodeError, EncodeError
from .imaging import image as img
from .imaging.jxl import JxlUnavailable
from .imaging.metadata import Metadata, MetadataError


def embed(pic: img.Picture) -> bytes:
    """The smallest exact PNG/WebP/JPEG-XL of the picture (the fallback when bits-back loses);
    each candidate is decoded and checked before it can be chosen."""
    cands = img.lossless_encodings(pic.to_pil(meta=False))  # metadata is stored once, in the header
    good = [c for c in sorted(cands, key=len) if unembed(c, pic.mode, pic.width, pic.height).checksum()
            == pic.checksum()]
    if not good:
        raise EncodeError(f"cannot store this {pic.mode} image exactly")
    return good[0]


def unembed(data: bytes, mode: str, width: int, height: int) -> img.Picture:
    """The picture an embedded image holds, which must have the header's mode and size."""
    try:  # the header's size passed the caller's limit, and the image must have that size
        im = img.decode_lossless(data, width, height)
        if im.mode != mode:
            if mode not in ("RGB", "RGBA") or im.mode not in ("RGB", "RGBA"):
                raise DecodeError("embedded image does not match its header")
            im = im.convert(mode)  # lossless WebP may come back with or without alpha
        pic = img.from_pil(im, max_pixels=0)
        pic.meta = Metadata()
        return pic
    except JxlUnavailable as e:
        raise DecodeError(str(e)) from None
    except (OSError, SyntaxError, ValueError, img.ImageError) as e:
        raise DecodeError(f"corrupt embedded image ({e})") from None


def record_meta(pic: img.Picture) -> list[tuple[int, bytes]]:
    """The picture's metadata as the header stores it (EncodeError when it cannot be)."""
    try:
        return pic.meta.items()
    except MetadataError as e:
        raise EncodeError(str(e)) from None


def record(pic: img.Picture) -> fmt.ImageRecord:
    """The header's record of a picture: embedded when the model cannot code it through RGB."""
    rec = fmt.ImageRecord(pic.mode, pic.width, pic.height)
    rec.meta = record_meta(pic)
    if pic.rgb is None:  # palette image the model cannot code through RGB
        rec.method = fmt.METHOD_EMBED
        rec.embedded = embed(pic)
        return rec
    if pic.mode == "P":
        rec.palette_mode, rec.palette, rec.transparency = pic.palette_mode, pic.palette, pic.transparency
    if pic.alpha is not None:
        rec.alpha = img.png_bytes(pic.alpha)
    return rec


def tiles(pics: Sequence[img.Picture] | None, recs: Sequence[fmt.ImageRecord],
          tile: int) -> img.TileSequence:
    """The tiles of the model-coded images (pixels only on the encoder's side)."""
    shapes = [(r.height, r.width, r.mode in ("L", "LA")) if r.method == fmt.METHOD_MODEL else None
              for r in recs]
    return img.TileSequence(pics, shapes, tile)


def stream_checksum(pics: Iterable[img.Picture]) -> bytes:
    """The header's checksum over the pictures' own (mode, size, pixels, palette)."""
    h = hashlib.sha256()
    for p in pics:
        h.update(p.checksum())
    return h.digest()[:8]


def assemble(rec: fmt.ImageRecord, rgb: np.ndarray) -> img.Picture:
    """A decoded picture from its record and the RGB planes the model decoded."""
    try:
        alpha = img.png_plane(rec.alpha, rec.height, rec.width) if rec.mode in ("LA", "RGBA") else None
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError(f"corrupt alpha plane ({e})") from None
    if rec.mode in ("L", "LA"):
        return img.Picture(rec.mode, rec.height, rec.width, rgb, alpha=alpha)
    if rec.mode in ("RGB", "RGBA"):
        return img.Picture(rec.mode, rec.height, rec.width, rgb, alpha=alpha)
    first = img.first_index_of_colour(rec.palette, rec.palette_mode)
    keys = rgb.astype(np.int64) @ np.array([65536, 256, 1])
    uniq, inv = np.unique(keys, return_inverse=True)
    try:
        lut = np.array([first[k] for k in uniq.tolist()], dtype=np.uint8)
    except KeyError:
        raise DecodeError("decoded colour is not in the palette (corrupt file)") from None
    idx = lut[inv.reshape(rgb.shape[:2])]
    return img.Picture("P", rec.height, rec.width, rgb, indices=idx, palette=rec.palette,
                       palette_mode=rec.palette_mode, transparency=rec.transparency)
