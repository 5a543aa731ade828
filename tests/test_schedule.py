"""The noise schedule: monotone, pinned at both ends, closed-form derivative."""
import torch
from conftest import make_tiny_model

from mulancodec.model import CONFIGS, MuLAN
from mulancodec.model.schedule import Schedule


def random_schedule(seed: int = 0) -> Schedule:
    g = torch.Generator().manual_seed(seed)
    a, b, d = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    return Schedule(a, b, d, -13.3, 5.0, 1e-4)


def test_schedule_is_monotone_and_hits_the_ends():
    s = random_schedule()
    ts = torch.linspace(0, 1, 201, dtype=torch.float64)
    g = torch.stack([s.gamma(float(t)) for t in ts])
    assert torch.all(g[1:] - g[:-1] > 0)
    assert torch.allclose(s.gamma(0.0), torch.tensor(-13.3, dtype=torch.float64))
    assert torch.allclose(s.gamma(1.0), torch.tensor(5.0, dtype=torch.float64))


def test_closed_form_derivative_matches_autograd():
    s = random_schedule(1)
    for t0 in (0.0, 0.13, 0.5, 0.97):
        t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
        g = s.gamma(t)
        grad = torch.autograd.grad(g.sum(), t)[0]
        assert torch.allclose(grad, s.dgamma(t0).sum(), rtol=1e-9)
        # per element too
        for idx in [(0, 0, 0, 0), (1, 2, 3, 1)]:
            t2 = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
            gi = s.gamma(t2)[idx]
            assert torch.allclose(torch.autograd.grad(gi, t2)[0], s.dgamma(t0)[idx], rtol=1e-9)


def test_model_schedules_per_kind():
    x = torch.zeros(2, 3, 16, 16)
    for name in ("tiny", "tiny-scalar", "tiny-nolatent", "tiny-linear"):
        m = make_tiny_model(config=name, noise=0.5)
        c = torch.randn(2, *m.latent_shape(16, 16)) if m.encoder is not None else None
        s = m.schedule(c, x)
        g = s.gamma(torch.tensor([0.3, 0.7]))
        assert torch.all(s.gamma(1.0) > s.gamma(0.9))
        if name == "tiny":  # per-subpixel and different between the two latents
            assert g.shape == (2, 3, 16, 16) and g[0].std() > 0
        if name == "tiny-linear":
            assert torch.allclose(s.gamma(0.5), torch.tensor(-13.3 + 0.5 * 18.3))


def test_mulan_schedule_starts_linear():
    m = MuLAN(CONFIGS["tiny"].model)
    c = torch.randn(1, *m.latent_shape(16, 16))
    s = m.schedule(c, torch.zeros(1, 3, 16, 16))
    assert torch.allclose(s.gamma(0.5), torch.full((1, 3, 16, 16), -13.3 + 0.5 * 18.3), atol=0.05)


def test_phase_offsets_repeat_with_the_period_and_need_the_conv_mulan_schedule():
    """`schedule_phase`: a fresh model's first position modulo the period is less noisy at
    every 0 < t < 1 (the other three share one schedule), the end points stay, and a config
    that cannot hold it is refused."""
    import dataclasses

    import pytest

    from mulancodec.model.schedule import tiled_phase

    m = MuLAN(CONFIGS["tiny-phase"].model).requires_grad_(False)
    c = torch.zeros(1, *m.latent_shape(16, 16))
    s = m.schedule(c, torch.zeros(1, 3, 16, 16))
    for t in (0.2, 0.5, 0.8):
        g = s.gamma(t)[0, :, 4:12, 4:12]
        first, others = g[:, 0::2, 0::2], torch.stack([g[:, 0::2, 1::2], g[:, 1::2, 0::2], g[:, 1::2, 1::2]])
        assert float(first.max()) < float(others.min()) - 0.05
        assert float(others.std(dim=0).max()) < 2e-3
    for end in (0.0, 1.0):
        assert torch.allclose(s.gamma(end), s.gamma(end).flatten()[0])
    p = torch.arange(3 * 3 * 4.0).reshape(9, 2, 2)
    t = tiled_phase(p, 6, 4)
    assert t.shape == (1, 9, 6, 4) and torch.equal(t[0, :, 4:6, 2:4], p)
    assert torch.equal(t[0, :, 1, 3], p[:, 1, 1])
    base = CONFIGS["tiny-phase"].model
    for bad in (dict(schedule="scalar"), dict(latent_channels=0), dict(schedule_phase=3)):
        with pytest.raises(ValueError, match="schedule_phase"):
            dataclasses.replace(base, **bad).validate()
