"""Golden files: .mlc files written by an earlier build still decode to the same pixels.

The files in tests/golden/ were made once by tests/golden/make_golden.py with the
shipped CIFAR-10 model (CPU, one thread, T=3). They pin the on-disk format and the
coding chain: if a change makes them decode differently (or not at all), either the
change is a bug, or it is a format change, which needs a new container.VERSION and,
deliberately, new golden files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mulancodec as mc
from mulancodec.api import env_tag, get_model
from mulancodec.coding import container as fmt

from conftest import CIFAR10_MODEL

GOLDEN = Path(__file__).resolve().parent / "golden"
FILES = ["rgb", "stream", "grey", "rgba", "palette"]


@pytest.fixture(scope="module")
def cifar():
    assert CIFAR10_MODEL.exists(), "the golden files need the shipped cifar10 model"
    return get_model(CIFAR10_MODEL, torch.device("cpu"))


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", FILES)
def test_golden_file_has_the_current_format_version(name):
    data = (GOLDEN / f"{name}.mlc").read_bytes()
    assert data[:4] == fmt.MAGIC
    assert data[4] == fmt.VERSION, ("container.VERSION changed: if that is deliberate, regenerate "
                                    "the golden files with tests/golden/make_golden.py")
    h = mc.read_header(data)
    assert all(r.method == fmt.METHOD_MODEL for r in h.images)  # bits-back, not an embedded PNG


@pytest.mark.parametrize("name", FILES)
def test_golden_file_decodes_to_its_pixels(name, cifar, expected):
    data = (GOLDEN / f"{name}.mlc").read_bytes()
    h = mc.read_header(data)
    try:
        pics = mc.decompress_pictures(data, model=cifar, device="cpu")
    except mc.DecodeError:
        if h.env_tag != env_tag(torch.device("cpu")):  # float results may differ on another CPU/torch
            pytest.skip("the golden files were made with another torch version or CPU kind")
        raise
    n = len([k for k in expected if k.startswith(f"{name}/") and k.count("/") == 1])
    assert len(pics) == n >= 1
    for i, pic in enumerate(pics):
        key = f"{name}/{i}"
        assert pic.mode == str(expected[key + "/mode"])
        assert pic.array().dtype == np.uint8
        assert np.array_equal(pic.array(), expected[key]), key
        if pic.mode == "P":
            assert pic.palette == expected[key + "/palette"].tobytes()
