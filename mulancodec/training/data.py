"""Image sets for training and evaluation: .npz shards (array `x`), folders, globs.

Training draws random crops (offset and flip) from images of any size; a
context model's crop is its tile plus the margin, with a context mask drawn
from the kinds of plan the codec makes. Evaluation cuts images into the
codec's tiles, with the masks of the nominal plan.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..model.context import nominal_known, random_known, window_pixels
from ..model.mulan import context_channels

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


@dataclass
class TileSet:
    """Tiles to train on or evaluate: pixels, and for a context model their windows."""

    x: np.ndarray  # (N, S, S, 3) uint8
    window: np.ndarray | None = None  # (N, S+2m, S+2m, 3) uint8 (context models)
    known: np.ndarray | None = None  # (N, S+2m, S+2m) bool: what the decoder has there

    def __len__(self) -> int:
        return len(self.x)

    def take(self, sl: slice | np.ndarray) -> "TileSet":
        w = self.window[sl] if self.window is not None else None
        k = self.known[sl] if self.known is not None else None
        return TileSet(self.x[sl], w, k)


def image_tiles(images: list[np.ndarray], size: int, margin: int, limit: int | None = None) -> TileSet:
    """The full size x size tiles of each of the first `limit` images in raster order, with
    their context under the nominal plan when margin > 0 (partial edge tiles are left out)."""
    xs, ws, ks = [], [], []
    for im in images[:limit]:
        H, W = im.shape[:2]
        rows, cols = -(-H // size), -(-W // size)
        for i in range(H // size):
            for j in range(W // size):
                xs.append(im[i * size:(i + 1) * size, j * size:(j + 1) * size])
                if margin:
                    ws.append(window_pixels(im, i, j, size, margin))
                    ks.append(nominal_known(rows, cols, i, j, size, margin, H, W))
    if not xs:
        raise ValueError(f"no image is at least {size}x{size}")
    if not margin:
        return TileSet(np.stack(xs))
    return TileSet(np.stack(xs), np.stack(ws), np.stack(ks))


class RandomCrops:
    """Random crops of images of any size: offsets, flips, quarter turns and context masks
    are a pure function of (seed, step, rank), so a resumed run draws the same batches.

    `rotate` adds a random quarter turn to each crop (with `flip`: all 8 symmetries of the
    square), an augmentation for a training set of a few hundred photos (it did not help
    the photo model in 447 steps: models/photo/MODEL_CARD.md). Without it the draws are
    those of runs made before it existed."""

    def __init__(self, images: list[np.ndarray], size: int, margin: int, seed: int,
                 flip: bool = True, rotate: bool = False) -> None:
        side = size + 2 * margin
        self.images = [im for im in images if min(im.shape[:2]) >= side]
        if not self.images:
            raise ValueError(f"no training image is at least {side}x{side} (tile {size} + "
                             f"context margin {margin} on each side)")
        # each image is drawn in proportion to the crops it holds
        pos = np.array([(im.shape[0] - side + 1) * (im.shape[1] - side + 1) for im in self.images],
                       np.float64)
        self.p = pos / pos.sum()
        self.size, self.margin, self.side, self.seed, self.flip = size, margin, side, seed, flip
        self.rotate = rotate

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int, n: int, rank: int = 0) -> TileSet:
        rng = np.random.default_rng([self.seed, step, rank])
        which = rng.choice(len(self.images), size=n, p=self.p)
        side, m, S = self.side, self.margin, self.size
        crops = np.empty((n, side, side, 3), np.uint8)
        for k, w in enumerate(which):
            im = self.images[w]
            y = int(rng.integers(0, im.shape[0] - side + 1))
            x = int(rng.integers(0, im.shape[1] - side + 1))
            c = im[y:y + side, x:x + side]
            c = c[:, ::-1] if self.flip and rng.random() < 0.5 else c
            crops[k] = np.rot90(c, int(rng.integers(4))) if self.rotate else c
        tiles = np.ascontiguousarray(crops[:, m:m + S, m:m + S])
        if not m:
            return TileSet(tiles)
        known = np.stack([random_known(rng, S, m) for _ in range(n)])
        return TileSet(tiles, crops, known)


def batch_tensors(tiles: TileSet, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B,3,S,S) pixels and the context input (None without context) of a TileSet."""
    x = torch.from_numpy(np.ascontiguousarray(tiles.x)).to(device).permute(0, 3, 1, 2)
    if tiles.window is None or tiles.known is None:
        return x, None
    w = torch.from_numpy(np.ascontiguousarray(tiles.window)).to(device).permute(0, 3, 1, 2)
    k = torch.from_numpy(np.ascontiguousarray(tiles.known)).to(device)[:, None]
    return x, context_channels(w, k)
