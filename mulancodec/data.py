"""Image sets for training and evaluation: .npz shards (array `x`), folders, globs."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".jpg", ".jpeg", ".webp", ".gif"}


def expand(paths: str | list[str]) -> list[Path]:
    """Files named by paths, folders (their images, sorted) and globs, in order."""
    if isinstance(paths, str):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        hits = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
        if not hits:
            raise FileNotFoundError(f"{p}: no files match")
        for h in hits:
            hp = Path(h)
            if hp.is_dir():
                out += sorted(f for f in hp.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            elif hp.is_file():
                out.append(hp)
            else:
                raise FileNotFoundError(f"{h}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"{paths}: no images found")
    return out


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_images(paths: str | list[str], limit: int | None = None) -> list[np.ndarray]:
    """Every image as an (H, W, 3) uint8 array; .npz files contribute their `x` rows."""
    images: list[np.ndarray] = []
    for f in expand(paths):
        if limit is not None and len(images) >= limit:
            break
        if f.suffix == ".npz":
            with np.load(f) as d:
                if "x" not in d:
                    raise ValueError(f"{f}: no array named 'x'")
                x = d["x"]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"{f}: 'x' must be (N, H, W, 3) uint8, got {x.dtype} {x.shape}")
            take = x if limit is None else x[: limit - len(images)]
            images.extend(take)
        else:
            images.append(load_rgb(f))
    return images[:limit] if limit is not None else images


def load_array(paths: str | list[str], limit: int | None = None) -> np.ndarray:
    """Images of one size stacked to (N, H, W, 3)."""
    imgs = load_images(paths, limit)
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise ValueError(f"images differ in size ({len(shapes)} sizes); use tiles()")
    return np.stack(imgs)


def tiles(images: list[np.ndarray], size: int) -> np.ndarray:
    """Non-overlapping full size x size tiles of each image (edges that do not fill a tile dropped)."""
    out = []
    for im in images:
        H, W = im.shape[:2]
        for i in range(0, H - size + 1, size):
            for j in range(0, W - size + 1, size):
                out.append(im[i:i + size, j:j + size])
    if not out:
        raise ValueError(f"no image is at least {size}x{size}")
    return np.stack(out)


def load_tiles(paths: str | list[str], size: int, limit: int | None = None) -> np.ndarray:
    """(N, size, size, 3): images of exactly this size as they are, larger ones cut into tiles."""
    imgs = load_images(paths, limit)
    if all(im.shape[:2] == (size, size) for im in imgs):
        return np.stack(imgs)
    return tiles(imgs, size)
