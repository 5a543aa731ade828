"""The demo's sample image: a small landscape painted here from fixed pseudo-random numbers.

It is made by this code (no third-party picture is shipped), and it is the same
on every machine: the noise comes from our own splitmix sequence, not from a
library generator whose stream might change between versions.
"""
from __future__ import annotations

import numpy as np

from ..coding.codecs import seed_words


def _noise(shape: tuple[int, int], offset: int) -> np.ndarray:
    n = shape[0] * shape[1]
    w = seed_words(offset + n)[offset:]
    return (w.astype(np.float64) / 2 ** 32).reshape(shape)


def _smooth(a: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        a = (a + np.roll(a, 1, 0) + np.roll(a, -1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 5
    return a


def _fractal(h: int, w: int, offset: int) -> np.ndarray:
    """1/f-like noise: smoothed noise at several scales, summed."""
    out = np.zeros((h, w))
    for octave, passes in enumerate((24, 10, 4, 1)):
        out += _smooth(_noise((h, w), offset + octave * h * w), passes) * (0.5 ** octave)
    return (out - out.min()) / (out.max() - out.min() + 1e-12)


def landscape(height: int = 96, width: int = 128) -> np.ndarray:
    """An (H, W, 3) uint8 landscape: sky, sun, two mountain ranges, a meadow, grain."""
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    sky = np.stack([120 + 90 * y, 160 + 70 * y, 235 - 20 * y], axis=-1) * np.ones((1, width, 1))
    img = sky.copy()
    sun = np.exp(-(((x - 0.75) ** 2) + ((y - 0.22) ** 2)) / 0.004)[..., None]
    img = img * (1 - sun) + np.array([255, 240, 190]) * sun
    ridge_far = 0.45 + 0.12 * _fractal(1, width, 1)[0] - 0.05 * np.sin(x[0] * 7)
    ridge_near = 0.62 + 0.10 * _fractal(1, width, 2)[0] + 0.04 * np.cos(x[0] * 5)
    rock = _fractal(height, width, 3)[..., None]
    far = (y >= ridge_far[None, :])[..., None]
    img = np.where(far, np.array([95, 105, 140]) + 40 * rock, img)
    near = (y >= ridge_near[None, :])[..., None]
    img = np.where(near, np.array([70, 95, 60]) + 50 * rock, img)
    meadow = (y >= 0.8)[..., None]
    grass = _fractal(height, width, 4)[..., None]
    img = np.where(meadow, np.array([80, 140, 60]) + 70 * grass * np.array([0.6, 1.0, 0.4]), img)
    grain = (_noise((height, width), 5 * height * width) - 0.5)[..., None] * 10
    return np.clip(np.rint(img + grain), 0, 255).astype(np.uint8)


def photo(size: int = 192) -> tuple[np.ndarray | None, str]:
    """A real photograph for the demo, when a dependency ships one: the centre of the
    Grace Hopper portrait in matplotlib's sample data (installed with the `bench` and
    `test` extras). Returns (None, why) when it is not installed."""
    try:
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any failure means: no photograph at hand
        return None, f"matplotlib's sample photograph is not available ({type(e).__name__})"
    h, w = rgb.shape[:2]
    top, left = max(0, (h - size) // 3), max(0, (w - size) // 2)
    crop = np.ascontiguousarray(rgb[top:top + size, left:left + size])
    return crop, (f"a {crop.shape[1]}x{crop.shape[0]} crop of the Grace Hopper portrait from "
                  "matplotlib's sample data (a JPEG-decoded photograph)")
