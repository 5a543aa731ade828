"""Fine-tuning the float model on the image being coded (the encoder's side of adaptation).

The float model's tensors of one subset (`params`) are trained for a few Adam steps
(a low-rank subset's convolutions as W + B A^T, B from 0 and A from a seeded draw)
on the image's own tiles, with the context masks the codec's nominal plan gives them
(`training.data.image_tiles`), on the discrete-time loss at the file's T: the very
quantity the file's size approaches. Only the encoder runs this; a decoder gets the
(quantised) result from the file.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from torch import nn
from torch.nn.utils import parametrize

from ..model.mulan import MuLAN
from ..training.data import TileSet, batch_tensors, image_tiles
from .deltas import key_of
from .params import FACTORS, AdaptTensor

LR = 3e-3  # Adam's step size (measured: see benchmarks/adapt.py)
LR_FACTOR = 3e-3  # the low-rank factors' (measured: see benchmarks/adapt.py)
BATCH = 8  # tiles per step
SCHEDULES = ("constant", "linear")  # the step size over the run: constant, or falling linearly to 0
SCHEDULE = "constant"


def own_tiles(images: Sequence[np.ndarray], tile: int, margin: int) -> TileSet | None:
    """The full tiles of the images with their nominal context (None when none is whole)."""
    try:
        return image_tiles(list(images), tile, margin)
    except ValueError:
        return None


Delta = dict[str, torch.Tensor]  # `key_of` -> new value minus old, a factor's value (float64, CPU)


class LowRank(nn.Module):
    """A convolution's weight plus the outer product of B (per output) and A (per input and tap)."""

    def __init__(self, weight: torch.Tensor, gen: torch.Generator) -> None:
        super().__init__()
        fan_in = weight[0].numel()
        a = torch.randn(fan_in, generator=gen, dtype=torch.float64) / fan_in ** 0.5
        self.A = nn.Parameter(a.to(weight))
        self.B = nn.Parameter(torch.zeros(weight.shape[0]).to(weight))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + torch.outer(self.B, self.A).view_as(w)


def _attach_factors(work: MuLAN, tensors: Sequence[AdaptTensor], seed: int) -> dict[str, nn.Parameter]:
    """Each factor pair's convolution of `work` made W + B A^T; the factors by `key_of`."""
    gen = torch.Generator().manual_seed(seed + 1)
    mods, out = dict(work.named_modules()), {}
    for t in tensors:
        if not t.factor:
            continue
        conv = mods[t.float_name.rsplit(".", 1)[0]]
        if t.factor == FACTORS[0]:  # a pair's first: its convolution gets the pair
            parametrize.register_parametrization(conv, "weight", LowRank(conv.weight.detach(), gen))
        out[key_of(t)] = getattr(conv.parametrizations.weight[0], t.factor)
    return out


def finetune(model: MuLAN, tiles: TileSet, tensors: Sequence[AdaptTensor], steps: int, T: int,
             lr: float = LR, batch: int = BATCH, seed: int = 0,
             progress: Callable[[int], None] | None = None, schedule: str = SCHEDULE,
             lr_factor: float = LR_FACTOR) -> Delta:
    """`steps` Adam steps of `tensors` on random batches of `tiles`; returns each tensor's
    new value minus its old (a factor's value). `model` itself is left as it was."""
    return finetune_snapshots(model, tiles, tensors, [steps], T, lr, batch, seed, progress, schedule,
                              lr_factor)[steps]


def batch_indices(rng: np.random.Generator, tiles: int, batch: int) -> np.ndarray:
    """One step's tiles: `batch` distinct tiles, or, when the image has fewer, every tile
    as often as fits and a random distinct rest (each copy gets its own noise draw)."""
    whole, rest = divmod(batch, tiles)
    if not whole:
        return rng.choice(tiles, batch, replace=False)
    return np.concatenate([np.tile(np.arange(tiles), whole), rng.choice(tiles, rest, replace=False)])


def finetune_snapshots(model: MuLAN, tiles: TileSet, tensors: Sequence[AdaptTensor],
                       snapshots: Sequence[int], T: int, lr: float = LR, batch: int = BATCH,
                       seed: int = 0, progress: Callable[[int], None] | None = None,
                       schedule: str = SCHEDULE, lr_factor: float = LR_FACTOR) -> dict[int, Delta]:
    """`finetune` to the largest of `snapshots`, with the deltas after each of them (a
    "linear" schedule falls to 0 at the largest)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown step-size schedule {schedule!r}: one of {SCHEDULES}")
    work = copy.deepcopy(model).train()
    work.requires_grad_(False)
    params = dict(work.named_parameters())
    plain = [t for t in tensors if not t.factor]
    chosen = [params[t.float_name] for t in plain]
    base = [p.detach().double().cpu().clone() for p in chosen]
    factors = _attach_factors(work, tensors, seed)
    for p in chosen:
        p.requires_grad_(True)
    groups = [{"params": chosen, "lr": lr}]
    if factors:
        groups.append({"params": list(factors.values()), "lr": lr_factor})
    opt = torch.optim.Adam(groups)
    top = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng(seed)
    dev = next(work.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    out: dict[int, Delta] = {}
    last = max(snapshots, default=0)
    for step in range(1, last + 1):
        if schedule == "linear":
            for g, peak in zip(opt.param_groups, top):
                g["lr"] = peak * (last - step + 1) / last
        x, ctx = batch_tensors(tiles.take(batch_indices(rng, len(tiles), batch)), dev)
        with torch.enable_grad():
            loss = work.terms(x, steps=T, generator=gen, ctx=ctx).total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if progress is not None:
            progress(1)
        if step in snapshots:
            out[step] = {key_of(t): p.detach().double().cpu() - b for t, p, b in zip(plain, chosen, base)}
            out[step].update({k: p.detach().double().cpu().clone() for k, p in factors.items()})
    return {k: out.get(k, {key_of(t): torch.zeros(t.numel, dtype=torch.float64) for t in tensors})
            for k in snapshots}


def paired_gain(base: torch.nn.Module, adapted: torch.nn.Module, tiles: TileSet, T: int, strata: int,
                seed: int = 0, batch: int = 16) -> tuple[float, float]:
    """Bits per subpixel the adapted model saves on `tiles` at T (mean, standard error over
    tiles): the -ELBO_T of both with the same draws (`quantcost.paired_elbo`), so the
    estimate's noise mostly cancels in the difference."""
    from ..exact.quantcost import difference, paired_elbo

    res = paired_elbo({"base": base, "adapted": adapted}, tiles, T, strata, batch, seed)
    d, se = difference(res["adapted"]["total"], res["base"]["total"])
    return d, se
