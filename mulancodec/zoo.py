"""The zoo: shipped models by name, and the default.

The shipped models are named: ``models/<name>/model.safetensors``, or packed as
``model.safetensors.xz`` (`packed`), with its config.json and MODEL_CARD.md, in a
source checkout, or the same under ``<prefix>/share/mulancodec/models`` after pip
install. A decoder finds the model a file was made with by its id among them
(`find_shipped`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors import safe_open

from . import packed

ENV_MODEL = "MULANCODEC_MODEL"
# The default for encoding: the photo model, as an integer model, so that a file made
# with the defaults decodes on any machine (format version 3); `photo` is its float model.
DEFAULT_MODEL = "photo-int"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, WEIGHTS_NAME + packed.SUFFIX)  # a model folder holds one of these


class ModelFileError(Exception):
    """A model file is missing, unreadable or not a mulancodec model."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's metadata (the config, format and model id of a model file),
    packed or not."""
    if packed.is_packed(path):
        try:
            return packed.header(path)[0]
        except packed.PackedError as e:
            raise ModelFileError(str(e)) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for bad files
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None


def _zoo_roots() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here.parent / "models",  # a source checkout or editable install
            Path(sys.prefix) / "share" / "mulancodec" / "models"]  # pip install


def weights_in(folder: Path) -> Path | None:
    """The model file in a model folder (plain or packed), if any."""
    return next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)


def shipped_models() -> dict[str, Path]:
    """Every installed named model: name -> weights file (a source checkout's first)."""
    found: dict[str, Path] = {}
    for root in _zoo_roots():
        if root.is_dir():
            for d in sorted(root.iterdir()):
                f = weights_in(d) if d.is_dir() else None
                if f is not None and d.name not in found:
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
        f = weights_in(p)
        if f is None:
            raise ModelFileError(f"{p}: no {' or '.join(WEIGHTS_NAMES)} in this directory")
        return f
    if not p.is_file():
        names = ", ".join(zoo) or "none installed"
        raise ModelFileError(f"{path}: no such model name or file (shipped models: {names})")
    return p
