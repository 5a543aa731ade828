"""Dependency versions that decide the bytes: constriction is pinned exactly and reported.

constriction's quantisation of each Gaussian is part of what a file means, so a
file decodes only with the constriction it was made with. The pin lives in
setup.cfg and in `codecs.CONSTRICTION_VERSION`; `mulancodec info` reports the
installed version, and a stream that fails to decode names a mismatch.
"""
from __future__ import annotations

import configparser
import json
from pathlib import Path

import mlc_mutants as mm
import numpy as np
import pytest
from click.testing import CliRunner

import mulancodec as mc
from mulancodec.cli import main
from mulancodec.coding import codecs
from mulancodec.coding import container as fmt

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_pins_constriction_exactly():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    pins = [r for r in reqs if r.startswith("constriction")]
    assert pins == [f"constriction=={codecs.CONSTRICTION_VERSION}"]


def test_installed_constriction_is_the_pinned_one():
    assert codecs.constriction_version() == codecs.CONSTRICTION_VERSION == "0.5.0"


def test_info_reports_the_constriction_version(corpus, tmp_path):
    (tmp_path / "a.mlc").write_bytes(corpus[0].data)
    r = CliRunner().invoke(main, ["info", str(tmp_path / "a.mlc"), "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["constriction"] == codecs.constriction_version()
    assert d["constriction_required"] == codecs.CONSTRICTION_VERSION
    r = CliRunner().invoke(main, ["info", str(tmp_path / "a.mlc")])
    assert f"constriction {codecs.constriction_version()}" in r.stdout


def _broken(data: bytes) -> bytes:
    h, words = mm.parts(data)
    words = words.copy()
    words[len(words) // 2] ^= np.uint32(1)
    return fmt.write(h, words)


def test_decode_failure_names_a_constriction_mismatch(corpus, lm, monkeypatch):
    bad = _broken(corpus[0].data)
    with pytest.raises(mc.DecodeError) as info:
        mc.decompress(bad, model=lm)
    assert "constriction" not in str(info.value)  # the pinned version: no hint
    monkeypatch.setattr(codecs, "constriction_version", lambda: "0.4.1")
    with pytest.raises(mc.DecodeError, match=r"constriction 0\.4\.1 .*constriction==0\.5\.0") as info:
        mc.decompress(bad, model=lm)
    assert "\n" not in str(info.value)
