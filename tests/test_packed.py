"""Packed (xz) model files: the same model bit for bit, and a bad one refused in one line."""
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mulancodec as mc
from mulancodec import packed
from mulancodec.weights import load_model
from mulancodec.zoo import ModelFileError, read_metadata, shipped_models

TINY_INT = Path(__file__).parent / "golden" / "v4_tiny_int.safetensors"
CLI = [sys.executable, "-m", "mulancodec.cli"]


@pytest.fixture()
def pair(tmp_path):
    """The tiny integer model, plain, and packed in a model folder of its own."""
    plain = tmp_path / "model.safetensors"
    shutil.copy(TINY_INT, plain)
    folder = tmp_path / "zoo" / "tiny-int"
    folder.mkdir(parents=True)
    out = packed.pack_file(plain)
    shutil.move(out, folder / "model.safetensors.xz")
    return plain, folder


def test_packed_model_is_the_same_model(pair):
    plain, folder = pair
    a, b = load_model(plain), load_model(folder)  # a folder holding only the packed file
    assert b.path.name == "model.safetensors.xz"
    assert b.path.stat().st_size < 0.8 * plain.stat().st_size
    assert a.model_id == b.model_id and a.meta == b.meta == read_metadata(b.path)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    img = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    data = mc.compress(img, model=b, steps=3, fallback=False)
    assert np.array_equal(mc.decompress(data, model=a), img)  # the files are interchangeable


def _bad(tmp_path, raw: bytes, name="model.safetensors.xz") -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


# each: what it spoils, from the packed bytes ("xz") or the unpacked safetensors bytes ("raw")
BAD = {
    "truncated": ("xz", lambda b: b[:len(b) // 2]),
    "not xz": ("xz", lambda b: b"not xz at all" * 10),
    "huge header length": ("raw", lambda b: lzma.compress(b"\xff" * 8 + b"{}")),
    "header cut short": ("raw", lambda b: lzma.compress(b[:100])),
    "tensors cut short": ("raw", lambda b: lzma.compress(b[:len(b) - 1000])),
    "header not an object": ("raw", lambda b: lzma.compress((2).to_bytes(8, "little") + b"[]")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_packed_file_is_refused(tmp_path, pair, case):
    good = (pair[1] / "model.safetensors.xz").read_bytes()
    source, spoil = BAD[case]
    bad = _bad(tmp_path, spoil(good if source == "xz" else lzma.decompress(good)))
    with pytest.raises(ModelFileError) as e:
        load_model(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_unpacking_is_bounded(tmp_path, pair, monkeypatch):
    """A file that unpacks beyond MAX_UNPACKED is refused before it is all in memory."""
    monkeypatch.setattr(packed, "MAX_UNPACKED", 100_000)
    bomb = _bad(tmp_path, lzma.compress(b"\0" * 10_000_000))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(packed.PackedError, match="more than 100000 bytes"):
        packed.read(bomb)
    with pytest.raises(ModelFileError):
        load_model(pair[1])  # the real one unpacks to 191 kB: above this bound too


def test_pack_command(tmp_path):
    src = tmp_path / "m.safetensors"
    shutil.copy(TINY_INT, src)
    r = subprocess.run(CLI + ["pack", str(src)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert load_model(str(src) + ".xz").model_id == load_model(src).model_id
    junk = _bad(tmp_path, b"junk", name="j.safetensors")
    r = subprocess.run(CLI + ["pack", str(junk)], capture_output=True, timeout=300)
    assert r.returncode == 3 and len(r.stderr.decode().strip().splitlines()) == 1
    assert not Path(str(junk) + ".xz").exists()


def test_repacking_in_place_keeps_the_model_and_never_grows_it(pair, tmp_path):
    """`pack` on a packed file rewrites it in place: the same model, no larger than xz's
    default would make it (the smaller of the word-aligned and the default coding)."""
    plain, folder = pair
    f = folder / "model.safetensors.xz"
    before = load_model(folder)
    f.write_bytes(lzma.compress(plain.read_bytes(), format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))
    default = f.stat().st_size
    assert packed.pack_file(f) == f
    assert f.stat().st_size <= default
    after = load_model(folder)
    assert after.model_id == before.model_id and after.meta == before.meta
    assert lzma.decompress(f.read_bytes()) == plain.read_bytes()  # a plain xz stream of the very bytes


def test_words_pack_a_float_model_smaller():
    """The word-aligned literal coding is what makes float weights pack well (the reason it
    exists): on random-ish float32 weights it beats xz's default."""
    rng = np.random.default_rng(0)
    state = {"w": torch.from_numpy(rng.normal(0, 0.05, 50_000).astype(np.float32))}
    raw = packed.save_bytes(state, metadata={})
    words = lzma.compress(raw, format=lzma.FORMAT_XZ, filters=[packed.WORDS])
    default = lzma.compress(raw, format=lzma.FORMAT_XZ, filters=[packed.DEFAULT])
    assert len(words) < 0.97 * len(default)
    assert len(packed.pack(state, {})) == min(len(words), len(default))


def test_shipped_models_are_packed():
    """The zoo ships every model packed: integer models pack to about 53%, float ones to 84%."""
    models = shipped_models()
    assert {n for n in models if "int" in n} and {n for n in models if "int" not in n}
    assert all(p.name == "model.safetensors.xz" for p in models.values())
