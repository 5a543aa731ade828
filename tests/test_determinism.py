"""Determinism: the same input always gives the same bytes, and decoding does not depend on
the process, on what else is in the stream or batch, or on the caller's torch thread count.

The encoder records its CPU thread count in the header and the decoder pins it for
the duration of the decode (restoring the caller's afterwards); this is checked
across processes: files encoded with 1 and with 3 threads, each decoded in a fresh
process whose ambient thread count is the other one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mlc_mutants as mm
import numpy as np
import pytest
import torch
from conftest import smooth_image
from PIL import Image

import mulancodec as mc
from mulancodec.api import get_model
from mulancodec.coding import container as fmt

T = 2


@pytest.fixture(scope="module")
def lm(tiny_model_path):
    return get_model(tiny_model_path, torch.device("cpu"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    pal = Image.fromarray(smooth_image(rng, 9, 7, 3)).convert("P", palette=Image.ADAPTIVE, colors=8)
    return {"rgb": smooth_image(rng, 20, 18, 3), "grey": smooth_image(rng, 7, 11, 1)[..., 0],
            "rgba": smooth_image(rng, 6, 9, 4), "palette": pal}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread unless a test says otherwise (fast on a busy machine); restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_repeat_encodes_are_identical(lm, images):
    a, g = images["rgb"], images["grey"]
    single = mc.compress(a, model=lm, steps=T, fallback=False)
    stream = mc.compress_many(list(images.values()), model=lm, steps=T)
    lone = mc.compress(a[:2, :2], model=lm, steps=T)  # the embedded fallback
    # unrelated work in between: other encodes and decodes, the global RNGs moved
    mc.decompress(mc.compress(g, model=lm, steps=3, fallback=False), model=lm)
    torch.manual_seed(123)
    torch.randn(100)
    np.random.seed(9)
    assert mc.compress(a, model=lm, steps=T, fallback=False) == single
    assert mc.compress_many(list(images.values()), model=lm, steps=T) == stream
    assert mc.compress(a[:2, :2], model=lm, steps=T) == lone
    assert mc.compress(Image.fromarray(a), model=lm, steps=T, fallback=False) == single  # PIL or numpy


def test_batch_and_stream_composition_do_not_change_pixels(lm, images):
    a = images["rgb"]
    alone = mc.decompress(mc.compress(a, model=lm, steps=T, fallback=False), model=lm)
    others = [images["grey"], a, images["palette"], a]
    stream = mc.compress_many(others, model=lm, steps=T)
    small_batches = mc.compress_many(others, model=lm, steps=T, max_batch=1)
    assert mc.read_header(small_batches).plan == [1] * len(mc.read_header(small_batches).plan)
    assert len(mc.read_header(stream).plan) < len(mc.read_header(small_batches).plan)
    for data in (stream, small_batches):
        out = mc.decompress_many(data, model=lm)
        assert same(out[1], alone) and same(out[3], alone) and same(out[1], a)
        assert same(out[0], images["grey"]) and same(out[2], images["palette"])
    # decoding other files in between does not change what a file decodes to
    mc.decompress_many(small_batches, model=lm)
    assert all(same(x, y) for x, y in zip(mc.decompress_many(stream, model=lm), out))


def test_decoding_restores_the_callers_thread_count(lm, images):
    data = mc.compress(images["rgb"], model=lm, steps=T, fallback=False)
    assert mc.read_header(data).threads == 1
    torch.set_num_threads(2)
    assert same(mc.decompress(data, model=lm), images["rgb"])
    assert torch.get_num_threads() == 2


def test_encoder_thread_count_is_bounded(lm, images, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 10_000)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    data = mc.compress(images["rgb"], model=lm, steps=T, fallback=False)
    assert mc.read_header(data).threads == fmt.MAX_THREADS


# -- across processes ----------------------------------------------------------------------

WORKER = r"""
import json, sys
import numpy as np, torch
import mulancodec as mc
job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
out = {}
if "encode" in job:
    x = np.load(job["encode"])
    data = mc.compress(x, model=job["model"], steps=job["steps"], fallback=False)
    open(job["to"], "wb").write(data)
for path, ref in job.get("decode", []):
    got = mc.decompress(open(path, "rb").read(), model=job["model"])
    out[path] = bool(np.array_equal(got, np.load(ref)))
out["threads after"] = torch.get_num_threads()
print(json.dumps(out))
"""


def _worker(job: dict) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")  # idle threads sleep: 3 threads on 2 busy cores
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], capture_output=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout.decode().splitlines()[-1])


def test_thread_counts_and_fresh_processes(lm, images, tiny_model_path, tmp_path):
    """Encode with 1 and with 3 threads in two processes; decode each in a third process
    whose ambient thread count is the other one; compare with an in-process encode."""
    a = images["rgb"]
    np.save(tmp_path / "a.npy", a)
    here = mc.compress(a, model=lm, steps=T, fallback=False)  # this process, 1 thread
    (tmp_path / "here.mlc").write_bytes(here)
    m = str(tiny_model_path)
    jobs = [dict(threads=1, encode=str(tmp_path / "a.npy"), to=str(tmp_path / "t1.mlc"), model=m, steps=T,
                 decode=[[str(tmp_path / "here.mlc"), str(tmp_path / "a.npy")]]),
            dict(threads=3, encode=str(tmp_path / "a.npy"), to=str(tmp_path / "t3.mlc"), model=m, steps=T)]
    with ThreadPoolExecutor(2) as ex:
        r1, _ = ex.map(_worker, jobs)
    t1, t3 = (tmp_path / "t1.mlc").read_bytes(), (tmp_path / "t3.mlc").read_bytes()
    assert t1 == here  # a fresh process encodes to the same bytes
    assert r1[str(tmp_path / "here.mlc")]  # and decodes this process's file exactly
    assert mc.read_header(t1).threads == 1 and mc.read_header(t3).threads == 3
    ref = str(tmp_path / "a.npy")
    with ThreadPoolExecutor(2) as ex:
        r3, r1 = ex.map(_worker, [dict(threads=1, model=m, decode=[[str(tmp_path / "t3.mlc"), ref]]),
                                  dict(threads=3, model=m, decode=[[str(tmp_path / "t1.mlc"), ref]])])
    assert r3[str(tmp_path / "t3.mlc")] and r3["threads after"] == 1
    assert r1[str(tmp_path / "t1.mlc")] and r1["threads after"] == 3
    torch.set_num_threads(2)  # and in this process, under a third count
    assert same(mc.decompress(t3, model=lm), a) and same(mc.decompress(t1, model=lm), a)
    # The pin matters: the model's float results can change with the thread count. A header
    # that lies about it decodes exactly when the two counts coded the same payload (the
    # numerics agreed), and is refused otherwise (here: on x86 with oneDNN they differ).
    lie = mm.rewrite(t3, threads=1)
    if np.array_equal(mm.parts(t1)[1], mm.parts(t3)[1]):
        assert same(mc.decompress(lie, model=lm), a)
    else:
        with pytest.raises(mc.DecodeError):
            mc.decompress(lie, model=lm)


# -- the deterministic() context -----------------------------------------------------------

def _torch_state() -> tuple:
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.is_grad_enabled())


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
@pytest.mark.parametrize("warn_only", [False, True])
def test_deterministic_restores_torch_settings_and_environment(kind, warn_only, monkeypatch):
    """Everything the context pins is the caller's again afterwards (warn_only included), and it
    changes no environment variable (on CUDA it only checks the cuBLAS one; see determinism.py)."""
    from mulancodec.coding.determinism import deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    old_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.benchmark)
    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        before, env = _torch_state(), dict(os.environ)
        with deterministic(torch.device(kind), 1):
            assert not torch.is_grad_enabled()
            if kind == "cpu":
                assert torch.get_num_threads() == 1
            else:
                assert torch.are_deterministic_algorithms_enabled()
                assert not torch.is_deterministic_algorithms_warn_only_enabled()
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
        assert _torch_state() == before and dict(os.environ) == env
    finally:
        torch.use_deterministic_algorithms(False)
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = old_flags


def test_deterministic_restores_after_an_error():
    from mulancodec.coding.determinism import deterministic

    torch.set_num_threads(2)
    before, env = _torch_state(), dict(os.environ)
    with pytest.raises(KeyError):
        with deterministic(torch.device("cpu"), 1):
            raise KeyError("boom")
    assert _torch_state() == before and dict(os.environ) == env


def test_cuda_refuses_a_non_deterministic_cublas_config(monkeypatch):
    """Set after cuBLAS started, the variable has no effect, so the context never sets it: it
    refuses to run CUDA coding without it (the package sets it at import)."""
    from mulancodec.coding.codecs import CodingError
    from mulancodec.coding.determinism import deterministic

    for value in (None, ":0:0"):
        if value is None:
            monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        else:
            monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", value)
        before, env = _torch_state(), dict(os.environ)
        with pytest.raises(CodingError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8.*before"):
            with deterministic(torch.device("cuda"), 1):
                pass
        assert _torch_state() == before and dict(os.environ) == env


@pytest.mark.parametrize("preset", [None, ":16:8"])
def test_importing_the_package_sets_the_cublas_config_first(preset):
    """`import mulancodec` sets CUBLAS_WORKSPACE_CONFIG before torch is imported (so before CUDA
    can start), and keeps a value the process set itself."""
    code = ("import sys, os\nimport mulancodec\n"
            "print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))\n")
    env = dict(os.environ)
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if preset:
        env["CUBLAS_WORKSPACE_CONFIG"] = preset
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [preset or ":4096:8"]
    from mulancodec.coding import determinism

    order = subprocess.run(  # the variable is set by the time torch is imported
        [sys.executable, "-c", "import builtins, os\nreal = builtins.__import__\nseen = []\n"
         "def spy(name, *a, **k):\n    if name == 'torch' and not seen:\n"
         "        seen.append(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))\n    return real(name, *a, **k)\n"
         "builtins.__import__ = spy\nimport mulancodec\nprint(seen[0])"],
        capture_output=True, env=env, timeout=300)
    assert order.stdout.decode().split() == [preset or determinism.CUBLAS_CONFIG], order.stderr.decode()
