"""What a header can make a reader do: parse in bounded time and memory, and refuse to start
decoding work (tiles x steps) over a limit.

A header is a few bytes; it can name 2^26 tiles in run-length form or T = 100,000 steps.
Reading must not expand what it names (the batch plan stays run-length encoded), and
decoding refuses, before it loads a model or builds a tile, a file that declares more
tile-steps than the work limit (`max_work`, `--max-work`, `pillow_plugin.MAX_WORK`).
"""
from __future__ import annotations

import io
import struct
import time
import tracemalloc

import pytest
from PIL import Image

import mulancodec as mc
from mulancodec.coding import container as fmt

import mlc_mutants as mm


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
    hb += mm.varint(4) + (mm.varint(1) + mm.varint(1 << 24)) * 4 + mm.varint(0)  # plan, direct
    hb += mm.varint(1) + mm.varint(0) + bytes(8)  # seed, stripped, checksum
    return mm.frame(hb, b"")


def test_the_plan_bomb_is_a_valid_small_file():
    data = plan_bomb()
    assert len(data) < 100
    h = fmt.read(data, 0)[0]
    assert h.tile == 1 and fmt.tiles_in(h.images[0], 1) == 1 << 26
    assert len(h.plan) == 1 << 26 and h.plan[0] == 1 and h.plan[-1] == 1


@pytest.mark.parametrize("reader", ["container.read", "read_header", "Image.open"])
def test_reading_a_huge_plan_is_cheap(reader):
    data = plan_bomb()
    fn = {"container.read": lambda: fmt.read(data, None),
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
    h = fmt.read(plan_bomb(), 0)[0]  # write keeps the runs as they are
    assert fmt.read(fmt.write(h, fmt.read(plan_bomb(), 0)[1]), 0)[0].plan.runs == ((1, 1 << 24),) * 4
