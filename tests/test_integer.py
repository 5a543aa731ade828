"""The integer model computes the same bits however it is run.

Every quantity that decides a probability (the latent posterior, the schedule,
eps-hat and mse-hat, the chain's Gaussians) must not depend on the float carrier
of the convolutions, on oneDNN (mkldnn) being used or not, on whether oneDNN reads
float32 operands as bf16 (it does on a CPU with bf16 units, such as AMX), on the
memory layout of the activations, on the thread count, or on which other tiles
share the batch. Each is checked here against a reference
evaluation with torch.equal, on tiny models with every kind of layer (latent,
context, attention, learned variance and end points).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, smooth_image

from mulancodec.exact import exactmath as em
from mulancodec.exact.intnorm import Tables
from mulancodec.exact.intops import bf16_operands, carrier, chunk_sums
from mulancodec.exact.quantize import quantize
from mulancodec.model.mulan import alpha_sigma, reverse_step, to_unit
from mulancodec.training.data import RandomCrops, batch_tensors

B = 16  # a batch this large takes NNPACK's path when oneDNN is off


def _tiles(cfg, n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = [smooth_image(rng, 48, 48, 3) for _ in range(4)]
    return RandomCrops(images, cfg.tile, cfg.context, seed).batch(0, n)


@pytest.fixture(scope="module", params=[("tiny", 2), ("tiny-lv", 2), ("tiny-nolatent", 2), ("tiny-lv", 1),
                                        ("tiny-unusual", 2), ("tiny-phase", 2)],
                ids=lambda p: f"{p[0]}-scheme{p[1]}")
def case(request):
    """(float model, integer model, inputs) for a tiny config and integer scheme."""
    name, scheme = request.param
    m = make_tiny_model(0, name)
    qm = quantize(m, _tiles(m.cfg, 24, 1), scheme=scheme)
    x, ctx = batch_tensors(_tiles(m.cfg, B, 2), "cpu")
    xu = to_unit(x)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        post = qm.latent_posterior(xu)
        c = None if post is None else (post[0] + post[1] * torch.randn(post[0].shape, generator=g)).float()
        gamma = qm.schedule(c, xu, ctx).gamma(torch.rand(B, generator=g)).expand_as(xu)
        a, s = alpha_sigma(gamma, em.EXACT)
        z = (a * xu + s * torch.randn(xu.shape, generator=g, dtype=torch.float64)).float()
    return m, qm, (xu, c, gamma.float(), z, ctx)


def outputs(qm, inputs) -> list[torch.Tensor]:
    """Everything the codec takes from the model, for these inputs."""
    xu, c, gamma, z, ctx = inputs
    post = qm.latent_posterior(xu)
    sched = qm.schedule(c, xu, ctx)
    eps, mse = qm.denoise(z, gamma, c, ctx)
    g_s, g_t = sched.gamma(0.25), sched.gamma(0.3)
    mean, std = reverse_step(z.double(), eps, g_s, g_t, mse, fns=qm.elementary)
    out = [eps, mean, std, g_s, g_t]
    return out + (list(post) if post is not None else []) + ([mse] if mse is not None else [])


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def test_outputs_are_float64_and_close_to_the_float_model(case):
    m, qm, (xu, c, gamma, z, ctx) = case
    with torch.no_grad():
        eps_f, _ = m.denoise(z, gamma, c, ctx)
    eps_i, _ = qm.denoise(z, gamma, c, ctx)
    assert eps_i.dtype == torch.float64
    err = float((eps_i - eps_f).pow(2).mean().sqrt())
    assert err < 0.05 * float(eps_f.pow(2).mean().sqrt()) + 1e-4


def test_a_context_schedule_reads_the_context_in_both_arithmetics():
    """`schedule_context`: the integer schedule follows the float one, and both change when
    the context does (smooth and busy surroundings get their own schedules)."""
    m = make_tiny_model(0, "tiny-unusual")
    qm = quantize(m, _tiles(m.cfg, 24, 1))
    x, ctx = batch_tensors(_tiles(m.cfg, B, 2), "cpu")
    xu = to_unit(x)
    with torch.no_grad():
        c = m.latent_posterior(xu)[0]
        g_f = m.schedule(c, xu, ctx).gamma(0.5)
        g_f_none = m.schedule(c, xu, None).gamma(0.5)
    g_i = qm.schedule(c, xu, ctx).gamma(0.5)
    g_i_none = qm.schedule(c, xu, None).gamma(0.5)
    rms = lambda d: float(d.double().pow(2).mean().sqrt())  # noqa: E731
    effect = rms(g_f - g_f_none)
    assert effect > 1e-3
    # the integer schedule's response to the context is the float one's, up to quantisation
    # error (grids fitted on other tiles); ignoring or misreading the context gives ~1 or more
    assert rms((g_i - g_i_none) - (g_f - g_f_none)) < 0.5 * effect


def test_a_phase_schedule_is_periodic_in_both_arithmetics():
    """`schedule_phase`: the offsets repeat with the period, so pixels at the same position
    modulo it share a schedule, and the integer schedule's offsets are the float one's."""
    m = make_tiny_model(0, "tiny-phase")
    qm = quantize(m, _tiles(m.cfg, 24, 1))
    x, ctx = batch_tensors(_tiles(m.cfg, B, 2), "cpu")
    xu = to_unit(x)
    with torch.no_grad():
        c = m.latent_posterior(xu)[0].mean(dim=(2, 3), keepdim=True).expand_as(m.latent_posterior(xu)[0])
        g_f = m.schedule(c, xu, ctx).gamma(0.5)
    g_i = qm.schedule(c, xu, ctx).gamma(0.5)
    for g in (g_f, g_i.float()):
        inner = g[:, :, 4:12, 4:12]  # away from the schedule net's zero padding
        for i in range(2):
            for j in range(2):
                cls = inner[:, :, i::2, j::2]
                assert float((cls - cls.mean(dim=(2, 3), keepdim=True)).abs().max()) < 5e-3
        # the first position starts less noisy (PHASE_START), by far more than the net's spread
        assert float((inner[:, :, 1::2, 1::2].mean() - inner[:, :, 0::2, 0::2].mean())) > 0.05
    grid = 2.0 ** 20
    assert torch.equal(qm.schedule_net.phase, torch.round(m.schedule_net.phase.double() * grid) / grid)
    assert float((g_i - g_f.double()).abs().max()) < 0.05


def test_float32_and_float64_carriers_agree(case):
    _, qm, inputs = case
    ref = outputs(qm, inputs)
    with carrier(torch.float64):
        assert same(outputs(qm, inputs), ref)


def test_mkldnn_on_and_off_agree(case):
    _, qm, inputs = case
    ref = outputs(qm, inputs)
    with torch.backends.mkldnn.flags(enabled=False):
        assert same(outputs(qm, inputs), ref)


def test_bf16_operands_on_and_off_agree(case):
    _, qm, inputs = case
    ref = outputs(qm, inputs)
    with bf16_operands(False):
        assert same(outputs(qm, inputs), ref)


def _layouts(t: torch.Tensor) -> list[torch.Tensor]:
    """Copies of t: contiguous, channels-last, and with other strides."""
    return [t.clone(), t.contiguous(memory_format=torch.channels_last), t.transpose(2, 3).clone().transpose(2, 3)]


def test_statistics_and_tables_do_not_depend_on_the_layout():
    """The activations are channels-last (the convolutions' layout); contiguous ones, or
    any other strides, give the same sums and table outputs, in the input's layout."""
    g = torch.Generator().manual_seed(0)
    r = torch.randint(-255, 256, (3, 6, 10, 12), generator=g).float()
    sums = [chunk_sums(x) for x in _layouts(r)]  # (each copy is overwritten with its squares)
    assert all(torch.equal(a, b) for s in sums[1:] for a, b in zip(s, sums[0]))
    assert torch.equal(sums[0][0], r.double().sum((2, 3))) and torch.equal(sums[0][1], (r.double() ** 2).sum((2, 3)))
    tables = Tables(6, em.silu, 1)
    tables.calibrate(r / 64)
    v = r * 3.7
    looked = [tables.lookup(x) for x in _layouts(v)]
    assert all(torch.equal(x, looked[0]) for x in looked)
    assert looked[1].is_contiguous(memory_format=torch.channels_last) and looked[0].is_contiguous()
    k = v.clamp(-4096, 4096).round().long() + 4096
    assert torch.equal(looked[0], tables.table.view(6, -1)[torch.arange(6).view(1, -1, 1, 1), k])


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_counts_agree(case, threads):
    _, qm, inputs = case
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = outputs(qm, inputs)
        torch.set_num_threads(threads)
        assert same(outputs(qm, inputs), ref)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("chunk", [1, 3])
def test_batch_composition_does_not_matter(case, chunk):
    """Tiles alone, in chunks, or in the other order give each tile the same outputs."""
    _, qm, inputs = case
    xu, c, gamma, z, ctx = inputs
    ref = qm.denoise(z, gamma, c, ctx)
    qm.chunk = chunk
    try:
        assert same([x for x in qm.denoise(z, gamma, c, ctx) if x is not None],
                    [x for x in ref if x is not None])
    finally:
        qm.chunk = None
    flip = torch.arange(B - 1, -1, -1)
    pick = [None if v is None else v[flip] for v in (z, gamma, c, ctx)]
    eps, _ = qm.denoise(*pick)
    assert torch.equal(eps[flip], ref[0])




def test_derived_values_follow_new_weights():
    """The layers keep values derived from their buffers (factors, host copies, weights in
    the carrier) from one call to the next. Loading other weights (then `prepare`, as
    loading does), or calibrating again, must give what a model made from those gives."""
    first, second = make_tiny_model(0, "tiny-lv"), make_tiny_model(1, "tiny-lv")
    tiles = _tiles(first.cfg, 24, 1)
    x, ctx = batch_tensors(_tiles(first.cfg, 4, 2), "cpu")
    xu = to_unit(x)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(xu.shape, generator=g)
    gamma = torch.full_like(z, -2.0)
    fresh = quantize(second, tiles)
    with torch.no_grad():
        c = fresh.latent_posterior(xu)[0].float()
        want = fresh.denoise(z, gamma, c, ctx)[0]
        reused = quantize(first, tiles)
        assert not torch.equal(reused.denoise(z, gamma, c, ctx)[0], want)  # derived values made
        reused.load_state_dict(fresh.state_dict())
        assert torch.equal(reused.prepare().denoise(z, gamma, c, ctx)[0], want)
        recal = quantize(first, tiles)
        recal.denoise(z, gamma, c, ctx)
        zc, gc = torch.randn(xu.shape, generator=g), fresh.gamma_norm(gamma).float()
        for m in (recal, fresh):
            m.denoiser.calibrate(second.denoiser, zc, gc, c, ctx)
        assert torch.equal(recal.denoise(z, gamma, c, ctx)[0], fresh.denoise(z, gamma, c, ctx)[0])
