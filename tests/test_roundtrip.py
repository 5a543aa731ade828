"""Exact round trips for every mode and many sizes, streams, determinism, and refusals."""
import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

import mulancodec as mc
from mulancodec.api import compress_with_stats
from mulancodec.coding import container
from mulancodec.coding.reader import read_file

SIZES = [(1, 1), (7, 13), (32, 32), (45, 70)]


def make(rng, mode, h, w):
    if mode == "L":
        return smooth_image(rng, h, w, 1)[..., 0]
    if mode == "RGB":
        return smooth_image(rng, h, w, 3)
    if mode == "RGBA":
        a = smooth_image(rng, h, w, 4)
        a[..., 3] = np.where(rng.random((h, w)) < 0.3, 0, 255)
        return a
    im = Image.fromarray(smooth_image(rng, h, w, 3)).convert("P", palette=Image.ADAPTIVE, colors=16)
    return im


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_round_trip(mode, size, tiny_model_path, rng):
    src = make(rng, mode, *size)
    data = mc.compress(src, model=tiny_model_path, steps=3, fallback=False)
    h = mc.read_header(data)
    assert h.images[0].method == container.METHOD_MODEL
    n_tiles = container.tiles_in(h.images[0], h.tile)
    assert (h.direct >= 1) == (n_tiles > 1) and sum(h.plan) + h.direct == n_tiles and h.plan
    if mode == "P":
        back = mc.decompress_image(data, model=tiny_model_path)
        assert back.mode == "P" and back.size == src.size
        assert np.array_equal(np.asarray(back), np.asarray(src))
        assert back.getpalette() == src.getpalette()
    else:
        back = mc.decompress(data, model=tiny_model_path)
        assert back.dtype == np.uint8 and back.shape == src.shape
        assert np.array_equal(back, src)
        assert mc.decompress_image(data, model=tiny_model_path).mode == mode


def test_palette_with_duplicate_colours_and_transparency(tiny_model_path, rng):
    idx = rng.integers(0, 6, (9, 11)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([10, 20, 30] * 2 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 250, 0, 0])  # 0 and 1 share a colour
    im.info["transparency"] = 4
    data = mc.compress(im, model=tiny_model_path, steps=2, fallback=False)
    assert mc.read_header(data).images[0].method == container.METHOD_EMBED  # colours not invertible
    back = mc.decompress_image(data, model=tiny_model_path)
    assert np.array_equal(np.asarray(back), idx) and back.info.get("transparency") == 4


def test_la_mode(tiny_model_path, rng):
    a = smooth_image(rng, 10, 12, 2)
    data = mc.compress(a, model=tiny_model_path, steps=2, fallback=False)
    assert np.array_equal(mc.decompress(data, model=tiny_model_path), a)


def test_stream_mode(tiny_model_path, rng):
    imgs = [make(rng, m, h, w) for m, (h, w) in zip(["RGB", "L", "RGBA", "RGB", "P"],
                                                    [(16, 16), (5, 40), (17, 3), (33, 20), (8, 8)])]
    data = mc.compress_many(imgs, model=tiny_model_path, steps=3)
    out = mc.decompress_pictures(data, model=tiny_model_path)
    assert len(out) == len(imgs)
    for a, b in zip(imgs, out):
        assert np.array_equal(np.asarray(a), b.array())
    with pytest.raises(mc.DecodeError, match="decompress_many"):
        mc.decompress(data, model=tiny_model_path)


def test_stream_pays_the_start_up_cost_once(tiny_model_path, rng):
    imgs = [smooth_image(rng, 16, 16, 3) for _ in range(6)]
    one = [compress_with_stats(a, model=tiny_model_path, steps=3, fallback=False)[1] for a in imgs]
    stream = mc.compress_many(imgs, model=tiny_model_path, steps=3)
    assert len(stream) < sum(s.bytes for s in one)
    assert all(s.first_batch_bits > 0 for s in one)


def test_encoding_is_deterministic(tiny_model_path, rng):
    a = smooth_image(rng, 20, 30, 3)
    assert mc.compress(a, model=tiny_model_path, steps=3) == mc.compress(a, model=tiny_model_path, steps=3)


def test_fallback_picks_the_smaller_file(tiny_model_path, rng):
    a = smooth_image(rng, 16, 16, 3)
    bb = mc.compress(a, model=tiny_model_path, steps=3, fallback=False)
    best = mc.compress(a, model=tiny_model_path, steps=3)
    assert len(best) <= len(bb)
    assert np.array_equal(mc.decompress(best, model=tiny_model_path), a)


def test_another_model_is_refused(tiny_model_path, other_model_path, rng):
    data = mc.compress(smooth_image(rng, 8, 8, 3), model=tiny_model_path, steps=2, fallback=False)
    with pytest.raises(mc.DecodeError, match="made with model"):
        mc.decompress(data, model=other_model_path)


def test_header_corruption_is_refused(tiny_model_path, rng):
    data = bytearray(mc.compress(smooth_image(rng, 8, 8, 3), model=tiny_model_path, steps=2, fallback=False))
    for pos in (4, 10, 20):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        with pytest.raises((mc.FormatError, mc.DecodeError)):
            mc.decompress(bytes(bad), model=tiny_model_path)


def test_payload_corruption_never_returns_wrong_pixels(tiny_model_path, rng):
    """Rewrite the file (valid CRCs) around flipped payload bits: decoding must still refuse."""
    a = smooth_image(rng, 16, 16, 3)
    data = mc.compress(a, model=tiny_model_path, steps=3, fallback=False)
    h, words = read_file(data)
    for i in (0, len(words) // 2, len(words) - 2):
        w = words.copy()
        w[i] ^= np.uint32(1 << 7)
        forged = container.write(h, w)
        with pytest.raises(mc.DecodeError):
            mc.decompress(forged, model=tiny_model_path)


def test_unsupported_inputs(tiny_model_path):
    with pytest.raises(mc.ImageError, match="uint8"):
        mc.compress(np.zeros((4, 4), np.uint16), model=tiny_model_path)
    with pytest.raises(mc.ImageError, match="mode"):
        mc.compress(Image.new("CMYK", (4, 4)), model=tiny_model_path)
    with pytest.raises(mc.ImageError, match="zero size"):
        mc.compress(np.zeros((0, 4, 3), np.uint8), model=tiny_model_path)
    with pytest.raises(mc.ImageError, match="limit"):
        mc.compress(np.zeros((100, 100, 3), np.uint8), model=tiny_model_path, max_pixels=5000)
    with pytest.raises(mc.ModelFileError):
        mc.compress(np.zeros((4, 4, 3), np.uint8), model="/nonexistent/model.safetensors")


@pytest.mark.parametrize("kappa", [0.9, 0.3, 1 / 3])
def test_chain_parameters_round_trip_through_the_header(tiny_model_path, rng, kappa):
    """The header stores kappa, window and latent grid as float32; the encoder must code with
    exactly the values the decoder will read back (kappa = 0.9 used to fail every decode)."""
    from mulancodec.coding.bitsback import ChainSpec

    a = smooth_image(rng, 8, 8, 3)
    spec = ChainSpec(steps=2, kappa=kappa, window=11.7, latent_delta=0.003)
    data, _ = compress_with_stats(a, model=tiny_model_path, fallback=False, _spec=spec)
    h = mc.read_header(data)
    assert h.kappa == np.float32(kappa) and h.window == np.float32(11.7)
    assert np.array_equal(mc.decompress(data, model=tiny_model_path), a)


def test_chain_parameters_a_reader_would_refuse_are_not_encoded(tiny_model_path, rng):
    from mulancodec.coding.bitsback import ChainSpec

    with pytest.raises(mc.EncodeError, match="kappa"):
        compress_with_stats(smooth_image(rng, 4, 4, 3), model=tiny_model_path, fallback=False,
                            _spec=ChainSpec(steps=2, kappa=100.0))
