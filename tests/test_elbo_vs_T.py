"""benchmarks/elbo_vs_T.py: bounds for several T and models from one set of draws."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
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
