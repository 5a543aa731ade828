"""What a header can make a reader do: parse in bounded time and memory, and refuse to start
decoding work (tiles x steps) over a limit.

A header is a few bytes; it can name 2^26 tiles in run-length form or T = 100,000 steps.
Reading must not expand what it names (the batch plan stays run-length encoded), and
decoding refuses, before it loads a model or builds a tile, a file that declares more
tile-steps than the work limit (`max_work`, `--max-work`, `pillow_plugin.MAX_WORK`).
"""
from __future__ import annotations

import io
import re
import struct
import time
import tracemalloc

import mlc_mutants as mm
import numpy as np
import pytest
from PIL import Image

import mulancodec as mc
from mulancodec.coding import container as fmt
from mulancodec.coding.reader import read_file


def cost(fn) -> tuple[float, int]:
    """(seconds, peak traced bytes) of fn() (a watchdog stops it after 20 s)."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with mm.time_limit(20):
            fn()
        return time.monotonic() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def plan_bomb() -> bytes:
    """A valid file of under 100 bytes: tile 1, one 8192x8192 image (2^26 tiles), coded as four
    plan runs of 2^24 one-tile batches (the run-length form the format stores)."""
    hb = bytes(8) + bytes([0, 0]) + mm.varint(1) + struct.pack("<I", 0) + mm.varint(1)
    hb += struct.pack("<fff", 1.0, 12.0, 1 / 256) + mm.varint(1) + mm.varint(1)
    hb += fmt._image_bytes(fmt.ImageRecord("RGB", 8192, 8192)) + mm.varint(0)  # no names
    hb += mm.varint(0)  # no metadata items (version 2)
    hb += mm.varint(4) + (mm.varint(1) + mm.varint(1 << 24)) * 4 + mm.varint(0)  # plan, direct
    hb += mm.varint(1) + mm.varint(0) + bytes(8)  # seed, stripped, checksum
    return mm.frame(hb, b"")


def test_the_plan_bomb_is_a_valid_small_file():
    data = plan_bomb()
    assert len(data) < 100
    h = read_file(data, 0)[0]
    assert h.tile == 1 and fmt.tiles_in(h.images[0], 1) == 1 << 26
    assert len(h.plan) == 1 << 26 and h.plan[0] == 1 and h.plan[-1] == 1


@pytest.mark.parametrize("reader", ["container.read", "read_header", "Image.open"])
def test_reading_a_huge_plan_is_cheap(reader):
    data = plan_bomb()
    fn = {"container.read": lambda: read_file(data, None),
          "read_header": lambda: mc.read_header(data),
          "Image.open": lambda: Image.open(io.BytesIO(data)).size}[reader]
    seconds, peak = cost(fn)
    assert seconds < 1 and peak < 50 << 20, f"{reader}: {seconds:.1f} s, {peak / 2**20:.0f} MB"


def test_plan_is_a_lazy_sequence_of_batch_sizes():
    sizes = [1, 1, 2, 2, 2, 4, 1]
    p = fmt.Plan.of(sizes)
    assert p.runs == ((1, 2), (2, 3), (4, 1), (1, 1))
    assert len(p) == 7 and list(p) == sizes and list(reversed(p)) == sizes[::-1]
    assert [p[i] for i in range(-7, 7)] == sizes + sizes and p[2:5] == [2, 2, 2]
    assert p == sizes and p != sizes[:-1] and p == fmt.Plan([(1, 1), (1, 1), (2, 3), (4, 1), (1, 1)])
    assert p.tiles() == sum(sizes) and not fmt.Plan()
    with pytest.raises(IndexError):
        p[7]
    h = read_file(plan_bomb(), 0)[0]  # write keeps the runs as they are
    assert read_file(fmt.write(h, read_file(plan_bomb(), 0)[1]), 0)[0].plan.runs == ((1, 1 << 24),) * 4


# -- the work limit -------------------------------------------------------------------------

LIMIT_WORDS = "work limit.*max_work.*--max-work"


@pytest.fixture(scope="module")
def rgb(corpus):
    return corpus[0]  # 8x8 RGB, one tile of the tiny model, T=2: 2 tile-steps


def test_default_work_limit_fits_a_big_photo_at_t1000():
    """4096x4096 in 32x32 tiles at T=1000 decodes under the default; 2^26 tiles do not."""
    assert (4096 // 32) ** 2 * 1000 <= fmt.DEFAULT_MAX_WORK < (1 << 26)
    h = read_file(plan_bomb(), 0)[0]
    assert fmt.declared_work(h) == 1 << 26


def _hostile(rgb: bytes) -> dict[str, bytes]:
    tiles = (4096 // 16) ** 2  # the tiny model's 16x16 tiles
    return {"4096x4096 at T=1000": mm.rewrite(rgb, images=[fmt.ImageRecord("RGB", 4096, 4096)],
                                              plan=[1024] * (tiles // 1024), steps=1000),
            "2^26 tiles in four plan runs": plan_bomb()}


def refused(fn) -> tuple[str | None, float, int]:
    """(the DecodeError's message or None, seconds, peak traced bytes) of fn()."""
    msgs: list[str] = []

    def run() -> None:
        try:
            fn()
        except mc.DecodeError as e:
            msgs.append(str(e))

    seconds, peak = cost(run)
    return (msgs[0] if msgs else None), seconds, peak


@pytest.mark.parametrize("case", ["4096x4096 at T=1000", "2^26 tiles in four plan runs"])
@pytest.mark.parametrize("fn", ["decompress_pictures", "decompress", "decompress_image",
                                "decompress_many"])
def test_hostile_work_is_refused_by_default_quickly_and_cheaply(rgb, lm, case, fn):
    data = _hostile(rgb.data)[case]
    msg, seconds, peak = refused(lambda: getattr(mc, fn)(data, model=lm))
    assert msg is not None and re.search(LIMIT_WORDS, msg) and "\n" not in msg, msg
    assert seconds < 1 and peak < 50 << 20, f"{seconds:.1f} s, {peak / 2**20:.0f} MB"


def test_t_rewritten_to_100000_is_refused_by_default(rgb, lm, tmp_path):
    """A small file with T rewritten to 100,000 decoded for about a minute before it failed;
    the default limit refuses T above DEFAULT_MAX_STEPS at once, in the API and the CLI."""
    data = mm.rewrite(rgb.data, steps=fmt.MAX_STEPS)
    for fn in ("decompress_pictures", "decompress"):
        msg, seconds, peak = refused(lambda: getattr(mc, fn)(data, model=lm))
        assert msg is not None and "T = 100,000 steps" in msg and "--max-work" in msg, msg
        assert seconds < 1 and peak < 50 << 20, f"{seconds:.1f} s, {peak / 2**20:.0f} MB"
    from click.testing import CliRunner

    from mulancodec.cli import main

    (tmp_path / "t.mlc").write_bytes(data)
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "t.mlc"), "-o", str(tmp_path / "t.png"),
                                  "--model", str(lm.path)])
    assert r.exit_code == 3 and "T = 100,000" in r.output and not (tmp_path / "t.png").exists()


def test_t_rewritten_to_100000_is_refused_under_a_lower_limit(rgb, lm):
    """With an explicit limit the work (tiles x steps) decides, not T alone."""
    data = mm.rewrite(rgb.data, steps=fmt.MAX_STEPS)
    msg, seconds, peak = refused(lambda: mc.decompress_pictures(data, model=lm, max_work=10_000))
    assert msg is not None and re.search(LIMIT_WORDS, msg) and "100,000 tile-steps" in msg, msg
    assert seconds < 1 and peak < 50 << 20, f"{seconds:.1f} s, {peak / 2**20:.0f} MB"


@pytest.mark.parametrize("fn", ["decompress", "decompress_image", "decompress_many",
                                "decompress_pictures"])
def test_every_decompress_function_takes_max_work(rgb, lm, fn):
    f = getattr(mc, fn)
    with pytest.raises(mc.DecodeError, match=LIMIT_WORDS):
        f(rgb.data, model=lm, max_work=1)
    for ok in (2, 0):  # exactly the declared work, and 0 = no limit
        out = f(rgb.data, model=lm, max_work=ok)
        pic = out[0] if isinstance(out, list) else out
        arr = pic.array() if hasattr(pic, "array") else pic
        assert np.array_equal(np.asarray(arr), rgb.arrays[0])


def test_cli_decode_takes_max_work(rgb, tiny_model_path, tmp_path):
    from click.testing import CliRunner

    from mulancodec.cli import EXIT_INPUT, main

    (tmp_path / "a.mlc").write_bytes(rgb.data)
    args = ["decode", str(tmp_path / "a.mlc"), "-o", str(tmp_path / "a.png"), "--model",
            str(tiny_model_path), "-q"]
    r = CliRunner().invoke(main, args + ["--max-work", "1"])
    assert r.exit_code == EXIT_INPUT and not (tmp_path / "a.png").exists()
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mulancodec: error:") and "--max-work" in lines[0]
    r = CliRunner().invoke(main, args + ["--max-work", "2"])
    assert r.exit_code == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb.arrays[0])
    (tmp_path / "bomb.mlc").write_bytes(plan_bomb())  # the default limit refuses it
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "bomb.mlc"), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == EXIT_INPUT and "work limit" in r.stderr and len(r.stderr.splitlines()) == 1


def test_pillow_plugin_has_a_work_limit(rgb, use_tiny_model, monkeypatch):
    from mulancodec import pillow_plugin

    assert pillow_plugin.MAX_WORK == fmt.DEFAULT_MAX_WORK
    monkeypatch.setattr(pillow_plugin, "MAX_WORK", 1)
    im = Image.open(io.BytesIO(rgb.data))  # opening only reads the header
    assert im.size == (8, 8)
    with pytest.raises(mc.DecodeError, match=LIMIT_WORDS):
        im.load()
    monkeypatch.setattr(pillow_plugin, "MAX_WORK", 2)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rgb.data))), rgb.arrays[0])
    monkeypatch.setattr(pillow_plugin, "MAX_WORK", fmt.DEFAULT_MAX_WORK)
    im = Image.open(io.BytesIO(plan_bomb()))
    msg, seconds, peak = refused(im.load)
    assert msg is not None and "work limit" in msg and seconds < 1 and peak < 50 << 20
