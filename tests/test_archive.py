"""An archive keeps everything (issue 13): metadata, no silently lost frames, the smallest
classical fallback (PNG, WebP, JPEG-XL), and `mulancodec verify`."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import mlc_mutants as mm
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CIFAR10_MODEL, CIFAR_TEST, need, smooth_image
from PIL import Image, PngImagePlugin

import mulancodec as mc
from mulancodec.cli import EXIT_INPUT, EXIT_MODEL, EXIT_OK, main
from mulancodec.coding import container as fmt
from mulancodec.coding.reader import read_file
from mulancodec.imaging import jxl
from mulancodec.imaging.metadata import MAX_ITEM_BYTES, Metadata
from mulancodec.imaging.metadata import MAX_ITEMS as MAX_META_ITEMS

ICC = bytes(range(256)) * 5 + b"icc-tail"  # opaque: metadata is stored, never parsed
XMP = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF/></x:xmpmeta>"


def exif(extra: bytes = b"") -> bytes:
    e = Image.Exif()
    e[0x010F] = "Camera"
    e[0x0131] = "mulancodec test"
    return e.tobytes() + extra


def meta_png(path: Path, a: np.ndarray, exif_bytes: bytes | None = None) -> dict:
    """Save `a` as a PNG with every kind of metadata; returns the info a reader gets back."""
    pi = PngImagePlugin.PngInfo()
    pi.add_text("Title", "a title")
    pi.add_text("Comment", "zipped " * 40, zip=True)
    pi.add_itxt("Author", "Zo\u00eb \u2603")
    pi.add_itxt("XML:com.adobe.xmp", XMP.decode())
    pi.add(b"gAMA", struct.pack(">I", 45455))
    pi.add(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    Image.fromarray(a).save(path, pnginfo=pi, icc_profile=ICC, exif=exif_bytes or exif(),
                            dpi=(300, 300))
    with Image.open(path) as im:
        im.load()
        return dict(im.info)


def info_of(path: Path) -> dict:
    with Image.open(path) as im:
        im.load()
        return dict(im.info)


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stdout, r.stderr


KEYS = ("icc_profile", "exif", "xmp", "Title", "Comment", "Author", "dpi", "gamma", "chromaticity")


# -- metadata -----------------------------------------------------------------------------

def test_metadata_round_trips_through_the_cli(tmp_path, rng, tiny_model_path):
    want = meta_png(tmp_path / "m.png", smooth_image(rng, 12, 10, 3))
    assert all(k in want for k in KEYS)
    m = str(tiny_model_path)
    assert cli("encode", str(tmp_path / "m.png"), "--model", m, "--steps", "2", "-q")[0] == EXIT_OK
    code, out, _ = cli("info", str(tmp_path / "m.mlc"))
    assert code == 0 and "metadata: icc 1288 bytes; exif" in out and "dpi 299.999" in out
    assert cli("decode", str(tmp_path / "m.mlc"), "-o", str(tmp_path / "back.png"), "-q")[0] == 0
    got = info_of(tmp_path / "back.png")
    for k in KEYS:
        assert got[k] == want[k], k  # blobs byte-identical, text and numbers equal
    cli("decode", str(tmp_path / "m.mlc"), "-o", str(tmp_path / "back.tif"), "-q")
    tif = info_of(tmp_path / "back.tif")
    assert tif["icc_profile"] == ICC and tif["dpi"] == pytest.approx(want["dpi"], abs=1e-3)
    assert tif["xmp"] == XMP
    with Image.open(tmp_path / "back.tif") as im:  # EXIF tags join the TIFF's own
        assert im.getexif()[0x010F] == "Camera"
    # --strip drops all of it
    cli("encode", str(tmp_path / "m.png"), "-o", str(tmp_path / "s.mlc"), "--strip", "--model", m,
        "--steps", "2", "-q")
    assert not mc.read_header((tmp_path / "s.mlc").read_bytes()).images[0].meta
    cli("decode", str(tmp_path / "s.mlc"), "-o", str(tmp_path / "s.png"), "-q")
    assert not set(KEYS) & set(info_of(tmp_path / "s.png"))


def test_metadata_round_trips_through_the_api(tmp_path, rng, lm):
    want = meta_png(tmp_path / "m.png", smooth_image(rng, 9, 9, 3))
    for fallback in (True, False):  # embedded and bits-back files carry it the same way
        data = mc.compress(str(tmp_path / "m.png"), model=lm, steps=2, fallback=fallback)
        im = mc.decompress_image(data, model=lm)
        assert {k: im.info[k] for k in KEYS} == {k: want[k] for k in KEYS}
    stripped = mc.compress(str(tmp_path / "m.png"), model=lm, steps=2, strip=True)
    assert not set(KEYS) & set(mc.decompress_image(stripped, model=lm).info)
    pics = mc.decompress_pictures(mc.compress_many([str(tmp_path / "m.png"), smooth_image(rng, 4, 4, 3)],
                                                   model=lm, steps=2), model=lm)
    assert pics[0].meta.icc == ICC and not pics[1].meta


def test_metadata_round_trips_through_pillow(tmp_path, rng, use_tiny_model):
    want = meta_png(tmp_path / "m.png", smooth_image(rng, 8, 8, 3))
    with Image.open(tmp_path / "m.png") as im:
        im.load()
        im.save(tmp_path / "m.mlc", steps=2)
    with Image.open(tmp_path / "m.mlc") as im:
        assert {k: im.info[k] for k in KEYS} == {k: want[k] for k in KEYS}  # before loading
        im.load()
        assert {k: im.info[k] for k in KEYS} == {k: want[k] for k in KEYS}
        im.save(tmp_path / "again.png")  # Pillow itself writes only the ICC profile and dpi
    assert info_of(tmp_path / "again.png")["icc_profile"] == ICC


def test_a_one_megabyte_exif_works(tmp_path, rng, lm):
    big = exif(bytes(rng.integers(0, 256, 1 << 20, dtype=np.uint8)))
    im = Image.fromarray(smooth_image(rng, 6, 6, 3))
    im.info["exif"] = big
    data = mc.compress(im, model=lm, steps=2)
    assert len(data) > 1 << 20
    assert mc.decompress_image(data, model=lm).info["exif"] == big


def test_oversized_metadata_is_refused(tmp_path, rng, lm, tiny_model_path):
    im = Image.fromarray(smooth_image(rng, 6, 6, 3))
    im.info["icc_profile"] = bytes(MAX_ITEM_BYTES + 1)
    with pytest.raises(mc.EncodeError, match="icc metadata of .* over the limit.*strip"):
        mc.compress(im, model=lm, steps=2)
    im.info = {}
    im.save(tmp_path / "big.png", exif=exif(bytes(MAX_ITEM_BYTES)))  # the CLI refuses it in one line
    code, _, err = cli("encode", str(tmp_path / "big.png"), "--model", str(tiny_model_path))
    assert code == EXIT_INPUT and len(err.splitlines()) == 1 and "over the limit" in err
    assert not (tmp_path / "big.mlc").exists()
    assert mc.compress(im, model=lm, steps=2, strip=True)  # --strip is the way out


def _with_meta(data: bytes, items) -> bytes:
    h, words = mm.parts(data)
    h.images[0].meta = list(items)
    return fmt.write(h, words)


@pytest.mark.parametrize("items, exc, words", [
    ([(99, b"x")], mc.FormatError, "unknown metadata kind 99"),
    ([(0, b"a"), (0, b"b")], mc.FormatError, "icc metadata appears twice"),
    ([(4, b"short")], mc.FormatError, "dpi metadata has 5 bytes"),
    ([(3, b"no separator")], mc.DecodeError, "corrupt text metadata"),
    ([(3, b"key\0\xff\xfe")], mc.DecodeError, "corrupt text metadata"),
])
def test_corrupt_metadata_is_refused(corpus, lm, items, exc, words):
    data = _with_meta(corpus[0].data, items)
    with pytest.raises(exc, match=words):
        mc.decompress_pictures(data, model=lm)


def test_a_claimed_huge_metadata_block_is_refused_before_allocating(corpus, lm):
    data = _with_meta(corpus[0].data, [(0, b"\x01" * 5)])
    hs, he, ps, pe = mm.sections(data)
    hb = data[hs:he]
    i = hb.index(b"\x01" * 5) - 1  # the blob's length byte
    for claim in (MAX_ITEM_BYTES, MAX_ITEM_BYTES + 1, 1 << 40):
        bad = mm.frame(hb[:i] + mm.varint(claim) + hb[i + 1:], data[ps:pe])
        with pytest.raises(mc.FormatError, match="icc metadata|truncated|out of range"):
            mc.read_header(bad)
    h = fmt.Header(**{**mm.parts(data)[0].__dict__})
    h.images[0].meta = [(3, b"k\0v")] * (MAX_META_ITEMS + 1)
    with pytest.raises(mc.FormatError, match="metadata items"):
        read_file(fmt.write(h, mm.parts(data)[1]))


def test_version_1_files_have_no_metadata_section():
    data = (Path(__file__).parent / "golden" / "rgb.mlc").read_bytes()
    h = read_file(data, 0)[0]
    assert h.version == 1 and h.images[0].meta == []


# -- frames -------------------------------------------------------------------------------

def _frames(kind: str, path: Path, rng) -> None:
    ims = [Image.fromarray(smooth_image(rng, 8, 8, 3)) for _ in range(3)]
    if kind == "gif":
        ims[0].save(path, save_all=True, append_images=ims[1:], duration=[50, 60, 70], loop=0)
    elif kind == "apng":
        ims[0].save(path, format="PNG", save_all=True, append_images=ims[1:], duration=40)
    else:
        ims[0].save(path, format="TIFF", save_all=True, append_images=ims[1:])


@pytest.mark.parametrize("kind, suffix", [("gif", ".gif"), ("apng", ".png"), ("tiff", ".tif")])
def test_multi_frame_input_is_refused_never_truncated(kind, suffix, tmp_path, rng, tiny_model_path, lm):
    src = tmp_path / f"anim{suffix}"
    _frames(kind, src, rng)
    code, _, err = cli("encode", str(src), "--model", str(tiny_model_path))
    assert code == EXIT_INPUT and len(err.splitlines()) == 1 and "frames" in err
    assert not (tmp_path / "anim.mlc").exists()
    with pytest.raises(mc.ImageError, match="frames would be lost"):
        mc.compress(str(src), model=lm)
    with Image.open(src) as im:  # an open multi-frame PIL image too
        with pytest.raises(mc.ImageError, match="frames would be lost"):
            mc.compress(im, model=lm)


# -- the best fallback --------------------------------------------------------------------

CONTAINER_BYTES = 16  # a compact file around its image: magic, version, layout, mode, sizes, length, check


def _candidates(a: np.ndarray) -> dict[str, int]:
    im = Image.fromarray(a)
    out = {}
    for fmt_, kw in (("PNG", {"optimize": True}),
                     ("WEBP", {"lossless": True, "quality": 100, "method": 6, "exact": True})):
        buf = io.BytesIO()
        im.save(buf, format=fmt_, **kw)
        out[fmt_] = len(buf.getvalue())
    if jxl.available():
        out["JPEG-XL"] = len(jxl.encode(a))
    return out


@pytest.mark.parametrize("kind", ["smooth", "noise", "flat"])
def test_fallback_is_no_larger_than_each_candidate(kind, rng, lm):
    a = {"smooth": smooth_image(rng, 32, 32, 3), "noise": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
         "flat": np.full((32, 32, 3), 77, np.uint8)}[kind]
    data = mc.compress(a, model=lm, steps=2)
    for name, n in _candidates(a).items():
        assert len(data) <= n + CONTAINER_BYTES, (name, len(data), n)
    assert np.array_equal(mc.decompress(data, model=lm), a)


@pytest.mark.skipif(not jxl.available(), reason="imagecodecs with JPEG-XL is not installed")
def test_jpeg_xl_is_chosen_when_smallest_and_decodes_exactly(rng, lm):
    a = smooth_image(rng, 32, 32, 3)
    data = mc.compress(a, model=lm, steps=2)
    rec = mc.read_header(data).images[0]
    assert rec.method == fmt.METHOD_EMBED and jxl.is_jxl(rec.embedded)  # JPEG-XL wins on smooth images
    assert np.array_equal(mc.decompress(data, model=lm), a)


def test_jpeg_xl_size_is_read_before_decoding(rng):
    for h, w in [(1, 1), (8, 16), (7, 5), (33, 32), (90, 160), (600, 400), (3, 2000)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if jxl.available():
            assert jxl.size(bytes(jxl.encode(a))) == (w, h)
    small = b"\xff\x0a" + bytes([0b11111111, 0xFF, 0xFF, 0xFF])  # claims a big image in 6 bytes
    with pytest.raises(ValueError):
        jxl.decode(small, 8, 8) if jxl.available() else jxl.size(b"\xff\x0a")


def test_decoder_without_jpeg_xl_names_the_package(rng, lm, monkeypatch):
    if not jxl.available():
        pytest.skip("needs imagecodecs to make a file holding JPEG-XL")
    data = mc.compress(smooth_image(rng, 32, 32, 3), model=lm, steps=2)
    assert jxl.is_jxl(mc.read_header(data).images[0].embedded)

    def missing():
        raise jxl.JxlUnavailable("this file holds a JPEG-XL image: decoding it needs imagecodecs "
                                 "(pip install imagecodecs, or pip install mulancodec[jxl])")
    monkeypatch.setattr(jxl, "_codec", missing)
    with pytest.raises(mc.DecodeError, match="pip install imagecodecs"):
        mc.decompress(data, model=lm)


def test_a_lone_cifar_sized_image_costs_at_most_jpeg_xl_plus_the_container(rng):
    need(CIFAR10_MODEL)
    if not jxl.available():
        pytest.skip("imagecodecs with JPEG-XL is not installed")
    a = smooth_image(rng, 32, 32, 3)
    data = mc.compress(a, model=str(CIFAR10_MODEL), steps=3, device="cpu")
    assert len(data) <= len(jxl.encode(a)) + CONTAINER_BYTES


def test_real_cifar_images_cost_at_most_jpeg_xl_plus_the_container():
    need(CIFAR_TEST)
    need(CIFAR10_MODEL)
    if not jxl.available():
        pytest.skip("imagecodecs with JPEG-XL is not installed")
    with np.load(CIFAR_TEST) as z:
        xs = z["x"][:3]
    for a in xs:
        data = mc.compress(a, model=str(CIFAR10_MODEL), steps=3, device="cpu")
        assert len(data) <= len(jxl.encode(a)) + CONTAINER_BYTES


# -- verify -------------------------------------------------------------------------------

def test_verify_exit_codes(corpus, tmp_path, tiny_model_path):
    m = str(tiny_model_path)
    good, stream = tmp_path / "good.mlc", tmp_path / "stream.mlc"
    good.write_bytes(corpus[0].data)
    stream.write_bytes(corpus[-1].data)
    bad = tmp_path / "bad.mlc"
    bad.write_bytes(corpus[0].data[:-9] + bytes([corpus[0].data[-9] ^ 1]) + corpus[0].data[-8:])
    code, out, _ = cli("verify", str(good), str(stream), "--model", m)
    assert code == EXIT_OK
    assert out.splitlines() == [f"{good}: ok (1 image)", f"{stream}: ok (3 images)"]
    code, out, _ = cli("verify", str(bad), "--model", m)
    assert code == EXIT_INPUT and out.startswith(f"{bad}: CORRUPT (") and len(out.splitlines()) == 1
    code, out, _ = cli("verify", str(tmp_path / "missing.mlc"), "--model", m)
    assert code == EXIT_INPUT and "MISSING" in out
    code, out, _ = cli("verify", str(good), str(bad), str(stream), "--model", m)
    assert code == EXIT_INPUT
    assert [line.split(": ")[1].split(" ")[0] for line in out.splitlines()] == ["ok", "CORRUPT", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mlc", "good.mlc", "stream.mlc"]


def test_verify_honours_the_decoding_limits(corpus, tmp_path, tiny_model_path, other_model_path):
    f = tmp_path / "s.mlc"
    f.write_bytes(corpus[-1].data)
    code, out, _ = cli("verify", str(f), "--model", str(tiny_model_path), "--max-work", "1")
    assert code == EXIT_INPUT and "work limit" in out
    code, out, _ = cli("verify", str(f), "--model", str(tiny_model_path), "--max-pixels", "10")
    assert code == EXIT_INPUT and "pixels" in out
    code, out, _ = cli("verify", str(f), "--model", str(other_model_path))
    assert code == EXIT_MODEL and "CANNOT CHECK" in out


def test_verify_catches_every_corrupted_file_of_the_fuzz_corpus(corpus, lm, tmp_path, tiny_model_path):
    rng = np.random.default_rng(13)
    files, expect = [], []
    for i in range(60):
        s = corpus[i % len(corpus)].data
        b = bytearray(s)
        kind = i % 4
        if kind == 0:
            b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            b = b[:int(rng.integers(len(b)))]
        elif kind == 2:
            b[int(rng.integers(5, len(b)))] ^= 0xFF
            b = bytearray(mm.fix_crcs(bytes(b)))  # past the CRCs: the deeper checks must catch it
        else:
            b += bytes(rng.integers(0, 256, 3, dtype=np.uint8))
        p = tmp_path / f"{i:03d}.mlc"
        p.write_bytes(bytes(b))
        files.append(str(p))
        expect.append(mm.check_decode(bytes(b), corpus, lm, max_pixels=0) == "exact")
    code, out, _ = cli("verify", *files, "--model", str(tiny_model_path))
    lines = out.splitlines()
    assert len(lines) == len(files)
    for line, exact in zip(lines, expect):
        assert (": ok (" in line) == exact, line
    # a mutant whose model id changed (CRCs fixed) cannot be checked: exit 4, still not 0
    assert not all(expect) and code in (EXIT_INPUT, EXIT_MODEL)


# -- hostile embedded JPEG-XL and metadata --------------------------------------------------

@pytest.mark.skipif(not jxl.available(), reason="imagecodecs with JPEG-XL is not installed")
def test_embedded_jpeg_xl_must_match_its_header_before_it_is_decoded(corpus, lm, monkeypatch):
    s = corpus[4]  # an embedded image in the full layout
    h, words = mm.parts(s.data)
    rec = h.images[0]
    wrong = jxl.encode(np.zeros((rec.height + 1, rec.width, 3), np.uint8))
    claims = b"\xff\x0a" + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  # a huge image in 8 bytes
    calls = []
    real = jxl._codec().jpegxl_decode
    monkeypatch.setattr(jxl._codec(), "jpegxl_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for blob in (wrong, claims, b"\xff\x0a"):
        rec.embedded = blob
        with pytest.raises(mc.DecodeError, match="corrupt embedded image"):
            mc.decompress_pictures(fmt.write(h, words), model=lm)
    assert not calls  # refused from the size header alone


@pytest.mark.parametrize("seed", range(6))
def test_random_metadata_round_trips_or_is_refused(corpus, lm, seed):
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(int(rng.integers(0, 6))):
        kind = int(rng.integers(0, 8))
        n = {4: 16, 5: 8, 6: 64, 7: 1}.get(kind, int(rng.integers(0, 300)))
        v = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        if kind == 3 and rng.random() < 0.5:
            v = b"key%d\0" % len(items) + "välue".encode()
        if kind != 3 and any(k == kind for k, _ in items):
            continue
        items.append((kind, v))
    data = _with_meta(corpus[0].data, items)
    try:
        pic = mc.decompress_pictures(data, model=lm)[0]
    except mc.DecodeError as e:
        assert "text metadata" in str(e)
        return
    assert Metadata(**pic.meta.__dict__).items() == Metadata.from_items(items).items()


def test_info_describes_compact_files_and_their_metadata(tmp_path, rng, tiny_model_path):
    import json

    meta_png(tmp_path / "m.png", smooth_image(rng, 8, 8, 3))
    m = str(tiny_model_path)
    assert cli("encode", str(tmp_path / "m.png"), "--model", m, "--steps", "2", "-q")[0] == 0
    code, out, _ = cli("info", str(tmp_path / "m.mlc"))
    assert code == 0 and "v2 file" in out and "compact file" in out and "text Author, Comment, Title" in out
    d = json.loads(cli("info", str(tmp_path / "m.mlc"), "--json")[1])
    assert d["compact"] and d["format_version"] == 2
    assert d["image_list"][0]["metadata"][:3] == ["icc 1288 bytes", f"exif {len(exif())} bytes",
                                                  f"xmp {len(XMP)} bytes"]


def test_pillow_save_can_strip(tmp_path, rng, use_tiny_model):
    meta_png(tmp_path / "m.png", smooth_image(rng, 8, 8, 3))
    with Image.open(tmp_path / "m.png") as im:
        im.load()
        im.save(tmp_path / "s.mlc", steps=2, strip=True)
    with Image.open(tmp_path / "s.mlc") as im:
        im.load()
        assert not set(KEYS) & set(im.info)
