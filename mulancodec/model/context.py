"""Which pixels around a tile the decoder already has: the context a tile is coded with.

The decoder runs batches in reverse coding order, so when it decodes a tile it
has every pixel of the tiles coded in later batches. A tile's context is the
window of `margin` pixels around it, with a mask of those known pixels. The
same function gives the codec its masks (from the stored batch plan), the
evaluation its masks (from a nominal plan) and training its masks (from random
plans), so the model is trained on exactly the kind of masks it is coded with.
"""
from __future__ import annotations

import numpy as np

# The nominal plan for evaluation: batches of one row of tiles, at most this many
# (what the CPU encoder reaches after its first few batches: a context model's batch
# ends with its row, so that each tile sees the whole row below).
NOMINAL_BATCH = 16


def known_window(order: np.ndarray, i: int, j: int, threshold: int, size: int, margin: int,
                 height: int, width: int) -> np.ndarray:
    """(S+2m, S+2m) bool: the pixels of tile (i, j)'s window the decoder has.

    order: (rows, cols) coding position of every tile of the image. The tile's batch
    ends at position `threshold`: a pixel is known iff it lies inside the image and
    its tile's position is at least `threshold` (coded later, so decoded earlier).
    """
    S, m = size, margin
    r = np.arange(i * S - m, (i + 1) * S + m)
    c = np.arange(j * S - m, (j + 1) * S + m)
    r_in, c_in = (r >= 0) & (r < height), (c >= 0) & (c < width)
    tr = np.clip(r // S, 0, order.shape[0] - 1)
    tc = np.clip(c // S, 0, order.shape[1] - 1)
    return r_in[:, None] & c_in[None, :] & (order[tr][:, tc] >= threshold)


def window_pixels(image: np.ndarray, i: int, j: int, size: int, margin: int) -> np.ndarray:
    """(S+2m, S+2m, C) pixels of tile (i, j)'s window; zero outside the image."""
    S, m = size, margin
    H, W = image.shape[:2]
    out = np.zeros((S + 2 * m, S + 2 * m) + image.shape[2:], image.dtype)
    r0, c0 = i * S - m, j * S - m
    rs, re = max(0, r0), min(H, r0 + S + 2 * m)
    cs, ce = max(0, c0), min(W, c0 + S + 2 * m)
    if rs < re and cs < ce:
        out[rs - r0:re - r0, cs - c0:ce - c0] = image[rs:re, cs:ce]
    return out


def nominal_known(rows: int, cols: int, i: int, j: int, size: int, margin: int, height: int,
                  width: int, batch: int = NOMINAL_BATCH) -> np.ndarray:
    """known_window under the nominal plan: each row of tiles in batches of at most `batch`."""
    b = min(batch, cols)
    end = i * cols + min(cols, (j // b + 1) * b)
    order = np.arange(rows * cols).reshape(rows, cols)
    return known_window(order, i, j, end, size, margin, height, width)


def random_known(rng: np.random.Generator, size: int, margin: int) -> np.ndarray:
    """A context mask drawn from the kinds of plan the codec makes (for training).

    A random image of 1..16 x 1..24 tiles (its last row and column possibly partial),
    a random batch size (batches end with their row), a few directly coded leading
    tiles, a random tile of it.
    """
    S = size
    rows, cols = int(rng.integers(1, 17)), int(rng.integers(1, 25))
    height = rows * S - (int(rng.integers(0, S // 2)) if rows > 1 else 0)
    width = cols * S - (int(rng.integers(0, S // 2)) if cols > 1 else 0)
    batch = min(cols, int(rng.choice([1, 2, 4, 8, 16, 16, 16, 16])))
    direct = min(int(rng.integers(0, 4)), rows * cols - 1)
    i, j = int(rng.integers(0, rows)), int(rng.integers(0, cols))
    k = max(i * cols + j, direct)
    # batches grow in a row from the directly coded tiles and end with the row
    start = max(i * cols, direct)
    end = min((i + 1) * cols, start + ((k - start) // batch + 1) * batch)
    order = np.arange(rows * cols).reshape(rows, cols)
    return known_window(order, i, j, end, S, margin, height, width)
