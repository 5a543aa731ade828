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
from conftest import make_tiny_model, smooth_image

import mulancodec as mc
from mulancodec.adapt import deltas as D
from mulancodec.adapt import encoder as E
from mulancodec.adapt.params import SUBSET_ALL, SUBSET_NAMES, adapt_tensors
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
        assert {t.float_name for t in adapt_tensors(cfg, subset)} <= want
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
        assert max(float(np.abs(v).max()) for v in d.values(tensors)) <= D.MAX_DELTA


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
    for t, v in zip(tensors, d.values(tensors)):  # one float64 addition per parameter
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
    assert a is not None and a.subset == E.SUBSET and a.step_exps == E.step_exps(image.size)
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
