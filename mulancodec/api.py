"""The public Python API: compress / decompress one image or a stream of many.

The data path, top to bottom: image -> Picture (image.py) -> tiles -> model
likelihoods and bits-back ANS (coding/bitsback.py) -> container (coding/container.py).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .adapt import AdaptError, AdaptReport, DeltaError, adapted_model
from .adapt.encoder import for_file
from .coding import codecs as _codecs
from .coding import container as fmt
from .coding import exact
from .coding.chainspec import ANY_MACHINE, DEFAULT_EFFORT, ChainSpec, Machine, chain_steps, effort_plan
from .coding.codecs import CodingError
from .coding.reader import read_file
from .coding.stream import Encoded, TileContext, decode_tiles, encode_tiles
from .failures import DecodeError, EncodeError, MissingModelError, ThreadsMismatch
from .imaging import image as img
from .imaging.metadata import Metadata, MetadataError
from .pictures import assemble as _assemble
from .pictures import embed as _embed
from .pictures import record as _record
from .pictures import record_meta as _record_meta
from .pictures import stream_checksum as _stream_checksum
from .pictures import tiles as _tiles
from .pictures import unembed as _unembed
from .weights import LoadedModel, load_model
from .zoo import ENV_MODEL, ModelFileError, find_shipped, shipped_models


def check_threads(threads: int | None) -> int | None:
    """A requested CPU thread count, checked (None: the default)."""
    if threads is not None and not 1 <= threads <= fmt.MAX_THREADS:
        raise ValueError(f"threads must be between 1 and {fmt.MAX_THREADS}")
    return threads


# -- models and devices -----------------------------------------------------------------

_MODELS: dict[tuple[str, str], LoadedModel] = {}


def get_model(model: "str | os.PathLike | LoadedModel | None", device: torch.device) -> LoadedModel:
    """Load (once per path and device) the given model, or the shipped default."""
    if isinstance(model, LoadedModel):
        if next(iter(model.model.state_dict().values())).device.type != device.type:
            model.model.to(device)
        return model
    key = (str(model or os.environ.get("MULANCODEC_MODEL") or "<default>"), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_model(model, device)
    return _MODELS[key]


def pick_device(device: "str | torch.device | None") -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncodeError("CUDA was requested but is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise EncodeError(f"unsupported device {device!r} (use cpu or cuda)")
    return dev


@functools.cache
def cpu_maker() -> str:
    """The CPU's maker as the kernel names it (GenuineIntel, AuthenticAMD, ...), else "":
    the same torch and vector capability (AVX512) give other float results on another
    maker's CPU (MKL and oneDNN pick other kernels)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "CPU implementer"):
                    return value.strip()
    except OSError:
        pass
    return ""


def legacy_env_tag(device: torch.device) -> int:
    """`env_tag` as files made before 2026-12-07 store it: without the CPU's maker."""
    return _env_crc(device, with_maker=False)


def env_tag(device: torch.device) -> int:
    """A short fingerprint of what decides the network's float results (a float model's
    file stores it, so that a decode that fails elsewhere can say why)."""
    return _env_crc(device, with_maker=True)


def _env_crc(device: torch.device, with_maker: bool) -> int:
    if device.type == "cuda":
        kind = torch.cuda.get_device_name(device)
    else:
        kind = torch.backends.cpu.get_cpu_capability() + (f"|{cpu_maker()}" if with_maker else "")
    return zlib.crc32(f"torch {torch.__version__}|{device.type}|{kind}".encode())


def default_steps(lm: LoadedModel, steps: int | None = None) -> int:
    """T for coding or evaluating with `lm`: `steps` when given, else the model's own
    default (`chainspec.chain_steps`, the one place T is decided)."""
    return chain_steps(lm.meta, steps)


def encoder_chain(lm: LoadedModel, device: torch.device, threads: int, steps: int | None = None,
                  base: ChainSpec | None = None) -> ChainSpec:
    """The chain a file is coded with and its header stores: T (`base`'s, else `default_steps`),
    `base`'s grids as the header stores them, the model's id and format version, and for a
    float model the machine its files then decode on."""
    T = default_steps(lm, base.steps if base is not None else steps)
    if not 1 <= T <= fmt.MAX_STEPS:
        raise EncodeError(f"steps must be between 1 and {fmt.MAX_STEPS}")
    machine = (ANY_MACHINE if exact.is_exact(lm.model)
               else Machine(backend=device.type, threads=threads, env_tag=env_tag(device)))
    spec = dataclasses.replace(base or ChainSpec(steps=T), steps=T, model_id=lm.model_id,
                               version=exact.file_version(lm.model), machine=machine)
    return _as_stored(spec)


# -- encoding ---------------------------------------------------------------------------

@dataclass
class EncodeStats:
    """What an encode measured (see `compress_with_stats`)."""

    bytes: int
    subpixels: int
    bits_back_bytes: int | None  # size the bits-back file had (None if not attempted)
    embedded: bool  # the file stores an embedded PNG/WebP because it was smaller
    first_batch_bits: int  # seed bits the first batch consumed (the start-up cost)
    tiles: int
    plan: list[int]
    effort: int = DEFAULT_EFFORT  # the effort level the file was made at (`chainspec.EFFORTS`)
    steps: int | None = None  # T (None: no image was coded by the model)
    adapt: "AdaptReport | None" = None  # what adaptation did (None: not asked for)

    @property
    def bpd(self) -> float:
        return 8 * self.bytes / max(1, self.subpixels)


def _context(lm: LoadedModel, jobs: img.TileSequence,
             pics: Sequence[img.Picture] | None) -> TileContext | None:
    """A context model's tile context (the encoder's canvases are its pictures)."""
    if not lm.config.context:
        return None
    canvases = {i: pics[i].rgb for i in jobs.images} if pics is not None else None
    return TileContext(jobs, lm.config.context, canvases)  # type: ignore[arg-type]


def _encode(pics: list[img.Picture], *, steps: int | None = None,
            device: "str | torch.device | None" = None,
            model: "str | os.PathLike | LoadedModel | None" = None, fallback: bool = True,
            max_batch: int | None = None, progress: Callable[[int], None] | None = None,
            names: Sequence[str] | None = None, threads: int | None = None,
            effort: int | None = None, adapt: int | None = None,
            float_model: "str | os.PathLike | LoadedModel | None" = None,
            _spec: ChainSpec | None = None) -> tuple[bytes, EncodeStats]:
    try:
        check_threads(threads)
        level, steps, n_adapt = effort_plan(effort, steps, adapt)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    if n_adapt < 0:
        raise EncodeError("adapt must be 0 (none) or a number of fine-tuning steps")
    effort = DEFAULT_EFFORT if effort is None else effort
    if level.classical and steps is None and adapt is None:
        return _encode_classical(pics, names, effort, device, model)
    dev = pick_device(device)
    lm = get_model(model, dev)
    threads = threads or min(torch.get_num_threads(), fmt.MAX_THREADS)
    spec = encoder_chain(lm, dev, threads, steps, _spec)
    tile = lm.config.tile
    recs = [_record(p) for p in pics]
    for rec, name in zip(recs, names or []):
        rec.name = name
    jobs = _tiles(pics, recs, tile)
    header = fmt.Header(spec, tile, recs, checksum=_stream_checksum(pics))
    enc = Encoded(np.zeros(0, np.uint32), [], 0, 0, 0)
    report, coder = None, lm.model
    if jobs and n_adapt:
        report, coder, header.chain = _adapt(lm, pics, recs, header.chain, n_adapt, adapt is not None,
                                             float_model, dev)
    if jobs:
        mb = max_batch or (256 if dev.type == "cuda" else 16)
        with exact.coding(coder, dev, threads):
            enc = encode_tiles(coder, header.chain, jobs, tile, exact.chain_device(coder, dev), mb,
                               progress, _context(lm, jobs, pics))
        header.plan, header.seed_words, header.stripped = enc.plan, enc.seed_words, enc.stripped
        header.direct = enc.direct
    data = fmt.write(header, enc.payload)
    subpixels = sum(p.array().size for p in pics)
    stats = EncodeStats(len(data), subpixels, len(data) if jobs else None, False, enc.first_batch_bits,
                        len(jobs), enc.plan, effort, spec.steps if jobs else None, report)
    if fallback and len(pics) == 1 and jobs:
        emb = fmt.ImageRecord(pics[0].mode, pics[0].width, pics[0].height, fmt.METHOD_EMBED,
                              embedded=_embed(pics[0]), meta=recs[0].meta)
        alt = fmt.write_compact(emb, pics[0].checksum())
        if len(alt) < len(data):
            data = alt
            stats.bytes, stats.embedded = len(alt), True
    return data, stats


def _adapt(lm: LoadedModel, pics: list[img.Picture], recs: list[fmt.ImageRecord], spec: ChainSpec,
           n: int, asked: bool, float_model: "str | os.PathLike | LoadedModel | None",
           dev: torch.device) -> tuple[AdaptReport, torch.nn.Module, ChainSpec]:
    """`adapt.encoder.for_file` on the model-coded images, its refusals as EncodeError."""
    coded = [(p.rgb, r.mode in ("L", "LA")) for p, r in zip(pics, recs) if r.method == fmt.METHOD_MODEL]
    try:
        return for_file(lm, float_model, coded, spec, n, asked, dev)
    except (AdaptError, ModelFileError) as e:
        raise EncodeError(str(e)) from None


def _encode_classical(pics: list[img.Picture], names: Sequence[str] | None, effort: int,
                      device: "str | torch.device | None",
                      model: "str | os.PathLike | LoadedModel | None") -> tuple[bytes, EncodeStats]:
    """Effort 1: every image as the smallest of PNG, WebP and JPEG-XL, no bits-back. A lone
    image is a compact file (no model needed); a stream's images are embedded records."""
    recs = []
    for i, p in enumerate(pics):
        rec = fmt.ImageRecord(p.mode, p.width, p.height, fmt.METHOD_EMBED, embedded=_embed(p),
                              meta=_record_meta(p), name=(names[i] if names else ""))
        recs.append(rec)
    if len(pics) == 1 and not names:
        data = fmt.write_compact(recs[0], pics[0].checksum())
    else:
        dev = pick_device(device)
        lm = get_model(model, dev)
        spec = encoder_chain(lm, dev, 1)
        data = fmt.write(fmt.Header(spec, lm.config.tile, recs, checksum=_stream_checksum(pics)),
                         np.zeros(0, np.uint32))
    return data, EncodeStats(len(data), sum(p.array().size for p in pics), None, True, 0, 0, [], effort)


def _as_stored(spec: ChainSpec) -> ChainSpec:
    """The spec with its float parameters as the header stores them (float32), so the
    encoder codes with exactly the distributions the decoder will rebuild."""
    try:
        fmt.check_floats(kappa=spec.kappa, window=spec.window, latent_delta=spec.latent_delta)
    except ValueError as e:
        raise EncodeError(str(e)) from None
    return dataclasses.replace(spec, kappa=fmt.stored_float(spec.kappa),
                               window=fmt.stored_float(spec.window),
                               latent_delta=fmt.stored_float(spec.latent_delta))


def _load_all(images: Iterable[img.ImageLike], max_pixels: int | None,
              strip: bool = False) -> list[img.Picture]:
    """The pictures to code; `strip` drops their metadata (ICC, EXIF, XMP, text, dpi...)."""
    pics = [img.load(x, max_pixels) for x in images]
    if not pics:
        raise EncodeError("no images to encode")
    if strip:
        for p in pics:
            p.meta = Metadata()
    return pics


def compress(image: img.ImageLike, *, steps: int | None = None, device: "str | torch.device | None" = None,
             model: "str | os.PathLike | LoadedModel | None" = None, fallback: bool = True,
             max_batch: int | None = None, max_pixels: int | None = None,
             progress: Callable[[int], None] | None = None, strip: bool = False,
             threads: int | None = None, effort: int | None = None, adapt: int | None = None,
             float_model: "str | os.PathLike | LoadedModel | None" = None) -> bytes:
    """Encode one image (numpy uint8 HxW / HxWx3 / HxWx4, PIL image or path) to .mlc bytes.

    `effort` 1..9 (default 7, like cjxl's -e) picks T and the adaptation budget together
    (`chainspec.EFFORTS`: 1 = the smallest of PNG/WebP/JPEG-XL, no model; 7 = the model's
    T, today's files; 9 = T 100 with 100 fine-tuning steps); `steps` and `adapt` override it.
    `adapt` N fine-tunes the integer model's float model (`float_model`, default: the
    installed one it was made from) on the image for N steps and stores the quantised
    deltas when they pay for themselves (format version 4; `EncodeStats.adapt` says what
    happened). A float model's files are not adapted (an explicit `adapt` is refused).

    With `fallback` (the default) a file stores an embedded PNG/WebP/JPEG-XL instead when
    that is smaller: a lone small image cannot amortise bits-back's start-up cost.
    The image's metadata (ICC, EXIF, XMP, text, dpi, gAMA/cHRM/sRGB) is kept unless `strip`.
    `threads`: torch CPU threads the network runs on (default: torch's current count). A float
    model's file records it and decodes only with that count; an integer model's file
    (format version 3) decodes with any.
    On a CPU, `mulancodec.allocator.keep_freed_memory()` makes coding about 8% faster.
    """
    return compress_with_stats(image, steps=steps, device=device, model=model, fallback=fallback,
                               max_batch=max_batch, max_pixels=max_pixels, progress=progress,
                               strip=strip, threads=threads, effort=effort, adapt=adapt,
                               float_model=float_model)[0]


def compress_with_stats(image: img.ImageLike, **kw: object) -> tuple[bytes, EncodeStats]:
    """`compress`, also returning what the encode measured."""
    max_pixels = kw.pop("max_pixels", None)
    strip = bool(kw.pop("strip", False))
    return _encode(_load_all([image], max_pixels, strip), **kw)  # type: ignore[arg-type]


def compress_many(images: Iterable[img.ImageLike], *, steps: int | None = None,
                  device: "str | torch.device | None" = None,
                  model: "str | os.PathLike | LoadedModel | None" = None, max_batch: int | None = None,
                  max_pixels: int | None = None, names: Sequence[str] | None = None,
                  progress: Callable[[int], None] | None = None, strip: bool = False,
                  threads: int | None = None, effort: int | None = None, adapt: int | None = None,
                  float_model: "str | os.PathLike | LoadedModel | None" = None) -> bytes:
    """Encode many images into one stream: bits-back's start-up cost is paid once.

    `names` (optional, one per image, no newlines) are stored so a decoder can
    restore file names. `threads`, `effort`, `adapt` (on all the images together) and
    `float_model` as for `compress`.
    """
    return compress_many_with_stats(images, steps=steps, device=device, model=model,
                                    max_batch=max_batch, max_pixels=max_pixels, names=names,
                                    progress=progress, strip=strip, threads=threads, effort=effort,
                                    adapt=adapt, float_model=float_model)[0]


def compress_many_with_stats(images: Iterable[img.ImageLike], *, max_pixels: int | None = None,
                             names: Sequence[str] | None = None, strip: bool = False,
                             **kw: object) -> tuple[bytes, EncodeStats]:
    """`compress_many`, also returning what the encode measured."""
    pics = _load_all(images, max_pixels, strip)
    if names is not None:
        names = list(names)
        if len(names) != len(pics) or any("\n" in n for n in names):
            raise EncodeError("names must be one line per image")
    return _encode(pics, fallback=False, names=names, **kw)  # type: ignore[arg-type]


# -- decoding ---------------------------------------------------------------------------

def model_for_file(model: "str | os.PathLike | LoadedModel | None", mid: str,
                   device: torch.device) -> LoadedModel:
    """The model a file was made with: the one given, else the installed model with its id."""
    if model is None:
        model = find_shipped(mid) or os.environ.get(ENV_MODEL) or None
        if model is None:
            names = ", ".join(shipped_models()) or "none"
            raise MissingModelError(f"this file was made with model {mid}, which is not installed "
                                    f"(installed: {names}); pass --model / model= with that model")
    lm = get_model(model, device)
    if lm.model_id != mid:
        raise MissingModelError(f"this file was made with model {mid}, but the model in use is "
                                f"{lm.model_id} ({lm.path}); pass --model / model= with the right one")
    return lm


def read_header(data: bytes, max_pixels: int | None = None) -> fmt.Header:
    """The validated header of a file (no model needed)."""
    return read_file(data, img.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)[0]


def check_work(h: fmt.Header, max_work: int | None = None) -> None:
    """Refuse a file that declares more decoding work (tile-steps) than the limit, before any
    of it starts: a header of a few bytes can ask for hours of network evaluations."""
    limit = fmt.DEFAULT_MAX_WORK if max_work is None else max_work
    if limit < 0:
        raise ValueError("max_work must be 0 (no limit) or positive")
    T = h.chain.steps
    if max_work is None and T > fmt.DEFAULT_MAX_STEPS:  # even one tile at such T takes long
        raise DecodeError(f"this file asks for T = {T:,} steps, over the default limit of "
                          f"{fmt.DEFAULT_MAX_STEPS:,}; pass max_work= / --max-work (0 = no limit) "
                          "if you trust the file")
    work = fmt.declared_work(h)
    if limit and work > limit:
        tiles = sum(fmt.tiles_in(r, h.tile) for r in h.images)
        raise DecodeError(f"decoding this file takes {work:,} tile-steps ({tiles:,} tiles x {T:,} "
                          f"steps), over the work limit of {limit:,}; raise it with max_work= / "
                          "--max-work (0 = no limit) if you trust the file")


def _decoder_model(h: fmt.Header, model: "str | os.PathLike | LoadedModel | None",
                   device: "str | torch.device | None", threads: int | None) -> tuple[LoadedModel, torch.device]:
    """The model and device a file's coded tiles decode with; refuses cheaply, before any
    per-tile allocation, what cannot decode here."""
    chain = h.chain
    if chain.exact:  # an integer model's file: any device, any thread count
        check_threads(threads)
        dev = pick_device(device)
    else:
        dev = _machine_device(chain.machine, device, threads)
    lm = model_for_file(model, chain.model_id, dev)
    if exact.is_exact(lm.model) != chain.exact:
        need, have = ("an integer", "a float") if chain.exact else ("a float", "an integer")
        raise DecodeError(f"this file (format version {chain.version}) needs {need} model, and "
                          f"{lm.path} is {have} one")
    if lm.config.tile != h.tile:
        raise DecodeError("tile size in the file does not match the model")
    if chain.adaptation is not None:  # the file's deltas, added to a copy of the named model
        try:
            lm = dataclasses.replace(lm, model=adapted_model(lm.model, lm.config, chain.adaptation))
        except DeltaError as e:
            raise DecodeError(str(e)) from None
    return lm, dev


def _machine_device(machine: Machine, device: "str | torch.device | None",
                    threads: int | None) -> torch.device:
    """The device a float model's file decodes on: its own, with its thread count, or a refusal."""
    _check_decode_threads(machine, threads)
    backend = machine.backend
    if device is not None and torch.device(device).type != backend:
        raise DecodeError(f"this file was encoded on {backend}; it decodes only on "
                          f"{backend} (--device {backend}), not {torch.device(device).type}")
    if machine.bf16:
        raise DecodeError("this file's network ran under bf16, which no mulancodec encoder "
                          "writes; it cannot be decoded")
    if backend == "cuda" and not torch.cuda.is_available():
        raise DecodeError("this file was encoded on cuda and decodes only on a machine with CUDA "
                          "(the model's float results differ between cpu and cuda)")
    return torch.device(backend)


def _decode(data: bytes, device: "str | torch.device | None", model: "str | os.PathLike | LoadedModel | None",
            max_pixels: int | None, progress: Callable[[int], None] | None,
            max_work: int | None = None, threads: int | None = None) -> list[img.Picture]:
    limit = img.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    h, payload = read_file(bytes(data), limit)
    check_work(h, max_work)
    coded = any(rec.method == fmt.METHOD_MODEL for rec in h.images)
    lm, dev = _decoder_model(h, model, device, threads) if coded else (None, torch.device("cpu"))
    pics: list[img.Picture | None] = [None] * len(h.images)
    for i, rec in enumerate(h.images):
        if rec.method == fmt.METHOD_EMBED:
            pics[i] = _unembed(rec.embedded, rec.mode, rec.width, rec.height)
    jobs = _tiles(None, h.images, h.tile)
    if jobs:
        assert lm is not None
        _decode_coded(h, payload, jobs, lm, dev, threads, progress, pics)
    out = [p for p in pics if p is not None]
    for p, rec in zip(out, h.images):
        p.name = rec.name
        try:
            p.meta = Metadata.from_items(rec.meta)
        except MetadataError as e:
            raise DecodeError(str(e)) from None
    if (fmt.compact_check(h.compact, out[0].checksum()) if h.compact
            else _stream_checksum(out)) != h.checksum:
        msg = "pixel checksum mismatch: refusing to return wrong pixels"
        # the environment hint only concerns model-coded images
        raise DecodeError(_with_env_hint(msg, h.chain, dev) if jobs else msg)
    return out


def _decode_coded(h: fmt.Header, payload: np.ndarray, jobs: img.TileSequence, lm: LoadedModel,
                  dev: torch.device, threads: int | None, progress: Callable[[int], None] | None,
                  pics: list[img.Picture | None]) -> None:
    """Decode the model-coded images (into pics) with the chain the header names: an integer
    model's with the thread count asked for (any), a float model's with the file's."""
    chain = h.chain
    enc = Encoded(payload, h.plan, h.seed_words, h.stripped, 0, h.direct)
    try:
        with exact.coding(lm.model, dev, (threads or 0) if chain.exact else chain.machine.threads):
            tiles = decode_tiles(lm.model, chain, jobs, h.tile, exact.chain_device(lm.model, dev),
                                 enc, progress, _context(lm, jobs, None))
    except CodingError as e:
        raise DecodeError(_with_env_hint(str(e), chain, dev)) from None
    canvases = {i: np.zeros((h.images[i].height, h.images[i].width, 3), np.uint8)
                for i in jobs.images}
    for k, px in enumerate(tiles):
        t = jobs.where(k)
        img.place_tile(canvases[t.picture], t, px)
    for i, rgb in canvases.items():
        pics[i] = _assemble(h.images[i], rgb)


def _check_decode_threads(machine: Machine, threads: int | None) -> None:
    """Refuse a thread count other than the file's: the network's float results depend on it."""
    check_threads(threads)
    n = machine.threads
    if threads is not None and machine.backend == "cpu" and threads != n:
        raise ThreadsMismatch(
            f"this file (a float model's, format version 2) was made with {n} CPU "
            f"thread{'s' if n != 1 else ''} and decodes only with {n}, not {threads} "
            "(leave out --threads / threads= to use the file's count)")


def _with_env_hint(msg: str, chain: ChainSpec, dev: torch.device) -> str:
    """A failed decode's message, with what in this environment differs from the encoder's."""
    if chain.machine_bound and chain.machine.env_tag == legacy_env_tag(dev) and dev.type == "cpu":
        msg += (" (a float model's file decodes only where the model's float results repeat: the "
                "same torch version and CPU kind, and the same CPU maker, which files this old do "
                "not record; decode it on the kind of machine it was encoded on)")
    elif chain.machine_bound and chain.machine.env_tag != env_tag(dev):
        msg += (" (the file was encoded with a different torch version or CPU/GPU kind or maker, "
                "which changes the model's float results; decode it where it was encoded)")
    have = _codecs.constriction_version()
    if have != _codecs.CONSTRICTION_VERSION:
        msg += (f" (constriction {have} is installed, but mulancodec codes with constriction "
                f"{_codecs.CONSTRICTION_VERSION}: pip install constriction=={_codecs.CONSTRICTION_VERSION})")
    return msg


def decompress_pictures(data: bytes, *, device: "str | torch.device | None" = None,
                        model: "str | os.PathLike | LoadedModel | None" = None,
                        max_pixels: int | None = None, max_work: int | None = None,
                        progress: Callable[[int], None] | None = None,
                        threads: int | None = None) -> list[img.Picture]:
    """Every image of a file, with mode, palette and alpha (see image.Picture).

    Limits on what an untrusted file may ask for: `max_pixels` (default 2^28) and
    `max_work`, decoding work in tile-steps (default container.DEFAULT_MAX_WORK = 2^24,
    about 16,000 tiles at T=1000); 0 means no limit. A float model's file (format version
    1 or 2) decodes with the CPU thread count it was made with, so `threads`, when given,
    must be that count (ThreadsMismatch); an integer model's file decodes with any.
    """
    return _decode(data, device, model, max_pixels, progress, max_work, threads)


def _single(pics: list[img.Picture]) -> img.Picture:
    if len(pics) != 1:
        raise DecodeError(f"this file holds {len(pics)} images: use decompress_many")
    return pics[0]


def decompress(data: bytes, *, device: "str | torch.device | None" = None,
               model: "str | os.PathLike | LoadedModel | None" = None,
               max_pixels: int | None = None, max_work: int | None = None,
               threads: int | None = None) -> np.ndarray:
    """Decode a one-image file to a numpy array shaped like the input was (P: indices)."""
    return _single(_decode(data, device, model, max_pixels, None, max_work, threads)).array()


def decompress_image(data: bytes, *, device: "str | torch.device | None" = None,
                     model: "str | os.PathLike | LoadedModel | None" = None,
                     max_pixels: int | None = None, max_work: int | None = None,
                     threads: int | None = None) -> Image.Image:
    """Decode a one-image file to a PIL image with the original mode (and palette)."""
    return _single(_decode(data, device, model, max_pixels, None, max_work, threads)).to_pil()


def decompress_many(data: bytes, *, device: "str | torch.device | None" = None,
                    model: "str | os.PathLike | LoadedModel | None" = None,
                    max_pixels: int | None = None, max_work: int | None = None,
                    threads: int | None = None) -> list[np.ndarray]:
    """Decode every image of a stream, in order."""
    return [p.array() for p in _decode(data, device, model, max_pixels, None, max_work, threads)]


__all__ = ["compress", "compress_many", "compress_many_with_stats", "compress_with_stats",
           "decompress", "decompress_image", "decompress_many", "decompress_pictures", "read_header", "check_work", "DecodeError", "EncodeError",
           "EncodeStats", "ModelFileError", "ThreadsMismatch"]
