"""Model files: safetensors weights with the config embedded, and a content hash.

A model is one ``.safetensors`` file (or one packed with xz: `packed`) whose metadata
holds the JSON model config, so nothing else is needed to rebuild it; nothing is ever
unpickled. The model id is a hash of the config and the tensors, so a file coded
with one model is never decoded with another. An integer model (`exact.integer`,
made by `quantize`; it codes format version 3, which decodes on any machine) is such
a file too, of format ``mulancodec-integer-model``, with its integer scheme in the
metadata, its tensors as they are, and an id of its own.

Which file a model name means is `zoo`'s job; this module reads and writes the files
and builds the model a file's format names (`FORMATS`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import packed
from .exact.integer import SCHEMES, IntegerMuLAN
from .exact.intops import QConv
from .model.configs import ModelConfig
from .model.mulan import MuLAN
from .zoo import ModelFileError, read_metadata, resolve_model_path

FLOAT_FORMAT, INTEGER_FORMAT = "mulancodec-model", "mulancodec-integer-model"


@dataclass(frozen=True)
class LoadedModel:
    model: MuLAN | IntegerMuLAN
    config: ModelConfig
    model_id: str  # 16 hex digits
    path: Path
    meta: dict[str, str]


def model_id(config_json: str, state: dict[str, torch.Tensor]) -> str:
    """A hash of the stored config text and the float32 values of every tensor.

    The config is hashed as stored in the file, so adding config fields in a later
    version of this code does not change the id of an existing model file.
    """
    h = hashlib.sha256()
    h.update(config_json.encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(model: MuLAN, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
               extra: dict[str, str] | None = None) -> str:
    """Write weights (cast to `dtype`) with the config in the metadata; returns the model id."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    config_json = json.dumps(model.cfg.to_dict(), sort_keys=True)
    mid = model_id(config_json, state)
    meta = {"format": "mulancodec-model", "config": config_json, "model_id": mid}
    _write(state, path, {**meta, **(extra or {})})
    return mid


def _write(state: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict[str, str]) -> None:
    """safetensors file written whole or not at all (a temporary file, then a rename); packed
    with xz when its name ends in .xz."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if packed.is_packed(path):
        tmp.write_bytes(packed.pack(state, meta))
    else:
        save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def integer_model_id(config_json: str, scheme: str, state: dict[str, torch.Tensor]) -> str:
    """A hash of an integer model's config, scheme and tensors (raw bytes, dtype and all)."""
    h = hashlib.sha256()
    h.update(config_json.encode())
    h.update(f"scheme {scheme}".encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_integer_model(model: IntegerMuLAN, path: str | os.PathLike, float_model_id: str,
                       extra: dict[str, str] | None = None) -> str:
    """Write an integer model (tensors as they are); returns its model id."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config_json = json.dumps(model.cfg.to_dict(), sort_keys=True)
    mid = integer_model_id(config_json, str(model.scheme), state)
    meta = {"format": INTEGER_FORMAT, "config": config_json, "scheme": str(model.scheme),
            "float_model_id": float_model_id, "model_id": mid}
    _write(state, path, {**meta, **(extra or {})})
    return mid


def _read_checked(p: Path, build: Callable[[], torch.nn.Module], dtypes: bool) -> dict[str, torch.Tensor]:
    """The file's tensors, after checking their names and shapes (and dtypes) against the
    module `build` makes on the meta device (no memory): a hostile config cannot make us
    allocate huge weights."""
    if packed.is_packed(p):
        try:
            _, found, data = packed.read(p)
            _check_names(p, found, build, dtypes)
            return packed.load(p, data)
        except packed.PackedError as e:
            raise ModelFileError(str(e)) from None
    with safe_open(str(p), framework="pt") as f:
        found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
        _check_names(p, found, build, dtypes)
        return {k: f.get_tensor(k) for k in f.keys()}


def _check_names(p: Path, found: dict[str, tuple[tuple[int, ...], str]], build: Callable[[], torch.nn.Module],
                 dtypes: bool) -> None:
    """ModelFileError unless the file's tensors (name -> shape, dtype) are those of `build`'s module."""
    try:
        with torch.device("meta"):
            state = build().state_dict()
    except Exception as e:  # noqa: BLE001 - any construction failure means a bad config
        raise ModelFileError(f"{p}: bad model config ({e})") from None
    expected = {k: (tuple(v.shape), _ST_DTYPES[v.dtype]) for k, v in state.items()}
    if not dtypes:
        expected = {k: (v[0], found.get(k, (None, None))[1]) for k, v in expected.items()}
    if found != expected:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        wrong = [k for k in expected if k in found and found[k] != expected[k]][:3]
        raise ModelFileError(f"{p}: weights do not match the config (missing {missing}, "
                             f"unexpected {extra}, wrong shape or type {wrong})")


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int16: "I16", torch.int32: "I32"}


def _config(p: Path, meta: dict[str, str]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{p}: bad model config ({e})") from None


def _load_integer(p: Path, meta: dict[str, str], device: str | torch.device) -> LoadedModel:
    cfg = _config(p, meta)
    known = {str(s): s for s in SCHEMES}
    if meta.get("scheme") not in known:
        raise ModelFileError(f"{p}: integer scheme {meta.get('scheme')!r} is not one of this "
                             f"mulancodec's ({', '.join(known)}); upgrade mulancodec")
    scheme = known[meta["scheme"]]
    state = _read_checked(p, lambda: IntegerMuLAN(cfg, scheme), dtypes=True)
    model = IntegerMuLAN(cfg, scheme)
    model.load_state_dict(state, strict=True)
    if not all(m.exact() for m in model.modules() if isinstance(m, QConv)):
        raise ModelFileError(f"{p}: weights beyond what exact integer sums allow")
    model.eval().requires_grad_(False).to(device).prepare()
    mid = integer_model_id(meta["config"], meta["scheme"], state)
    return LoadedModel(model, cfg, mid, p, meta)


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file (or a directory holding one); None means the shipped default."""
    p = resolve_model_path(path)
    meta = read_metadata(p)
    if meta.get("format") == INTEGER_FORMAT and "config" in meta:
        return _load_integer(p, meta, device)
    if meta.get("format") != FLOAT_FORMAT or "config" not in meta:
        raise ModelFileError(f"{p}: not a mulancodec model (no embedded config)")
    cfg = _config(p, meta)
    state = {k: v.float() for k, v in _read_checked(p, lambda: MuLAN(cfg), dtypes=False).items()}
    model = MuLAN(cfg)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False).to(device)
    return LoadedModel(model, cfg, model_id(meta["config"], state), p, meta)
