"""Experiment 2: full-resolution conv adaptation, dense vs low rank, with quantisation and
delta bits (Laplace per tensor) -> net bpsp. Float model, T=25, paired float gain."""
import copy
import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, ".")
from mulancodec.adapt import deltas as D  # noqa
from mulancodec.adapt.encoder import step_exps  # noqa
from mulancodec.adapt.params import SUBSET_UP, adapt_tensors  # noqa
from mulancodec.adapt.tune import own_tiles, batch_indices  # noqa
from mulancodec.exact.quantcost import paired_elbo, difference  # noqa
from mulancodec.training.data import load_images, batch_tensors  # noqa
from mulancodec.weights import load_model  # noqa

torch.set_num_threads(1)
T, STEPS, SEED = 25, 100, 0
fm, im = load_model("photo"), load_model("photo-int")
tensors = adapt_tensors(fm.config, SUBSET_UP)
up = [t.float_name for t in tensors]
FULL = [f"denoiser.full.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]
qmods = dict(im.model.named_modules())


def unit_of(name):
    """Float value of one integer weight step, per (out, in): least squares per kernel."""
    w = dict(fm.model.named_parameters())[name + ".weight"].detach().double()
    q = qmods[name].weight.double()
    num, den = (w * q).sum((2, 3)), (q * q).sum((2, 3))
    u = torch.where(den > 0, num / den.clamp(min=1), torch.nan)
    # rows: fill missing with row median
    med = torch.nanmedian(u, dim=1, keepdim=True).values
    return torch.where(torch.isnan(u), med, u)


class LoRA(nn.Module):
    def __init__(self, w, r, gen):
        super().__init__()
        o, i = w.shape[0], w[0].numel()
        self.A = nn.Parameter(torch.randn(r, i, generator=gen) / i ** 0.5)
        self.B = nn.Parameter(torch.zeros(o, r))

    def forward(self, w):
        return w + (self.B @ self.A).view_as(w)


def bits(q):
    c = D.best_scale_code(q)
    return 0.0 if c == D.SCALE_ZERO else D._laplace_bits(q, D.scale_of(c))


def finetune(rank, wlr):
    work = copy.deepcopy(fm.model).train()
    work.requires_grad_(False)
    mods = dict(work.named_modules())
    gen = torch.Generator().manual_seed(SEED + 1)
    p = dict(work.named_parameters())
    small = [p[n] for n in up]
    extra = []
    for n in FULL:
        conv = mods[n]
        if rank:
            parametrize.register_parametrization(conv, "weight", LoRA(conv.weight, rank, gen))
            extra += [conv.parametrizations.weight[0].A, conv.parametrizations.weight[0].B]
        else:
            extra.append(conv.weight)
    for q in small + extra:
        q.requires_grad_(True)
    opt = torch.optim.Adam([{"params": small, "lr": 3e-3}, {"params": extra, "lr": wlr}])
    rng = np.random.default_rng(SEED)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(STEPS):
        x, ctx = batch_tensors(tiles.take(batch_indices(rng, len(tiles), 8)), "cpu")
        with torch.enable_grad():
            loss = work.terms(x, steps=T, generator=g, ctx=ctx).total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    return work


def quantised(work, rank, kw, base_p):
    """Float model with up deltas on their grid and conv deltas on integer-unit grid x 2^kw
    (dense) or LoRA factors on grid rms x 2^-kw; returns (model, bits)."""
    out = copy.deepcopy(fm.model)
    op = dict(out.named_parameters())
    wp = dict(work.named_parameters())
    delta = {n: wp[n].detach().double() - base_p[n] for n in up}
    d = D.quantize(delta, tensors, SUBSET_UP, step_exps(sub))
    nbits = sum(bits(q) for q in d.q)
    with torch.no_grad():
        for t, v in d.values(tensors):
            op[t.float_name].add_(torch.from_numpy(v).to(op[t.float_name]).view_as(op[t.float_name]))
        wm = dict(work.named_modules())
        for n in FULL:
            w0 = op[n + ".weight"]
            unit = unit_of(n)  # (o, i)
            if rank:
                pz = wm[n].parametrizations.weight[0]
                A, B = pz.A.detach().double(), pz.B.detach().double()
                # scale into integer units: B rows / 1, A cols / unit (per o,i not separable: use row-mean)
                dW = (B @ A).view_as(w0).double()
                # quantise factors: A by rms grid, B by rms grid
                sa = A.pow(2).mean().sqrt() * 2.0 ** -kw
                sb = B.pow(2).mean().sqrt() * 2.0 ** -kw
                qa, qb = torch.round(A / sa), torch.round(B / sb)
                nbits += bits(qa.long().numpy().ravel()) + bits(qb.long().numpy().ravel())
                dWq = ((qb * sb) @ (qa * sa)).view_as(w0)
                # then onto the integer weight grid
                dWq = torch.round(dWq / unit[..., None, None]) * unit[..., None, None]
                del dW
            else:
                dW = wp[n + ".weight"].detach().double() - base_p[n + ".weight"]
                step = unit[..., None, None] * 2.0 ** kw
                qq = torch.round(dW / step)
                nbits += bits(qq.long().numpy().ravel())
                dWq = qq * step
            w0.add_(dWq.to(w0))
    return out, nbits


want = sys.argv[1].split(",")  # e.g. dense,r1,r2
img = load_images(sys.argv[2])[0]
wlr = float(sys.argv[3])
KWD = tuple(int(k) for k in sys.argv[4].split(",")) if len(sys.argv) > 4 else (0,)
tiles = own_tiles([img], fm.config.tile, fm.config.context)
sub = img.size
base_p = {n: p.detach().double().clone() for n, p in fm.model.named_parameters()}
for v in want:
    rank = 0 if v in ("dense", "up") else int(v[1:2])
    FULL = [] if v == "up" else [f"denoiser.full.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]
    if v == "r1x":
        FULL += [f"denoiser.up.{b}.0.conv{c}" for b in (6, 7) for c in (1, 2)]
    t0 = time.perf_counter()
    work = finetune(rank, wlr)
    ts = time.perf_counter() - t0
    models = {"b": fm.model}
    bitsd = {}
    for kw in (KWD if not rank else (-2, -1, 0)):
        models[f"q{kw}"], bitsd[kw] = quantised(work, rank, kw, base_p)
    with torch.no_grad():
        r = paired_elbo(models, tiles, T, 5, 16, SEED)
    for kw, nb in bitsd.items():
        d, se = difference(r[f"q{kw}"]["total"], r["b"]["total"])
        print(json.dumps({"image": sys.argv[2].split("/")[-1], "variant": v, "wlr": wlr, "kw": kw,
                          "gain_bpsp": round(d, 4), "se": round(se, 4), "bits": round(nb),
                          "net_bpsp": round(d - nb / sub, 4), "tune_s": round(ts, 1)}), flush=True)
