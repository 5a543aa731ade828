"""The shipped model: it loads by default, round-trips real images, and beats nothing by accident."""
import numpy as np
import pytest

import mulancodec as mc
from mulancodec.sample import landscape
from mulancodec.weights import ModelFileError, load_model

from conftest import CIFAR_TEST, need


@pytest.fixture(scope="module")
def shipped():
    try:
        return load_model(None)
    except ModelFileError as e:
        pytest.skip(f"no shipped model: {e}")


def test_default_model_loads_with_its_recommended_steps(shipped, monkeypatch):
    monkeypatch.delenv("MULANCODEC_MODEL", raising=False)
    assert shipped.path.name == "mulan-default.safetensors"
    assert int(shipped.meta["default_steps"]) >= 1
    assert shipped.config.tile == 32


def test_round_trip_sample_at_small_T(shipped):
    img = landscape(40, 48)
    data, st = mc.compress_with_stats(img, model=shipped, steps=4, fallback=False)
    assert np.array_equal(mc.decompress(data, model=shipped), img)
    h = mc.read_header(data)
    assert st.tiles == 4 and h.direct >= 1 and sum(h.plan) + h.direct == 4


def test_stream_of_cifar_images_at_small_T(shipped):
    x = np.load(need(CIFAR_TEST))["x"][:3]
    data = mc.compress_many(list(x), model=shipped, steps=3)
    out = mc.decompress_many(data, model=shipped)
    assert all(np.array_equal(a, b) for a, b in zip(x, out))
