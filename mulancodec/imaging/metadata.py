"""Image metadata an archive must keep: ICC profile, EXIF, XMP, text chunks, dpi, gAMA/cHRM/sRGB.

The model codes pixels only; this is everything else a PNG (or TIFF, WebP)
carries that changes how the image is shown or what it says about itself.
Blobs (ICC, EXIF, XMP) are kept as the raw bytes Pillow gives, never parsed;
text is kept key by key; the numeric fields as the float64 values Pillow
reports, so writing them back gives the same chunks. In the container each
field is one (kind, bytes) item (docs/format.md, "Metadata").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

KINDS = ("icc", "exif", "xmp", "text", "dpi", "gamma", "chromaticity", "srgb")
ICC, EXIF, XMP, TEXT, DPI, GAMMA, CHRM, SRGB = range(len(KINDS))
FIXED_SIZE = {DPI: 16, GAMMA: 8, CHRM: 64, SRGB: 1}  # bytes of the numeric kinds
MAX_ITEM_BYTES = 1 << 24  # one ICC / EXIF / XMP / text item (16 MiB)
MAX_ITEMS = 4096  # items per image (text chunks are one item each)
MAX_TOTAL_BYTES = 1 << 26  # all metadata of a file (64 MiB)
XMP_KEY = "XML:com.adobe.xmp"  # the PNG iTXt keyword XMP travels under


class MetadataError(ValueError):
    """Metadata that cannot be stored (too large) or read back (corrupt)."""


@dataclass
class Metadata:
    """What an image carries besides its pixels (all fields optional)."""

    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    text: dict[str, str] = field(default_factory=dict)
    dpi: tuple[float, float] | None = None
    gamma: float | None = None
    chromaticity: tuple[float, ...] | None = None
    srgb: int | None = None

    def __bool__(self) -> bool:
        return bool(self.items())

    # -- Pillow ------------------------------------------------------------------------

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Metadata":
        """The metadata in a Pillow image's `info` (what its file's reader found)."""
        m = cls()
        m.icc = _bytes(info.get("icc_profile"))
        m.exif = _bytes(info.get("exif"))
        xmp = info.get("xmp", info.get(XMP_KEY))
        m.xmp = xmp.encode() if isinstance(xmp, str) else _bytes(xmp)
        m.text = {k: str(v) for k, v in info.items() if isinstance(v, str) and k != XMP_KEY
                  and k not in _PIL_STRINGS}
        dpi = info.get("dpi")
        if isinstance(dpi, tuple) and len(dpi) == 2:
            m.dpi = (float(dpi[0]), float(dpi[1]))
        if isinstance(info.get("gamma"), (int, float)):
            m.gamma = float(info["gamma"])
        ch = info.get("chromaticity")
        if isinstance(ch, tuple) and len(ch) == 8:
            m.chromaticity = tuple(float(v) for v in ch)
        if isinstance(info.get("srgb"), int) and 0 <= info["srgb"] <= 255:
            m.srgb = int(info["srgb"])
        return m

    def info(self) -> dict[str, Any]:
        """The metadata as Pillow's `im.info` holds it (what a PNG reader would give)."""
        out: dict[str, Any] = dict(self.text)
        for key, v in (("icc_profile", self.icc), ("exif", self.exif), ("xmp", self.xmp),
                       ("dpi", self.dpi), ("gamma", self.gamma),
                       ("chromaticity", self.chromaticity), ("srgb", self.srgb)):
            if v is not None:
                out[key] = v
        return out

    def save_options(self, fmt: str) -> dict[str, Any]:
        """Keyword arguments for `Image.save(format=fmt)` that write this metadata back."""
        kw: dict[str, Any] = {}
        if self.icc is not None and fmt in ("PNG", "TIFF", "WEBP"):
            kw["icc_profile"] = self.icc
        if self.exif is not None and fmt in ("PNG", "WEBP"):
            kw["exif"] = self.exif
        if self.dpi is not None and fmt in ("PNG", "TIFF", "BMP"):
            kw["dpi"] = self.dpi
        if fmt == "PNG":
            kw["pnginfo"] = self._pnginfo()
        elif fmt == "WEBP" and self.xmp is not None:
            kw["xmp"] = self.xmp
        elif fmt == "TIFF":
            kw["tiffinfo"] = self._tiff_tags()
        return kw

    def _tiff_tags(self) -> dict[int, Any]:
        """TIFF has no raw EXIF block: its tags join the file's own IFD, XMP is tag 700."""
        from PIL import Image

        tags: dict[int, Any] = {}
        if self.exif is not None:
            ex = Image.Exif()
            try:
                ex.load(self.exif)
                tags.update(ex)
            except (OSError, ValueError, SyntaxError, struct.error):
                pass  # an EXIF block Pillow cannot parse still goes to PNG/WebP outputs untouched
        if self.xmp is not None:
            tags[700] = self.xmp
        return tags

    def _pnginfo(self) -> Any:
        from PIL import PngImagePlugin

        pi = PngImagePlugin.PngInfo()
        if self.gamma is not None:
            pi.add(b"gAMA", struct.pack(">I", round(self.gamma * 100000)))
        if self.chromaticity is not None:
            pi.add(b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in self.chromaticity)))
        if self.srgb is not None:
            pi.add(b"sRGB", bytes([self.srgb]))
        for k, v in self.text.items():
            pi.add_text(k, v)
        if self.xmp is not None:
            pi.add_itxt(XMP_KEY, self.xmp.decode("utf-8", "replace"))
        return pi

    # -- the container's items ---------------------------------------------------------

    def items(self) -> list[tuple[int, bytes]]:
        """(kind, bytes) items in a fixed order, as the container stores them."""
        out = [(k, v) for k, v in ((ICC, self.icc), (EXIF, self.exif), (XMP, self.xmp)) if v is not None]
        out += [(TEXT, k.encode() + b"\0" + v.encode()) for k, v in self.text.items()]
        if self.dpi is not None:
            out.append((DPI, struct.pack("<2d", *self.dpi)))
        if self.gamma is not None:
            out.append((GAMMA, struct.pack("<d", self.gamma)))
        if self.chromaticity is not None:
            out.append((CHRM, struct.pack("<8d", *self.chromaticity)))
        if self.srgb is not None:
            out.append((SRGB, bytes([self.srgb])))
        check_items(out)
        return out

    @classmethod
    def from_items(cls, items: list[tuple[int, bytes]]) -> "Metadata":
        """Inverse of `items` (the container has checked kinds and sizes)."""
        m = cls()
        for kind, v in items:
            if kind == TEXT:
                key, sep, value = v.partition(b"\0")
                try:
                    if not sep or not key:
                        raise UnicodeDecodeError("utf-8", v, 0, 1, "no key")
                    m.text[key.decode()] = value.decode()
                except UnicodeDecodeError:
                    raise MetadataError("corrupt text metadata (not key NUL UTF-8 value)") from None
            elif kind in (ICC, EXIF, XMP):
                setattr(m, KINDS[kind], v)
            elif kind == DPI:
                m.dpi = struct.unpack("<2d", v)
            elif kind == GAMMA:
                m.gamma = struct.unpack("<d", v)[0]
            elif kind == CHRM:
                m.chromaticity = struct.unpack("<8d", v)
            else:
                m.srgb = v[0]
        return m

    def describe(self) -> list[str]:
        """One short phrase per field, for `mulancodec info`."""
        out = [f"{KINDS[k]} {len(self.__dict__[KINDS[k]])} bytes"
               for k in (ICC, EXIF, XMP) if self.__dict__[KINDS[k]] is not None]
        if self.text:
            out.append(f"text {', '.join(sorted(self.text))}")
        if self.dpi is not None:
            out.append(f"dpi {self.dpi[0]:g}x{self.dpi[1]:g}")
        out += [f"{name} {v}" for name, v in (("gamma", self.gamma), ("sRGB intent", self.srgb))
                if v is not None]
        if self.chromaticity is not None:
            out.append("chromaticity")
        return out


# Strings Pillow puts in `info` that are not the image's text chunks.
_PIL_STRINGS = {"compression", "progression", "interlace", "transparency", "version"}


def _bytes(v: Any) -> bytes | None:
    return bytes(v) if isinstance(v, (bytes, bytearray)) else None


def check_items(items: list[tuple[int, bytes]]) -> None:
    """Refuse metadata a reader would refuse (MetadataError), before anything is written."""
    if len(items) > MAX_ITEMS:
        raise MetadataError(f"{len(items)} metadata items (at most {MAX_ITEMS} per image)")
    for kind, v in items:
        if len(v) > MAX_ITEM_BYTES:
            raise MetadataError(f"{KINDS[kind]} metadata of {len(v):,} bytes is over the limit of "
                                f"{MAX_ITEM_BYTES:,} (drop it with --strip / strip=True)")
        if kind in FIXED_SIZE and len(v) != FIXED_SIZE[kind]:
            raise MetadataError(f"{KINDS[kind]} metadata must be {FIXED_SIZE[kind]} bytes")
    if sum(len(v) for _, v in items) > MAX_TOTAL_BYTES:
        raise MetadataError(f"more than {MAX_TOTAL_BYTES:,} bytes of metadata "
                            "(drop it with --strip / strip=True)")
