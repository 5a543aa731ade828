"""Golden files: .mlc files written by an earlier build still decode to the same pixels.

The files in tests/golden/ were made by tests/golden/make_golden.py at T=3: with the
shipped CIFAR-10 model (CPU, one thread) version 1 files (FILES_V1) before version 2
existed and version 2 files (v2_*, with metadata) before version 3; with its integer
model (cifar10-int, integer scheme 1, two threads) version 3 files (v3_*), which decode
anywhere, and with each shipped photo-int (integer scheme 2) its own v3_scheme2 or
v3_photoN (make_golden.PHOTO_GOLDEN says which model made which); with a tiny integer model stored
beside them (v4_tiny_int.safetensors) v4_adapted, an adapted file (format version 4: deltas
to the model's norms and biases in the header), and with tiny-unusual's integer model
(v4_tiny_unusual_int.safetensors) v4_lowrank, adapted with rank-1 changes to its
full-resolution convolutions too. They pin the
on-disk format and the coding chain: if a change makes them decode differently
(or not at all), either the change is a bug, or it is a format change, which needs
a new container.VERSION and, deliberately, new golden files of that version. Files
of every earlier version must keep decoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_INT_MODEL, CIFAR10_MODEL
from golden.make_golden import PHOTO_GOLDEN, photo_model

import mulancodec as mc
from mulancodec.api import cpu_maker, get_model, legacy_env_tag
from mulancodec.coding import container as fmt
from mulancodec.exact.intops import bf16_operands

GOLDEN = Path(__file__).resolve().parent / "golden"
FILES_V1 = ["rgb", "stream", "grey", "rgba", "palette"]
FILES_V2 = ["v2_meta", "v2_stream", "v2_embedded"]
FILES_V3 = ["v3_meta", "v3_stream", *PHOTO_GOLDEN]
FILES_V4 = ["v4_adapted", "v4_lowrank"]
TINY_INT_MODEL = GOLDEN / "v4_tiny_int.safetensors"
LOWRANK_INT_MODEL = GOLDEN / "v4_tiny_unusual_int.safetensors"
VERSION_OF = {**{n: 1 for n in FILES_V1}, **{n: 2 for n in FILES_V2}, **{n: 3 for n in FILES_V3},
              **{n: 4 for n in FILES_V4}}
MODEL_OF = {**{n: CIFAR10_MODEL for n in FILES_V1 + FILES_V2}, **{n: CIFAR10_INT_MODEL for n in FILES_V3},
            **{n: photo_model(n) for n in PHOTO_GOLDEN},
            "v4_adapted": TINY_INT_MODEL, "v4_lowrank": LOWRANK_INT_MODEL}
FILES = FILES_V1 + FILES_V2 + FILES_V3 + FILES_V4
# The float model's golden files (v1, v2) were made on 2026-11-24 on the Intel Xeon development
# machine; their headers' environment tag predates the CPU maker in it. On a 2-core AMD EPYC
# with the same torch (2.13.0) and capability (AVX512) they fail to decode (2026-12-07): MKL
# and oneDNN compute other float results there. So they are held to decoding on Intel CPUs.
FLOAT_GOLDEN_MAKER = "GenuineIntel"


def float_file_decodes_here(data: bytes) -> None:
    """Skip, saying why, where a float model's golden file cannot decode: another torch
    version or CPU kind than the one it was made with, or another CPU maker."""
    h = mc.read_header(data)
    if not h.chain.machine_bound or all(r.method != fmt.METHOD_MODEL for r in h.images):
        return  # an integer model's file, or no image coded by the model
    if h.env_tag != legacy_env_tag(torch.device("cpu")):
        pytest.skip("the float golden files were made with another torch version or CPU kind")
    if cpu_maker() != FLOAT_GOLDEN_MAKER:
        pytest.skip(f"the float golden files were made on a {FLOAT_GOLDEN_MAKER} CPU, "
                    f"whose float results a {cpu_maker() or 'CPU of unknown maker'} does not repeat")


@pytest.fixture(scope="module")
def models():
    """name -> the shipped model its golden file was made with."""
    for p in set(MODEL_OF.values()):
        assert p.exists(), f"the golden files need the shipped model {p.parent.name}"
    loaded = {p: get_model(p, torch.device("cpu")) for p in set(MODEL_OF.values())}
    return {name: loaded[p] for name, p in MODEL_OF.items()}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    out = {}
    for f in ("expected.npz", "expected_v2.npz", "expected_v3.npz",
              *(f"expected_{n}.npz" for n in PHOTO_GOLDEN), "expected_v4.npz", "expected_v4_lowrank.npz"):
        with np.load(GOLDEN / f, allow_pickle=False) as z:
            out.update({k: z[k] for k in z.files})
    return out


@pytest.mark.parametrize("name", FILES)
def test_golden_file_has_its_format_version(name):
    data = (GOLDEN / f"{name}.mlc").read_bytes()
    assert data[:4] == fmt.MAGIC
    assert data[4] == VERSION_OF[name] in fmt.READ_VERSIONS  # old versions are still read
    h = mc.read_header(data)
    assert h.version == data[4]
    if name == "v2_embedded":  # a lone tiny image: the compact layout around its fallback
        assert h.compact and h.images[0].method == fmt.METHOD_EMBED
    else:
        assert all(r.method == fmt.METHOD_MODEL for r in h.images)  # bits-back, not an embedded PNG


def test_there_are_golden_files_of_the_current_version():
    assert fmt.VERSION in VERSION_OF.values(), ("container.VERSION changed: if that is deliberate, "
                                                "add golden files with tests/golden/make_golden.py")


@pytest.mark.parametrize("name", FILES_V2 + FILES_V3 + FILES_V4)
def test_golden_files_carry_their_metadata(name, models):
    from golden.make_golden import META

    data = (GOLDEN / f"{name}.mlc").read_bytes()
    float_file_decodes_here(data)
    first = mc.decompress_pictures(data, model=models[name], device="cpu")[0]
    assert first.meta.info() == META  # byte-identical blobs, the same text and numbers


@pytest.mark.parametrize("name", FILES)
def test_golden_file_decodes_to_its_pixels(name, models, expected):
    data = (GOLDEN / f"{name}.mlc").read_bytes()
    float_file_decodes_here(data)
    pics = mc.decompress_pictures(data, model=models[name], device="cpu")
    n = len([k for k in expected if k.startswith(f"{name}/") and k.count("/") == 1])
    assert len(pics) == n >= 1
    for i, pic in enumerate(pics):
        key = f"{name}/{i}"
        assert pic.mode == str(expected[key + "/mode"])
        assert pic.array().dtype == np.uint8
        assert np.array_equal(pic.array(), expected[key]), key
        if pic.mode == "P":
            assert pic.palette == expected[key + "/palette"].tobytes()


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kernels", ["oneDNN", "oneDNN, float32 operands", "no oneDNN"])
def test_version_3_golden_files_decode_under_any_threads_and_kernels(threads, kernels, models, expected):
    """Made with two threads (before the convolutions went channels-last and took bf16
    operands); nothing about the machine is in the header or needed."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.backends.mkldnn.flags(enabled=kernels != "no oneDNN"), \
                bf16_operands(kernels == "oneDNN"):
            for name in FILES_V3 + FILES_V4:
                pics = mc.decompress_pictures((GOLDEN / f"{name}.mlc").read_bytes(), model=models[name])
                assert all(np.array_equal(p.array(), expected[f"{name}/{i}"]) for i, p in enumerate(pics))
    finally:
        torch.set_num_threads(old)


def test_the_adapted_golden_file_carries_its_deltas(models):
    h = mc.read_header((GOLDEN / "v4_adapted.mlc").read_bytes())
    a = h.chain.adaptation
    assert a is not None and h.model_id == models["v4_adapted"].model_id  # the base model's id
    assert a.subset == 0 and a.params == 1267 and any(a.scales) and a.words


def test_the_lowrank_golden_file_changes_the_full_resolution_weights(models):
    from mulancodec.adapt import deltas as D
    from mulancodec.adapt.params import SUBSET_UP_LOWRANK, adapt_tensors

    lm = models["v4_lowrank"]
    a = mc.read_header((GOLDEN / "v4_lowrank.mlc").read_bytes()).chain.adaptation
    assert a is not None and a.subset == SUBSET_UP_LOWRANK and len(a.step_exps) == 4
    tensors = adapt_tensors(lm.config, a.subset)
    changes = D.decode(a, tensors).weight_deltas(tensors)
    assert [n for n, _ in changes] == ["denoiser.full.0.conv1.weight", "denoiser.full.0.conv2.weight"]
    assert all(dw.any() for _, dw in changes)


def test_todays_encoder_writes_the_version_3_golden_files_again(models):
    """Without adaptation (effort 7, --adapt 0: the defaults) an encoder writes exactly the
    files it wrote before efforts and adaptation existed: the version-3 golden files,
    byte for byte (an integer model's files do not depend on the machine)."""
    from golden.make_golden import STEPS, images_photo, images_v3

    for name, ims in {**images_v3(), **images_photo()}.items():
        lm = models[name]
        for kw in ({}, {"effort": 7}, {"adapt": 0}):
            if name.endswith("stream"):
                data = mc.compress_many(ims, model=lm, steps=STEPS, device="cpu", max_batch=2,
                                        names=[f"s{i}.png" for i in range(len(ims))], **kw)
            else:
                data = mc.compress(ims[0], model=lm, steps=STEPS, device="cpu", fallback=False, **kw)
            assert data == (GOLDEN / f"{name}.mlc").read_bytes(), (name, kw)
