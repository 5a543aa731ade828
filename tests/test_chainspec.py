"""The chain spec: one value the header holds whole, that encoder and decoder build the
chain from, and the one place T is decided (`coding.chainspec`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import mlc_mutants as mm
import numpy as np
import pytest
import torch
from conftest import smooth_image

import mulancodec as mc
from mulancodec.api import default_steps, encoder_chain
from mulancodec.coding import container as fmt
from mulancodec.coding.chainspec import (
    ANY_MACHINE,
    DEFAULT_STEPS,
    EXACT_VERSION,
    ChainSpec,
    Machine,
    chain_steps,
    is_exact_version,
)
from mulancodec.coding.reader import read_file

GOLDEN = Path(__file__).parent / "golden"


def test_T_is_decided_in_one_place(lm):
    assert chain_steps() == chain_steps({}) == DEFAULT_STEPS
    assert chain_steps({"default_steps": "7"}) == 7 and chain_steps({"default_steps": "7"}, 3) == 3
    assert chain_steps({"default_steps": "many"}) == DEFAULT_STEPS
    assert default_steps(lm) == chain_steps(lm.meta) == 6 and default_steps(lm, 2) == 2
    with pytest.raises(TypeError):
        ChainSpec()  # type: ignore[call-arg]  # T has no default of its own


@pytest.mark.parametrize("version", [1, 2, 3])
def test_the_format_version_alone_says_whether_a_chain_is_exact(version):
    spec = ChainSpec(steps=1, version=version)
    assert spec.exact == is_exact_version(version) == (version >= EXACT_VERSION) == (version == 3)
    assert spec.machine_bound == (not spec.exact)


def test_the_encoder_codes_with_the_spec_the_header_stores(lm):
    dev = torch.device("cpu")
    spec = encoder_chain(lm, dev, 2, base=ChainSpec(steps=3, kappa=0.7, window=11.7))
    assert spec.steps == 3 and spec.kappa == fmt.stored_float(0.7) and spec.window == fmt.stored_float(11.7)
    assert spec.model_id == lm.model_id and spec.version == fmt.FLOAT_VERSION and spec.machine_bound
    assert spec.machine.backend == "cpu" and spec.machine.threads == 2 and not spec.machine.bf16
    assert encoder_chain(lm, dev, 1).steps == default_steps(lm)
    with pytest.raises(mc.EncodeError, match="steps"):
        encoder_chain(lm, dev, 1, steps=fmt.MAX_STEPS + 1)
    data = mc.compress(smooth_image(np.random.default_rng(3), 8, 8, 3), model=lm, steps=2,
                       fallback=False, threads=1)
    h = mc.read_header(data)
    assert h.chain == encoder_chain(lm, dev, 1, steps=2)


def test_the_header_holds_the_chain_whole_and_writes_the_same_bytes(corpus):
    for s in corpus:
        h, words = mm.parts(s.data)
        assert isinstance(h.chain, ChainSpec) and isinstance(h.chain.machine, Machine)
        # the old flat names read the spec (what `mulancodec info` shows)
        assert (h.version, h.model_id, h.steps, h.kappa, h.backend, h.threads) == (
            h.chain.version, h.chain.model_id, h.chain.steps, h.chain.kappa, h.chain.machine.backend,
            h.chain.machine.threads)
        if not h.compact:
            assert fmt.write(h, words) == s.data


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.mlc")))
def test_golden_headers_read_into_a_spec_that_writes_them_back(name):
    data = (GOLDEN / name).read_bytes()
    h, words = read_file(data, 0)
    assert h.chain.version == data[4]
    if h.chain.exact:
        assert h.chain.machine == ANY_MACHINE and (h.backend, h.threads, h.env_tag) == ("any", 0, 0)
    else:
        assert h.chain.machine.backend in fmt.BACKENDS and h.chain.machine.threads >= 1
    if h.chain.version in (fmt.FLOAT_VERSION, fmt.VERSION) and not h.compact:
        assert fmt.write(h, words) == data


def test_an_edited_spec_is_what_the_file_then_says(corpus):
    rgb = corpus[0].data
    h = mm.parts(mm.rewrite(rgb, steps=5, threads=3, kappa=2.0))[0]
    assert (h.chain.steps, h.chain.machine.threads, h.chain.kappa) == (5, 3, 2.0)
    exact = dataclasses.replace(mm.parts(rgb)[0])
    exact.chain = dataclasses.replace(exact.chain, version=fmt.VERSION, machine=ANY_MACHINE)
    back = read_file(fmt.write(exact, mm.parts(rgb)[1]), 0)[0]
    assert back.chain == exact.chain and back.chain.exact  # version 3 stores no machine
    assert len(fmt.write(exact, mm.parts(rgb)[1])) < len(rgb)
