"""Many files at once (-j N), several decode inputs, and the CPU thread count (--threads)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import smooth_image
from PIL import Image

import mulancodec as mc
from mulancodec.cli import main

CLI = [sys.executable, "-m", "mulancodec.cli"]
NAMES = ("a", "b", "c")


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(args, cwd, model, check=None):
    """The command line in `cwd`: in a subprocess with -j (its workers are spawned), else in-process."""
    if "-j" in args:
        env = dict(os.environ, MULANCODEC_MODEL=str(model))
        r = subprocess.run(CLI + args, cwd=cwd, capture_output=True, env=env, timeout=300)
    else:
        old = os.getcwd()
        os.chdir(cwd)
        try:
            res = CliRunner().invoke(main, args, env={"MULANCODEC_MODEL": str(model)})
        finally:
            os.chdir(old)
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        r = Result(res.exit_code, res.stdout_bytes, res.stderr_bytes)
    if check is not None:
        assert r.returncode == check, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    return r


def errors(r):
    return [x for x in r.stderr.decode().splitlines() if x.startswith("mulancodec: error:")]


@pytest.fixture()
def images(tmp_path, rng):
    Image.fromarray(smooth_image(rng, 20, 30, 3)).save(tmp_path / "a.png")
    Image.fromarray(smooth_image(rng, 17, 9, 1)[..., 0]).save(tmp_path / "b.png")
    Image.fromarray(smooth_image(rng, 24, 16, 3)).save(tmp_path / "c.png")
    return tmp_path


def pixels(p):
    im = Image.open(p)
    return im.mode, np.asarray(im)


def test_jobs_give_the_same_files_and_pixels(images, tiny_model_path):
    pngs = [f"{n}.png" for n in NAMES]
    enc = ["--steps", "2", "--no-fallback", "-q", "--threads", "1"]  # -j 2 runs a thread per worker
    run(["encode", *pngs, "-o", "j1/", *enc], images, tiny_model_path, check=0)
    run(["encode", *pngs, "-o", "j2/", "-j", "2", *enc], images, tiny_model_path, check=0)
    for n in NAMES:
        assert (images / "j1" / f"{n}.mlc").read_bytes() == (images / "j2" / f"{n}.mlc").read_bytes()
    mlcs = [f"j1/{n}.mlc" for n in NAMES]
    run(["decode", *mlcs, "-o", "d1/", "-q"], images, tiny_model_path, check=0)
    run(["decode", *mlcs, "-o", "d2/", "-j", "2", "-q"], images, tiny_model_path, check=0)
    for n in NAMES:
        ref = pixels(images / f"{n}.png")
        assert _same(images / "d1" / f"{n}.png", ref)
        assert _same(images / "d2" / f"{n}.png", ref)


def _same(path, ref):
    mode, arr = pixels(path)
    return mode == ref[0] and np.array_equal(arr, ref[1])


def test_decode_of_several_inputs(images, tiny_model_path):
    enc = ["--steps", "2", "-q"]
    run(["encode", "a.png", "b.png", "-o", "enc/", *enc], images, tiny_model_path, check=0)
    run(["encode", "--stream", "b.png", "c.png", "-o", "enc/set.mlc", *enc], images, tiny_model_path, check=0)
    r = run(["decode", "enc/a.mlc", "enc/b.mlc", "enc/set.mlc", "-o", "out/"], images, tiny_model_path, check=0)
    assert len(r.stderr.decode().splitlines()) == 3  # one line per input
    assert sorted(str(p.relative_to(images / "out")) for p in (images / "out").rglob("*.png")) == [
        "a.png", "b.png", os.path.join("set", "b.png"), os.path.join("set", "c.png")]
    for rel, n in [("a.png", "a"), ("b.png", "b"), ("set/b.png", "b"), ("set/c.png", "c")]:
        assert _same(images / "out" / rel, pixels(images / f"{n}.png"))
    run(["decode", "enc/a.mlc", "enc/b.mlc", "-q"], images, tiny_model_path, check=0)  # beside each input
    assert _same(images / "enc" / "a.png", pixels(images / "a.png"))
    r = run(["decode", "enc/a.mlc", "enc/b.mlc", "-o", "x.png"], images, tiny_model_path, check=2)
    assert b"FOLDER" in r.stderr and not (images / "x.png").exists()


def test_threads_recorded_and_a_mismatch_refused(images, tiny_model_path):
    enc = ["--steps", "2", "--no-fallback", "-q"]
    run(["encode", "a.png", "-o", "t2.mlc", "--threads", "2", *enc], images, tiny_model_path, check=0)
    assert json.loads(run(["info", "t2.mlc", "--json"], images, tiny_model_path).stdout)["threads"] == 2
    r = run(["decode", "t2.mlc", "-o", "t2.png", "--threads", "1"], images, tiny_model_path, check=2)
    (err,) = errors(r)
    assert len(r.stderr.decode().strip().splitlines()) == 1
    assert "made with 2 CPU threads" in err and "decodes only with 2" in err
    assert not (images / "t2.png").exists()
    run(["decode", "t2.mlc", "-o", "t2.png", "-q"], images, tiny_model_path, check=0)  # the file's count
    run(["decode", "t2.mlc", "-o", "t2b.png", "--threads", "2", "-q"], images, tiny_model_path, check=0)
    assert _same(images / "t2.png", pixels(images / "a.png")) and _same(images / "t2b.png", pixels(images / "a.png"))


def test_threads_in_the_api(rng, tiny_model_path):
    x = smooth_image(rng, 16, 16, 3)
    data = mc.compress(x, steps=2, model=tiny_model_path, fallback=False, threads=2)
    assert mc.read_header(data).threads == 2
    assert np.array_equal(mc.decompress(data, model=tiny_model_path), x)
    assert np.array_equal(mc.decompress(data, model=tiny_model_path, threads=2), x)
    with pytest.raises(mc.ThreadsMismatch, match="made with 2 CPU threads"):
        mc.decompress(data, model=tiny_model_path, threads=1)
    with pytest.raises(mc.EncodeError, match="threads"):
        mc.compress(x, steps=2, model=tiny_model_path, threads=0)
    blob = mc.compress_many([x, x], steps=2, model=tiny_model_path, threads=1)
    assert mc.read_header(blob).threads == 1


def test_a_bad_file_among_several(images, tiny_model_path):
    run(["encode", "a.png", "b.png", "c.png", "-o", "enc/", "--steps", "2", "--no-fallback", "-q"], images,
        tiny_model_path, check=0)
    data = bytearray((images / "enc" / "b.mlc").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (images / "enc" / "b.mlc").write_bytes(bytes(data))
    r = run(["decode", "enc/a.mlc", "enc/b.mlc", "enc/c.mlc", "-o", "out/", "-j", "2", "-q"], images,
            tiny_model_path)
    assert r.returncode == 3
    (err,) = errors(r)
    assert "enc/b.mlc" in err
    assert sorted(p.name for p in (images / "out").iterdir()) == ["a.png", "c.png"]  # nothing half-written
    for n in ("a", "c"):
        assert _same(images / "out" / f"{n}.png", pixels(images / f"{n}.png"))
