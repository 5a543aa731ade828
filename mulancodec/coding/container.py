"""The .mlc container: its records, the header (which holds the `ChainSpec` whole),
writing, and `read` (specified in docs/format.md).

The reader (`reader`) checks every field against hard bounds and against the bytes
that are actually present before it allocates anything, so a hostile file can only
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

from .chainspec import ADAPTED_VERSION, EXACT_VERSION, AdaptBlock, ChainSpec

MAGIC = b"\x89MLC"
# 3: an integer model's file, which decodes on any machine: no backend, precision, threads or
# environment tag (`ChainSpec.exact`). 2: a float model's file (per-image metadata after the
# names; embedded and direct images may be JPEG-XL), which decodes only where its float
# results repeat (`ChainSpec.machine_bound`).
VERSION = EXACT_VERSION
FLOAT_VERSION = 2  # what a float model's files are written as
COMPACT_VERSION = 2  # compact files need no model: their layout is version 2's
# 4: version 3 with an adaptation block (`AdaptBlock`): only adapted files are version 4, so
# an encoder that does not adapt writes exactly the version-3 files it always wrote.
READ_VERSIONS = (1, 2, 3, ADAPTED_VERSION)  # a reader still decodes every earlier version
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
# An adaptation block's bounds, checked before the model is known (`adapt.deltas` checks the
# block against the model's own tensors): tensors, parameters, step exponents (step 2^-e),
# and the ANS words, no more than the parameters could take at 24 bits each.
ADAPT_KINDS = 3  # one step per kind of tensor: norm scale, norm shift, bias
LOWRANK_SUBSETS = (3,)  # subsets with low-rank factors too: a fourth step (`adapt.params`)
ADAPT_KIND_NAMES = ("norm scale", "norm shift", "bias", "low-rank factor")  # their steps' order


def adapt_kinds(subset: int) -> int:
    """How many step exponents a block of this subset stores."""
    return ADAPT_KINDS + 1 if subset in LOWRANK_SUBSETS else ADAPT_KINDS

ADAPT_STEP_EXPS = (1, 30)
MAX_ADAPT_TENSORS = 4096
MAX_ADAPT_PARAMS = 1 << 20
ADAPT_SYMBOL_BITS = 24


def max_adapt_words(params: int) -> int:
    """The most ANS words a block of this many parameters can need."""
    return (params * ADAPT_SYMBOL_BITS + 31) // 32 + 2


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


def _chain_view(name: str, part: str = "") -> property:
    """A read-only view of one of the chain spec's fields (of its machine's, with part)."""
    def get(h: "Header") -> object:
        owner = getattr(h.chain, part) if part else h.chain
        return getattr(owner, name)
    return property(get, doc=f"`chain{'.' + part if part else ''}.{name}` (read-only)")


@dataclass
class Header:
    """A file's header: the chain spec whole, the tiling, the images and the stream's layout."""

    chain: ChainSpec  # what the tiles were coded with: model, T, grids, format version, machine
    tile: int  # tile side in pixels (the model's): how the images are cut into tiles
    images: list[ImageRecord] = field(default_factory=list)
    plan: Sequence[int] = field(default_factory=Plan)  # a Plan when read from a file
    direct: int = 0  # leading tiles coded directly (PNG/WebP on the stack)
    seed_words: int = 0
    stripped: int = 0
    checksum: bytes = b"\0" * 8
    compact: bytes = b""  # compact files: the bytes their 4-byte check covers (see write_compact)

    # Views of the chain's fields under the names the header's fields had (the CLI's `info`).
    version = _chain_view("version")
    model_id = _chain_view("model_id")
    steps = _chain_view("steps")
    kappa = _chain_view("kappa")
    window = _chain_view("window")
    latent_delta = _chain_view("latent_delta")
    backend = _chain_view("backend", "machine")
    bf16 = _chain_view("bf16", "machine")
    threads = _chain_view("threads", "machine")
    env_tag = _chain_view("env_tag", "machine")


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


def adapt_block_bytes(a: AdaptBlock) -> bytes:
    """An adaptation block as a version-4 header stores it (after the chain's grids):
    subset u8, one step exponent u8 per kind (`adapt_kinds`), params varint, tensors varint, one scale code
    u8 per tensor, then the ANS words as a varint count and u32 words."""
    if len(a.step_exps) != adapt_kinds(a.subset) or len(a.words) % 4:
        raise ValueError("malformed adaptation block")
    return (bytes([a.subset, *a.step_exps]) + _varint(a.params) + _varint(len(a.scales)) + a.scales
            + _varint(len(a.words) // 4) + a.words)


def write(h: Header, payload: np.ndarray) -> bytes:
    """Serialise a header and the ANS words (uint32, bottom of the stack first), in the
    layout of its chain's version (VERSION, FLOAT_VERSION for a float model's file, or
    ADAPTED_VERSION for an adapted integer model's)."""
    c = h.chain
    if c.version not in (FLOAT_VERSION, VERSION, ADAPTED_VERSION):
        raise ValueError(f"cannot write format version {c.version}")
    if (c.adaptation is not None) != (c.version == ADAPTED_VERSION):
        raise ValueError(f"format version {ADAPTED_VERSION} files, and only they, carry an adaptation block")
    hb = bytearray()
    hb += bytes.fromhex(c.model_id)
    if c.machine_bound:
        m = c.machine
        hb += bytes([BACKENDS.index(m.backend), int(m.bf16)])
        hb += _varint(m.threads) + struct.pack("<I", m.env_tag)
    hb += _varint(c.steps) + struct.pack("<fff", c.kappa, c.window, c.latent_delta)
    if c.adaptation is not None:
        hb += adapt_block_bytes(c.adaptation)
    hb += _varint(h.tile) + _varint(len(h.images))
    for r in h.images:
        hb += _image_bytes(r)
    names = [r.name for r in h.images]
    hb += _blob("\n".join(names).encode() if any(names) else b"")
    for r in h.images:
        hb += _meta_bytes(r.meta)
    hb += _plan_bytes(h.plan) + _varint(h.direct)
    hb += _varint(h.seed_words) + _varint(h.stripped) + h.checksum
    head = MAGIC + bytes([c.version]) + _varint(len(hb)) + bytes(hb)
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


# -- sizes ------------------------------------------------------------------------------

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
    return h.chain.steps * sum(tiles_in(rec, h.tile) for rec in h.images)
