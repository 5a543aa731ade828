"""Fine-tuning the float model on the image being coded (the encoder's side of adaptation).

The float model's tensors of one subset (`params`) are trained for a few Adam steps
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

from ..model.mulan import MuLAN
from ..training.data import TileSet, batch_tensors, image_tiles
from .params import AdaptTensor

LR = 3e-3  # Adam's step size (measured: see benchmarks/adapt.py)
BATCH = 8  # tiles per step
SCHEDULES = ("constant", "linear")  # the step size over the run: constant, or falling linearly to 0
SCHEDULE = "constant"


def own_tiles(images: Sequence[np.ndarray], tile: int, margin: int) -> TileSet | None:
    """The full tiles of the images with their nominal context (None when none is whole)."""
    try:
        return image_tiles(list(images), tile, margin)
    except ValueError:
        return None


Delta = dict[str, torch.Tensor]  # float model name -> new value minus old (float64, CPU)


def finetune(model: MuLAN, tiles: TileSet, tensors: Sequence[AdaptTensor], steps: int, T: int,
             lr: float = LR, batch: int = BATCH, seed: int = 0,
             progress: Callable[[int], None] | None = None, schedule: str = SCHEDULE) -> Delta:
    """`steps` Adam steps of `tensors` on random batches of `tiles`; returns each tensor's
    new value minus its old. `model` itself is left as it was."""
    return finetune_snapshots(model, tiles, tensors, [steps], T, lr, batch, seed, progress, schedule)[steps]


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
                       schedule: str = SCHEDULE) -> dict[int, Delta]:
    """`finetune` to the largest of `snapshots`, with the deltas after each of them (a
    "linear" schedule falls to 0 at the largest)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown step-size schedule {schedule!r}: one of {SCHEDULES}")
    work = copy.deepcopy(model).train()
    work.requires_grad_(False)
    params = dict(work.named_parameters())
    chosen = [params[t.float_name] for t in tensors]
    base = [p.detach().double().cpu().clone() for p in chosen]
    for p in chosen:
        p.requires_grad_(True)
    opt = torch.optim.Adam(chosen, lr=lr)
    rng = np.random.default_rng(seed)
    dev = next(work.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    out: dict[int, Delta] = {}
    last = max(snapshots, default=0)
    for step in range(1, last + 1):
        if schedule == "linear":
            opt.param_groups[0]["lr"] = lr * (last - step + 1) / last
        x, ctx = batch_tensors(tiles.take(batch_indices(rng, len(tiles), batch)), dev)
        with torch.enable_grad():
            loss = work.terms(x, steps=T, generator=gen, ctx=ctx).total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if progress is not None:
            progress(1)
        if step in snapshots:
            out[step] = {t.float_name: p.detach().double().cpu() - b for t, p, b in zip(tensors, chosen, base)}
    return {k: out.get(k, {t.float_name: torch.zeros(t.numel, dtype=torch.float64) for t in tensors})
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
