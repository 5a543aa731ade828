"""Training for the T the codec runs: learned reverse variances and learned end points.

(The chain pays the discrete-time loss with a learned variance too: tests/test_rate.py.)
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, smooth_image

from mulancodec.model import CONFIGS, MuLAN
from mulancodec.model.configs import TrainConfig
from mulancodec.training.loop import TrainArgs, train, warm_start


@pytest.fixture(scope="module")
def lv_run(tmp_path_factory) -> Path:
    """A tiny learned-variance model trained a few steps on the discrete loss at T = 5, 10."""
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("lv")
    np.savez(d / "train.npz", x=np.stack([smooth_image(rng, 32, 32, 3) for _ in range(48)]))
    code = train(TrainArgs([str(d / "train.npz")], d / "run", "tiny-lv", max_steps=12, progress=False))
    assert code == 0
    return d / "run"


def test_the_mix_cycles_through_its_steps():
    tc = TrainConfig(loss_steps=50, loss_steps_mix=(25, 50, 100))
    assert [tc.steps_at(k) for k in range(5)] == [25, 50, 100, 25, 50]
    assert TrainConfig(loss_steps=7).steps_at(3) == 7
    assert TrainConfig.from_dict(tc.to_dict()) == tc


def test_training_moves_the_variance_head_and_the_end_points(lv_run):
    from mulancodec.weights import load_model

    lm = load_model(lv_run)
    cfg = lm.model.cfg
    assert cfg.learned_variance and cfg.learned_ends
    fresh = MuLAN(cfg)
    assert not torch.equal(lm.model.schedule_net.ends, fresh.schedule_net.ends)
    assert not torch.equal(lm.model.denoiser.conv_out.bias[3:], fresh.denoiser.conv_out.bias[3:])
    log = [json.loads(line) for line in (lv_run / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["bpd"]) for r in log if r["kind"] == "train")


def test_mse_hat_is_in_the_unit_interval_and_absent_for_a_fixed_variance():
    m = make_tiny_model(config="tiny-lv", noise=0.5)
    z = torch.randn(2, 3, 16, 16)
    g = torch.full_like(z, -2.0)
    with torch.no_grad():
        eps_hat, mse_hat = m.denoise(z, g, torch.randn(2, 2, 2, 2))
    assert eps_hat.shape == mse_hat.shape == z.shape
    assert 0 <= float(mse_hat.min()) and float(mse_hat.max()) <= 1 and float(mse_hat.std()) > 0
    assert make_tiny_model().denoise(z, g, torch.randn(2, 2, 2, 2))[1] is None


@pytest.mark.parametrize("steps", [3, 10])
def test_t_trained_weights_round_trip_exactly(lv_run, steps, rng):
    import mulancodec

    img = smooth_image(rng, 37, 29, 3)
    data = mulancodec.compress(img, steps=steps, model=str(lv_run), fallback=False)
    assert np.array_equal(mulancodec.decompress(data, model=str(lv_run)), img)


def test_warm_start_keeps_eps_hat_and_starts_the_ends_at_the_configs(tmp_path):
    """From a fixed-variance context model: same eps-hat, mse-hat at its initial value."""
    from mulancodec.weights import save_model

    old = make_tiny_model(seed=4, config="tiny-context")
    save_model(old, tmp_path / "old.safetensors")
    new = MuLAN(CONFIGS["tiny-lv"].model).eval()
    warm_start(new, str(tmp_path / "old.safetensors"))
    z, g, c = torch.randn(2, 3, 16, 16), torch.full((2, 3, 16, 16), 1.0), torch.randn(2, 2, 2, 2)
    with torch.no_grad():
        e_new, m_new = new.denoise(z, g, c)
        assert torch.equal(e_new, old.eps(z, g, c))
    assert torch.allclose(m_new, torch.sigmoid(torch.tensor(-3.0)))
    with torch.no_grad():
        g0, g1 = new.schedule_net.end_points()
    assert abs(float(g0.detach()) - (-13.3)) < 1e-5 and abs(float(g1.detach()) - 5.0) < 1e-5


def test_a_learned_variance_needs_the_discrete_loss(tmp_path):
    cfg = CONFIGS["tiny-lv"].to_dict()
    cfg["train"]["loss_steps"] = 0
    cfg["train"]["loss_steps_mix"] = []
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="discrete-time loss"):
        train(TrainArgs([str(tmp_path / "d.npz")], tmp_path / "run", str(tmp_path / "c.json"),
                        max_steps=1, progress=False))
