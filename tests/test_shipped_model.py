"""The shipped model: it loads by default, round-trips real images, and beats nothing by accident."""
import numpy as np
import pytest
from conftest import CIFAR_TEST, need

import mulancodec as mc
from mulancodec.imaging.sample import landscape
from mulancodec.weights import load_model
from mulancodec.zoo import ModelFileError, weights_in


@pytest.fixture(scope="module")
def shipped():
    """The CIFAR-10 model (fast at small T); the photo model is the default."""
    return load_model("cifar10")


def test_default_model_is_the_photo_models_integer_version(monkeypatch):
    """Files made with the defaults decode on any machine: the default is an integer model."""
    monkeypatch.delenv("MULANCODEC_MODEL", raising=False)
    lm = load_model(None)
    assert lm.path.parent.name == "photo-int" and lm.meta["format"] == "mulancodec-integer-model"
    assert lm.meta["float_model_id"] == load_model("photo").model_id
    assert int(lm.meta["default_steps"]) >= 1
    assert lm.config.context > 0


def test_models_load_by_name():
    zoo = mc.shipped_models()
    assert {"photo", "cifar10"} <= set(zoo)
    for name, path in zoo.items():
        lm = load_model(name)
        assert lm.path == path and lm.meta["model_id"] == lm.model_id
        assert (path.parent / "MODEL_CARD.md").is_file() and (path.parent / "config.json").is_file()
    assert load_model("cifar10").config.tile == 32
    total = sum(p.stat().st_size for p in zoo.values())
    # old models stay so that their files decode (a file names its model by id): 7 generations
    # of photo models, 2 of cifar10, float and integer (60.6 MB when the sixth shipped; 50.4 MB
    # once the integer models were packed with xz; 50.3 MB with the seventh, every model packed)
    assert total < 64 * 2 ** 20


def test_setup_cfg_installs_every_shipped_model():
    """A pip install (not editable) gets exactly the files of models/: each model's weights
    (plain or packed), config and card, and nothing that is not there."""
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    listed = {k: v.split() for k, v in cfg["options.data_files"].items()
              if k.startswith("share/mulancodec/models/")}
    for d in sorted((root / "models").iterdir()):
        weights = weights_in(d)
        if weights is None:
            continue
        want = {f"models/{d.name}/{f}" for f in (weights.name, "config.json", "MODEL_CARD.md")}
        assert set(listed.pop(f"share/mulancodec/models/{d.name}", [])) == want, d.name
    assert not listed, f"setup.cfg installs models that are not in models/: {sorted(listed)}"


def test_unknown_name_is_refused():
    with pytest.raises(ModelFileError, match="shipped models"):
        load_model("no-such-model")


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


def test_decode_picks_the_shipped_model_by_id(monkeypatch):
    monkeypatch.delenv("MULANCODEC_MODEL", raising=False)
    img = landscape(16, 24)
    data = mc.compress(img, model="cifar10", steps=2, fallback=False)
    assert mc.read_header(data).model_id == load_model("cifar10").model_id
    assert np.array_equal(mc.decompress(data), img)  # no model given: found by its id


def test_absent_model_is_refused_naming_its_id(tiny_model_path, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("MULANCODEC_MODEL", raising=False)
    data = mc.compress(landscape(16, 16), model=tiny_model_path, steps=2, fallback=False)
    mid = mc.read_header(data).model_id
    with pytest.raises(mc.MissingModelError, match=f"made with model {mid}, which is not installed"):
        mc.decompress(data)
    (tmp_path / "t.mlc").write_bytes(data)
    r = subprocess.run([sys.executable, "-m", "mulancodec.cli", "decode", str(tmp_path / "t.mlc"),
                        "-o", str(tmp_path / "t.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and mid in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.png").exists()
