"""The zoo: shipped models by name, and the default.

The shipped models are named: ``models/<name>/model.safetensors`` (with its
config.json and MODEL_CARD.md) in a source checkout, or the same under
``<prefix>/share/mulancodec/models`` after pip install. A decoder finds the
model a file was made with by its id among them (`find_shipped`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors import safe_open

ENV_MODEL = "MULANCODEC_MODEL"
# The default for encoding: the photo model, as an integer model, so that a file made
# with the defaults decodes on any machine (format version 3); `photo` is its float model.
DEFAULT_MODEL = "photo-int"
WEIGHTS_NAME = "model.safetensors"


class ModelFileError(Exception):
    """A model file is missing, unreadable or not a mulancodec model."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's metadata (the config, format and model id of a model file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for bad files
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None


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
