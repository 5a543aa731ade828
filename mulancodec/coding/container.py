"""The .mlc container: write, read and validate (specified in docs/format.md).

The reader checks every field against hard bounds and against the bytes that
are actually present before it allocates anything, so a hostile file can only
produce a `FormatError`, never a huge allocation.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence, overload

import numpy as np

from ..metadata import FIXED_SIZE as META_FIXED
from ..metadata import KINDS as META_KINDS
from ..metadata import MAX_ITEM_BYTES as MAX_META_BYTES
from ..metadata import MAX_ITEMS as MAX_META_ITEMS
from ..metadata import MAX_TOTAL_BYTES as MAX_META_TOTAL
from ..metadata import TEXT as META_TEXT

MAGIC = b"\x89MLC"
# 3: an integer model's file, which decodes on any machine: no backend, precision, threads or
# environment tag. 2: a float model's file (per-image metadata after the names; embedded and
# direct images may be JPEG-XL), which decodes only where its float results repeat.
VERSION = 3
FLOAT_VERSION = 2  # what a float model's files are written as
COMPACT_VERSION = 2  # compact files need no model: their layout is version 2's
READ_VERSIONS = (1, 2, 3)  # a reader still decodes every earlier version
MODES = ("L", "LA", "RGB", "RGBA", "P")
BACKENDS = ("cpu", "cuda")
METHOD_MODEL, METHOD_EMBED = 0, 1
MAX_SIDE = 65535
MAX_IMAGES = 1 << 24
MAX_STEPS = 100_000
MAX_TILE = 1024
MAX_SEED_WORDS = 1 << 26
MAX_BATCHES = 1 << 24
MAX_TILES = 1 << 26
MAX_THREADS = 256  # the decoder starts this many CPU threads if a file asks for them
MAX_BATCH_PIXELS = 1 << 18  # tiles x tile^2 in one batch (one tile always fits): bounds decoder memory
SEED_TRIES = 6  # the encoder tries seed_sizes() in order until the first batch fits
# Decoding work a reader starts by default, in tile-steps (model-coded tiles x steps): one
# network evaluation each. 2^24 covers a 4096x4096 photo in 32x32 tiles at T=1000
# (16,384 tiles x 1000 steps); decoders take a lower or higher limit (0 = none).
DEFAULT_MAX_WORK = 1 << 24
DEFAULT_MAX_STEPS = 4096  # the default work limit also refuses larger T (an explicit one lifts it)
COMPACT_CHECK = 4  # bytes of a compact file's check (see write_compact)
# The ranges a reader accepts for the float32 chain parameters (kappa, window, latent grid).
FLOAT_RANGES = {"kappa": (1e-3, 64.0), "window": (1.0, 1e3), "latent_delta": (1e-6, 1.0)}


class FormatError(Exception):
    """The bytes are not a valid .mlc file (or not one this version can read)."""


@dataclass
class ImageRecord:
    mode: str
    width: int
    height: int
    method: int = METHOD_MODEL
    palette_mode: str = "RGB"
    palette: bytes = b""
    transparency: int | bytes | None = None
    alpha: bytes = b""  # PNG of the alpha plane (LA, RGBA)
    embedded: bytes = b""  # METHOD_EMBED: the whole image as PNG, WebP or JPEG-XL
    name: str = ""  # optional (streams made from files keep their names)
    meta: list[tuple[int, bytes]] = field(default_factory=list)  # (kind, bytes): metadata.py


class Plan(Sequence[int]):
    """The batch sizes in coding order, kept as the (size, repeat) runs the file stores.

    A plan of a few bytes can name 2^26 batches; it is never expanded into a list:
    length, indexing and iteration (both ways) work on the runs.
    """

    __slots__ = ("runs", "_starts")

    def __init__(self, runs: Iterable[tuple[int, int]] = ()) -> None:
        self.runs: tuple[tuple[int, int], ...] = tuple((int(b), int(k)) for b, k in runs if k)
        self._starts = list(itertools.accumulate((k for _, k in self.runs), initial=0))

    @classmethod
    def of(cls, sizes: Iterable[int]) -> "Plan":
        """The plan of these batch sizes (a Plan is returned as it is)."""
        if isinstance(sizes, Plan):
            return sizes
        return cls((b, sum(1 for _ in g)) for b, g in itertools.groupby(sizes))

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> list[int]: ...
    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError("plan index out of range")
        i %= len(self)
        return self.runs[bisect.bisect_right(self._starts, i) - 1][0]

    def __iter__(self) -> Iterator[int]:
        for b, k in self.runs:
            yield from itertools.repeat(b, k)

    def __reversed__(self) -> Iterator[int]:
        for b, k in reversed(self.runs):
            yield from itertools.repeat(b, k)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Plan):
            return self._merged() == other._merged()
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def _merged(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for b, k in self.runs:
            if out and out[-1][0] == b:
                out[-1] = (b, out[-1][1] + k)
            else:
                out.append((b, k))
        return out

    def __add__(self, other: Iterable[int]) -> list[int]:
        return list(self) + list(other)

    def __repr__(self) -> str:
        return f"Plan({list(self.runs)!r})"

    def tiles(self) -> int:
        """Tiles the batches hold together."""
        return sum(b * k for b, k in self.runs)


@dataclass
class Header:
    model_id: str  # 16 hex digits
    backend: str  # "cpu" | "cuda" (versions 1-2; "any" in version 3, which does not store it)
    bf16: bool  # versions 1-2
    threads: int  # versions 1-2 (0 in version 3)
    env_tag: int  # CRC-32 of the numerics environment (torch version, device kind); versions 1-2
    steps: int
    kappa: float
    window: float
    latent_delta: float
    tile: int
    images: list[ImageRecord] = field(default_factory=list)
    plan: Sequence[int] = field(default_factory=Plan)  # a Plan when read from a file
    direct: int = 0  # leading tiles coded directly (PNG/WebP on the stack)
    seed_words: int = 0
    stripped: int = 0
    checksum: bytes = b"\0" * 8
    version: int = VERSION  # the file's format version (a writer writes VERSION or FLOAT_VERSION)
    compact: bytes = b""  # compact files: the bytes their 4-byte check covers (see write_compact)


# -- primitives -------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _blob(b: bytes) -> bytes:
    return _varint(len(b)) + b


class _Reader:
    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.d = memoryview(data)
        self.p = 0
        self.what = what

    def left(self) -> int:
        return len(self.d) - self.p

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.left():
            raise FormatError(f"truncated {self.what}")
        b = bytes(self.d[self.p:self.p + n])
        self.p += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int, name: str) -> int:
        n, shift = 0, 0
        for _ in range(10):
            b = self.u8()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n > limit:
                    raise FormatError(f"{name} = {n} is out of range (max {limit})")
                return n
            shift += 7
        raise FormatError(f"bad varint for {name}")

    def f32(self, lo: float, hi: float, name: str) -> float:
        (v,) = struct.unpack("<f", self.take(4))
        if not (lo <= v <= hi):
            raise FormatError(f"{name} = {v} is out of range")
        return v

    def blob(self, limit: int, name: str) -> bytes:
        n = self.varint(limit, name + " length")
        if n > self.left():
            raise FormatError(f"truncated {self.what} ({name})")
        return self.take(n)


# -- writer -----------------------------------------------------------------------------

def stored_float(v: float) -> float:
    """`v` as a reader gets it back from the header (float32): the encoder must code with
    exactly this value, or the decoder rebuilds slightly different distributions."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def check_floats(**values: float) -> None:
    """Raise ValueError for a chain parameter a reader would refuse (see FLOAT_RANGES)."""
    for name, v in values.items():
        lo, hi = FLOAT_RANGES[name]
        if not lo <= stored_float(v) <= hi:
            raise ValueError(f"{name} = {v} is out of range ({lo}..{hi})")


def _image_bytes(r: ImageRecord) -> bytes:
    out = bytearray([MODES.index(r.mode), r.method])
    out += _varint(r.width) + _varint(r.height)
    if r.method == METHOD_EMBED:
        out += _blob(r.embedded)
        return bytes(out)
    if r.mode == "P":
        out.append(0 if r.palette_mode == "RGB" else 1)
        out += _blob(r.palette)
        t = r.transparency
        if t is None:
            out.append(0)
        elif isinstance(t, int):
            out.append(1)
            out += _varint(t)
        else:
            out.append(2)
            out += _blob(t)
    if r.mode in ("LA", "RGBA"):
        out += _blob(r.alpha)
    return bytes(out)


def _plan_bytes(plan: Sequence[int]) -> bytes:
    runs = Plan.of(plan).runs
    out = bytearray(_varint(len(runs)))
    for b, n in runs:
        out += _varint(b) + _varint(n)
    return bytes(out)


def _meta_bytes(items: Sequence[tuple[int, bytes]]) -> bytes:
    out = bytearray(_varint(len(items)))
    for kind, v in items:
        out += bytes([kind]) + _blob(v)
    return bytes(out)


def write(h: Header, payload: np.ndarray) -> bytes:
    """Serialise a header and the ANS words (uint32, bottom of the stack first), in the
    layout of h.version (VERSION, or FLOAT_VERSION for a float model's file)."""
    if h.version not in (FLOAT_VERSION, VERSION):
        raise ValueError(f"cannot write format version {h.version}")
    hb = bytearray()
    hb += bytes.fromhex(h.model_id)
    if h.version < 3:
        hb += bytes([BACKENDS.index(h.backend), int(h.bf16)])
        hb += _varint(h.threads) + struct.pack("<I", h.env_tag)
    hb += _varint(h.steps) + struct.pack("<fff", h.kappa, h.window, h.latent_delta)
    hb += _varint(h.tile) + _varint(len(h.images))
    for r in h.images:
        hb += _image_bytes(r)
    names = [r.name for r in h.images]
    hb += _blob("\n".join(names).encode() if any(names) else b"")
    for r in h.images:
        hb += _meta_bytes(r.meta)
    hb += _plan_bytes(h.plan) + _varint(h.direct)
    hb += _varint(h.seed_words) + _varint(h.stripped) + h.checksum
    head = MAGIC + bytes([h.version]) + _varint(len(hb)) + bytes(hb)
    body = payload.astype("<u4").tobytes()
    return (head + struct.pack("<I", zlib.crc32(head)) + _varint(len(body)) + body
            + struct.pack("<I", zlib.crc32(body)))


def compact_check(signed: bytes, pixel_checksum: bytes) -> bytes:
    """A compact file's check: SHA-256 over its bytes and its image's pixel checksum."""
    return hashlib.sha256(signed + pixel_checksum).digest()[:COMPACT_CHECK]


def write_compact(rec: ImageRecord, pixel_checksum: bytes) -> bytes:
    """A lone embedded image in 11 bytes plus the image and its metadata (docs/format.md,
    "Compact files"): a small image's fallback costs about what its PNG/WebP/JPEG-XL costs."""
    if rec.method != METHOD_EMBED:
        raise ValueError("compact files hold an embedded image only")
    out = bytearray(MAGIC + bytes([COMPACT_VERSION, 0, MODES.index(rec.mode)]))
    out += _varint(rec.width) + _varint(rec.height) + _blob(rec.embedded) + _meta_bytes(rec.meta)
    return bytes(out) + compact_check(bytes(out), pixel_checksum)


# -- reader -----------------------------------------------------------------------------

def _read_image(r: _Reader, max_bytes: int) -> ImageRecord:
    mode_i = r.u8()
    if mode_i >= len(MODES):
        raise FormatError(f"unknown image mode {mode_i}")
    method = r.u8()
    if method not in (METHOD_MODEL, METHOD_EMBED):
        raise FormatError(f"unknown coding method {method}")
    rec = ImageRecord(MODES[mode_i], r.varint(MAX_SIDE, "width"), r.varint(MAX_SIDE, "height"), method)
    if rec.width < 1 or rec.height < 1:
        raise FormatError("image has zero size")
    if method == METHOD_EMBED:
        rec.embedded = r.blob(max_bytes, "embedded image")
        return rec
    if rec.mode == "P":
        pm = r.u8()
        if pm > 1:
            raise FormatError("bad palette mode")
        rec.palette_mode = ("RGB", "RGBA")[pm]
        rec.palette = r.blob(1024, "palette")
        if len(rec.palette) % len(rec.palette_mode):
            raise FormatError("palette length does not fit its mode")
        kind = r.u8()
        if kind == 1:
            rec.transparency = r.varint(255, "transparency index")
        elif kind == 2:
            rec.transparency = r.blob(256, "transparency table")
        elif kind != 0:
            raise FormatError("bad transparency kind")
    if rec.mode in ("LA", "RGBA"):
        rec.alpha = r.blob(max_bytes, "alpha plane")
    return rec


def max_batch(tile: int) -> int:
    """The most tiles one batch may hold."""
    return max(1, MAX_BATCH_PIXELS // (tile * tile))


def seed_sizes(coded_first_tile: int) -> list[int]:
    """Seed lengths (words) the encoder tries, given the coded subpixels of the first tile."""
    base = (24 * coded_first_tile + 64 * 1024) // 32 + 64
    return [base * 4 ** k for k in range(SEED_TRIES)]


def max_seed_words(tile: int) -> int:
    """The longest seed a file with this tile size can name (the last try for a colour tile)."""
    return min(MAX_SEED_WORDS, seed_sizes(3 * tile * tile)[-1])


def tiles_in(rec: ImageRecord, tile: int) -> int:
    """Tiles the model codes for this image (0 when it is embedded)."""
    if rec.method != METHOD_MODEL:
        return 0
    return -(-rec.height // tile) * -(-rec.width // tile)


def declared_work(h: Header) -> int:
    """Tile-steps (network evaluations) decoding the file takes: model-coded tiles x steps."""
    return h.steps * sum(tiles_in(rec, h.tile) for rec in h.images)


def read(data: bytes, max_pixels: int | None = None) -> tuple[Header, np.ndarray]:
    """Parse and validate a whole file; returns the header and the ANS words."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise FormatError("not a mulancodec file (bad magic bytes)")
    r = _Reader(data, "file")
    r.take(4)
    version = r.u8()
    if version not in READ_VERSIONS:
        raise FormatError(f"format version {version} is not supported by this mulancodec "
                          f"(it reads versions {', '.join(map(str, READ_VERSIONS))}); upgrade mulancodec")
    hlen = r.varint(1 << 40, "header length")
    if hlen == 0 and version >= 2:
        return _read_compact(r, bytes(data), max_pixels, version), np.zeros(0, np.uint32)
    if hlen > r.left():
        raise FormatError("truncated file (the header is cut off)")
    hb = r.take(hlen)
    head_end = r.p
    (crc,) = struct.unpack("<I", r.take(4))
    if zlib.crc32(bytes(memoryview(data)[:head_end])) != crc:
        raise FormatError("header checksum mismatch (the file is corrupt)")
    h = _parse_header(_Reader(hb, "header"), len(data), max_pixels, version)
    blen = r.varint(1 << 40, "payload length")
    if blen + 4 > r.left():
        raise FormatError("truncated file (the payload is cut off)")
    if blen % 4:
        raise FormatError("payload length is not a whole number of words")
    body = r.take(blen)
    (bcrc,) = struct.unpack("<I", r.take(4))
    if zlib.crc32(body) != bcrc:
        raise FormatError("payload checksum mismatch (the file is corrupt)")
    if r.left():
        raise FormatError(f"{r.left()} bytes of trailing data after the payload")
    return h, np.frombuffer(body, dtype="<u4").astype(np.uint32)


def _read_compact(r: _Reader, data: bytes, max_pixels: int | None, version: int) -> Header:
    """A compact file (header length 0): one embedded image, its metadata, a 4-byte check."""
    mode_i = r.u8()
    if mode_i >= len(MODES):
        raise FormatError(f"unknown image mode {mode_i}")
    rec = ImageRecord(MODES[mode_i], r.varint(MAX_SIDE, "width"), r.varint(MAX_SIDE, "height"),
                      METHOD_EMBED)
    if rec.width < 1 or rec.height < 1:
        raise FormatError("image has zero size")
    if max_pixels and rec.width * rec.height > max_pixels:
        raise FormatError(f"the file's images hold more than {max_pixels:,} pixels "
                          "(decompression bomb limit; raise it with max_pixels / --max-pixels)")
    rec.embedded = r.blob(len(data), "embedded image")
    _read_meta(r, [rec])
    end = r.p
    check = r.take(COMPACT_CHECK)
    if r.left():
        raise FormatError(f"{r.left()} bytes of trailing data after the image")
    # the model's fields do not apply: no model runs for an embedded image
    return Header("0" * 16, "cpu", False, 1, 0, 1, 1.0, 1.0, 1.0, 1, [rec], checksum=check,
                  version=version, compact=data[:end])


def _read_plan(r: _Reader, tile: int) -> Plan:
    """The batch plan's runs, each checked, without expanding them."""
    n_runs = r.varint(MAX_BATCHES, "plan length")
    if n_runs > r.left() // 2:
        raise FormatError("truncated batch plan")
    plan_total = 0
    runs = []
    for _ in range(n_runs):
        b = r.varint(MAX_BATCHES, "batch size")
        k = r.varint(MAX_BATCHES, "batch repeat")
        if b < 1 or k < 1:
            raise FormatError("empty batch in plan")
        if b > max_batch(tile):
            raise FormatError(f"batch of {b} tiles in the plan (at most {max_batch(tile)} of "
                              f"{tile}x{tile} pixels)")
        plan_total += b * k
        if plan_total > MAX_TILES:
            raise FormatError("batch plan too long")
        runs.append((b, k))
    return Plan(runs)


def _read_names(r: _Reader, images: list[ImageRecord]) -> None:
    names = r.blob(1 << 24, "names")
    if names:
        try:
            parts = names.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            raise FormatError("image names are not UTF-8") from None
        if len(parts) != len(images):
            raise FormatError("image names do not match the image count")
        for rec, name in zip(images, parts):
            rec.name = name


def _read_meta(r: _Reader, images: list[ImageRecord]) -> None:
    """Each image's metadata items: kinds known, one of each but text, sizes bounded."""
    total = 0
    for rec in images:
        n = r.varint(MAX_META_ITEMS, "metadata items")
        if n > r.left() // 2:
            raise FormatError("truncated metadata")
        seen: set[int] = set()
        for _ in range(n):
            kind = r.u8()
            if kind >= len(META_KINDS):
                raise FormatError(f"unknown metadata kind {kind}")
            if kind in seen and kind != META_TEXT:
                raise FormatError(f"{META_KINDS[kind]} metadata appears twice")
            seen.add(kind)
            v = r.blob(MAX_META_BYTES, f"{META_KINDS[kind]} metadata")
            if kind in META_FIXED and len(v) != META_FIXED[kind]:
                raise FormatError(f"{META_KINDS[kind]} metadata has {len(v)} bytes, not {META_FIXED[kind]}")
            total += len(v)
            if total > MAX_META_TOTAL:
                raise FormatError(f"more than {MAX_META_TOTAL:,} bytes of metadata")
            rec.meta.append((kind, v))


def _parse_machine(r: _Reader) -> tuple[str, bool, int, int]:
    """Versions 1-2: the backend, precision, threads and environment tag the file needs."""
    backend_i = r.u8()
    if backend_i >= len(BACKENDS):
        raise FormatError(f"unknown backend {backend_i}")
    bf16 = r.u8()
    if bf16 > 1 or (bf16 and BACKENDS[backend_i] != "cuda"):
        raise FormatError("bad precision flag (bf16 is for cuda files only)")
    threads = r.varint(MAX_THREADS, "threads")
    if threads < 1:
        raise FormatError("threads must be at least 1")
    (env_tag,) = struct.unpack("<I", r.take(4))
    return BACKENDS[backend_i], bool(bf16), threads, env_tag


def _parse_header(r: _Reader, file_len: int, max_pixels: int | None, version: int = VERSION) -> Header:
    model_id = r.take(8).hex()
    backend, bf16, threads, env_tag = _parse_machine(r) if version < 3 else ("any", False, 0, 0)
    steps = r.varint(MAX_STEPS, "steps")
    if steps < 1:
        raise FormatError("steps must be at least 1")
    kappa = r.f32(*FLOAT_RANGES["kappa"], "kappa")
    window = r.f32(*FLOAT_RANGES["window"], "window")
    latent_delta = r.f32(*FLOAT_RANGES["latent_delta"], "latent grid")
    tile = r.varint(MAX_TILE, "tile size")
    if tile < 1:
        raise FormatError("tile size must be positive")
    n = r.varint(min(MAX_IMAGES, file_len // 4), "image count")
    if n < 1:
        raise FormatError("file holds no image")
    h = Header(model_id, backend, bf16, threads, env_tag, steps, kappa, window, latent_delta, tile)
    total_px = 0
    for _ in range(n):
        rec = _read_image(r, file_len)
        total_px += rec.width * rec.height
        if max_pixels and total_px > max_pixels:
            raise FormatError(f"the file's images hold more than {max_pixels:,} pixels "
                              "(decompression bomb limit; raise it with max_pixels / --max-pixels)")
        h.images.append(rec)
    _read_names(r, h.images)
    if version >= 2:
        _read_meta(r, h.images)
    h.version = version
    h.plan = _read_plan(r, tile)  # run-length: a plan of a few bytes can name 2^26 batches
    plan_total = h.plan.tiles()
    h.direct = r.varint(MAX_TILES, "directly coded tiles")
    needed = sum(tiles_in(rec, tile) for rec in h.images)
    if needed and not plan_total:
        raise FormatError("the batch plan is empty")
    if plan_total + h.direct != needed:
        raise FormatError(f"batch plan covers {plan_total + h.direct} tiles, the images have {needed}")
    h.seed_words = r.varint(max_seed_words(tile), "seed length")
    h.stripped = r.varint(h.seed_words + 1, "stripped seed words")
    if needed and h.seed_words < 1:
        raise FormatError("missing seed")
    h.checksum = r.take(8)
    if r.left():
        raise FormatError("unexpected bytes at the end of the header")
    return h
