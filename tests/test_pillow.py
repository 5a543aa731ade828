"""Pillow plugin: Image.open / Image.save of .mlc with the original mode."""
import numpy as np
from conftest import smooth_image
from PIL import Image

import mulancodec  # noqa: F401  (registers the plugin)


def test_save_and_open(tmp_path, use_tiny_model, rng):
    for mode, arr in [("RGB", smooth_image(rng, 20, 25, 3)), ("L", smooth_image(rng, 9, 14, 1)[..., 0]),
                      ("RGBA", smooth_image(rng, 11, 6, 4))]:
        im = Image.fromarray(arr, mode)
        p = tmp_path / f"{mode}.mlc"
        im.save(p, steps=2, fallback=False)
        back = Image.open(p)
        assert back.format == "MLC" and back.mode == mode and back.size == im.size
        assert np.array_equal(np.asarray(back), arr)


def test_palette_and_format_keyword(tmp_path, use_tiny_model, rng):
    im = Image.fromarray(smooth_image(rng, 15, 15, 3)).convert("P", palette=Image.ADAPTIVE, colors=8)
    p = tmp_path / "x.bin"
    im.save(p, format="MLC", steps=2)
    back = Image.open(p)
    assert back.mode == "P" and back.getpalette() == im.getpalette()
    assert np.array_equal(np.asarray(back), np.asarray(im))


def test_stream_frames(tmp_path, use_tiny_model, rng):
    arrs = [smooth_image(rng, 8, 8, 3), smooth_image(rng, 5, 7, 3)]
    (tmp_path / "s.mlc").write_bytes(mulancodec.compress_many(arrs, steps=2))
    im = Image.open(tmp_path / "s.mlc")
    assert im.n_frames == 2
    assert np.array_equal(np.asarray(im), arrs[0])
    im.seek(1)
    assert im.size == (7, 5) and np.array_equal(np.asarray(im), arrs[1])
