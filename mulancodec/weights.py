"""Model files: safetensors weights with the config embedded, a content hash, and the zoo.

A model is one ``.safetensors`` file whose metadata holds the JSON model config,
so nothing else is needed to rebuild it; nothing is ever unpickled. The model id
is a hash of the config and the tensors, so a file coded with one model is
never decoded with another. An integer model (`model.integer`, made by
`quantize`; it codes format version 3, which decodes on any machine) is such a
file too, of format ``mulancodec-integer-model``, with its integer scheme in the
metadata, its tensors as they are, and an id of its own.

The shipped models are named: ``models/<name>/model.safetensors`` (with its
config.json and MODEL_CARD.md) in a source checkout, or the same under
``<prefix>/share/mulancodec/models`` after pip install. A decoder finds the
model a file was made with by its id among them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model.configs import ModelConfig
from .model.integer import SCHEMES, IntegerMuLAN
from .model.intops import QConv
from .model.mulan import MuLAN

ENV_MODEL = "MULANCODEC_MODEL"
# The default for encoding: the photo model, as an integer model, so that a file made
# with the defaults decodes on any machine (format version 3); `photo` is its float model.
DEFAULT_MODEL = "photo-int"
WEIGHTS_NAME = "model.safetensors"
FLOAT_FORMAT, INTEGER_FORMAT = "mulancodec-model", "mulancodec-integer-model"


class ModelFileError(Exception):
    """A model file is missing, unreadable or not a mulancodec model."""


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
    """safetensors file written whole or not at all (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for bad files
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None


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
    with safe_open(str(p), framework="pt") as f:
        found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
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
        return {k: f.get_tensor(k) for k in f.keys()}


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


def _zoo_roots() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here.parent / "models",  # a source checkout or editable install
            Path(sys.prefix) / "share" / "mulancodec" / "models"]  # pip install


def shipped_models() -> dict[str, Path]:
    """Every installed named model: name -> weights file (a source checkout's first)."""
    found: dict[str, Path] = {}
    for root in _zoo_roots():
        if root.is_dir():
            for d in sorted(root.iterdir()):
                f = d / WEIGHTS_NAME
                if f.is_file() and d.name not in found:
                    found[d.name] = f
    return found


def find_shipped(mid: str) -> Path | None:
    """The installed model whose id is `mid` (as its file's metadata states), if any."""
    for path in shipped_models().values():
        try:
            if read_metadata(path).get("model_id") == mid:
                return path
        except ModelFileError:
            continue
    return None


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """A shipped model's name or a path > $MULANCODEC_MODEL > the default; a clear error otherwise."""
    if path is None:
        path = os.environ.get(ENV_MODEL) or DEFAULT_MODEL
    zoo = shipped_models()
    if str(path) in zoo:
        return zoo[str(path)]
    p = Path(path)
    if p.is_dir():
        if (p / WEIGHTS_NAME).is_file():
            return p / WEIGHTS_NAME
        raise ModelFileError(f"{p}: no {WEIGHTS_NAME} in this directory")
    if not p.is_file():
        names = ", ".join(zoo) or "none installed"
        raise ModelFileError(f"{path}: no such model name or file (shipped models: {names})")
    return p
