"""Shared fixtures: a tiny random-weight model (CPU, fast) and the optional real data."""
from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread for the tests (and the CLI subprocesses they start): on a small
# or busy machine OpenMP spinning across threads makes tiny models many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Subprocesses (the CLI tests) import this checkout's mulancodec, not whichever one is installed
# (an editable install of another worktree would otherwise be tested instead).
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and p != _ROOT])

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
CIFAR_TEST = SHARED / "cifar10" / "test.npz"
CIFAR_TRAIN0 = SHARED / "cifar10" / "train_0.npz"
# The first shipped CIFAR-10 model, fixed reverse variance (the golden files and the rate
# test are made with it), and its successor trained for T with learned variances. Every
# shipped model is packed (`packed`).
CIFAR10_MODEL = ROOT / "models" / "cifar10-v1" / "model.safetensors.xz"
CIFAR10_LV_MODEL = ROOT / "models" / "cifar10" / "model.safetensors.xz"
# An integer model (format version 3 files; the version-3 golden files are made with it).
CIFAR10_INT_MODEL = ROOT / "models" / "cifar10-int" / "model.safetensors.xz"


def training_like_inputs(model, x, gen):
    """(c, gamma, z) as training draws them for pixels x: c from q(c | x), a random t per
    tile, z_t from q(z_t | x): inputs to compare denoisers on."""
    from mulancodec.model.mulan import alpha_sigma, to_unit

    xu = to_unit(x)
    with torch.no_grad():
        cm, cs = model.latent_posterior(xu)
        c = cm + cs * torch.randn(cm.shape, generator=gen)
        gamma = model.schedule(c, xu).gamma(torch.rand(len(x), generator=gen)).expand_as(xu)
        a, s = alpha_sigma(gamma)
        return c, gamma, a * xu + s * torch.randn(xu.shape, generator=gen)


def make_tiny_model(seed: int = 0, config: str = "tiny", noise: float = 0.02):
    """A tiny model with its zero-initialised layers perturbed, so every path is exercised."""
    from mulancodec.model import CONFIGS, MuLAN

    torch.manual_seed(seed)
    m = MuLAN(CONFIGS[config].model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * noise)
        if m.cfg.schedule_context:  # a context-reading schedule: make the context's effect plain
            net, n = m.schedule_net.net, m.cfg.latent_channels
            net[0].weight[:, n:].normal_(0.0, 0.5)
            net[-1].weight.normal_(0.0, 0.3)
            m.schedule_net.context_net[-1].weight.normal_(0.0, 1.0)
    return m.eval()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from mulancodec.weights import save_model

    p = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(make_tiny_model(), p, extra={"default_steps": "6"})
    return p


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory) -> Path:
    from mulancodec.weights import save_model

    p = tmp_path_factory.mktemp("model2") / "other.safetensors"
    save_model(make_tiny_model(seed=1), p)
    return p


@pytest.fixture(scope="session")
def lm(tiny_model_path):
    """The tiny model, loaded once (as the API caches it)."""
    from mulancodec.api import get_model

    return get_model(tiny_model_path, torch.device("cpu"))


@pytest.fixture(scope="session")
def corpus(lm):
    """Valid .mlc files of every mode and shape, for the fuzz and hardening tests."""
    import mlc_mutants

    return mlc_mutants.build_corpus(lm)


@pytest.fixture()
def use_tiny_model(tiny_model_path, monkeypatch) -> Path:
    """Make the tiny model the default (as the shipped model would be)."""
    monkeypatch.setenv("MULANCODEC_MODEL", str(tiny_model_path))
    return tiny_model_path


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def smooth_image(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A natural-ish test image: smooth structure plus a little noise."""
    base = rng.normal(size=(h // 4 + 2, w // 4 + 2, c)).cumsum(0).cumsum(1)
    img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 200 + rng.normal(size=img.shape) * 3 + 20
    return np.clip(img, 0, 255).astype(np.uint8)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/datasets is beside a full checkout only)")
    return path

