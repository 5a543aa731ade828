"""The command line: files, folders, pipes, streams, info, exit codes, no partial outputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image
from PIL import Image

CLI = [sys.executable, "-m", "mulancodec.cli"]


def run(args, cwd, input=None, env_model=None, check=None):
    env = dict(os.environ)
    if env_model:
        env["MULANCODEC_MODEL"] = str(env_model)
    r = subprocess.run(CLI + args, cwd=cwd, input=input, capture_output=True, env=env, timeout=300)
    if check is not None:
        assert r.returncode == check, r.stderr.decode()
    return r


@pytest.fixture()
def images(tmp_path, rng):
    Image.fromarray(smooth_image(rng, 20, 30, 3)).save(tmp_path / "a.png")
    Image.fromarray(smooth_image(rng, 17, 9, 1)[..., 0]).save(tmp_path / "b.png")
    Image.fromarray(smooth_image(rng, 12, 12, 4)).save(tmp_path / "c.png")
    return tmp_path


def same(p, q):
    a, b = Image.open(p), Image.open(q)
    return a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


def test_encode_decode_info(images, tiny_model_path):
    m = tiny_model_path
    run(["encode", "a.png", "-o", "a.mlc", "--steps", "3", "--no-fallback"], images, env_model=m, check=0)
    run(["decode", "a.mlc", "-o", "back.png"], images, env_model=m, check=0)
    assert same(images / "a.png", images / "back.png")
    r = run(["info", "a.mlc", "--json"], images, check=0)
    d = json.loads(r.stdout)
    assert d["images"] == 1 and d["steps"] == 3 and d["image_list"][0]["method"] == "bits-back"
    assert "bits per subpixel" in run(["info", "a.mlc"], images, check=0).stdout.decode()


def test_no_overwrite_without_force(images, tiny_model_path):
    m = tiny_model_path
    run(["encode", "a.png", "-o", "a.mlc", "--steps", "2"], images, env_model=m, check=0)
    before = (images / "a.mlc").read_bytes()
    r = run(["encode", "b.png", "-o", "a.mlc", "--steps", "2"], images, env_model=m, check=5)
    assert b"exists" in r.stderr and (images / "a.mlc").read_bytes() == before
    run(["encode", "b.png", "-o", "a.mlc", "--steps", "2", "-f"], images, env_model=m, check=0)
    assert (images / "a.mlc").read_bytes() != before


def test_pipes(images, tiny_model_path):
    m = tiny_model_path
    enc = run(["encode", "-", "--steps", "2", "--no-fallback"], images,
              input=(images / "a.png").read_bytes(), env_model=m, check=0)
    assert enc.stdout[:4] == b"\x89MLC"
    dec = run(["decode", "-", "-o", "-"], images, input=enc.stdout, env_model=m, check=0)
    (images / "piped.png").write_bytes(dec.stdout)
    assert same(images / "a.png", images / "piped.png")


def test_many_files_and_stream(images, tiny_model_path):
    m = tiny_model_path
    r = run(["encode", "a.png", "b.png", "c.png", "-o", "enc/", "--steps", "2", "--json"], images,
            env_model=m, check=0)
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [Path(x["output"]).name for x in lines] == ["a.mlc", "b.mlc", "c.mlc"]
    run(["encode", "--stream", "a.png", "b.png", "c.png", "-o", "set.mlc", "--steps", "2"], images,
        env_model=m, check=0)
    run(["decode", "set.mlc", "-o", "out/"], images, env_model=m, check=0)
    for n in ("a", "b", "c"):
        assert same(images / f"{n}.png", images / "out" / f"{n}.png")
    assert json.loads(run(["info", "set.mlc", "--json"], images, check=0).stdout)["images"] == 3


@pytest.mark.parametrize("content,code", [(b"", 3), (b"not an image at all", 3), (b"\x89MLC\x01", 3)])
def test_bad_inputs_give_one_line_errors(images, tiny_model_path, content, code):
    (images / "bad.mlc").write_bytes(content)
    r = run(["decode", "bad.mlc", "-o", "x.png"], images, env_model=tiny_model_path, check=code)
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mulancodec: error:")
    assert "Traceback" not in r.stderr.decode() and not (images / "x.png").exists()
    (images / "bad.png").write_bytes(content)
    r = run(["encode", "bad.png", "-o", "y.mlc"], images, env_model=tiny_model_path, check=3)
    assert not (images / "y.mlc").exists() and "Traceback" not in r.stderr.decode()


def test_missing_model_and_wrong_model(images, tiny_model_path, other_model_path):
    r = run(["encode", "a.png", "-o", "z.mlc"], images, env_model="/nope/model.safetensors", check=4)
    assert b"model" in r.stderr and not (images / "z.mlc").exists()
    run(["encode", "a.png", "-o", "a.mlc", "--steps", "2", "--no-fallback"], images,
        env_model=tiny_model_path, check=0)
    r = run(["decode", "a.mlc", "-o", "w.png"], images, env_model=other_model_path, check=4)
    assert b"made with model" in r.stderr and not (images / "w.png").exists()


def test_unsupported_mode_and_help(images, tiny_model_path):
    Image.new("I;16", (4, 4)).save(images / "deep.png")
    r = run(["encode", "deep.png", "-o", "d.mlc"], images, env_model=tiny_model_path, check=3)
    assert b"unsupported image mode" in r.stderr
    h = run(["--help"], images, check=0).stdout.decode()
    assert "Exit codes" in h and "encode" in h
    assert run(["--version"], images, check=0).stdout.decode().startswith("mulancodec, version")


def test_demo_runs(images, tiny_model_path):
    r = run(["demo", "--steps", "2"], images, env_model=tiny_model_path, check=0)
    out = r.stdout.decode()
    assert "round trip exact: yes (effort 3, T=2;" in out and "PNG" in out and "WebP" in out


# -- effort levels and adaptation ---------------------------------------------------------------

def test_effort_levels_on_the_command_line(images, tiny_model_path, monkeypatch):
    monkeypatch.setenv("MULANCODEC_MODEL", str(tiny_model_path))
    for effort, steps in (("1", None), ("2", 10), ("7", 6)):
        code, out, err = cli_in_process("encode", images / "a.png", "-o", images / f"e{effort}.mlc",
                                        "--effort", effort, "--json", "--no-fallback")
        assert code == 0, err
        info = json.loads(err if not out else out)
        assert info["effort"] == int(effort) and info["steps"] == steps and info["adapt"] is None
        assert same(images / "a.png", _decoded(images, f"e{effort}"))
    assert (images / "e1.mlc").read_bytes()[5] == 0  # a compact file: no model at all
    code, _, err = cli_in_process("encode", images / "a.png", "-o", images / "x.mlc", "--adapt", "2")
    assert code == 3 and "integer model" in err  # the tiny model is a float model
    code, _, err = cli_in_process("encode", images / "a.png", "-o", images / "x.mlc", "--effort", "10")
    assert code == 2
    help_text = cli_in_process("encode", "--help")[1]
    assert "Effort levels (--effort):" in help_text and "9: T=100, adapt 100 steps" in help_text
    assert "--adapt" in help_text


def _decoded(folder, stem):
    code, _, err = cli_in_process("decode", folder / f"{stem}.mlc", "-o", folder / f"{stem}.png", "-f")
    assert code == 0, err
    return folder / f"{stem}.png"


def test_encode_adapt_with_an_integer_model(images, tmp_path, monkeypatch):
    import mlc_mutants as mm

    from mulancodec import zoo
    from mulancodec.adapt import encoder

    flm, ilm = mm.tiny_int_pair(tmp_path)
    monkeypatch.setattr(zoo, "find_shipped", lambda mid: flm.path if mid == flm.model_id else None)
    monkeypatch.setattr(encoder, "pays", lambda report: True)
    Image.fromarray(smooth_image(np.random.default_rng(2), 40, 40, 3)).save(images / "big.png")
    code, out, err = cli_in_process("encode", images / "big.png", "-o", images / "big.mlc", "--adapt", "30",
                                    "--steps", "2", "--no-fallback", "--model", ilm.path, "--json")
    assert code == 0, err
    rep = json.loads(out)["adapt"]
    assert rep["kept"] and rep["steps"] == 30 and rep["delta_bytes"] > 0
    code, out, _ = cli_in_process("info", images / "big.mlc", "--json")
    assert json.loads(out)["adaptation"]["params"] == rep["params"]
    code, _, err = cli_in_process("decode", images / "big.mlc", "-o", images / "big2.png", "--model", ilm.path)
    assert code == 0, err
    assert same(images / "big.png", images / "big2.png")


# -- exit codes by exception type -----------------------------------------------------------

def cli_in_process(*args):
    """The CLI in this process (fast: torch and the tiny model are already loaded)."""
    from click.testing import CliRunner

    from mulancodec.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.stdout, r.stderr


def test_corrupt_payload_exits_3_not_4(corpus, tiny_model_path, tmp_path):
    """A payload that does not decode is the file's problem (3), not the model's (4): the
    model id already matched, and the exit code follows the exception's type."""
    import mlc_mutants as mm

    from mulancodec.cli import EXIT_INPUT

    good = corpus[0].data
    words = mm.parts(good)[1].copy()
    words[0] ^= 1  # the word the decoder pops last: the stream does not unwind to its seed
    bad = tmp_path / "bad.mlc"
    bad.write_bytes(mm.rewrite(good, payload=words))  # header and CRCs valid: only the payload is off
    code, _, err = cli_in_process("decode", bad, "-o", tmp_path / "bad.png", "--model", tiny_model_path)
    lines = err.splitlines()
    assert code == EXIT_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("mulancodec: error:")
    assert "the file is corrupt" in lines[0]
    assert not (tmp_path / "bad.png").exists()
    code, out, _ = cli_in_process("verify", bad, "--model", tiny_model_path)
    assert code == EXIT_INPUT and out.startswith(f"{bad}: CORRUPT (")


def test_exit_codes_follow_exception_types():
    """The exit code depends on the exception's type only, never on its message."""
    import mulancodec as mc
    from mulancodec.cli import EXIT_ERROR, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, CliError
    from mulancodec.cli.errors import classify, failure
    from mulancodec.coding.codecs import CodingError

    text = "this file was made with model 0123456789abcdef, not the model in use"
    assert classify(mc.MissingModelError(text)) == EXIT_MODEL  # a DecodeError too: the model wins
    assert classify(mc.ModelFileError("x")) == EXIT_MODEL
    assert classify(mc.ThreadsMismatch(text)) == EXIT_USAGE
    for e in (mc.DecodeError(text), mc.FormatError(text), mc.ImageError("x"), mc.EncodeError("x"),
              CodingError(text)):
        assert classify(e) == EXIT_INPUT, type(e)
    assert classify(RuntimeError(text)) is None
    assert failure(RuntimeError(text)) == (text, EXIT_ERROR)
    assert failure(PermissionError(13, "denied"))[1] == EXIT_OUTPUT
    assert failure(CliError("out exists", EXIT_OUTPUT)) == ("out exists", EXIT_OUTPUT)
    assert failure(ValueError("")) == ("ValueError", EXIT_ERROR)
