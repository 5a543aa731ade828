"""The benchmark suite (benchmarks/): end to end on tiny inputs, its arithmetic, its refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import classical, measure, run  # noqa: E402
from benchmarks.profiling import CodingProfile  # noqa: E402


def _png_folder(tmp_path: Path, sizes: list[tuple[int, int]]) -> Path:
    rng = np.random.default_rng(7)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(smooth_image(rng, h, w, 3)).save(d / f"{i}.png")
    return d


def test_end_to_end_tiny(tmp_path, tiny_model_path):
    data = _png_folder(tmp_path, [(16, 16), (20, 24), (16, 16)])
    out = tmp_path / "out"
    rc = run.main(["--data", str(data), "--steps", "2", "--model", str(tiny_model_path),
                   "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows, meta = res["rows"], res["meta"]
    available = [c.name for c in classical.CODECS if classical.unavailable_reason(c) is None]
    names = [r["codec"] for r in rows]
    for name in available:
        assert name in names
    assert set(meta["skipped_codecs"]) == {c.name for c in classical.CODECS} - set(available)
    mulan = {r["codec"]: r for r in rows if r["codec"].startswith("mulancodec")}
    assert set(mulan) == {"mulancodec per-image", "mulancodec stream"}
    assert all(r["steps"] == 2 for r in mulan.values())
    assert all(r["bit_exact"] for r in rows)
    subpixels = 3 * (16 * 16 + 20 * 24 + 16 * 16)
    for r in rows:
        assert r["n_images"] == 3 and r["subpixels"] == subpixels
        assert r["bpd"] == pytest.approx(8 * r["bytes"] / subpixels)
        assert r["encode_s"] > 0 and r["decode_s"] > 0
    for r in mulan.values():
        assert r["elbo_bpd"] is not None
        assert r["overhead_bpd"] == pytest.approx(r["bpd"] - r["elbo_bpd"])
        assert r["encode_network_s"] > 0 and r["encode_ans_s"] > 0
    per = mulan["mulancodec per-image"]
    assert 0 <= per["embedded_files"] <= 3 and per["bits_back_bpd"] > 0
    assert "full 16x16 tiles" in " ".join(meta["notes"])
    assert meta["N"] == 3 and meta["model_tile"] == 16 and meta["hardware"]["cpu"]
    assert meta["hardware"]["torch_threads"] == 1
    md = (out / "results.md").read_text()
    assert "| mulancodec stream | 2 |" in md
    for png in ("bpd_by_codec.png", "bpd_vs_encode_time.png", "frontier.png"):
        assert (out / png).stat().st_size > 1000
    mpx = (16 * 16 + 20 * 24 + 16 * 16) / 1e6
    for r in rows:
        assert r["encode_s_per_mpx"] == pytest.approx(r["encode_s"] * 3 / mpx)
    points = meta["frontier"]
    assert len(points) == len(rows) and any(p["frontier"] for p in points)
    assert [p["encode_s_per_mpx"] for p in points] == sorted(p["encode_s_per_mpx"] for p in points)
    assert {(p["codec"], p["steps"]) for p in points} == {(r["codec"], r["steps"]) for r in rows}
    assert "## Size against encode time (frontier.png)" in md


def test_bpd_hand_computed():
    """2 images of 4x4x3 (96 subpixels) coded in 10 + 14 bytes: 8 * 24 / 96 = 2 bits each."""
    images = [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 9, np.uint8)]
    sizes = iter([10, 14])
    files: dict[bytes, np.ndarray] = {}

    def encode(x: np.ndarray) -> bytes:
        data = bytes([len(files)]) * next(sizes)
        files[data] = x.copy()
        return data

    tally = measure.measure_codec("fake", encode, files.__getitem__, images)
    row = tally.row("fake")
    assert (row["bytes"], row["subpixels"], row["n_images"]) == (24, 96, 2)
    assert row["bpd"] == 2.0
    assert measure.bits_per_subpixel(24, 96) == 2.0
    assert row["images_per_s"] == pytest.approx(2 / tally.encode_s)


def test_mismatch_fails_the_run(tmp_path, monkeypatch, capsys):
    png = classical.lookup("PNG")
    lossy = classical.ClassicalCodec("PNG", png.lib, png.settings, png.encode,
                                     lambda b: png.decode(b) ^ np.uint8(1))
    monkeypatch.setattr(classical, "CODECS", [lossy])
    data = _png_folder(tmp_path, [(8, 8)])
    rc = run.main(["--data", str(data), "--codecs", "PNG", "--no-mulan", "--out", str(tmp_path / "o"),
                   "--no-progress"])
    assert rc == run.EXIT_FAIL
    assert "not bit-exact" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_unavailable_codec_is_skipped(tmp_path, monkeypatch):
    real = classical.unavailable_reason
    monkeypatch.setattr(classical, "unavailable_reason",
                        lambda c: "not in this build" if c.name == "QOI" else real(c))
    data = _png_folder(tmp_path, [(8, 8)])
    out = tmp_path / "o"
    assert run.main(["--data", str(data), "--codecs", "qoi", "png", "--no-mulan", "--out", str(out),
                     "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["codec"] for r in res["rows"]] == ["PNG"]
    assert res["meta"]["skipped_codecs"] == {"QOI": "not in this build"}


def test_unknown_codec_is_a_usage_error(tmp_path):
    assert run.main(["--data", str(tmp_path), "--codecs", "gif"]) == run.EXIT_USAGE


def test_codec_names_are_forgiving():
    assert classical.lookup("jpeg2000").name == "JPEG 2000"
    assert classical.lookup("jxl").name == "JPEG-XL"
    assert classical.lookup("webp").name == "WebP"


def test_profile_restores_methods():
    from mulancodec.coding import bitsback, codecs

    before = (bitsback.TileBatch.denoise, codecs.WindowedGaussian.push, codecs.PixelGaussian.pop)
    with CodingProfile():
        assert bitsback.TileBatch.denoise is not before[0]
    assert (bitsback.TileBatch.denoise, codecs.WindowedGaussian.push, codecs.PixelGaussian.pop) == before


def test_runs_as_a_script(tmp_path):
    """`python benchmarks/run.py` (not -m) must find its package and write results."""
    import subprocess

    data = _png_folder(tmp_path, [(8, 8)])
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--data", str(data),
                        "--codecs", "PNG", "--no-mulan", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "| PNG |" in p.stdout and (out / "results.json").exists()


def test_crop_takes_centred_crops(tmp_path):
    data = _png_folder(tmp_path, [(16, 24), (6, 40)])
    out = tmp_path / "o"
    assert run.main(["--data", str(data), "--codecs", "PNG", "--no-mulan", "--out", str(out),
                     "--no-progress", "--crop", "8"]) == 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["crop"] == 8 and meta["images"]["sizes"] == {"8x8": 1, "6x8": 1}
    assert (out / "frontier.png").exists()
    assert run.main(["--data", str(data), "--crop", "0", "--no-mulan"]) == run.EXIT_USAGE
    im = np.arange(5 * 7).reshape(5, 7).astype(np.uint8)
    assert np.array_equal(measure.centre_crop(im, 3), im[1:4, 2:5])


def test_frontier_points():
    from benchmarks.plots import pareto

    rows = [{"codec": "fast big", "bpd": 6.0, "encode_s_per_mpx": 0.1},
            {"codec": "slow small", "bpd": 4.0, "encode_s_per_mpx": 10.0},
            {"codec": "slow big", "bpd": 6.5, "encode_s_per_mpx": 20.0},
            {"codec": "no time", "bpd": 3.0, "encode_s_per_mpx": None}]
    assert pareto(rows) == [True, True, False, False]


def test_effort_rows(tmp_path, tiny_model_path):
    """--efforts 1 2: one exact row per level, each file described (bits-back or embedded, and
    as what); --jxl-efforts 1 9: one JPEG-XL row per effort; no per-T rows without --steps."""
    data = _png_folder(tmp_path, [(16, 16), (20, 24)])
    out = tmp_path / "out"
    rc = run.main(["--data", str(data), "--efforts", "1", "2", "--jxl-efforts", "1", "9",
                   "--codecs", "jxl", "png", "--model", str(tiny_model_path), "--out", str(out),
                   "--no-progress", "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows, meta = {r["codec"]: r for r in res["rows"]}, res["meta"]
    jxl = classical.unavailable_reason(classical.lookup("jxl")) is None
    want = {"mulancodec e1", "mulancodec e2", "PNG"} | ({"JPEG-XL e1", "JPEG-XL e9"} if jxl else set())
    assert set(rows) == want
    assert meta["efforts"] == [1, 2] and meta["steps"] == [] and meta["jxl_efforts"] == [1, 9]
    subpixels = 3 * (16 * 16 + 20 * 24)
    for name in ("mulancodec e1", "mulancodec e2"):
        r = rows[name]
        assert r["bit_exact"] and r["n_images"] == 2 and r["subpixels"] == subpixels
        assert r["bytes"] == sum(f["bytes"] for f in r["files"])
        assert r["bpd"] == pytest.approx(8 * r["bytes"] / subpixels)
        assert r["encode_s"] > 0 and r["decode_s"] > 0
        assert r["bits_back_files"] + r["embedded_files"] == 2 == len(r["files"])
        assert r["adapted_files"] == 0 and r["adapt_delta_bytes"] == 0
    e1, e2 = rows["mulancodec e1"], rows["mulancodec e2"]
    assert (e1["effort"], e1["steps"], e1["embedded_files"]) == (1, None, 2)
    assert {f["method"] for f in e1["files"]} == {"embedded"}
    assert all(f["embedded_codec"] in ("PNG", "WebP", "JPEG-XL") for f in e1["files"])
    assert sum(e1["embedded_codecs"].values()) == 2
    assert (e2["effort"], e2["steps"]) == (2, 10) and e2["bits_back_bpd"] > 0
    for f in e2["files"]:  # the model coded at T=10; the file kept that or a smaller embedded image
        assert f["steps"] == 10 and f["bits_back_bytes"] > 0
        embedded = f["method"] == "embedded"
        assert embedded == (f["embedded_codec"] is not None) == (f["bytes"] < f["bits_back_bytes"])
    if jxl:
        assert rows["JPEG-XL e1"]["effort"] == 1 and rows["JPEG-XL e9"]["effort"] == 9
        assert meta["codec_settings"]["JPEG-XL e1"].startswith("lossless=True, effort=1")
    md = (out / "results.md").read_text()
    assert "## mulancodec effort levels" in md and "| e2 | T=10 | 10 |" in md
    assert {(p["codec"], p["effort"]) for p in meta["frontier"]} >= {("mulancodec e1", 1), ("PNG", None)}
    assert (out / "frontier.png").stat().st_size > 1000


def test_effort_curves_and_names():
    from benchmarks.plots import effort_family

    assert [c.name for c in classical.with_jxl_efforts(classical.CODECS[:3], [1, 9, 1])] == [
        "PNG", "WebP", "JPEG-XL e1", "JPEG-XL e9"]
    assert classical.with_jxl_efforts(classical.CODECS[:3], None) == classical.CODECS[:3]
    names = ("JPEG-XL", "JPEG-XL e3", "PNG")
    assert tuple(classical.jxl_effort(n) for n in names) == (9, 3, None)
    assert effort_family({"codec": "mulancodec e5", "effort": 5}) == "mulancodec"
    assert effort_family({"codec": "JPEG-XL e1", "effort": 1}) == "JPEG-XL"
    assert effort_family({"codec": "JPEG-XL", "effort": 9}) is None  # today's lone row: a point
    with pytest.raises(SystemExit):
        run.parse_args(["--data", "x", "--efforts", "10"])
    with pytest.raises(SystemExit):
        run.parse_args(["--data", "x", "--jxl-efforts", "11"])


def test_effort_file_record(tiny_model_path):
    """A file's record says bits-back when the file is the model's, and what it embeds when not
    (the untrained tiny model loses to PNG/WebP/JPEG-XL on a smooth image: the fallback wins)."""
    import mulancodec
    from benchmarks import mulan_bench

    im = smooth_image(np.random.default_rng(3), 16, 16, 3)
    kinds = []
    for fallback in (False, True):
        data, st = mulancodec.compress_with_stats(im, effort=2, model=str(tiny_model_path), fallback=fallback,
                                                  device="cpu")
        f = mulan_bench.file_record(data, st, 1.0, 2.0)
        assert (f["bytes"], f["steps"], f["adapt_kept"], f["adapt_delta_bytes"]) == (len(data), 10, False, 0)
        assert (f["encode_s"], f["decode_s"]) == (1.0, 2.0)
        kinds.append((f["method"], f["embedded_codec"]))
    assert kinds[0] == ("bits-back", None)
    assert kinds[1][0] == "embedded" and kinds[1][1] in ("PNG", "WebP", "JPEG-XL")
    assert mulan_bench.embedded_codec(b"\x89PNG\r\n\x1a\n...") == "PNG"
    assert mulan_bench.embedded_codec(b"RIFF\0\0\0\0WEBPVP8L") == "WebP"
    assert mulan_bench.embedded_codec(b"\xff\x0a...") == "JPEG-XL"
    assert mulan_bench.embedded_codec(b"GIF89a") == "unknown"


def test_adapt_benchmark_cache_is_keyed_by_model_image_and_subset():
    """Cached fine-tuning deltas are reused only for the same float model, pixels and subset:
    deltas fine-tuned for another model once gave a wrong gain for the shipped one."""
    from benchmarks.adapt import cache_key

    rng = np.random.default_rng(3)
    a, b = smooth_image(rng, 16, 16, 3), smooth_image(rng, 16, 16, 3)
    ids = ("8eec706956f90934", "768a078900efea7c")
    keys = {cache_key(m, x, s) for m in ids for x in (a, b) for s in (1, 2)}
    assert len(keys) == 8
    assert cache_key("8eec706956f90934", a.copy(), 2) == cache_key("8eec706956f90934", a, 2)


def test_schedule_adapt_measures_spread_and_shifted_end_points(tmp_path):
    """benchmarks/schedule_adapt.py on a tiny model with learned end points: the schedule's
    spread at each t, and paired bounds at gamma(0) shifted, the unshifted one included."""
    from conftest import make_tiny_model

    from benchmarks import schedule_adapt
    from mulancodec.weights import save_model

    m = make_tiny_model(0, "tiny-dec")
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    data = _png_folder(tmp_path, [(32, 32), (20, 24)])
    out = tmp_path / "out"
    assert schedule_adapt.main(["--data", str(data), "--model", str(path), "--steps", "4", "--strata", "2",
                                "--g0-shift", "0.5", "--out", str(out)]) == 0
    res = json.loads((out / "schedule_adapt.json").read_text())
    assert [r["t"] for r in res["gamma"]] == list(schedule_adapt.TIMES)
    assert set(res["bounds"]) == {"+0", "+0.5"}
    assert res["bounds"]["+0"]["all"] != res["bounds"]["+0.5"]["all"]
    assert res["per_tile_best_of_shifts"] <= min(b["all"] for b in res["bounds"].values()) + 1e-9
    g = res["gamma"]
    assert all(g[i]["mean"] < g[i + 1]["mean"] for i in range(len(g) - 1))  # gamma rises with t



def test_schedule_adapt_flattened_schedules_keep_end_points(tmp_path):
    """--flatten: the schedule made uniform per channel, per tile and everywhere keeps
    gamma(0) and gamma(1), is uniform where it says, and each gets a paired bound."""
    import torch
    from conftest import make_tiny_model

    from benchmarks import schedule_adapt
    from mulancodec.model.mulan import to_unit
    from mulancodec.weights import save_model

    m = make_tiny_model(0, "tiny-dec").eval()
    with torch.no_grad():  # a schedule that varies by pixel, channel and image, so flattening shows
        for prm in m.schedule_net.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    m.requires_grad_(False)
    x = torch.randint(0, 256, (3, 3, 16, 16)).float()
    xu = to_unit(x)
    c = m.latent_posterior(xu)[0]
    own = m.schedule(c, xu)
    spread = {}
    for scope in ("channel", "tile", "global"):
        f = schedule_adapt.flattened(m, scope, x, None)
        s = f.schedule(c, xu)
        assert torch.allclose(s.gamma(0.0), own.gamma(0.0)) and torch.allclose(s.gamma(1.0), own.gamma(1.0))
        g = s.gamma(0.5).expand_as(xu)
        spread[scope] = (float(g.std(dim=(2, 3)).max()), float(g.flatten(1).std(1).max()),
                         float(g.mean(dim=(1, 2, 3)).std()))
    assert float(own.gamma(0.5).expand_as(xu).std(dim=(2, 3)).max()) > 1e-3  # the original varies
    assert spread["channel"][0] < 1e-5 and spread["channel"][1] > 1e-4  # uniform over pixels only
    assert spread["tile"][1] < 1e-5 and spread["tile"][2] > 1e-5  # one scalar per tile
    assert spread["global"][1] < 1e-5 and spread["global"][2] < 1e-5  # one for all tiles
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    data = _png_folder(tmp_path, [(32, 32), (20, 24)])
    out = tmp_path / "out"
    assert schedule_adapt.main(["--data", str(data), "--model", str(path), "--steps", "4", "--strata", "2",
                                "--g0-shift", "0", "--flatten", "--out", str(out)]) == 0
    b = json.loads((out / "schedule_adapt.json").read_text())["bounds"]
    assert set(b) == {"+0", "uniform_per_channel", "uniform_within_tile", "uniform_everywhere"}
    for k in ("uniform_per_channel", "uniform_within_tile", "uniform_everywhere"):
        assert b[k]["minus_as_trained"] == pytest.approx(b[k]["all"] - b["+0"]["all"], abs=1e-9)
        assert b[k]["all"] != b["+0"]["all"]

def _part(folder: Path, data: str, rows: list[dict], efforts: list[int], model: str = "m1") -> Path:
    """A results.json as `run.py --modes per-image` writes it, with only what combine reads."""
    folder.mkdir()
    meta = {"model_id": model, "efforts": efforts, "steps": [], "data": data, "images": [data],
            "date": "2026-12-07", "hardware": "test"}
    (folder / "results.json").write_text(json.dumps({"rows": rows, "meta": meta}))
    return folder


def _row(codec: str, n: int, nbytes: int, enc: float, effort: int | None = None,
         files: list | None = None) -> dict:
    r = {"codec": codec, "bytes": nbytes, "subpixels": 3000 * n, "n_images": n, "megapixels": 0.001 * n,
         "encode_s": enc, "decode_s": enc / 2, "bpd": 8 * nbytes / (3000 * n), "bit_exact": True,
         "steps": None}
    if effort is not None:
        r.update(effort=effort, steps=50, files=files or [])
    return r


def test_combine_adds_disjoint_parts_and_refuses_overlaps(tmp_path):
    from benchmarks import combine
    f1 = [{"method": "bits-back", "bits_back_bytes": 900}]
    f2 = [{"method": "JPEG-XL", "bits_back_bytes": 1300}, {"method": "bits-back", "bits_back_bytes": 1000}]
    a = _part(tmp_path / "a", "x/1.tif", [_row("PNG", 1, 1500, 0.1),
                                          _row("mulancodec e7", 1, 900, 10.0, 7, f1)], [7])
    b = _part(tmp_path / "b", "x/[23].tif", [_row("PNG", 2, 3000, 0.2),
                                            _row("mulancodec e7", 2, 2200, 20.0, 7, f2)], [7])
    rows, meta = combine.combine([a, b])
    e7 = {r["codec"]: r for r in rows}["mulancodec e7"]
    assert (e7["bytes"], e7["n_images"], e7["subpixels"], e7["effort"]) == (3100, 3, 9000, 7)
    assert e7["bpd"] == pytest.approx(8 * 3100 / 9000)
    assert e7["bits_back_bpd"] == pytest.approx(8 * 3200 / 9000) and e7["bits_back_files"] == 2
    assert e7["encode_s"] == pytest.approx(50.0 / 3) and e7["encode_s_per_mpx"] == pytest.approx(50.0 / 0.003)
    with pytest.raises(SystemExit, match="same images"):
        combine.combine([a, _part(tmp_path / "c", "x/1.tif", [_row("PNG", 1, 1, 0.1)], [7])])
    with pytest.raises(SystemExit, match="efforts"):
        combine.combine([a, _part(tmp_path / "d", "x/9.tif", [_row("PNG", 1, 1, 0.1)], [5])])


def test_combine_same_images_takes_the_union_of_rows(tmp_path):
    from benchmarks import combine
    a = _part(tmp_path / "a", "x/[12].tif", [_row("PNG", 2, 3000, 0.1),
                                             _row("mulancodec e2", 2, 2600, 5.0, 2)], [2])
    b = _part(tmp_path / "b", "x/[12].tif", [_row("PNG", 2, 9999, 0.1),
                                             _row("mulancodec e7", 2, 2200, 50.0, 7)], [7])
    rows, _ = combine.union([a, b])
    by = {r["codec"]: r for r in rows}
    assert sorted(by) == ["PNG", "mulancodec e2", "mulancodec e7"]
    assert by["PNG"]["bytes"] == 3000 and by["PNG"]["part"] == str(a)  # the first part's row
    with pytest.raises(SystemExit, match="model_id"):
        combine.union([a, _part(tmp_path / "c", "x/[12].tif", [_row("PNG", 2, 1, 0.1)], [7], model="m2")])
    out = tmp_path / "all.md"
    r = subprocess.run([sys.executable, str(Path(combine.__file__)), "--same-images", str(a), str(b),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mulancodec e7" in out.read_text() and out.with_suffix(".png").stat().st_size > 1000
    assert len(json.loads(out.with_suffix(".json").read_text())["rows"]) == 3


def test_per_photo_names_each_file_and_flags_photos_bits_back_loses(tmp_path):
    """Each part's files are matched to its photos by name; WebP and JPEG-XL are coded here,
    so a photo whose bits-back stream is larger than WebP's is named."""
    pytest.importorskip("imagecodecs")
    from PIL import Image
    from benchmarks import per_photo
    from mulancodec.imaging.sample import landscape
    for i in (1, 2):
        Image.fromarray(landscape(24, 20 + 4 * i)).save(tmp_path / f"{i}.png")
    data = str(tmp_path / "[12].png")
    files = [{"bytes": 10, "bits_back_bytes": 10}, {"bytes": 900, "bits_back_bytes": 10 ** 6}]
    part = _part(tmp_path / "a", data, [_row("mulancodec e7", 2, 910, 1.0, 7, files)], [7])
    out = tmp_path / "pp.md"
    r = subprocess.run([sys.executable, str(Path(per_photo.__file__)), "--set", "m", str(part),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [x["photo"] for x in rows] == ["1.png", "2.png"]
    assert [x["m_bits_back"] for x in rows] == [10, 10 ** 6] and rows[1]["m_file"] == 900
    assert all(x["WebP"] > 10 for x in rows)
    assert "larger than WebP on 1 of 2 photos (2.png)" in out.read_text()
    r = subprocess.run([sys.executable, str(Path(per_photo.__file__)), "--set", "m", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "at least one part" in r.stderr
