#!/usr/bin/env python
"""Would per-channel convolution gains add to the adapted norms and biases? (issue 25)

    python benchmarks/adapt_gains.py --data ../shared/datasets/photos-more/val/skimage_coffee.png

An adapted file stores deltas of the up path's norms and biases (`adapt.params.SUBSET_UP`).
The next cheapest parameters are one gain per output channel of a convolution (the
weights times 1 + g_c; in the integer model a change of its float64 `g_scale`). This
fine-tunes, in float and unquantised (an upper bound on what a file could keep), the
subset alone and the subset with gains on the up path's convolutions (all, or only each
block's second convolution and the output's), with the encoder's recipe (`adapt.tune`),
and reports each one's paired -ELBO_T saving on the image's own tiles (five stratified
steps per tile, the same draws for every model).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

from benchmarks.adapt import _emit  # noqa: E402
from mulancodec.adapt.params import SUBSET_UP, AdaptTensor, adapt_tensors  # noqa: E402
from mulancodec.adapt.tune import finetune, own_tiles  # noqa: E402
from mulancodec.exact.quantcost import paired_elbo  # noqa: E402
from mulancodec.training.data import load_images  # noqa: E402
from mulancodec.weights import load_model  # noqa: E402

UP = ("denoiser.up.", "denoiser.full.", "denoiser.conv_out")
VARIANTS = {"norms+biases": None,
            "+gains": lambda name: name.startswith(UP),
            "+gains (conv2, output)": lambda name: name.startswith(UP)
            and name.endswith(("conv2", "conv_out"))}


class Gain(nn.Module):
    """w -> w (1 + g), one g per output channel (starting at 0: the model unchanged)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.zeros(n))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (1 + self.g).view(-1, *([1] * (w.dim() - 1)))


def with_gains(model: nn.Module, which) -> tuple[nn.Module, list[AdaptTensor]]:
    """A copy of the model with a Gain on each chosen convolution, and those gains."""
    out, tensors = copy.deepcopy(model), []
    if which is None:
        return out, tensors
    for name, mod in list(out.named_modules()):
        if isinstance(mod, nn.Conv2d) and which(name):
            parametrize.register_parametrization(mod, "weight", Gain(mod.out_channels))
            tensors.append(AdaptTensor(f"{name}.parametrizations.weight.0.g", "", mod.out_channels))
    return out, tensors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--model", default="photo")
    p.add_argument("--steps", type=int, default=25, help="the file's T")
    p.add_argument("--adapt", type=int, default=100, help="fine-tuning steps")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args()
    torch.set_num_threads(1)
    fm = load_model(args.model)
    base = adapt_tensors(fm.config, SUBSET_UP)
    for path, image in zip(args.data, load_images(args.data, None)):
        tiles = own_tiles([image], fm.config.tile, fm.config.context)
        models, rows = {"base": fm.model}, {}
        for variant, which in VARIANTS.items():
            t0 = time.perf_counter()
            work, gains = with_gains(fm.model, which)
            delta = finetune(work, tiles, [*base, *gains], args.adapt, args.steps)
            params = dict(work.named_parameters())
            with torch.no_grad():
                for name, d in delta.items():
                    params[name].add_(d.to(params[name]).view_as(params[name]))
            models[variant] = work.eval()
            rows[variant] = {"params": sum(t.numel for t in base) + sum(t.numel for t in gains),
                             "gains": sum(t.numel for t in gains), "tune_s": round(time.perf_counter() - t0)}
        with torch.no_grad():
            res = paired_elbo(models, tiles, args.steps, 5, 16, args.seed)
        b = res["base"]["total"]
        for variant, row in rows.items():
            d = b - res[variant]["total"]
            row = {"image": Path(path).name, "model": fm.model_id, "T": args.steps, "adapt": args.adapt,
                   "variant": variant, **row, "base_bpsp": float(b.mean()), "gain_bpsp": float(d.mean()),
                   "gain_se": float(d.std(ddof=1) / np.sqrt(len(d)))}
            _emit(row, args.out)


if __name__ == "__main__":
    main()
