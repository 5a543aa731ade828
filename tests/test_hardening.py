"""Hostile and foreign inputs: bounded headers, clear refusals, safe model files, safe outputs.

* Absurd sizes and counts in a header are refused before anything is allocated
  for them (checked here with tracemalloc and a wall-clock bound).
* A file from another backend, format version or model is refused with a
  message saying which and what to do; the pixel checksum is checked on every decode.
* An adapted file's delta block (format version 4) is header data from a stranger: its
  counts and sizes are bounded before anything is allocated, it must fit the model's
  own tensors, its deltas cannot exceed a fixed bound, and a hostile one is refused with
  one line (exit 3), never a traceback, a hang or wrong pixels.
* Model files are read with safetensors only: nothing is unpickled.
* Encoding refuses unreadable or unsupported inputs before any work starts and
  never writes an output onto its own input, even with -f (exit 5).
"""
from __future__ import annotations

import json
import os
import pickle
import time
import tracemalloc

import mlc_mutants as mm
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_model, smooth_image
from PIL import Image

import mulancodec as mc
from mulancodec.cli import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, main
from mulancodec.coding import container as fmt
from mulancodec.weights import load_model


@pytest.fixture(scope="module")
def rgb(corpus):
    return corpus[0].data


def cli(*args: str):
    """The CLI in-process: (exit code, stderr)."""
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stderr


def one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mulancodec: error:"), err
    return lines[0]


# -- absurd sizes and counts: refused quickly, without allocating ------------------------

class _Claims(list):
    """A list that tells container.write it is longer than it is (to forge counts)."""

    def __init__(self, items, n):
        super().__init__(items)
        self.n = n

    def __len__(self):
        return self.n


def _absurd(rgb: bytes) -> dict[str, tuple[bytes, type, str | None]]:
    h, words = mm.parts(rgb)
    rec = h.images[0]
    one = fmt.ImageRecord("RGB", 1, 1)
    head_len = mm.sections(rgb)[0] - 5  # bytes of the header-length varint
    return {
        "65535x65535 image": (mm.rewrite(rgb, images=[fmt.ImageRecord("RGB", 65535, 65535)]),
                              mc.FormatError, "decompression bomb"),
        "2^24 images claimed": (mm.rewrite(rgb, images=_Claims([rec], 1 << 24)), mc.FormatError,
                                "image count"),
        "2^26-word seed": (mm.rewrite(rgb, seed_words=fmt.MAX_SEED_WORDS), mc.FormatError, "seed length"),
        "2^26-word seed, all stripped": (mm.rewrite(rgb, seed_words=fmt.MAX_SEED_WORDS,
                                                    stripped=fmt.MAX_SEED_WORDS), mc.FormatError,
                                         "seed length"),
        "longest seed the format allows": (mm.rewrite(rgb, seed_words=fmt.max_seed_words(h.tile)),
                                           mc.DecodeError, "seed"),
        "longest seed for this image, all stripped": (
            mm.rewrite(rgb, seed_words=fmt.seed_sizes(3 * 8 * 8)[-1], stripped=fmt.seed_sizes(192)[-1]),
            mc.DecodeError, None),
        "one batch of 2^16 tiles": (mm.rewrite(rgb, images=[fmt.ImageRecord("RGB", 4096, 4096)],
                                               plan=[1 << 16]), mc.FormatError, "batch of 65536"),
        "2^26 tiles in the plan": (mm.rewrite(rgb, plan=[1024] * (1 << 16)), mc.FormatError, "plan"),
        "4096 threads": (mm.rewrite(rgb, threads=4096), mc.FormatError, "threads"),
        "0 threads": (mm.rewrite(rgb, threads=0), mc.FormatError, "threads"),
        "T = 10^6": (mm.rewrite(rgb, steps=10 ** 6), mc.FormatError, "steps"),
        "tile 1025": (mm.rewrite(rgb, tile=1025), mc.FormatError, "tile"),
        "header length 2^40": (rgb[:5] + mm.varint(1 << 40) + rgb[5 + head_len:], mc.FormatError,
                               "truncated"),
        "payload length 2^40": (rgb[:mm.sections(rgb)[1] + 4] + mm.varint(1 << 40) + b"\0" * 8,
                                mc.FormatError, "truncated"),
        "names blob 2^24": (_names_claim(rgb), mc.FormatError, "names"),
        "16384x16384 (the default limit), a one-tile payload": (
            mm.rewrite(rgb, images=[fmt.ImageRecord("RGB", 16384, 16384)], plan=[16] * (1 << 16)),
            mc.DecodeError, None),
        "20000 1x1 images, garbage payload": (
            mm.rewrite(rgb, images=[one] * 20000, plan=[16] * 1250), mc.DecodeError, None),
        "window 1000, latent grid 1e-4 (a 10^7-bin window)": (
            mm.rewrite(rgb, window=1000.0, latent_delta=1e-4), mc.DecodeError, "window"),
        "bf16 on a cpu file": (mm.rewrite(rgb, bf16=True), mc.FormatError, "bf16"),
    }


def _names_claim(rgb: bytes) -> bytes:
    """The names blob's length varint replaced by 2^24 (the rest of the file unchanged)."""
    h, words = mm.parts(rgb)
    marker = "\x01" * 7
    h.images[0].name = marker
    b = fmt.write(h, words)
    hs, he, ps, pe = mm.sections(b)
    hb = b[hs:he]
    i = hb.index(marker.encode()) - 1  # the length byte (7)
    return mm.frame(hb[:i] + mm.varint(1 << 24) + hb[i + 1:], b[ps:pe])


def test_absurd_headers_are_refused_quickly_without_allocating(rgb, lm):
    for name, (data, exc, words) in _absurd(rgb).items():
        tracemalloc.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(exc, match=words) as info:
                with mm.time_limit(20):
                    mc.decompress_pictures(data, model=lm)  # the default bomb limit
            elapsed = time.monotonic() - t0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert elapsed < 10, f"{name}: {elapsed:.1f} s"
        assert peak < 48 << 20, f"{name}: {peak / 2**20:.0f} MB ({info.value})"
        assert "\n" not in str(info.value)


def test_declared_work_is_what_a_header_can_cost(rgb):
    """Decoding time is proportional to tiles x steps as the header declares them (like
    encoding): both are bounded (max_pixels, T <= 100000) and `read_header` shows them."""
    h = mc.read_header(mm.rewrite(rgb, steps=fmt.MAX_STEPS))
    assert h.steps == fmt.MAX_STEPS and sum(fmt.tiles_in(r, h.tile) for r in h.images) == 1


def test_bomb_limit_is_overridable(corpus, lm, tmp_path, tiny_model_path):
    s = corpus[0]  # 8x8
    with pytest.raises(mc.FormatError, match="max_pixels"):
        mc.decompress(s.data, model=lm, max_pixels=63)
    assert np.array_equal(mc.decompress(s.data, model=lm, max_pixels=64), s.arrays[0])
    assert np.array_equal(mc.decompress(s.data, model=lm, max_pixels=0), s.arrays[0])  # 0 = no limit
    (tmp_path / "a.mlc").write_bytes(s.data)
    code, err = cli("decode", str(tmp_path / "a.mlc"), "-o", str(tmp_path / "a.png"), "--max-pixels", "63",
                    "--model", str(tiny_model_path))
    assert code == EXIT_INPUT and "--max-pixels" in one_line_error(err)
    assert not (tmp_path / "a.png").exists()
    code, err = cli("decode", str(tmp_path / "a.mlc"), "-o", str(tmp_path / "a.png"), "--max-pixels", "64",
                    "--model", str(tiny_model_path), "-q")
    assert code == 0, err


def test_pillow_limit_does_not_override_ours(corpus, lm, monkeypatch):
    """Embedded images and alpha planes are checked against max_pixels (via the header), not
    against Pillow's global limit, which used to raise an undocumented DecompressionBombError."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    for s in corpus:
        assert mm.check_decode(s.data, corpus, lm, max_pixels=0) == "exact", s.name


# -- foreign files: refused, saying which and what to do ---------------------------------

def test_cuda_file_is_refused_on_cpu(rgb, lm, tmp_path, tiny_model_path):
    data = mm.rewrite(rgb, backend="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(mc.DecodeError, match="encoded on cuda.*machine with CUDA"):
            mc.decompress(data, model=lm)
    with pytest.raises(mc.DecodeError, match=r"encoded on cuda; it decodes only on cuda \(--device cuda\)"):
        mc.decompress(data, model=lm, device="cpu")
    with pytest.raises(mc.DecodeError, match="encoded on cpu; it decodes only on cpu"):
        mc.decompress(rgb, model=lm, device="cuda")  # refused before CUDA is touched
    (tmp_path / "c.mlc").write_bytes(data)
    code, err = cli("decode", str(tmp_path / "c.mlc"), "-o", str(tmp_path / "c.png"), "--device", "cpu",
                    "--model", str(tiny_model_path))
    assert code == EXIT_INPUT and "cuda" in one_line_error(err) and not (tmp_path / "c.png").exists()


def test_embedded_only_files_decode_anywhere(corpus, lm):
    """No model runs for an embedded image, so its backend and model id do not matter."""
    s = corpus[4]
    data = mm.rewrite(s.data, backend="cuda", model_id="00" * 8)
    assert mm.check_decode(data, corpus, lm) == "exact"


@pytest.mark.parametrize("version", [0, max(fmt.READ_VERSIONS) + 1, 255])
def test_other_format_version_is_refused(rgb, lm, version, tmp_path):
    data = mm.fix_crcs(rgb[:4] + bytes([version]) + rgb[5:])
    with pytest.raises(mc.FormatError, match=f"format version {version} is not supported.*upgrade"):
        mc.decompress(data, model=lm)
    (tmp_path / "v.mlc").write_bytes(data)
    code, err = cli("info", str(tmp_path / "v.mlc"))
    assert code == EXIT_INPUT and f"version {version}" in one_line_error(err)


def test_other_model_is_refused_with_both_ids(rgb, lm, other_model_path, tmp_path):
    other = load_model(other_model_path)
    with pytest.raises(mc.DecodeError, match=f"made with model {lm.model_id}.*{other.model_id}.*--model"):
        mc.decompress(rgb, model=other)
    (tmp_path / "m.mlc").write_bytes(rgb)
    code, err = cli("decode", str(tmp_path / "m.mlc"), "-o", str(tmp_path / "m.png"),
                    "--model", str(other_model_path))
    assert code == EXIT_MODEL and "made with model" in one_line_error(err)


def test_environment_tag_is_informational(corpus, lm):
    s = corpus[0]
    data = mm.rewrite(s.data, env_tag=12345)
    assert mm.check_decode(data, corpus, lm) == "exact"  # same numerics: decodes
    h, words = mm.parts(data)
    words = words.copy()
    words[len(words) // 2] ^= np.uint32(1)
    with pytest.raises(mc.DecodeError, match="different torch version or CPU/GPU kind"):
        mc.decompress(fmt.write(h, words), model=lm)


def test_a_file_made_before_the_cpu_maker_was_recorded_says_so_when_it_fails(corpus, lm):
    """Such a file's tag matches this machine's without the maker: a failed decode cannot
    tell whether the maker differs, and says so (the float golden files are such files)."""
    from mulancodec.api import cpu_maker, env_tag, legacy_env_tag

    cpu = torch.device("cpu")
    assert (env_tag(cpu) != legacy_env_tag(cpu)) == bool(cpu_maker())
    h, words = mm.parts(mm.rewrite(corpus[0].data, env_tag=legacy_env_tag(cpu)))
    words = words.copy()
    words[len(words) // 2] ^= np.uint32(1)
    with pytest.raises(mc.DecodeError, match="same CPU maker, which files this old do not record"):
        mc.decompress(fmt.write(h, words), model=lm)


def test_pixel_checksum_is_checked_on_every_decode(corpus, lm):
    for s in corpus:
        bad = mm.rewrite(s.data, checksum=bytes(8))
        with pytest.raises(mc.DecodeError, match="checksum"):
            mc.decompress_pictures(bad, model=lm)


# -- model files: safetensors only, nothing unpickled -----------------------------------

class _Tripwire:
    """Unpickling this creates a file: proof that a loader ran pickle on untrusted data."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_named_safetensors_is_refused_and_never_unpickled(tmp_path, rgb):
    marker = tmp_path / "unpickled"
    evil = tmp_path / "model.safetensors"
    torch.save({"weights": torch.zeros(2), "payload": _Tripwire(marker)}, evil)
    pickle.loads(pickle.dumps(_Tripwire(tmp_path / "selftest"))).close()  # the tripwire works
    assert (tmp_path / "selftest").exists()
    with pytest.raises(mc.ModelFileError, match="safetensors"):
        load_model(evil)
    with pytest.raises(mc.ModelFileError):
        mc.decompress(rgb, model=evil)
    with pytest.raises(mc.ModelFileError):
        mc.decompress(rgb, model=tmp_path)  # a folder holding model.safetensors
    assert not marker.exists()


def test_loading_never_calls_pickle(tiny_model_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle was called while loading a model")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, boom)
    assert len(load_model(tiny_model_path).model_id) == 16


def _safetensors(tensors, meta):
    from safetensors.torch import save

    return save(tensors, metadata=meta)


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "huge header", "no metadata",
                                  "bad config json", "config is a list", "unknown config field",
                                  "weights do not fit", "a directory without a model", "missing"])
def test_bad_model_files_give_model_file_error(kind, tiny_model_path, tmp_path, rgb):
    good = tiny_model_path.read_bytes()
    meta = {"format": "mulancodec-model", "config": json.dumps(make_tiny_model().cfg.to_dict())}
    contents = {
        "empty": b"",
        "garbage": os.urandom(4096),
        "truncated": good[: len(good) // 2],
        "huge header": (1 << 60).to_bytes(8, "little") + b"{}",
        "no metadata": _safetensors({"x": torch.zeros(3)}, None),
        "bad config json": _safetensors({"x": torch.zeros(3)}, {**meta, "config": "{not json"}),
        "config is a list": _safetensors({"x": torch.zeros(3)}, {**meta, "config": "[1, 2]"}),
        "unknown config field": _safetensors({"x": torch.zeros(3)}, {**meta, "config": '{"wdth": 8}'}),
        "weights do not fit": _safetensors({"x": torch.zeros(3)}, meta),
    }
    path = tmp_path / "m.safetensors"
    if kind in contents:
        path.write_bytes(contents[kind])
    elif kind == "a directory without a model":
        path = tmp_path
    t0 = time.monotonic()
    with pytest.raises(mc.ModelFileError) as info:
        load_model(path)
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)
    (tmp_path / "r.mlc").write_bytes(rgb)
    code, err = cli("decode", str(tmp_path / "r.mlc"), "-o", str(tmp_path / "r.png"), "--model", str(path))
    assert code == EXIT_MODEL and one_line_error(err) and not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("field,value", [("width", -8), ("width", "8"), ("width", 10**6), ("width", 4096),
                                         ("mults", [1, -2])])
def test_hostile_config_values_give_model_file_error(field, value, tmp_path):
    cfg = {**make_tiny_model().cfg.to_dict(), field: value}
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors({"x": torch.zeros(3)},
                                  {"format": "mulancodec-model", "config": json.dumps(cfg)}))
    with pytest.raises(mc.ModelFileError):
        load_model(path)


# -- encoding: bad inputs refused up front; outputs never clobber inputs ---------------------

def _png(tmp_path, name, im):
    p = tmp_path / name
    im.save(p)
    return p


def test_unusable_inputs_are_refused_quickly(tmp_path, tiny_model_path):
    anim = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(anim, save_all=True, append_images=frames[1:])
    (tmp_path / "text.png").write_bytes(b"this is not an image")
    (tmp_path / "trunc.png").write_bytes(mm.png(smooth_image(np.random.default_rng(0), 30, 30, 3))[:60])
    (tmp_path / "huge.png").write_bytes(mm.png_claiming(100_000, 100_000))
    (tmp_path / "bomb.png").write_bytes(mm.png_claiming(20_000, 20_000))
    cases = {
        "text.png": "cannot read image",
        "trunc.png": "cannot read image",
        "deep.png": "unsupported image mode 'I;16'",
        "cmyk.jpg": "unsupported image mode 'CMYK'",
        "anim.gif": "animated",
        "huge.png": "sides above 65535",
        "bomb.png": "over the limit",
        "nothing.png": "no such file",
        ".": "no such file",
    }
    _png(tmp_path, "deep.png", Image.new("I;16", (4, 4)))
    _png(tmp_path, "cmyk.jpg", Image.new("CMYK", (4, 4)))
    for name, words in cases.items():
        tracemalloc.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(mc.ImageError, match=words):
                mc.compress(str(tmp_path / name), model=tiny_model_path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.monotonic() - t0 < 5 and peak < 16 << 20, name
    arrays = {"uint16": np.zeros((4, 4), np.uint16), "float": np.zeros((4, 4, 3)), "bool": np.zeros((4, 4), bool),
              "5 channels": np.zeros((4, 4, 5), np.uint8), "1-D": np.zeros(16, np.uint8),
              "zero height": np.zeros((0, 4, 3), np.uint8), "70000 wide": np.zeros((1, 70_000), np.uint8)}
    for name, a in arrays.items():
        with pytest.raises(mc.ImageError):
            mc.compress(a, model=tiny_model_path)


def test_cli_checks_every_input_before_encoding_any(tmp_path, tiny_model_path):
    rng = np.random.default_rng(0)
    Image.fromarray(smooth_image(rng, 8, 8, 3)).save(tmp_path / "good.png")
    Image.new("I;16", (4, 4)).save(tmp_path / "deep.png")
    code, err = cli("encode", str(tmp_path / "good.png"), str(tmp_path / "deep.png"), "-o",
                    str(tmp_path / "out") + "/", "--model", str(tiny_model_path), "--steps", "2")
    assert code == EXIT_INPUT and "deep.png" in one_line_error(err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "good.mlc").exists()


def test_outputs_never_clobber_their_input(tmp_path, tiny_model_path, rgb):
    rng = np.random.default_rng(0)
    Image.fromarray(smooth_image(rng, 8, 8, 3)).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    os.link(tmp_path / "a.png", tmp_path / "alias.png")
    m = ["--model", str(tiny_model_path), "--steps", "2"]
    for args in (["encode", "a.png", "-o", "a.png", "-f"],
                 ["encode", "a.png", "-o", "alias.png", "-f"],  # the same file under another name
                 ["encode", "--stream", "a.png", "-o", "a.png", "-f"],
                 ["encode", "a.png", "-o", "a.png"]):  # without -f: not "exists (use -f)"
        code, err = _in(tmp_path, *args, *m)
        assert code == EXIT_OUTPUT and "is also the input" in one_line_error(err), args
        assert (tmp_path / "a.png").read_bytes() == before
    (tmp_path / "x.png").write_bytes(rgb)  # an .mlc file with a .png name
    for args in (["decode", "x.png", "-f"], ["decode", "x.png", "-o", "x.png", "-f"]):
        code, err = _in(tmp_path, *args, "--model", str(tiny_model_path))
        assert code == EXIT_OUTPUT and "is also the input" in one_line_error(err), args
        assert (tmp_path / "x.png").read_bytes() == rgb
    code, err = _in(tmp_path, "decode", "x.png", "-o", "y.png", "--model", str(tiny_model_path))
    assert code == 0, err


def _in(cwd, *args):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return cli(*args)
    finally:
        os.chdir(old)


def test_stored_names_stay_inside_the_output_folder(corpus, tmp_path, tiny_model_path):
    h, words = mm.parts(corpus[-1].data)
    for r, name in zip(h.images, ["../../up.png", "a\0b.png", "x" * 300 + ".png"]):
        r.name = name
    (tmp_path / "s.mlc").write_bytes(fmt.write(h, words))
    code, err = _in(tmp_path, "decode", "s.mlc", "-o", "out/", "-q", "--model", str(tiny_model_path))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000001.png", "000002.png", "up.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.mlc"]
    assert not (tmp_path.parent / "up.png").exists()


def test_decode_failure_leaves_no_output(corpus, tmp_path, tiny_model_path):
    """A stream whose last image cannot be written in the asked format writes none of them."""
    (tmp_path / "s.mlc").write_bytes(corpus[-1].data)  # RGB, L, P with transparency
    code, err = _in(tmp_path, "decode", "s.mlc", "-o", "out/", "--format", "PPM", "--model",
                    str(tiny_model_path))
    assert code == EXIT_OUTPUT and "cannot save a P image as PPM" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mlc"]


# -- adaptation blocks (format version 4) ------------------------------------------------------

@pytest.fixture(scope="module", params=["tiny-lv", "tiny-unusual"])
def adapted(tmp_path_factory, request):
    """(tiny integer model, adapted files), and the folder with both models: norms and biases
    adapted (tiny-lv), and low-rank factors too (tiny-unusual)."""
    folder = tmp_path_factory.mktemp("adapted")
    return (*mm.build_adapted(folder, request.param), folder)


def _with_block(data: bytes, block) -> bytes:
    h, words = mm.parts(data)
    return fmt.write(mm.set_fields(h, adaptation=block), words)


def test_hostile_adaptation_blocks_are_refused(adapted):
    ilm, samples, _ = adapted
    data = samples[0].data
    a = mm.parts(data)[0].chain.adaptation
    for name, block in mm.adapt_block_edits(a, np.random.default_rng(0)).items():
        if name == "two kinds":
            with pytest.raises(ValueError):
                _with_block(data, block)
            continue
        with pytest.raises((mc.FormatError, mc.DecodeError)) as info:
            with mm.time_limit(20):
                mc.decompress_pictures(_with_block(data, block), model=ilm)
        assert "\n" not in str(info.value), name


def test_the_largest_deltas_a_file_can_hold_are_harmless(adapted):
    """Every adapted parameter moved by the most a block allows (4), or by the least: the
    network runs, and the file is refused by its checksum, not by a crash."""
    from mulancodec.adapt import deltas as D
    from mulancodec.adapt.params import adapt_tensors

    ilm, samples, _ = adapted
    data = samples[0].data
    a = mm.parts(data)[0].chain.adaptation
    tensors = adapt_tensors(ilm.config, a.subset)
    rng = np.random.default_rng(1)
    for e in (1, 12, 30):
        q = [rng.choice([-1, 1], t.numel).astype(np.int64) * D.q_limit(e, D.kind_of(t)) for t in tensors]
        block = D.encode(D.Deltas(a.subset, (e,) * len(a.step_exps), q), tensors)
        assert max(float(np.abs(v).max()) for _, v in D.decode(block, tensors).values(tensors)) <= D.MAX_DELTA
        with pytest.raises(mc.DecodeError):
            with mm.time_limit(20):
                mc.decompress_pictures(_with_block(data, block), model=ilm)


def test_absurd_adaptation_claims_are_refused_before_allocating(adapted):
    ilm, samples, _ = adapted
    data = samples[0].data
    a = mm.parts(data)[0].chain.adaptation
    head = fmt.adapt_block_bytes(a)
    # the block's counts replaced by their bounds, with nothing behind them
    claims = {"2^20 parameters, the most words they allow": bytes([a.subset, *a.step_exps])
              + mm.varint(1 << 20) + mm.varint(4096) + a.scales + mm.varint(fmt.max_adapt_words(1 << 20)),
              "4096 tensors": bytes([a.subset, *a.step_exps]) + mm.varint(a.params) + mm.varint(4096)}
    hs, he, ps, pe = mm.sections(data)
    hb = data[hs:he]
    for name, claim in claims.items():
        mutant = mm.frame(hb.replace(head, claim), data[ps:pe], version=4)
        tracemalloc.start()
        try:
            with pytest.raises(mc.FormatError, match="truncated|out of range"):
                mc.decompress_pictures(mutant, model=ilm)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, name


def test_cli_shows_and_refuses_adaptation_blocks(adapted, tmp_path):
    _, samples, folder = adapted
    good = tmp_path / "a.mlc"
    good.write_bytes(samples[0].data)
    r = CliRunner().invoke(main, ["info", str(good), "--json"])
    info = json.loads(r.stdout)
    a = mm.parts(samples[0].data)[0].chain.adaptation
    assert info["format_version"] == 4 and info["adaptation"]["params"] == a.params
    assert info["adaptation"]["bytes"] == len(fmt.adapt_block_bytes(a))
    r = CliRunner().invoke(main, ["info", str(good)])
    from mulancodec.adapt.params import SUBSET_NAMES

    assert f"adapted to the image: {SUBSET_NAMES[a.subset]}," in r.stdout
    assert f"step exponents {'/'.join(map(str, a.step_exps))} ({'/'.join(fmt.ADAPT_KIND_NAMES[:len(a.step_exps)])})" \
        in r.stdout
    bad = tmp_path / "b.mlc"
    bad.write_bytes(_with_block(samples[0].data, mm.adapt_block_edits(a, np.random.default_rng(0))["subset 1"]))
    code, err = cli("decode", str(bad), "-o", str(tmp_path / "out.png"), "--model", str(folder / "int.safetensors"))
    assert code == EXIT_INPUT and "adaptation block" in one_line_error(err)
    assert not (tmp_path / "out.png").exists()
    code, err = cli("decode", str(good), "-o", str(tmp_path / "ok.png"), "--model", str(folder / "int.safetensors"))
    assert code == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "ok.png")), samples[0].arrays[0])
