"""Quantisation-aware training: the hooks simulate the integer model, and a QAT run trains,
resumes exactly and yields a plain float model that quantises to a working integer model.

(How much QAT recovers on the shipped photo model is not measured here: that needs
CPU hours of fine-tuning; see models/photo-int/MODEL_CARD.md.)
"""
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, smooth_image, training_like_inputs
from safetensors.torch import load_file

import mulancodec as mc
from mulancodec.exact import qat
from mulancodec.exact.quantize import quantize
from mulancodec.training.data import RandomCrops, batch_tensors
from mulancodec.training.loop import TrainArgs, train
from mulancodec.weights import load_model, save_integer_model


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = np.stack([smooth_image(rng, 32, 32, 3) for _ in range(64)])
    p = tmp_path_factory.mktemp("data") / "train.npz"
    np.savez(p, x=x)
    return p


def test_hooks_round_about_as_much_as_the_integer_model():
    """The hooks move the float denoiser's eps-hat about as far as the integer model's rounding
    does (their grids are the batch's own, so the errors are alike in size, not equal): what
    training under them makes the weights robust to."""
    m = make_tiny_model(0, "tiny")
    rng = np.random.default_rng(1)
    tiles = RandomCrops([smooth_image(rng, 48, 48, 3) for _ in range(4)], 16, 0, 0).batch(0, 32)
    qm = quantize(m, tiles)
    x, _ = batch_tensors(tiles, "cpu")
    c, gamma, z = training_like_inputs(m, x, torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = m.denoise(z, gamma, c)[0]
        integer = (qm.denoise(z, gamma, c)[0].float() - plain).pow(2).mean()
        handles = qat.attach(m)
        hooked = (m.denoise(z, gamma, c)[0] - plain).pow(2).mean()
        for h in handles:
            h.remove()
        assert torch.equal(m.denoise(z, gamma, c)[0], plain)  # removed: the plain model again
    assert 0.25 < float(hooked / integer) < 4.0


def test_gradients_pass_the_rounding():
    m = make_tiny_model(0, "tiny").train()
    qat.attach(m)
    x = torch.from_numpy(np.stack([smooth_image(np.random.default_rng(3), 16, 16, 3)] * 4)).permute(0, 3, 1, 2)
    m.terms(x, 10, torch.Generator().manual_seed(0)).total.mean().backward()
    assert float(m.denoiser.conv_out.weight.grad.abs().sum()) > 0
    assert all(not hasattr(c, "_qat_float") for c in m.modules())  # the float weights are back


def test_a_qat_run_resumes_exactly_and_quantises(train_npz, tmp_path):
    def run(out, steps, resume=False, quantize_=True):
        assert train(TrainArgs([str(train_npz)], out, "tiny", max_steps=steps, resume=resume,
                               progress=False, quantize=quantize_ and not resume)) == 0

    run(tmp_path / "a", 8)
    run(tmp_path / "b", 4)
    run(tmp_path / "b", 8, resume=True)  # the saved recipe keeps it quantisation-aware
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["quantize"] is True
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run(tmp_path / "c", 8, quantize_=False)
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert c.keys() == a.keys() and not all(torch.equal(a[k], c[k]) for k in a)  # the rounding mattered
    lm = load_model(tmp_path / "a")
    rng = np.random.default_rng(5)
    qm = quantize(lm.model, RandomCrops([smooth_image(rng, 48, 48, 3)], 16, 0, 0).batch(0, 16))
    save_integer_model(qm, tmp_path / "int.safetensors", lm.model_id)
    img = smooth_image(rng, 20, 24, 3)
    data = mc.compress(img, model=tmp_path / "int.safetensors", steps=3, fallback=False)
    assert data[4] == 3 and np.array_equal(mc.decompress(data, model=tmp_path / "int.safetensors"), img)
