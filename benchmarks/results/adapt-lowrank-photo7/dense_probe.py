"""Experiment: does adapting conv weights (dense, or low rank) learn more than the up-path
norms+biases in 100 steps? Float model, photos-more/val, T=25, paired float gain."""
import json
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")
from mulancodec.adapt.params import SUBSET_UP, adapt_tensors, AdaptTensor  # noqa
from mulancodec.adapt.tune import own_tiles, batch_indices  # noqa
from mulancodec.exact.quantcost import paired_elbo, difference  # noqa
from mulancodec.training.data import load_images, batch_tensors  # noqa
from mulancodec.weights import load_model  # noqa

torch.set_num_threads(1)
T, STEPS, SEED = 25, 100, 0
fm = load_model("photo")
up = [t.float_name for t in adapt_tensors(fm.config, SUBSET_UP)]
VARIANTS = {
    "up": (up, []),
    "up+out": (up, [r"denoiser\.conv_out\.weight"]),
    "up+full": (up, [r"denoiser\.full\.\d\.conv\d\.weight"]),
    "up+full+out": (up, [r"denoiser\.full\.\d\.conv\d\.weight", r"denoiser\.conv_out\.weight"]),
}
want = sys.argv[1].split(",")
images = sys.argv[2].split(",")
wlr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3


def finetune(model, tiles, small, weights):
    import copy
    work = copy.deepcopy(model).train()
    work.requires_grad_(False)
    p = dict(work.named_parameters())
    a = [p[n] for n in small]
    w = [p[n] for n in p if any(re.fullmatch(r, n) for r in weights)]
    for q in a + w:
        q.requires_grad_(True)
    groups = [{"params": a, "lr": 3e-3}] + ([{"params": w, "lr": wlr}] if w else [])
    opt = torch.optim.Adam(groups)
    rng = np.random.default_rng(SEED)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(STEPS):
        x, ctx = batch_tensors(tiles.take(batch_indices(rng, len(tiles), 8)), "cpu")
        with torch.enable_grad():
            loss = work.terms(x, steps=T, generator=gen, ctx=ctx).total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    return work.eval(), sum(q.numel() for q in a + w), sum(q.numel() for q in w)


for path in images:
    img = load_images(path)[0]
    tiles = own_tiles([img], fm.config.tile, fm.config.context)
    for v in want:
        t0 = time.perf_counter()
        small, weights = VARIANTS[v]
        adapted, n, nw = finetune(fm.model, tiles, small, weights)
        ts = time.perf_counter() - t0
        with torch.no_grad():
            r = paired_elbo({"b": fm.model, "a": adapted}, tiles, T, 5, 16, SEED)
        d, se = difference(r["a"]["total"], r["b"]["total"])
        print(json.dumps({"image": path.split("/")[-1], "variant": v, "wlr": wlr, "params": n, "weights": nw,
                          "tiles": len(tiles), "base": float(r["b"]["total"].mean()),
                          "gain_bpsp": d, "se": se, "tune_s": round(ts, 1)}), flush=True)
