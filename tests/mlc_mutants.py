"""Valid .mlc files and ways to break them, shared by test_fuzz.py and test_hardening.py.

`build_corpus` encodes a handful of tiny files once (tiny model, T=2: every mode,
an embedded image in the full layout, the compact file a lone tiny image becomes,
a multi-tile stream with names). `fix_crcs` recomputes both
CRCs of a mutated file so the mutation reaches the checks behind them;
`rewrite` re-serialises a file through `container.read`/`container.write` with
edited header fields (valid CRCs, arbitrary field values).

`build_adapted` makes a tiny integer model (and the float model it comes from) and
adapted files (format version 4, an adaptation block in the header) for the delta
block's mutants; `adapt_block_edits` lists hostile replacements of that block.

`check_decode` states the decoding guarantee for one byte string: it returns
exactly the pictures that were encoded, or it raises one of the documented
exception types with a one-line message; anything else (another exception type,
a Rust panic, a warning, a run past the time bound) is a failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import signal
import struct
import time
import warnings
import zlib
from typing import Iterator, Sequence

import numpy as np
import torch
from conftest import smooth_image
from PIL import Image

import mulancodec as mc
from mulancodec.coding import container as fmt
from mulancodec.coding.chainspec import ChainSpec, Machine
from mulancodec.coding.reader import read_file
from mulancodec.imaging import image as img

DOCUMENTED = (mc.FormatError, mc.DecodeError, mc.ModelFileError, mc.ImageError)
STEPS = 2


class Sample:
    """One valid file and what it holds (a plain class: short reprs in hypothesis reports)."""

    def __init__(self, name: str, data: bytes, checksums: tuple[bytes, ...],
                 arrays: tuple[np.ndarray, ...]) -> None:
        self.name = name
        self.data = data
        self.checksums = checksums  # Picture.checksum() of every encoded image, in order
        self.arrays = arrays  # what decompress_many returns

    def __repr__(self) -> str:
        return f"<{self.name}.mlc>"


def palette_image(rng: np.random.Generator, h: int, w: int, dup: bool = False) -> Image.Image:
    im = Image.fromarray(smooth_image(rng, h, w, 3)).convert("P", palette=Image.ADAPTIVE, colors=8)
    if dup:  # two indices share a colour: the model cannot code it through RGB (embedded)
        idx = rng.integers(0, 4, (h, w)).astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette([10, 20, 30] * 2 + [1, 2, 3, 200, 0, 0])
        im.info["transparency"] = 2
    return im


def build_corpus(model) -> list[Sample]:
    """Tiny valid files of every kind (about a second with the tiny model).

    They are encoded with one CPU thread (recorded in the header, so they also
    decode with one): on a busy 2-core machine one thread is ~100x faster.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_corpus(model)
    finally:
        torch.set_num_threads(threads)


def _build_corpus(model) -> list[Sample]:
    rng = np.random.default_rng(7)
    rgb = smooth_image(rng, 8, 8, 3)
    grey = smooth_image(rng, 5, 7, 1)[..., 0]
    rgba = smooth_image(rng, 6, 6, 4)
    rgba[..., 3] = np.where(rng.random((6, 6)) < 0.3, 0, 255)
    pal = palette_image(rng, 8, 8)
    lone = smooth_image(rng, 2, 2, 3)
    big = smooth_image(rng, 20, 18, 3)  # 4 tiles of 16
    small_grey = smooth_image(rng, 3, 5, 1)[..., 0]
    dup = palette_image(rng, 4, 5, dup=True)

    out = []

    def add(name: str, data: bytes, images: Sequence) -> None:
        pics = [img.load(x) for x in images]
        out.append(Sample(name, data, tuple(p.checksum() for p in pics), tuple(p.array() for p in pics)))

    for name, x in [("rgb", rgb), ("grey", grey), ("rgba", rgba), ("palette", pal)]:
        add(name, mc.compress(x, model=model, steps=STEPS, fallback=False), [x])
    data = mc.compress(lone, model=model, steps=STEPS)
    h = mc.read_header(data)
    assert h.compact and h.images[0].method == fmt.METHOD_EMBED
    full = dataclasses.replace(h, compact=b"", checksum=hashlib.sha256(img.load(lone).checksum()).digest()[:8])
    add("embedded", fmt.write(full, np.zeros(0, np.uint32)), [lone])  # the full layout holds one too
    add("compact", data, [lone])
    imgs = [big, small_grey, dup]
    add("stream", mc.compress_many(imgs, model=model, steps=STEPS, names=["a.png", "b.png", "c.png"]),
        imgs)
    return out


def tiny_int_pair(folder, config: str = "tiny-lv", default_steps: int | None = None) -> tuple:
    """(float model, its integer model): `config` (tiny-lv; tiny-unusual has a full-resolution
    block, so its files adapt low-rank factors too), saved in `folder` as float.safetensors
    and int.safetensors (the integer model records the float model's id), both with
    `default_steps` in their metadata when given."""
    from conftest import make_tiny_model

    from mulancodec.exact.quantize import quantize
    from mulancodec.training.data import RandomCrops
    from mulancodec.weights import load_model, save_integer_model, save_model

    extra = {"default_steps": str(default_steps)} if default_steps else {}
    fid = save_model(make_tiny_model(0, config), folder / "float.safetensors", extra=extra)
    flm = load_model(folder / "float.safetensors")
    rng = np.random.default_rng(4)
    qm = quantize(flm.model, RandomCrops([smooth_image(rng, 48, 48, 3) for _ in range(3)], 16, 8, 0).batch(0, 16))
    save_integer_model(qm, folder / "int.safetensors", fid, extra)
    return flm, load_model(folder / "int.safetensors")


def build_adapted(folder, config: str = "tiny-lv") -> tuple:
    """(the tiny integer model, [adapted Samples]): `tiny_int_pair`'s models, an RGB image
    and a stream of two coded with --adapt 30 at T=2, the deltas kept whatever they save (the
    rule is tested in test_adapt.py)."""
    from mulancodec.adapt import encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flm, ilm = tiny_int_pair(folder, config)
        rng = np.random.default_rng(5)
        rgb, grey = smooth_image(rng, 40, 36, 3), smooth_image(rng, 20, 17, 1)[..., 0]
        out = []
        with kept(encoder):
            for name, images in (("adapted", [rgb]), ("adapted-stream", [rgb, grey])):
                data = mc.compress_many(images, model=ilm, steps=STEPS, adapt=30, float_model=flm)
                assert mc.read_header(data).chain.adaptation is not None
                pics = [img.load(x) for x in images]
                out.append(Sample(name, data, tuple(p.checksum() for p in pics), tuple(p.array() for p in pics)))
        return ilm, out
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def kept(encoder) -> Iterator[None]:
    """Adaptation keeps its deltas, whatever they save."""
    old = encoder.pays
    encoder.pays = lambda report: True
    try:
        yield
    finally:
        encoder.pays = old


def adapt_block_edits(a, rng: np.random.Generator) -> dict[str, object]:
    """Hostile versions of an adaptation block (`AdaptBlock`), by name; the block's other
    fields as they were. Each must be refused or decode to the encoded pixels."""
    w = np.frombuffer(a.words, "<u4").copy()
    flipped = w.copy()
    flipped[rng.integers(0, len(w))] ^= np.uint32(1 << int(rng.integers(0, 32)))
    scales = bytearray(a.scales)
    scales[int(rng.integers(0, len(scales)))] = int(rng.integers(0, 256))
    r = dataclasses.replace
    k = len(a.step_exps)

    def subset(n: int):  # another subset, with as many steps as it stores
        want = fmt.adapt_kinds(n)
        return r(a, subset=n, step_exps=(a.step_exps + (7,) * want)[:want])
    return {
        **{f"subset {n}": subset(n) for n in (1, 2, 3, 7, 255) if n != a.subset},
        "step 2^-1": r(a, step_exps=(1,) * k), "step 2^-30": r(a, step_exps=(30,) * k),
        "step exps 0": r(a, step_exps=(0,) + (7,) * (k - 1)), "step exps 31": r(a, step_exps=(7, 31) + (7,) * (k - 2)),
        "two kinds": r(a, step_exps=(7,) * (k - 1)),
        "params - 1": r(a, params=a.params - 1), "params + 1": r(a, params=a.params + 1),
        "params 2^20": r(a, params=1 << 20), "params 2^20 + 1": r(a, params=(1 << 20) + 1),
        "one tensor fewer": r(a, scales=a.scales[:-1]), "one tensor more": r(a, scales=a.scales + b"\x60"),
        "no tensors": r(a, scales=b""), "a scale code changed": r(a, scales=bytes(scales)),
        "every scale code 255": r(a, scales=b"\xff" * len(a.scales)),
        "every scale code 1": r(a, scales=b"\x01" * len(a.scales)),
        "every tensor zero": r(a, scales=b"\0" * len(a.scales)),
        "a word flipped": r(a, words=flipped.astype("<u4").tobytes()),
        "top word dropped": r(a, words=a.words[:-4]), "bottom word dropped": r(a, words=a.words[4:]),
        "a word added": r(a, words=a.words + b"\x01\0\0\0"), "top word zero": r(a, words=a.words[:-4] + bytes(4)),
        "no words": r(a, words=b""), "random words": r(a, words=rng.integers(1, 2 ** 32, len(w), dtype=np.uint32)
                                                     .astype("<u4").tobytes()),
    }


# -- byte-level helpers ------------------------------------------------------------------

def varint_at(b: bytes, p: int) -> tuple[int, int] | None:
    """(value, position after it) of the LEB128 varint at p, or None if it runs off the end."""
    n, shift = 0, 0
    for i in range(10):
        if p + i >= len(b):
            return None
        n |= (b[p + i] & 0x7F) << shift
        if not b[p + i] & 0x80:
            return n, p + i + 1
        shift += 7
    return None


def varint(n: int) -> bytes:
    return fmt._varint(n)


def sections(b: bytes) -> tuple[int, int, int, int] | None:
    """(header start, header end = header CRC position, payload start, payload end) or None."""
    if len(b) < 5:
        return None
    v = varint_at(b, 5)
    if v is None:
        return None
    hlen, hs = v
    he = hs + hlen
    if he + 4 > len(b):
        return None
    v = varint_at(b, he + 4)
    if v is None:
        return None
    blen, ps = v
    return hs, he, ps, ps + blen


def fix_crcs(data: bytes) -> bytes:
    """Recompute the header CRC and (when its length fits) the payload CRC, in place."""
    b = bytearray(data)
    if len(b) < 5:
        return bytes(b)
    v = varint_at(b, 5)
    if v is None:
        return bytes(b)
    he = v[1] + v[0]
    if he + 4 > len(b):
        return bytes(b)
    b[he:he + 4] = struct.pack("<I", zlib.crc32(bytes(b[:he])))
    v = varint_at(b, he + 4)
    if v is None:
        return bytes(b)
    ps, pe = v[1], v[1] + v[0]
    if pe + 4 <= len(b):
        b[pe:pe + 4] = struct.pack("<I", zlib.crc32(bytes(b[ps:pe])))
    return bytes(b)


def frame(header: bytes, body: bytes, version: int = fmt.FLOAT_VERSION) -> bytes:
    """A file around raw header content and payload bytes, framed and checksummed as
    `container.write` does (for headers `write` cannot produce): by default a float
    model's layout, which the corpus's headers have."""
    head = fmt.MAGIC + bytes([version]) + varint(len(header)) + header
    return (head + struct.pack("<I", zlib.crc32(head)) + varint(len(body)) + body
            + struct.pack("<I", zlib.crc32(body)))


def parts(data: bytes) -> tuple[fmt.Header, np.ndarray]:
    return read_file(data, 0)


CHAIN_FIELDS = {f.name for f in dataclasses.fields(ChainSpec)}
MACHINE_FIELDS = {f.name for f in dataclasses.fields(Machine)}


def set_fields(h: fmt.Header, **fields) -> fmt.Header:
    """Replace header fields in place, by name: the chain spec's (`steps`, `model_id`, ...) and
    its machine's (`backend`, `threads`, ...) as well as the header's own."""
    machine = {k: fields.pop(k) for k in list(fields) if k in MACHINE_FIELDS}
    chain = {k: fields.pop(k) for k in list(fields) if k in CHAIN_FIELDS}
    if machine:
        chain["machine"] = dataclasses.replace(h.chain.machine, **machine)
    h.chain = dataclasses.replace(h.chain, **chain)
    for k, v in fields.items():
        setattr(h, k, v)
    return h


def rewrite(data: bytes, payload: np.ndarray | None = None, **fields) -> bytes:
    """The file re-serialised with header fields replaced (CRCs valid)."""
    h, words = parts(data)
    h = set_fields(dataclasses.replace(h), **fields)
    return fmt.write(h, words if payload is None else np.asarray(payload, dtype=np.uint32))


def png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(a) if a.dtype == np.uint16 else Image.fromarray(a, mode)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int, colour: int = 0) -> bytes:
    """A syntactically valid PNG whose IHDR claims this size (and holds no pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- the guarantee -----------------------------------------------------------------------

class Overtime(BaseException):
    """Raised by the watchdog (a BaseException, so no `except Exception` in the package eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def fire(signum, frame):  # noqa: ARG001
        raise Overtime(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def declared_work(data: bytes, max_pixels: int) -> int:
    """Tile-steps the header asks the decoder for (0 if it does not parse)."""
    try:
        h = read_file(data, max_pixels)[0]
    except fmt.FormatError:
        return 0
    return fmt.declared_work(h)


def check_decode(data: bytes, corpus: Sequence[Sample], model, *, max_pixels: int = 4096,
                 seconds: float = 30.0) -> str:
    """Decode a mutant and assert the guarantee; returns the outcome's name.

    Success must give exactly the images of one of the corpus files (a mutant
    can only be "correct" by being, in effect, one of the files that were encoded).
    """
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with time_limit(seconds):
                pics = mc.decompress_pictures(data, model=model, max_pixels=max_pixels)
        except DOCUMENTED as e:
            msg = str(e)
            assert msg.strip() and "\n" not in msg.strip(), f"{type(e).__name__} message: {msg!r}"
            outcome = type(e).__name__
        except Overtime:
            raise AssertionError(f"decoding ran past {seconds} s "
                                 f"(declared work {declared_work(data, max_pixels)} tile-steps)") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - includes pyo3's PanicException
            raise AssertionError(f"undocumented {type(e).__module__}.{type(e).__name__}: {e}") from e
        else:
            got = tuple(p.checksum() for p in pics)
            assert got in {c.checksums for c in corpus}, "decoded pixels that were never encoded"
            outcome = "exact"
    assert not caught, f"warnings while decoding: {[str(w.message) for w in caught]}"
    assert time.monotonic() - t0 < seconds
    return outcome
