"""Adaptation to each image (format version 4): fine-tune, quantise, code, apply exactly.

With a tiny float model and its integer model (made here): which tensors are adapted and
where they live in the integer model, that applying deltas changes exactly those buffers
and refreshes what was derived from them, that adapted files round-trip and carry their
block, that the minimum-description-length rule falls back to the plain file, and the
effort levels.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import mlc_mutants as mm
from conftest import make_tiny_model, smooth_image

import mulancodec as mc
from mulancodec.adapt import deltas as D
from mulancodec.adapt import encoder as E
from mulancodec.adapt.params import SUBSET_ALL, SUBSET_NAMES, SUBSET_UP, SUBSET_UP_LOWRANK, adapt_tensors
from mulancodec.coding import container as fmt
from mulancodec.coding.chainspec import ADAPTED_VERSION, EFFORTS, effort_plan
from mulancodec.coding.reader import read_file
from mulancodec.exact.quantize import quantize
from mulancodec.model import CONFIGS, MuLAN
from mulancodec.training.data import RandomCrops
from mulancodec.weights import load_model, save_integer_model, save_model

T = 3


@pytest.fixture(scope="module")
def float_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("adapt") / "tiny-lv.safetensors"
    save_model(make_tiny_model(0, "tiny-lv"), p, extra={"default_steps": str(T)})
    return p


@pytest.fixture(scope="module")
def flm(float_path):
    return load_model(float_path)


@pytest.fixture(scope="module")
def ilm(flm, tmp_path_factory):
    """The tiny float model's integer model, recording the float model's id."""
    rng = np.random.default_rng(4)
    images = [smooth_image(rng, 48, 48, 3) for _ in range(4)]
    qm = quantize(flm.model, RandomCrops(images, 16, 8, 0).batch(0, 24))
    p = tmp_path_factory.mktemp("adapt-int") / "tiny-lv-int.safetensors"
    save_integer_model(qm, p, flm.model_id, {"default_steps": str(T)})
    return load_model(p)


@pytest.fixture(scope="module")
def image():
    return smooth_image(np.random.default_rng(8), 40, 52, 3)


def random_deltas(lm, scale: float = 0.05, exps=(7, 7, 7), seed: int = 0) -> D.Deltas:
    tensors = adapt_tensors(lm.config, SUBSET_ALL)
    rng = np.random.default_rng(seed)
    fd = {t.float_name: torch.from_numpy(rng.laplace(0, scale, t.numel)) for t in tensors}
    return D.quantize(fd, tensors, SUBSET_ALL, exps)


@pytest.fixture()
def always(monkeypatch):
    """Keep the deltas whatever the estimate says (the rule itself is tested below)."""
    monkeypatch.setattr(E, "pays", lambda report: True)


@pytest.fixture(scope="module")
def adapted(ilm, flm, image):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "pays", lambda report: True)
        return mc.compress_with_stats(image, model=ilm, adapt=30, float_model=flm, fallback=False)


@pytest.mark.parametrize("config", ["tiny", "tiny-lv", "tiny-unusual", "tiny-nolatent", "photo-lv"])
def test_every_norm_and_bias_has_a_float64_home(config):
    cfg = CONFIGS[config].model
    tensors = adapt_tensors(cfg, SUBSET_ALL)
    model = MuLAN(cfg)
    want = {n for n, p in model.named_parameters()
            if n.endswith(".bias") or (n.endswith(".weight") and p.dim() == 1)}
    assert {t.float_name for t in tensors} == want
    assert len({t.int_name for t in tensors}) == len(tensors)
    for subset in SUBSET_NAMES:
        if subset == SUBSET_UP_LOWRANK and not cfg.full_blocks:  # no convolution to change
            with pytest.raises(ValueError, match="no full-resolution"):
                adapt_tensors(cfg, subset)
            continue
        assert {t.float_name for t in adapt_tensors(cfg, subset) if not t.factor} <= want
    if config == "photo-lv":  # the shipped photo model's layout
        assert sum(t.numel for t in tensors) == 8087


def test_deltas_code_and_decode(ilm):
    tensors = adapt_tensors(ilm.config, SUBSET_ALL)
    d = random_deltas(ilm)
    d.q[3][:] = 0  # a tensor of zeros is not coded
    block = D.encode(d, tensors)
    assert block.scales[3] == D.SCALE_ZERO and block.params == sum(t.numel for t in tensors)
    back = D.decode(block, tensors)
    assert all(np.array_equal(a, b) for a, b in zip(d.q, back.q))
    # the block's size is about what the Laplace codes cost: within a few words
    est = sum(D._laplace_bits(q, D.scale_of(c)) for q, c in zip(d.q, block.scales) if c)
    assert abs(8 * len(block.words) - est) < 96


def test_no_stored_delta_exceeds_the_bound(ilm):
    tensors = adapt_tensors(ilm.config, SUBSET_ALL)
    big = {t.float_name: torch.full((t.numel,), 1e6, dtype=torch.float64) for t in tensors}
    for e in (1, 7, 30):
        d = D.quantize(big, tensors, SUBSET_ALL, (e, e, e))
        assert max(float(np.abs(v).max()) for _, v in d.values(tensors)) <= D.MAX_DELTA


def test_apply_changes_exactly_the_buffers_and_refreshes_derived_values(ilm, image):
    tensors = adapt_tensors(ilm.config, SUBSET_ALL)
    d = random_deltas(ilm)
    x = torch.from_numpy(image[:16, :16]).permute(2, 0, 1)[None].double()
    z, g = (x / 127.5 - 1.0), torch.full((1, 3, 16, 16), -3.0, dtype=torch.float64)
    before = {k: v.clone() for k, v in ilm.model.state_dict().items()}
    base_out = ilm.model.denoise(z, g, torch.zeros(1, 2, 2, 2))[0]  # fills the derived caches
    model = D.apply(ilm.model, tensors, d)
    assert all(torch.equal(before[k], v) for k, v in ilm.model.state_dict().items())  # base untouched
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {t.int_name for t, q in zip(tensors, d.q) if q.any()}
    for t, v in d.values(tensors):  # one float64 addition per parameter
        got = model.state_dict()[t.int_name].reshape(-1)
        assert torch.equal(got, before[t.int_name].reshape(-1) + torch.from_numpy(v))
    fresh = load_model(ilm.path).model  # no caches at all
    fresh = D.apply(fresh, tensors, d)
    out = model.denoise(z, g, torch.zeros(1, 2, 2, 2))[0]
    assert torch.equal(out, fresh.denoise(z, g, torch.zeros(1, 2, 2, 2))[0])
    assert not torch.equal(out, base_out)


def test_the_integer_model_follows_the_float_models_deltas(ilm, flm, image):
    """Deltas mean the same in both models: the adapted integer model's eps-hat moves with
    the adapted float model's, up to the integer model's own (small) error."""
    tensors = adapt_tensors(ilm.config, SUBSET_ALL)
    d = random_deltas(ilm, scale=0.05)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 16, 16, generator=gen)
    g = torch.full((4, 3, 16, 16), -2.0)
    c = torch.randn(4, 2, 2, 2, generator=gen)
    f0, f1 = (m.denoise(z, g, c)[0].double() for m in (flm.model, D.apply_float(flm.model, tensors, d)))
    i1 = D.apply(ilm.model, tensors, d).denoise(z, g, c)[0]
    i0 = ilm.model.denoise(z, g, c)[0]
    moved = (f1 - f0).pow(2).mean().sqrt()
    assert moved > 0.01
    assert ((i1 - i0) - (f1 - f0)).pow(2).mean().sqrt() < 0.3 * moved


def test_an_adapted_file_round_trips(adapted, ilm, image):
    data, st = adapted
    h = mc.read_header(data)
    assert data[4] == h.version == ADAPTED_VERSION and h.model_id == ilm.model_id
    a = h.chain.adaptation
    assert a is not None and a.subset == E.subset_for(ilm.config) == E.SUBSET
    assert a.step_exps == E.step_exps(image.size)
    assert st.adapt is not None and st.adapt.kept and st.adapt.delta_bytes == len(fmt.adapt_block_bytes(a))
    assert st.adapt.nonzero > 0 and st.adapt.params == a.params
    assert np.array_equal(mc.decompress(data, model=ilm), image)


def test_an_adapted_file_needs_its_deltas(adapted, ilm):
    """Without its deltas (or with others) the file does not decode to any pixels."""
    data = adapted[0]
    h, words = read_file(data)
    other = D.encode(random_deltas(ilm, seed=5), adapt_tensors(ilm.config, SUBSET_ALL))
    for chain in (dataclasses.replace(h.chain, adaptation=other),
                  dataclasses.replace(h.chain, adaptation=None, version=3)):
        with pytest.raises(mc.DecodeError):
            mc.decompress(fmt.write(dataclasses.replace(h, chain=chain), words), model=ilm)


def test_larger_images_get_finer_steps():
    sizes = [10, 10_000, 196_608, 720_000, 4_000_000, 10 ** 9]
    exps = [E.step_exps(n)[0] for n in sizes]
    assert exps == sorted(exps) and exps[0] == E.STEP_EXP_RANGE[0] and exps[-1] == E.STEP_EXP_RANGE[1]
    assert E.step_exps(196_608) == (3, 3, 3) and E.step_exps(720_000) == (4, 4, 4)


def test_the_deltas_are_kept_only_when_they_pay(adapted):
    st = adapted[1].adapt
    need = 8 * st.delta_bytes + E.MARGIN_SE * st.saved_se_bits
    assert E.pays(dataclasses.replace(st, saved_bits=need + 1))
    assert not E.pays(dataclasses.replace(st, saved_bits=need))
    assert st.saved_se_bits > 0 and st.seconds > 0


def test_deltas_that_do_not_pay_leave_todays_file(ilm, flm, image, monkeypatch):
    monkeypatch.setattr(E, "pays", lambda report: False)
    plain = mc.compress(image, model=ilm, fallback=False)
    data, st = mc.compress_with_stats(image, model=ilm, adapt=30, float_model=flm, fallback=False)
    assert data == plain == mc.compress(image, model=ilm, fallback=False, adapt=0, effort=7)
    assert st.adapt is not None and not st.adapt.kept and "cost more" in st.adapt.note


def test_what_cannot_be_adapted(ilm, flm, image, lm):
    small = image[:10, :10]  # no whole tile to fine-tune on: coded as always
    data, st = mc.compress_with_stats(small, model=ilm, adapt=3, float_model=flm, fallback=False)
    assert data == mc.compress(small, model=ilm, fallback=False) and "tile" in st.adapt.note
    with pytest.raises(mc.EncodeError, match="integer model"):  # a float model: refused
        mc.compress(image, model=lm, adapt=3, fallback=False)
    data, st = mc.compress_with_stats(image, model=lm, effort=8, fallback=False, steps=2)
    assert data[4] == 2 and not st.adapt.kept  # an effort level's adaptation is skipped
    with pytest.raises(mc.EncodeError, match="float model"):  # its float model is not installed
        mc.compress(image, model=ilm, adapt=3, fallback=False)
    with pytest.raises(mc.EncodeError, match="float model"):
        mc.compress(image, model=ilm, adapt=3, float_model=lm, fallback=False)


def test_effort_levels(ilm, image):
    assert [effort_plan(k)[1] for k in range(2, 8)] == [10, 15, 20, 25, 35, None]
    assert effort_plan(9)[1:] == (100, 100) and effort_plan(8)[1:] == (None, 50)
    assert effort_plan(9, steps=7, adapt=0)[1:] == (7, 0) and set(EFFORTS) == set(range(1, 10))
    with pytest.raises(mc.EncodeError, match="effort"):
        mc.compress(image, model=ilm, effort=10)
    plain = mc.compress(image, model=ilm, fallback=False)
    assert mc.compress(image, model=ilm, fallback=False, effort=7) == plain
    assert mc.read_header(mc.compress(image, model=ilm, fallback=False, effort=2)).steps == 10
    assert mc.read_header(mc.compress(image, model=ilm, fallback=False, effort=2, steps=4)).steps == 4
    data, st = mc.compress_with_stats(image, model=ilm, effort=1)
    h = mc.read_header(data)
    assert h.compact and st.embedded and st.effort == 1 and st.adapt is None
    assert np.array_equal(mc.decompress(data), image)
    many = mc.compress_many([image, image[:9, :7]], model=ilm, effort=1)
    assert all(r.method == fmt.METHOD_EMBED for r in mc.read_header(many).images)
    assert all(np.array_equal(a, b) for a, b in zip(mc.decompress_many(many), [image, image[:9, :7]]))


def test_a_stream_adapts_on_all_its_images(ilm, flm, image, always):
    other = smooth_image(np.random.default_rng(3), 33, 20, 1)[..., 0]
    data = mc.compress_many([image, other], model=ilm, adapt=30, float_model=flm)
    assert mc.read_header(data).chain.adaptation is not None
    back = mc.decompress_many(data, model=ilm)
    assert np.array_equal(back[0], image) and np.array_equal(back[1], other)


def test_pillow_takes_effort_and_adapt(ilm, image, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MULANCODEC_MODEL", str(ilm.path))
    Image.fromarray(image).save(tmp_path / "e1.mlc", effort=1)
    assert mc.read_header((tmp_path / "e1.mlc").read_bytes()).compact
    Image.fromarray(image).save(tmp_path / "e2.mlc", effort=2, adapt=0, fallback=False)
    assert mc.read_header((tmp_path / "e2.mlc").read_bytes()).steps == 10
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e2.mlc")), image)


def test_a_linear_schedule_steps_as_far_first_and_falls_to_nothing(flm, image):
    """The "linear" schedule takes the full step size first (its first step is constant's) and
    less after (its second step is not); a one-step run is the same either way."""
    from mulancodec.adapt.tune import finetune, finetune_snapshots, own_tiles

    tiles = own_tiles([image], flm.config.tile, flm.config.context)
    tensors = adapt_tensors(flm.config, SUBSET_ALL)
    const = finetune_snapshots(flm.model, tiles, tensors, [1, 2], T, seed=3)
    lin = finetune_snapshots(flm.model, tiles, tensors, [1, 2], T, seed=3, schedule="linear")
    for name in const[1]:
        assert torch.equal(const[1][name], lin[1][name])
    assert any(not torch.allclose(const[2][n], lin[2][n]) for n in const[2])
    one = finetune(flm.model, tiles, tensors, 1, T, seed=3, schedule="linear")
    assert all(torch.equal(one[n], const[1][n]) for n in one)
    with pytest.raises(ValueError, match="schedule"):
        finetune(flm.model, tiles, tensors, 1, T, schedule="cosine")


def test_a_step_takes_distinct_tiles_and_repeats_a_small_image_whole():
    """A batch no larger than the image is distinct tiles; a larger one holds every tile
    as often as fits and then distinct ones, so no tile is drawn twice more than another."""
    from mulancodec.adapt.tune import batch_indices

    rng = np.random.default_rng(0)
    few = batch_indices(rng, 20, 8)
    assert len(few) == 8 and len(set(few.tolist())) == 8 and few.max() < 20
    many = batch_indices(rng, 5, 12)
    counts = np.bincount(many, minlength=5)
    assert len(many) == 12 and counts.min() == 2 and counts.max() == 3 and counts.sum() == 12
    exact = batch_indices(rng, 4, 8)
    assert np.array_equal(np.sort(exact), np.repeat(np.arange(4), 2))


# --- the low-rank subset: rank-1 changes to the full-resolution convolutions' weights ---


@pytest.fixture(scope="module")
def lowrank(tmp_path_factory):
    """tiny-unusual (it has a full-resolution block) and its integer model."""
    return mm.tiny_int_pair(tmp_path_factory.mktemp("lowrank"), "tiny-unusual", default_steps=T)


def random_factors(ilm, seed: int = 0, size: int = 3, exp: int = D.FACTOR_EXP0) -> D.Deltas:
    """The low-rank subset's deltas: norms and biases at 2^-7, factor integers up to `size`."""
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    rng = np.random.default_rng(seed)
    q = [rng.integers(-size, size + 1, t.numel) if t.factor else rng.integers(-3, 4, t.numel) for t in tensors]
    return D.Deltas(SUBSET_UP_LOWRANK, (7, 7, 7, exp), [v.astype(np.int64) for v in q])


def test_the_lowrank_subset_adds_a_factor_pair_per_full_resolution_conv(lowrank):
    flm, ilm = lowrank
    up, low = adapt_tensors(ilm.config, SUBSET_UP), adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    assert low[:len(up)] == up
    pairs = [(t.float_name, t.factor, t.numel) for t in low[len(up):]]
    assert pairs == [(f"denoiser.full.0.{c}.weight", f, n) for c in ("conv1", "conv2")
                     for f, n in (("B", 8), ("A", 8 * 9))]
    assert E.subset_for(ilm.config) == SUBSET_UP_LOWRANK and E.subset_for(CONFIGS["tiny-lv"].model) == SUBSET_UP
    assert fmt.adapt_kinds(SUBSET_UP_LOWRANK) == 4 and fmt.adapt_kinds(SUBSET_UP) == 3


def test_a_factor_pairs_product_rounds_half_away_from_zero():
    qb, qa = np.array([1, -1, 3]), np.array([1, 3])
    assert D.lowrank_product(qb, qa, D.FACTOR_EXP0 + 1).tolist() == [[1, 2], [-1, -2], [2, 5]]
    assert D.lowrank_product(qb, qa, D.FACTOR_EXP0 - 2).tolist() == [[4, 12], [-4, -12], [12, 36]]
    big = np.full(3, D.MAX_Q)
    assert D.lowrank_product(big, big[:2], 1).max() == D.MAX_Q ** 2 << (D.FACTOR_EXP0 - 1)  # no overflow


def test_factor_pairs_change_the_weights_clamped_and_the_zero_point_bias(lowrank, image):
    _, ilm = lowrank
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    d = random_factors(ilm, size=40)
    before = {k: v.clone() for k, v in ilm.model.state_dict().items()}
    model = D.apply(ilm.model, tensors, d)
    assert all(torch.equal(before[k], v) for k, v in ilm.model.state_dict().items())  # base untouched
    state, mods = model.state_dict(), dict(model.named_modules())
    for name, dw in d.weight_deltas(tensors):
        conv = mods[name.rsplit(".", 1)[0]]
        old = before[name].long().reshape(dw.shape[0], -1).numpy()
        want = np.clip(old + dw, -255, 255)
        assert np.array_equal(state[name].long().reshape(dw.shape[0], -1).numpy(), want)
        assert (np.abs(want) == 255).any() and conv.exact()
        assert conv.in_zero is not None  # the norm's grid has zero points: the bias absorbs them
        change = torch.from_numpy((want - old).reshape(conv.weight.shape).sum((2, 3))).double()
        bias_name = name.rsplit(".", 1)[0] + ".bias"
        offset = (change * conv.in_zero.view(1, -1)).sum(1)
        assert not torch.equal(state[bias_name], before[bias_name])
        assert torch.allclose(state[bias_name] + offset * conv.w_scale, before[bias_name], atol=0.05)
    fresh = D.apply(load_model(ilm.path).model, tensors, d)  # no derived caches: the same network
    gen = torch.Generator().manual_seed(0)
    z, g, c = torch.randn(2, 3, 16, 16, generator=gen), torch.full((2, 3, 16, 16), -2.0), torch.zeros(2, 2, 2, 2)
    ilm.model.denoise(z, g, c)  # fill the base's caches first: the copy must not reuse them
    assert torch.equal(model.denoise(z, g, c)[0], fresh.denoise(z, g, c)[0])
    assert not torch.equal(model.denoise(z, g, c)[0], ilm.model.denoise(z, g, c)[0])


def test_weight_changes_past_the_exact_budget_are_refused():
    from mulancodec.exact.intops import WEIGHT_BUDGET, QConv

    conv = QConv(32, 2, 3, 1, 1)
    conv.weight.fill_(200)
    D._add_weights(conv, np.full((2, 32 * 9), 28, dtype=np.int64))  # 228 x 288 = 65,664: within
    assert int(conv.weight.long().abs().flatten(1).sum(1).max()) <= WEIGHT_BUDGET
    with pytest.raises(D.DeltaError, match="inexact"):
        D._add_weights(conv, np.full((2, 32 * 9), 1, dtype=np.int64))


def test_the_integer_model_follows_the_float_models_factors(lowrank):
    flm, ilm = lowrank
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    d = random_factors(ilm, size=8)
    d.q = [q if t.factor else np.zeros_like(q) for q, t in zip(d.q, tensors)]  # the factors alone
    gen = torch.Generator().manual_seed(0)
    z, g = torch.randn(4, 3, 16, 16, generator=gen), torch.full((4, 3, 16, 16), -2.0)
    c = torch.randn(4, 2, 2, 2, generator=gen)
    f0, f1 = (m.denoise(z, g, c)[0].double() for m in (flm.model, D.apply_float(flm.model, tensors, d, ilm.model)))
    i0, i1 = ilm.model.denoise(z, g, c)[0], D.apply(ilm.model, tensors, d).denoise(z, g, c)[0]
    moved = (f1 - f0).pow(2).mean().sqrt()
    assert moved > 0.01
    assert ((i1 - i0) - (f1 - f0)).pow(2).mean().sqrt() < 0.3 * moved


def test_float_factors_quantise_to_their_product(lowrank):
    """A fine-tuning's factors (float model units) become integers whose product is the
    float product in weight units, to within the grid."""
    flm, ilm = lowrank
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    rng = np.random.default_rng(3)
    fd = {D.key_of(t): torch.from_numpy(rng.normal(0, 0.05 if t.factor else 0.01, t.numel)) for t in tensors}
    e = D.factor_exp(fd, tensors, ilm.model, 8.0)
    d = D.quantize(fd, tensors, SUBSET_UP_LOWRANK, (7, 7, 7, e), ilm.model)
    assert 3 <= np.sqrt(np.mean(np.concatenate([q for q, t in zip(d.q, tensors) if t.factor]) ** 2)) <= 20
    for name, dw in d.weight_deltas(tensors):
        w_out, w_in = D.conv_scales(ilm.model, name)
        fb, fa = fd[f"{name}#B"].numpy(), fd[f"{name}#A"].numpy()
        want = np.outer(fb / w_out, fa.reshape(len(w_in), -1) * w_in[:, None])
        err = np.abs(dw - want).max() / np.abs(want).max()
        assert err < 0.25


@pytest.fixture(scope="module")
def lowrank_adapted(lowrank, image):
    flm, ilm = lowrank
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "pays", lambda report: True)
        return mc.compress_with_stats(image, model=ilm, adapt=30, float_model=flm, fallback=False)


def test_a_lowrank_adapted_file_round_trips(lowrank, lowrank_adapted, image):
    _, ilm = lowrank
    data, st = lowrank_adapted
    a = mc.read_header(data).chain.adaptation
    assert a is not None and a.subset == SUBSET_UP_LOWRANK and len(a.step_exps) == 4
    tensors = adapt_tensors(ilm.config, a.subset)
    d = D.decode(a, tensors)
    assert any(q.any() for q, t in zip(d.q, tensors) if t.factor)  # the weights did change
    assert st.adapt.kept and st.adapt.subset == SUBSET_NAMES[SUBSET_UP_LOWRANK]
    assert np.array_equal(mc.decompress(data, model=ilm), image)


def test_hostile_factors_never_give_wrong_pixels(lowrank, lowrank_adapted):
    _, ilm = lowrank
    data = lowrank_adapted[0]
    h, words = read_file(data)
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    for exp in (1, 30):
        d = random_factors(ilm, seed=2, size=D.MAX_Q, exp=exp)
        chain = dataclasses.replace(h.chain, adaptation=D.encode(d, tensors))
        with pytest.raises(mc.DecodeError):
            mc.decompress(fmt.write(dataclasses.replace(h, chain=chain), words), model=ilm)


def test_factors_that_stayed_zero_pick_a_step_and_code_nothing(lowrank):
    _, ilm = lowrank
    tensors = adapt_tensors(ilm.config, SUBSET_UP_LOWRANK)
    zero = {D.key_of(t): torch.zeros(t.numel, dtype=torch.float64) for t in tensors}
    e = D.factor_exp(zero, tensors, ilm.model, E.FACTOR_RMS)
    assert e == D.FACTOR_EXP0
    d = D.quantize(zero, tensors, SUBSET_UP_LOWRANK, (5, 5, 5, e), ilm.model)
    assert d.nonzero() == 0 and all(not dw.any() for _, dw in d.weight_deltas(tensors))
    assert all(c == D.SCALE_ZERO for c in D.encode(d, tensors).scales)
