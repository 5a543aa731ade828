"""Where the rank-1 adaptation's gain goes: float unquantised vs integer quantised, and
how much of it transfers to another photo (generic vs image-specific). T=25, 100 steps."""
import copy, json, os, sys, time
import numpy as np, torch
sys.path.insert(0, ".")
from mulancodec.adapt import deltas as D
from mulancodec.adapt.encoder import step_exps, FACTOR_RMS
from mulancodec.adapt.params import SUBSET_UP_LOWRANK, adapt_tensors
from mulancodec.adapt.tune import own_tiles, finetune
from mulancodec.exact.quantcost import paired_elbo, difference
from mulancodec.training.data import load_images
from mulancodec.weights import load_model

torch.set_num_threads(1)
T, STEPS = 25, int(sys.argv[3]) if len(sys.argv) > 3 else 100
fm, im = load_model("photo"), load_model("photo-int")
tensors = adapt_tensors(im.config, SUBSET_UP_LOWRANK)
src = load_images(sys.argv[1])[0]
others = [load_images(p)[0] for p in sys.argv[2].split(",")] if sys.argv[2] else []
tiles = own_tiles([src], fm.config.tile, fm.config.context)
t0 = time.perf_counter()
FS, LRF = os.environ.get('FS', 'random'), float(os.environ.get('LRF', '3e-3'))
from mulancodec.adapt.tune import finetune_snapshots, rate_weights
RATE = float(os.environ.get('RATE', '0'))
l1 = rate_weights(tensors, step_exps(src.size), src.size, RATE) if RATE else None
QAT = int(os.environ.get('QAT', '0'))
delta = finetune_snapshots(fm.model, tiles, tensors, [STEPS], T, seed=0, factor_start=FS, lr_factor=LRF, l1=l1,
                           grid=step_exps(src.size) if QAT else None, grid_steps=QAT)[STEPS]
ts = time.perf_counter() - t0


def float_unq(model, plain=True, factors=True):
    out = copy.deepcopy(model)
    p = dict(out.named_parameters())
    with torch.no_grad():
        for t in tensors:
            if plain and not t.factor:
                p[t.float_name].add_(delta[t.float_name].to(p[t.float_name]).view_as(p[t.float_name]))
        for i, j in (D.factor_pairs(tensors) if factors else []):
            b, a = delta[D.key_of(tensors[i])], delta[D.key_of(tensors[j])]
            w = p[tensors[i].float_name]
            w.add_(torch.outer(b, a).to(w).view_as(w))
    return out


n = src.size
fu = float_unq(fm.model)
e = step_exps(n)
rows = {}
models = {"bf": fm.model, "fu": fu, "bi": im.model}
bits = {}
for de in (0, 1):
    exps = tuple(x + de for x in e) + (D.factor_exp(delta, tensors, im.model, FACTOR_RMS * 2 ** de),)
    d = D.quantize(delta, tensors, SUBSET_UP_LOWRANK, exps, im.model)
    models[f"iq{de}"] = D.apply(im.model, tensors, d)
    models[f"fq{de}"] = D.apply_float(fm.model, tensors, d, im.model)
    if de == 0 and os.environ.get("SPLIT"):
        dp = D.Deltas(d.subset, d.step_exps, [q if not t.factor else 0 * q for q, t in zip(d.q, tensors)])
        df = D.Deltas(d.subset, d.step_exps, [q if t.factor else 0 * q for q, t in zip(d.q, tensors)])
        models["fq_plain"] = D.apply_float(float_unq(fm.model, plain=False), tensors, dp, im.model)
        models["fq_factor"] = D.apply_float(float_unq(fm.model, factors=False), tensors, df, im.model)
    bits[de] = 8 * len(__import__("mulancodec.coding.container", fromlist=["x"]).adapt_block_bytes(D.encode(d, tensors)))
with torch.no_grad():
    r = paired_elbo(models, tiles, T, 5, 16, 0)
out = {"qat": QAT, "rate": RATE, "fs": FS, "lrf": LRF, "image": sys.argv[1].split("/")[-1], "steps": STEPS, "tune_s": round(ts, 1), "base_f": float(r["bf"]["total"].mean()),
       "base_i": float(r["bi"]["total"].mean())}
out["float_unq"] = difference(r["fu"]["total"], r["bf"]["total"])
for de in (0, 1):
    out[f"int_q{de}"] = difference(r[f"iq{de}"]["total"], r["bi"]["total"])
    out[f"float_q{de}"] = difference(r[f"fq{de}"]["total"], r["bf"]["total"])
    out[f"bits{de}"] = bits[de]
    out[f"net{de}"] = out[f"int_q{de}"][0] - bits[de] / n
for k in ("fq_plain", "fq_factor"):
    if k in models:
        out[k] = difference(r[k]["total"], r["bf"]["total"])
print(json.dumps(out), flush=True)
for p, img in zip(sys.argv[2].split(",") if sys.argv[2] else [], others):
    ot = own_tiles([img], fm.config.tile, fm.config.context)
    with torch.no_grad():
        r = paired_elbo({"bf": fm.model, "fu": fu}, ot, T, 5, 16, 0)
    print(json.dumps({"transfer_to": p.split("/")[-1], "float_unq": difference(r["fu"]["total"], r["bf"]["total"]),
                      "base_f": float(r["bf"]["total"].mean())}), flush=True)
