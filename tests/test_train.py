"""Training machinery: the loss falls, resume is exact, ablations train, eval reports."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import smooth_image
from safetensors.torch import load_file

from mulancodec.cli import main
from mulancodec.training.loop import TrainArgs, train


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    x = np.stack([smooth_image(rng, 32, 32, 3) for _ in range(96)])
    p = tmp_path_factory.mktemp("data") / "train.npz"
    np.savez(p, x=x)
    return p


def _run(data: Path, out: Path, steps: int, config: str = "tiny", resume: bool = False) -> None:
    code = train(TrainArgs([str(data)], out, config, max_steps=steps, resume=resume, progress=False))
    assert code == 0


def _tiny_dec_config(folder: Path, **train) -> str:
    """A config file of `tiny-dec` with these `train` fields changed."""
    from mulancodec.model.configs import CONFIGS

    cfg = CONFIGS["tiny-dec"].to_dict()
    cfg["train"].update(train)
    p = folder / ("cfg-" + "-".join(f"{k}{v}" for k, v in sorted(train.items())) + ".json")
    p.write_text(json.dumps(cfg))
    return str(p)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_loss_falls_over_30_steps(train_npz, tmp_path):
    _run(train_npz, tmp_path / "run", 30)
    bpd = [r["bpd"] for r in _log(tmp_path / "run") if r["kind"] == "train"]
    assert len(bpd) == 6
    assert bpd[-1] < bpd[0] - 1.0


def test_resume_is_exact(train_npz, tmp_path):
    _run(train_npz, tmp_path / "a", 12)
    _run(train_npz, tmp_path / "b", 5)
    _run(train_npz, tmp_path / "b", 12, resume=True)
    for f in ("train/raw.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] == b[k]).all(), f"{f}:{k} differs after resume"


def test_refuses_to_overwrite_a_run(train_npz, tmp_path):
    _run(train_npz, tmp_path / "a", 2)
    with pytest.raises(FileExistsError):
        _run(train_npz, tmp_path / "a", 4)


@pytest.mark.parametrize("config", ["tiny-scalar", "tiny-nolatent", "tiny-linear"])
def test_ablation_configs_train(train_npz, tmp_path, config):
    _run(train_npz, tmp_path / config, 10, config)
    recs = [r for r in _log(tmp_path / config) if r["kind"] == "train"]
    assert all(np.isfinite(r["bpd"]) for r in recs)
    assert recs[-1]["bpd"] < recs[0]["bpd"]
    if config != "tiny-scalar":
        assert recs[-1]["latent"] == 0.0


def test_train_and_eval_cli(train_npz, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(train_npz), "--out", str(tmp_path / "r"),
                                  "--config", "tiny", "--max-steps", "3", "--eval-data", str(train_npz)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", "--data", str(train_npz), "--model", str(tmp_path / "r"),
                                  "--limit", "40", "--steps", "10", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    for k in ("bpd", "bpd_T", "diffusion", "recon", "prior", "latent", "n_images", "bpd_ci95"):
        assert k in res
    assert res["n_images"] == 40 * 4  # 32x32 images cut into the tiny model's 16x16 tiles
    want = _eval_by_hand(train_npz, tmp_path / "r", limit=40, steps=10, seed=0)
    for k in ("bpd", "bpd_T", "diffusion", "recon", "prior", "latent"):
        assert res[k] == pytest.approx(want[k], rel=1e-5), k
    assert res["bpd_ci95"] == pytest.approx(want["bpd_ci95"], rel=1e-5)
    assert res["bpd_ci95"][1] - res["bpd_ci95"][0] > 0.01  # a real spread over 160 tiles


def _eval_by_hand(data: Path, run: Path, limit: int, steps: int, seed: int) -> dict:
    """What `eval` must report, from model.terms directly (one batch: the continuous-time
    and the T-step bound each drawn from a generator seeded with `seed`), with a 95% interval
    of 1.96 standard errors."""
    import math

    import torch

    from mulancodec.weights import load_model

    lm = load_model(run, "cpu")
    S, imgs = lm.config.tile, np.load(data)["x"][:limit]
    tiles = [im[i:i + S, j:j + S] for im in imgs for i in range(0, im.shape[0] - S + 1, S)
             for j in range(0, im.shape[1] - S + 1, S)]  # raster order, full tiles only
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    def gen():
        return torch.Generator().manual_seed(seed)

    with torch.no_grad():
        tc, td = lm.model.eval().terms(x, 0, gen()), lm.model.terms(x, steps, gen())
    parts = {k: getattr(tc, k).double().numpy() for k in ("diffusion", "recon", "prior", "latent")}
    total = sum(parts.values())
    half = 1.96 * float(np.std(total, ddof=1)) / math.sqrt(len(total))
    return {"bpd": float(total.mean()), "bpd_ci95": [float(total.mean()) - half, float(total.mean()) + half],
            "bpd_T": float(td.total.double().mean()), **{k: float(v.mean()) for k, v in parts.items()}}


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_under_torchrun(train_npz, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mulancodec.cli", "train",
           "--data", str(train_npz), "--out", str(tmp_path / "ddp"), "--config", "tiny",
           "--max-steps", "4", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = _log(tmp_path / "ddp")
    assert recs[-1]["kind"] == "stop" and recs[-1]["step"] == 4


def test_context_model_trains_on_random_crops_of_mixed_sizes(tmp_path):
    """A folder of photos of different sizes: random windows (tile + margin) with masks."""
    from PIL import Image

    from mulancodec.weights import load_model

    rng = np.random.default_rng(5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, (h, w) in enumerate([(40, 90), (64, 33), (100, 100)]):
        Image.fromarray(smooth_image(rng, h, w, 3)).save(folder / f"{k}.png")
    code = train(TrainArgs([str(folder)], tmp_path / "run", "tiny-context", max_steps=6, progress=False))
    assert code == 0
    recs = _log(tmp_path / "run")
    assert recs[0]["images"] == 3 and all(np.isfinite(r["bpd"]) for r in recs if r["kind"] == "train")
    assert load_model(tmp_path / "run").config.context == 8


def test_warm_start_copies_shared_weights_and_zeroes_context(tmp_path):
    """--init from a model without context: every shared tensor is copied and the context
    inputs of the first convolution start at zero; a model that does not fit is refused."""
    import torch
    from conftest import make_tiny_model

    from mulancodec.model import CONFIGS, MuLAN
    from mulancodec.training.loop import warm_start
    from mulancodec.weights import save_model

    old = make_tiny_model(seed=2)
    save_model(old, tmp_path / "old.safetensors")
    new = MuLAN(CONFIGS["tiny-context"].model).eval()
    warm_start(new, str(tmp_path / "old.safetensors"))
    w = new.denoiser.conv_in.weight
    assert torch.equal(w[:, :old.denoiser.conv_in.weight.shape[1]], old.denoiser.conv_in.weight)
    assert not w[:, old.denoiser.conv_in.weight.shape[1]:].any()
    with pytest.raises(ValueError, match="does not fit"):
        warm_start(MuLAN(CONFIGS["tiny-nolatent"].model), str(tmp_path / "old.safetensors"))
    # a model with `schedule_phase` from one without: every other tensor copied, the offsets new
    dec = make_tiny_model(seed=3, config="tiny-dec")
    save_model(dec, tmp_path / "dec.safetensors")
    phased = MuLAN(CONFIGS["tiny-phase"].model).eval()
    start = phased.schedule_net.phase.detach().clone()
    warm_start(phased, str(tmp_path / "dec.safetensors"))
    assert torch.equal(phased.schedule_net.phase, start)
    assert all(torch.equal(v, phased.state_dict()[k]) for k, v in dec.state_dict().items())


@pytest.mark.parametrize("warmup, decay", [(1, 0.9), (10, 0.1)])
def test_ema_warmup_sets_the_first_steps_decay(train_npz, tmp_path, warmup, decay):
    """A warm start with ema_warmup 1 averages from its first step at ema_decay; the
    default 10 mostly forgets the starting weights (decay min(ema_decay, 1/10) at step 0)."""
    import torch
    from conftest import make_tiny_model

    from mulancodec.model import CONFIGS
    from mulancodec.weights import save_model

    save_model(make_tiny_model(seed=3), tmp_path / "init.safetensors")
    cfg = CONFIGS["tiny"].to_dict()
    cfg["train"].update(ema_decay=0.9, ema_warmup=warmup)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert train(TrainArgs([str(train_npz)], out, str(tmp_path / "cfg.json"), max_steps=1, progress=False,
                           init=str(tmp_path / "init.safetensors"))) == 0
    init = load_file(str(tmp_path / "init.safetensors"))
    raw, ema = load_file(str(out / "train" / "raw.safetensors")), load_file(str(out / "model.safetensors"))
    w = "denoiser.conv_out.weight"
    assert not torch.equal(raw[w], init[w])
    torch.testing.assert_close(ema[w], decay * init[w] + (1 - decay) * raw[w])


def test_ema_warmup_below_one_is_refused(train_npz, tmp_path):
    from mulancodec.model import CONFIGS

    cfg = CONFIGS["tiny"].to_dict()
    cfg["train"]["ema_warmup"] = 0
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="ema_warmup"):
        train(TrainArgs([str(train_npz)], tmp_path / "run", str(tmp_path / "cfg.json"), max_steps=1,
                        progress=False))
    _run(train_npz, tmp_path / "ok", 2)  # and in a run's config.json edited between resumes
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())
    saved["train"]["ema_warmup"] = 0
    (tmp_path / "ok" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="ema_warmup"):
        _run(train_npz, tmp_path / "ok", 4, resume=True)


def test_best_keeps_the_ema_of_the_best_evaluation_across_resumes(tmp_path):
    """out/best/ holds the EMA weights of the run's lowest evaluation so far: a worse one
    later (in this process or a resumed one) leaves them as they are."""
    import torch

    from mulancodec.model.configs import load_config
    from mulancodec.model.mulan import MuLAN
    from mulancodec.training.loop import TrainState, save_best
    from mulancodec.weights import load_model

    cfg = load_config("tiny")
    torch.manual_seed(0)
    a, b = MuLAN(cfg.model), MuLAN(cfg.model)
    out, ev = tmp_path / "run", {"steps": 50, "n_images": 358}
    assert save_best(out, cfg, a, TrainState(step=200), 3.5, ev)
    assert not save_best(out, cfg, b, TrainState(step=400), 3.6, ev)  # worse: kept a's
    assert not save_best(out, cfg, b, TrainState(step=400), 3.5, ev)  # a tie is no improvement
    first = load_model(out / "best" / "model.safetensors")
    rec = json.loads((out / "best" / "eval.json").read_text())
    assert rec == {"step": 200, "score": 3.5, "evaluation": ev, "model_id": first.model_id}
    assert all((p == q).all() for p, q in zip(first.model.state_dict().values(), a.state_dict().values()))
    assert save_best(out, cfg, b, TrainState(step=600), 3.4, ev)
    assert json.loads((out / "best" / "eval.json").read_text())["step"] == 600
    assert load_model(out / "best").model_id != first.model_id
    # a resume that evaluates on other tiles or at another T starts a new record
    assert save_best(out, cfg, a, TrainState(step=800), 3.9, {"steps": 50, "n_images": 100})
    assert json.loads((out / "best" / "eval.json").read_text())["score"] == 3.9


def test_a_run_with_evaluations_keeps_its_best_ema(train_npz, tmp_path):
    out = tmp_path / "r"
    assert train(TrainArgs([str(train_npz)], out, "tiny", max_steps=20, eval_data=[str(train_npz)],
                           progress=False)) == 0
    evals = [r for r in _log(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20] and evals[0]["best"]
    rec = json.loads((out / "best" / "eval.json").read_text())
    score = evals[0].get("test_bpd_T", evals[0]["test_bpd"])
    assert rec["step"] == 20 and rec["score"] == pytest.approx(score)
    # the run stopped right after its one evaluation: the final checkpoint's EMA is the one kept
    best, last = load_file(str(out / "best" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert best.keys() == last.keys() and all((best[k] == last[k]).all() for k in best)


def test_anneal_lowers_the_learning_rate_on_a_cosine_and_holds_it():
    from mulancodec.model.configs import TrainConfig

    tc = TrainConfig(lr=1e-3, anneal_start=100, anneal_steps=200, anneal_final=0.1)
    assert tc.lr_at(0) == tc.lr_at(100) == 1e-3
    assert tc.lr_at(200) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way
    assert tc.lr_at(300) == tc.lr_at(10 ** 6) == pytest.approx(1e-4)
    lrs = [tc.lr_at(s) for s in range(100, 301)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert TrainConfig(lr=1e-3).lr_at(10 ** 6) == 1e-3  # off by default: old runs resume unchanged
    for bad in ({"anneal_steps": -1}, {"anneal_final": 0.0}, {"anneal_final": 1.5}, {"anneal_start": -5}):
        with pytest.raises(ValueError, match="anneal"):
            TrainConfig(**bad)


def test_a_resumed_run_follows_the_anneal_its_config_json_was_given(train_npz, tmp_path):
    """The standing job's way: stop, add an anneal to the run's config.json, resume."""
    out = tmp_path / "r"
    _run(train_npz, out, 10)
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"].update(anneal_start=10, anneal_steps=20, anneal_final=0.5, log_every=5)
    (out / "config.json").write_text(json.dumps(cfg))
    _run(train_npz, out, 40, resume=True)
    lr = {r["step"]: r["lr"] for r in _log(out) if r["kind"] == "train"}
    base = cfg["train"]["lr"]
    assert lr[10] == pytest.approx(base) and lr[40] == pytest.approx(0.5 * base)
    assert lr[20] == pytest.approx(base * (0.5 + 0.5 * 0.5 * (1 + np.cos(np.pi * 9 / 20))))


def test_train_rotate_reaches_the_crops(train_npz, tmp_path):
    import dataclasses

    from mulancodec.model.configs import load_config
    from mulancodec.training.loop import _data

    cfg = load_config("tiny")
    on = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rotate=True))
    args = TrainArgs([str(train_npz)], tmp_path / "r")
    assert _data(args, on)[0].rotate and not _data(args, cfg)[0].rotate
    assert on.train.to_dict()["rotate"] and not cfg.train.rotate  # saved in a run's config.json


def test_ends_lr_scale_moves_the_end_points_faster_and_resumes_exactly(train_npz, tmp_path):
    """`train.ends_lr_scale`: gamma(0) and gamma(1) get a learning rate of their own (a group
    of the optimizer's own), so a new decoder can move them; checkpoints keep the group."""
    from mulancodec.model.configs import CONFIGS

    def config(scale: float) -> str:
        return _tiny_dec_config(tmp_path, ends_lr_scale=scale)

    def ends(out: Path) -> np.ndarray:
        return load_file(str(out / "train" / "raw.safetensors"))["schedule_net.ends"].numpy()

    start = np.array([CONFIGS["tiny-dec"].model.gamma_min, 0.0])
    for scale, out in ((0.0, "plain"), (50.0, "fast")):
        _run(train_npz, tmp_path / out, 12, config(scale))
    moved = {o: abs(ends(tmp_path / o)[0] - start[0]) for o in ("plain", "fast")}
    assert moved["fast"] > 10 * moved["plain"]
    _run(train_npz, tmp_path / "b", 5, config(50.0))
    _run(train_npz, tmp_path / "b", 12, config(50.0), resume=True)
    a, b = load_file(str(tmp_path / "fast" / "train" / "raw.safetensors")), \
        load_file(str(tmp_path / "b" / "train" / "raw.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"


def test_a_run_with_recon_fraction_trains_and_resumes_exactly(train_npz, tmp_path):
    """`train.recon_fraction`: the rows the reconstruction term is estimated from are drawn
    from each step's reseeded generator, so a stopped run resumes onto the same weights, and
    the weights differ from a full-batch run's."""
    def config(fraction: float) -> str:
        return _tiny_dec_config(tmp_path, recon_fraction=fraction)

    _run(train_npz, tmp_path / "a", 8, config(0.5))
    _run(train_npz, tmp_path / "b", 4, config(0.5))
    _run(train_npz, tmp_path / "b", 8, config(0.5), resume=True)
    _run(train_npz, tmp_path / "full", 8, config(1.0))
    w = {o: load_file(str(tmp_path / o / "train" / "raw.safetensors")) for o in ("a", "b", "full")}
    assert all(np.array_equal(w["a"][k].numpy(), w["b"][k].numpy()) for k in w["a"])
    assert not all(np.array_equal(w["a"][k].numpy(), w["full"][k].numpy()) for k in w["a"])
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["recon_fraction"] == 0.5
