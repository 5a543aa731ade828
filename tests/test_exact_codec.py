"""Format version 3: files of an integer model decode anywhere.

Encoded with 2 threads, they decode exactly with 1 and 3 threads in fresh
processes, with the network run in batches of another size, in float64, or
without oneDNN; the header records nothing about the machine, and the bytes
themselves do not depend on the encoder's thread count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_model, smooth_image

import mulancodec as mc
from mulancodec.cli import main
from mulancodec.coding import container as fmt
from mulancodec.exact.intops import bf16_operands, carrier
from mulancodec.exact.quantize import quantize
from mulancodec.training.data import RandomCrops
from mulancodec.weights import load_model, save_integer_model, save_model
from mulancodec.zoo import ModelFileError

T = 3


@pytest.fixture(scope="module", params=["tiny-lv", "tiny-unusual", "tiny-dec", "tiny-phase"])
def layout(request):
    """A tiny model with everything (latent, context, learned variance and ends); and one of
    a layout no shipped model has, whose integer version nothing was written for."""
    return request.param


@pytest.fixture(scope="module")
def int_path(tmp_path_factory, layout):
    """The layout's tiny integer model."""
    m = make_tiny_model(0, layout)
    rng = np.random.default_rng(4)
    images = [smooth_image(rng, 48, 48, 3) for _ in range(4)]
    qm = quantize(m, RandomCrops(images, m.cfg.tile, m.cfg.context, 0).batch(0, 24))
    p = tmp_path_factory.mktemp("int") / "tiny-int.safetensors"
    save_integer_model(qm, p, "0" * 16, {"default_steps": str(T)})
    return p


@pytest.fixture(scope="module")
def ilm(int_path):
    return load_model(int_path)


@pytest.fixture(scope="module")
def image():
    return smooth_image(np.random.default_rng(8), 40, 52, 3)


@pytest.fixture(scope="module")
def data(ilm, image):
    return mc.compress(image, model=ilm, fallback=False, max_batch=4)


def test_header_records_nothing_about_the_machine(data, ilm):
    h = mc.read_header(data)
    assert data[4] == h.version == fmt.VERSION == 3
    assert (h.backend, h.threads, h.env_tag, h.model_id) == ("any", 0, 0, ilm.model_id)
    assert len(h.plan) > 1  # several batches: the network batch sizes vary along the stream


def test_round_trip(data, ilm, image):
    assert np.array_equal(mc.decompress(data, model=ilm), image)


@pytest.mark.parametrize("how", ["network batches of 1", "network batches of 3", "float64 carrier",
                                 "without oneDNN", "float32 operands only"])
def test_decodes_however_the_network_runs(data, ilm, image, how):
    try:
        if how.startswith("network"):
            ilm.model.chunk = int(how.split()[-1])
            out = mc.decompress(data, model=ilm)
        elif how == "float64 carrier":
            with carrier(torch.float64):
                out = mc.decompress(data, model=ilm)
        elif how == "float32 operands only":  # encoded with bf16 operands where the CPU has them
            with bf16_operands(False):
                out = mc.decompress(data, model=ilm)
        else:
            with torch.backends.mkldnn.flags(enabled=False):
                out = mc.decompress(data, model=ilm)
    finally:
        ilm.model.chunk = None
    assert np.array_equal(out, image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_files_cross_between_cpu_and_gpu(int_path, data, image):
    """A CPU file decodes on the GPU; the GPU writes the CPU's bytes, and they decode on the CPU."""
    gpu = load_model(int_path, "cuda")
    assert np.array_equal(mc.decompress(data, model=gpu, device="cuda"), image)
    made = mc.compress(image, model=gpu, device="cuda", fallback=False, max_batch=4)
    assert made == data
    assert np.array_equal(mc.decompress(made, model=load_model(int_path), device="cpu"), image)


def test_a_float_models_files_stay_version_2(lm, image):
    data = mc.compress(image, model=lm, steps=2, fallback=False)
    assert data[4] == fmt.FLOAT_VERSION == mc.read_header(data).version == 2
    assert np.array_equal(mc.decompress(data, model=lm), image)


def test_the_float_model_cannot_decode_it(data, int_path, tmp_path):
    float_path = tmp_path / "float.safetensors"
    save_model(make_tiny_model(0, "tiny-lv"), float_path)
    with pytest.raises(mc.DecodeError, match="made with model"):
        mc.decompress(data, model=float_path)


def test_info_reports_an_integer_file(data, tmp_path):
    (tmp_path / "a.mlc").write_bytes(data)
    r = CliRunner().invoke(main, ["info", str(tmp_path / "a.mlc"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["format_version"], d["precision"], d["threads"]) == (3, "integer", None)


def test_integer_model_file_is_checked(int_path, tmp_path):
    from safetensors.torch import load_file, save_file

    from mulancodec.zoo import read_metadata

    state, meta = load_file(str(int_path)), read_metadata(int_path)
    bad = tmp_path / "bad.safetensors"
    key = next(k for k in state if k.endswith("conv1.weight"))
    save_file({**state, key: state[key].float()}, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match="wrong shape or type"):
        load_model(bad)
    save_file(state, str(bad), metadata={**meta, "scheme": "99"})
    with pytest.raises(ModelFileError, match="integer scheme"):
        load_model(bad)
    big = state[key].clone()
    big[0, 0, 0, 0] = 256  # beyond a limb: not exact in bf16/TF32 inputs, nor within the budget
    save_file({**state, key: big}, str(bad), metadata=meta)
    with pytest.raises(ModelFileError, match="exact integer sums"):
        load_model(bad)


# -- across processes ----------------------------------------------------------------------

WORKER = r"""
import json, sys
import numpy as np, torch
import mulancodec as mc
job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
out = {}
if "encode" in job:
    data = mc.compress(np.load(job["encode"]), model=job["model"], fallback=False, max_batch=4)
    open(job["to"], "wb").write(data)
for path, ref in job.get("decode", []):
    out[path] = bool(np.array_equal(mc.decompress(open(path, "rb").read(), model=job["model"]), np.load(ref)))
out["threads"] = torch.get_num_threads()
print(json.dumps(out))
"""


def _worker(job: dict) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(job["threads"]))
    r = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], capture_output=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout.decode().splitlines()[-1])


def test_encode_with_2_threads_decode_with_1_and_3(int_path, data, image, tmp_path):
    np.save(tmp_path / "a.npy", image)
    m, ref = str(int_path), str(tmp_path / "a.npy")
    enc = _worker(dict(threads=2, encode=ref, to=str(tmp_path / "t2.mlc"), model=m))
    assert enc["threads"] == 2
    t2 = (tmp_path / "t2.mlc").read_bytes()
    assert t2 == data  # the encoder's thread count does not change a byte (this process: 1)
    with ThreadPoolExecutor(2) as ex:
        r1, r3 = ex.map(_worker, [dict(threads=n, model=m, decode=[[str(tmp_path / "t2.mlc"), ref]])
                                  for n in (1, 3)])
    assert r1[str(tmp_path / "t2.mlc")] and r1["threads"] == 1
    assert r3[str(tmp_path / "t2.mlc")] and r3["threads"] == 3


def test_eval_gives_an_integer_models_bound_at_T(int_path, layout, tmp_path):
    """`eval` of an integer model: -ELBO_T from the codec's definitions (no continuous bound),
    close to its float model's on the same tiles, and T = 0 refused in one line."""
    from mulancodec.exact.quantcost import difference, paired_elbo, stratified_k

    rng = np.random.default_rng(9)
    np.savez(tmp_path / "d.npz", x=np.stack([smooth_image(rng, 32, 32, 3) for _ in range(6)]))
    args = ["eval", "--data", str(tmp_path / "d.npz"), "--model", str(int_path), "--steps", "6", "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["bpd"] is None and res["strata"] == stratified_k(6) == 6 and res["n_images"] == 24
    from mulancodec.training.data import image_tiles, load_images

    m = make_tiny_model(0, layout)
    tiles = image_tiles(load_images(str(tmp_path / "d.npz")), m.cfg.tile, m.cfg.context)
    both = paired_elbo({"float": m, "int": load_model(int_path).model}, tiles, 6, 6, batch=64)  # eval's batch
    assert res["bpd_T"] == pytest.approx(float(both["int"]["total"].mean()), rel=1e-9)
    d, se = difference(both["float"]["total"], both["int"]["total"])
    assert abs(d) < 0.05 * float(both["float"]["total"].mean())
    r = CliRunner().invoke(main, args[:-3] + ["--steps", "0"])
    assert r.exit_code == 2 and "continuous" in r.output and "Traceback" not in r.output


def test_a_tile_batch_remembers_only_the_very_same_tensors():
    """coding.bitsback.Remembering: a step's alpha and sigma are computed once per gamma tensor,
    with the bits a fresh computation gives; an equal but other tensor is computed afresh."""
    from mulancodec.coding.bitsback import Remembering
    from mulancodec.exact.exactmath import EXACT
    from mulancodec.model.mulan import alpha_sigma, reverse_step

    fns = Remembering(EXACT)
    g_s, g_t = torch.linspace(-10, 3, 50, dtype=torch.float64), torch.linspace(-9, 4, 50, dtype=torch.float64)
    first = alpha_sigma(g_s, fns)
    assert alpha_sigma(g_s, fns) is first  # remembered
    assert alpha_sigma(g_s.clone(), fns) is not first  # another tensor: computed again
    assert all(torch.equal(a, b) for a, b in zip(first, alpha_sigma(g_s, EXACT)))
    z, e, m = (torch.rand(50, dtype=torch.float64) for _ in range(3))
    for _ in range(2):  # the second time from memory: the same bits
        got = reverse_step(z, e, g_s, g_t, m, fns=fns)
        assert all(torch.equal(a, b) for a, b in zip(got, reverse_step(z, e, g_s, g_t, m, fns=EXACT)))
