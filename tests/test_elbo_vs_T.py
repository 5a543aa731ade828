"""benchmarks/elbo_vs_T.py: bounds for several T and models from one set of draws."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import elbo_vs_T  # noqa: E402


def test_bounds_are_paired_and_match_evaluate(tmp_path, tiny_model_path, other_model_path):
    from mulancodec.training.data import TileSet
    from mulancodec.training.evaluate import elbo_by_steps, evaluate
    from mulancodec.weights import load_model

    rng = np.random.default_rng(3)
    x = np.stack([smooth_image(rng, 16, 16, 3) for _ in range(12)])
    np.savez(tmp_path / "d.npz", x=x)
    model = load_model(tiny_model_path).model
    by_T = elbo_by_steps(model, TileSet(x), [0, 4], batch_size=5, seed=9)
    ev = evaluate(model, x, 4, batch_size=5, seed=9)
    assert np.isclose(by_T[0].mean(), ev["bpd"]) and np.isclose(by_T[4].mean(), ev["bpd_T"])
    assert not np.allclose(by_T[0], by_T[4])

    out = tmp_path / "out"
    assert elbo_vs_T.main(["--data", str(tmp_path / "d.npz"), "--model", str(tiny_model_path),
                           "--model", str(other_model_path), "--steps", "0", "4", "--out", str(out),
                           "--seed", "9", "--batch-size", "5"]) == 0
    res = json.loads((out / "elbo_vs_T.json").read_text())["bpd"]
    assert res[str(tiny_model_path)] == {"0": by_T[0].mean(), "4": by_T[4].mean()}
    other = elbo_by_steps(load_model(other_model_path).model, TileSet(x), [4], batch_size=5, seed=9)[4]
    d = other - by_T[4]
    md = (out / "elbo_vs_T.md").read_text()
    assert f"vs {tiny_model_path} {d.mean():+.3f}" in md and "gap" in md


def test_reuse_reads_stored_bounds_only_for_the_same_weights_and_draws(tmp_path, tiny_model_path,
                                                                         other_model_path, monkeypatch):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "d.npz", x=np.stack([smooth_image(rng, 16, 16, 3) for _ in range(6)]))
    common = ["--data", str(tmp_path / "d.npz"), "--steps", "0", "4", "--batch-size", "5"]
    first = tmp_path / "first"
    assert elbo_vs_T.main(common + ["--model", str(tiny_model_path), "--out", str(first)]) == 0
    stored = json.loads((first / "elbo_vs_T.json").read_text())

    measured = []
    real = elbo_vs_T.elbo_by_steps
    monkeypatch.setattr(elbo_vs_T, "elbo_by_steps", lambda m, *a, **k: measured.append(m) or real(m, *a, **k))
    again = tmp_path / "again"
    assert elbo_vs_T.main(common + ["--model", str(tiny_model_path), "--model", str(other_model_path),
                                    "--reuse", str(first / "elbo_vs_T.json"), "--out", str(again)]) == 0
    assert len(measured) == 1  # only the model the first run had not measured
    res = json.loads((again / "elbo_vs_T.json").read_text())
    assert res["per_tile"][str(tiny_model_path)] == stored["per_tile"][str(tiny_model_path)]
    assert len(res["per_tile"][str(other_model_path)]["4"]) == stored["tiles"]

    with pytest.raises(SystemExit, match="other draws"):
        elbo_vs_T.main(common + ["--model", str(tiny_model_path), "--seed", "1",
                                 "--reuse", str(first / "elbo_vs_T.json"), "--out", str(tmp_path / "x")])


def test_strata_give_the_integer_cost_estimator_on_the_same_draws_for_every_model(tmp_path, tiny_model_path,
                                                                                   other_model_path):
    """--strata K: the T-step bound from K stratified steps per tile (`quantcost.paired_elbo`),
    one seed for every model, so two models are paired even where single steps pair badly."""
    from mulancodec.exact.quantcost import paired_elbo
    from mulancodec.training.data import TileSet
    from mulancodec.weights import load_model

    rng = np.random.default_rng(5)
    x = np.stack([smooth_image(rng, 16, 16, 3) for _ in range(8)])
    np.savez(tmp_path / "d.npz", x=x)
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "d.npz"), "--model", str(tiny_model_path), "--model", str(other_model_path),
            "--steps", "4", "--strata", "2", "--repeats", "2", "--seed", "3", "--batch-size", "4", "--out", str(out)]
    assert elbo_vs_T.main(args) == 0
    res = json.loads((out / "elbo_vs_T.json").read_text())
    assert res["strata"] == 2
    for path in (tiny_model_path, other_model_path):
        model = load_model(path).model
        want = sum(paired_elbo({"m": model}, TileSet(x), 4, 2, 4, 3 + r)["m"]["total"] for r in range(2)) / 2
        assert np.allclose(res["per_tile"][str(path)]["4"], want, atol=1e-6)
    with pytest.raises(SystemExit, match="does not divide"):
        elbo_vs_T.main(args[:-6] + ["--strata", "3", "--out", str(tmp_path / "x")])
