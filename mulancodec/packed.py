"""Model files packed with xz (``model.safetensors.xz``): the same safetensors bytes, smaller.

Every shipped generation stays installed so that its files decode, so the zoo only grows;
every shipped model is packed: an integer model's weights (at most 9 bits in 16-bit
words) pack to about 53% of their file, a float model's to 84% (`WORDS`). A packed
file is read by unpacking it whole in memory, never beyond MAX_UNPACKED bytes (a hostile
file cannot make us allocate more), then reading it as safetensors bytes: the tensors,
their names and the model id are the unpacked file's, bit for bit (xz's own check,
CRC-64, guards the bytes). Nothing is unpickled.
"""
from __future__ import annotations

import json
import lzma
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

SUFFIX = ".xz"
MAX_UNPACKED = 256 * 2 ** 20  # far above any model we ship (5 MB)
MAX_HEADER = 2 ** 20  # a safetensors header of ours is a few kB


class PackedError(ValueError):
    """A packed model file that does not unpack to a safetensors file within the bounds."""


def is_packed(path: str | os.PathLike) -> bool:
    return str(path).endswith(SUFFIX)


def _unpack(path: Path, want: int) -> bytes:
    """The first `want` unpacked bytes (all of them if fewer), never more than MAX_UNPACKED."""
    try:
        size = path.stat().st_size
        if size > MAX_UNPACKED:
            raise PackedError(f"{path}: larger than any model file ({size} bytes)")
        pending = path.read_bytes()
    except OSError as e:
        raise PackedError(f"{path}: {e.strerror or e}") from None
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = bytearray()
    try:
        while len(out) < want and not dec.eof:
            chunk = dec.decompress(pending, max_length=min(want, MAX_UNPACKED + 1) - len(out))
            pending = b""
            if not chunk and dec.needs_input:
                raise PackedError(f"{path}: truncated xz data")
            out += chunk
            if len(out) > MAX_UNPACKED:
                raise PackedError(f"{path}: unpacks to more than {MAX_UNPACKED} bytes")
    except lzma.LZMAError as e:
        raise PackedError(f"{path}: not xz data ({e})") from None
    return bytes(out)


def _header_len(path: Path, head: bytes) -> int:
    if len(head) < 8:
        raise PackedError(f"{path}: too short for a safetensors file")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER:
        raise PackedError(f"{path}: safetensors header of {n} bytes")
    return n


Table = dict[str, tuple[tuple[int, ...], str]]  # tensor name -> (shape, safetensors dtype)


def _table(path: Path, data: bytes) -> tuple[dict[str, str], Table]:
    """(metadata, tensor table) from safetensors bytes that hold at least the header."""
    n = _header_len(path, data)
    if 8 + n > len(data):
        raise PackedError(f"{path}: truncated safetensors data")
    try:
        h = json.loads(data[8:8 + n])
        meta = h.pop("__metadata__", None) or {}
        return dict(meta), {k: (tuple(int(s) for s in v["shape"]), str(v["dtype"])) for k, v in h.items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise PackedError(f"{path}: bad safetensors header") from None


def header(path: str | os.PathLike) -> tuple[dict[str, str], Table]:
    """(metadata, tensor table) of a packed file, unpacking only its header."""
    path = Path(path)
    return _table(path, _unpack(path, 8 + _header_len(path, _unpack(path, 8))))


def read(path: str | os.PathLike) -> tuple[dict[str, str], Table, bytes]:
    """(metadata, tensor table, the safetensors bytes) of a packed file, unpacked whole
    (within MAX_UNPACKED) and read once; `load` makes the tensors of the bytes."""
    path = Path(path)
    data = _unpack(path, MAX_UNPACKED + 1)
    return (*_table(path, data), data)


def load(path: str | os.PathLike, data: bytes) -> dict[str, Any]:
    """The tensors of a packed file's bytes (`read`'s)."""
    try:
        return load_bytes(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad bytes
        raise PackedError(f"{path}: not safetensors data ({e})") from None


# LZMA2's literal coder told where a byte sits in its 4-byte word (lp = pb = 2): weights
# are 4-byte floats or 16-bit integers in 4-byte-aligned tensors, so the byte's position
# predicts it. Measured on the shipped models: a float model packs to 84% of its file
# instead of 92% with xz's default (lc 3, lp 0), an integer model to 53% instead of 57%.
# Both are plain xz streams: any xz reads them, and `read` needs no option.
WORDS = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 2, "lp": 2, "pb": 2}
DEFAULT = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}


def pack_bytes(raw: bytes) -> bytes:
    """Safetensors bytes xz-compressed (preset 9e), whichever of the word-aligned and the
    default literal coding is smaller."""
    return min((lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=[f])
                for f in (WORDS, DEFAULT)), key=len)


def pack(state: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A packed file's bytes: the safetensors file of `state`, xz-compressed (`pack_bytes`)."""
    return pack_bytes(save_bytes(state, metadata=metadata))


def pack_file(src: str | os.PathLike) -> Path:
    """Pack a model file beside itself (``<src>.xz``), or repack a packed one in place.
    The packed file unpacks to the very bytes of the model file (checked before it
    replaces anything), so its tensors, metadata and model id are the same."""
    src = Path(src)
    dst, raw = (src, read(src)[2]) if is_packed(src) else (Path(str(src) + SUFFIX), src.read_bytes())
    load(src, raw)  # a whole safetensors file, every tensor readable
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(pack_bytes(raw))
    if read(tmp)[2] != raw:
        tmp.unlink()
        raise PackedError(f"{src}: the packed file does not read back the same")
    os.replace(tmp, dst)
    return dst
