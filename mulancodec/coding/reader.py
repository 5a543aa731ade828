"""Reading a .mlc container: every field checked before anything is allocated for it.

`read_file` parses a whole file: each field against hard bounds
and against the bytes actually present, so a hostile file can only produce a
`FormatError`, never a huge allocation (docs/format.md, "Validation").
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from ..imaging.metadata import FIXED_SIZE as META_FIXED
from ..imaging.metadata import KINDS as META_KINDS
from ..imaging.metadata import MAX_ITEM_BYTES as MAX_META_BYTES
from ..imaging.metadata import MAX_ITEMS as MAX_META_ITEMS
from ..imaging.metadata import MAX_TOTAL_BYTES as MAX_META_TOTAL
from ..imaging.metadata import TEXT as META_TEXT
from .chainspec import ADAPTED_VERSION, ANY_MACHINE, AdaptBlock, ChainSpec, Machine, is_exact_version
from .container import (
    adapt_kinds,
    ADAPT_STEP_EXPS,
    BACKENDS,
    COMPACT_CHECK,
    FLOAT_RANGES,
    MAGIC,
    MAX_ADAPT_PARAMS,
    MAX_ADAPT_TENSORS,
    MAX_BATCHES,
    MAX_IMAGES,
    MAX_SIDE,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TILE,
    MAX_TILES,
    METHOD_EMBED,
    METHOD_MODEL,
    MODES,
    READ_VERSIONS,
    VERSION,
    FormatError,
    Header,
    ImageRecord,
    Plan,
    max_adapt_words,
    max_batch,
    max_seed_words,
    tiles_in,
)


class _Reader:
    """Reads from bytes, each field against a bound and against the bytes left."""

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


def _read_mode(r: _Reader) -> str:
    mode_i = r.u8()
    if mode_i >= len(MODES):
        raise FormatError(f"unknown image mode {mode_i}")
    return MODES[mode_i]


def _read_size(r: _Reader, mode: str, method: int) -> ImageRecord:
    """An image record of this mode and method with its width and height, checked."""
    rec = ImageRecord(mode, r.varint(MAX_SIDE, "width"), r.varint(MAX_SIDE, "height"), method)
    if rec.width < 1 or rec.height < 1:
        raise FormatError("image has zero size")
    return rec


def _check_pixels(pixels: int, max_pixels: int | None) -> None:
    if max_pixels and pixels > max_pixels:
        raise FormatError(f"the file's images hold more than {max_pixels:,} pixels "
                          "(decompression bomb limit; raise it with max_pixels / --max-pixels)")


def _read_image(r: _Reader, max_bytes: int) -> ImageRecord:
    mode = _read_mode(r)
    method = r.u8()
    if method not in (METHOD_MODEL, METHOD_EMBED):
        raise FormatError(f"unknown coding method {method}")
    rec = _read_size(r, mode, method)
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


def read_file(data: bytes, max_pixels: int | None = None) -> tuple[Header, np.ndarray]:
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
    rec = _read_size(r, _read_mode(r), METHOD_EMBED)
    _check_pixels(rec.width * rec.height, max_pixels)
    rec.embedded = r.blob(len(data), "embedded image")
    _read_meta(r, [rec])
    end = r.p
    check = r.take(COMPACT_CHECK)
    if r.left():
        raise FormatError(f"{r.left()} bytes of trailing data after the image")
    # the model's fields do not apply: no model runs for an embedded image
    chain = ChainSpec(steps=1, kappa=1.0, window=1.0, latent_delta=1.0, version=version,
                      machine=Machine(backend="cpu", threads=1))
    return Header(chain, 1, [rec], checksum=check, compact=data[:end])


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


def _parse_machine(r: _Reader) -> Machine:
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
    return Machine(backend=BACKENDS[backend_i], bf16=bool(bf16), threads=threads, env_tag=env_tag)


def _parse_chain(r: _Reader, version: int) -> ChainSpec:
    """The chain spec: model id, (versions 1-2) machine, T and the grids, each checked."""
    model_id = r.take(8).hex()
    machine = ANY_MACHINE if is_exact_version(version) else _parse_machine(r)
    steps = r.varint(MAX_STEPS, "steps")
    if steps < 1:
        raise FormatError("steps must be at least 1")
    kappa = r.f32(*FLOAT_RANGES["kappa"], "kappa")
    window = r.f32(*FLOAT_RANGES["window"], "window")
    latent_delta = r.f32(*FLOAT_RANGES["latent_delta"], "latent grid")
    adaptation = _read_adaptation(r) if version >= ADAPTED_VERSION else None
    return ChainSpec(steps=steps, kappa=kappa, window=window, latent_delta=latent_delta,
                     model_id=model_id, version=version, machine=machine, adaptation=adaptation)


def _read_adaptation(r: _Reader) -> AdaptBlock:
    """Version 4's adaptation block, each field against its bound and the bytes present (the
    model's own tensor count and sizes are checked when it is known: `adapt.deltas`)."""
    subset = r.u8()
    exps = tuple(r.u8() for _ in range(adapt_kinds(subset)))
    if not all(ADAPT_STEP_EXPS[0] <= e <= ADAPT_STEP_EXPS[1] for e in exps):
        raise FormatError(f"adaptation step exponent out of range ({ADAPT_STEP_EXPS[0]}..{ADAPT_STEP_EXPS[1]})")
    params = r.varint(MAX_ADAPT_PARAMS, "adapted parameters")
    tensors = r.varint(min(MAX_ADAPT_TENSORS, params), "adapted tensors")
    if tensors < 1:
        raise FormatError("the adaptation block holds no tensor")
    scales = r.take(tensors)
    n_words = r.varint(max_adapt_words(params), "adaptation words")
    words = r.take(4 * n_words)
    if n_words and words[-4:] == b"\0\0\0\0":
        raise FormatError("corrupt adaptation block (its last word is 0)")
    return AdaptBlock(subset=subset, step_exps=exps, params=params, scales=scales, words=words)


def _parse_header(r: _Reader, file_len: int, max_pixels: int | None, version: int = VERSION) -> Header:
    chain = _parse_chain(r, version)
    tile = r.varint(MAX_TILE, "tile size")
    if tile < 1:
        raise FormatError("tile size must be positive")
    n = r.varint(min(MAX_IMAGES, file_len // 4), "image count")
    if n < 1:
        raise FormatError("file holds no image")
    h = Header(chain, tile)
    total_px = 0
    for _ in range(n):
        rec = _read_image(r, file_len)
        total_px += rec.width * rec.height
        _check_pixels(total_px, max_pixels)
        h.images.append(rec)
    _read_names(r, h.images)
    if version >= 2:  # version 1 has no metadata section
        _read_meta(r, h.images)
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
