"""Adaptation on both sides: the encoder's fine-tune-and-decide, the decoder's adapted model.

Encoder (`adapt_model`): fine-tune the float model's tensors of its subset (`subset_for`) on the image's
own tiles at the file's T (`tune.finetune`), quantise the deltas (`step_exps`), code
them (`deltas.encode`), add them to the integer model, and keep them only when the file
shrinks with their cost included (minimum description length): the bits they save are
estimated with the integer model's -ELBO_T on the image's own tiles, before and after,
with the same draws (`tune.paired_gain`), scaled to the image's coded subpixels, and,
less two standard errors (`pays`), compared with the bits of the block. The estimate is the
bound's, not a second encode: it costs 2 x tiles x STRATA network calls, against tiles x T
for the encode itself.

Decoder (`adapted_model`): the block's deltas, checked against the model's tensors, added
to a copy of the integer model named by the file's model id (`deltas.apply`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..coding.chainspec import ADAPTED_VERSION, AdaptBlock, ChainSpec
from ..coding.container import adapt_block_bytes
from ..exact.exactmath import EXACT
from ..exact.quantcost import stratified_k
from . import deltas as D
from .params import LOWRANK_SUBSETS, SUBSET_NAMES, SUBSET_UP, SUBSET_UP_LOWRANK, adapt_tensors
from .tune import finetune, own_tiles, paired_gain

# What an adapted file changes and how finely (chosen by measurement on held-out photos,
# benchmarks/adapt.py, results in benchmarks/results/adapt-tune.jsonl). The subset: the
# denoiser's up path, full-resolution blocks and output, their norms and biases (4,486
# parameters in `photo`): on three photos at T=25 it netted 0.046 (50 steps) and 0.054
# (100 steps) bits per subpixel against 0.039 and 0.051 for every norm and bias (8,087),
# with half the block. The grid, 2^-e: a finer one saves more bits on the image and costs
# more in the block, so the best e grows with the image: as minimum description length has
# it, a parameter is worth a precision of about 1/sqrt(N) for N data. Measured (100 steps):
# on 256x256 crops (197k subpixels) 2^-3 and 2^-4 net the most, on a 400x600 photo (720k)
# 2^-4 and 2^-5; e = round(log2(sqrt(N)) - STEP_OFFSET) fits both.
SUBSET = SUBSET_UP
STEP_OFFSET = 5.3
STEP_EXP_RANGE = (3, 8)
# A model with full-resolution blocks also changes their convolutions, each by a rank-1
# product (`SUBSET_UP_LOWRANK`), its factors' integers of about FACTOR_RMS rms: on
# photos-more/val's coffee photo at T=25 (100 steps) that netted 0.051 bits per subpixel
# against the norms and biases' 0.041 (benchmarks/results/adapt-lowrank-photo7/).
FACTOR_RMS = 1.0


def subset_for(cfg: Any) -> int:
    """The subset a model's files adapt: the low-rank one where there are full-resolution blocks."""
    return SUBSET_UP_LOWRANK if getattr(cfg, "full_blocks", 0) else SUBSET


def step_exps(subpixels: int) -> tuple[int, ...]:
    """The step exponents (norm scale, norm shift, bias) for an image of this many coded
    subpixels: one e for all kinds, finer for larger images."""
    e = round(0.5 * math.log2(max(subpixels, 1)) - STEP_OFFSET)
    e = min(max(e, STEP_EXP_RANGE[0]), STEP_EXP_RANGE[1])
    return (e, e, e)


# Steps per tile in the encoder's gain estimate, one from each of as many equal runs of 1..T
# (at most 5, a divisor of T: `quantcost.stratified_k`). On McMaster photo 2 at T=25 one step
# per tile left a standard error of 37 kbit on a 98 kbit saving; the strata cost 2 x tiles
# x 5 network calls, a fraction of the fine-tuning's.
STRATA = 5


class AdaptError(ValueError):
    """Adaptation cannot run (no integer model, no float model to fine-tune)."""


@dataclass
class AdaptReport:
    """What the encoder's adaptation did (`EncodeStats.adapt`)."""

    steps: int  # fine-tuning steps asked for
    kept: bool  # the file carries the deltas
    subset: str = ""
    params: int = 0
    nonzero: int = 0  # parameters whose stored delta is not 0
    delta_bytes: int = 0  # the block's size in the header
    saved_bits: float = 0.0  # estimated bits the adapted model saves on the image (before the block)
    saved_se_bits: float = 0.0  # that estimate's standard error
    seconds: float = 0.0  # fine-tuning and deciding
    note: str = ""  # why nothing was kept, when nothing was

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def float_model_for(lm: Any, given: Any, device: torch.device) -> Any:
    """The float model an integer model was made from (its file's `float_model_id`): `given`
    (a name, path or LoadedModel), else the installed model with that id."""
    from ..api import get_model
    from ..zoo import find_shipped

    want = lm.meta.get("float_model_id", "")
    if given is None:
        given = find_shipped(want) if want else None
        if given is None:
            raise AdaptError(f"adaptation fine-tunes the float model the integer model {lm.model_id} "
                             f"was made from ({want or 'not recorded'}), which is not installed")
    flm = get_model(given, device)
    if want and flm.model_id != want:
        raise AdaptError(f"{flm.path} is model {flm.model_id}, not {want}, the float model of {lm.model_id}")
    if flm.config != lm.config or getattr(flm.model, "elementary", None) is getattr(lm.model, "elementary", None):
        raise AdaptError(f"{flm.path} is not the float model of {lm.path}")
    return flm


def adapt_model(lm: Any, flm: Any, images: Sequence[np.ndarray], coded_subpixels: int, T: int, steps: int,
                seed: int = 0, progress: Callable[[int], None] | None = None
                ) -> tuple[AdaptBlock | None, torch.nn.Module | None, AdaptReport]:
    """Fine-tune on the images and decide: (block, adapted integer model, report), or
    (None, None, report) when the deltas would not pay for themselves."""
    t0 = time.perf_counter()
    subset = subset_for(lm.config)
    report = AdaptReport(steps=steps, kept=False, subset=SUBSET_NAMES[subset])
    tiles = own_tiles(images, lm.config.tile, lm.config.context)
    if tiles is None:
        report.note = f"no whole {lm.config.tile}x{lm.config.tile} tile to fine-tune on"
        return None, None, report
    tensors = adapt_tensors(lm.config, subset)
    delta = finetune(flm.model, tiles, tensors, steps, T, seed=seed, progress=progress)
    exps = step_exps(coded_subpixels)
    if subset in LOWRANK_SUBSETS:
        exps += (D.factor_exp(delta, tensors, lm.model, FACTOR_RMS),)
    d = D.quantize(delta, tensors, subset, exps, lm.model)
    try:
        adapted = D.apply(lm.model, tensors, d)
    except D.DeltaError:  # a weight change past what stays exact: keep the norms and biases
        d.q = [np.zeros_like(q) if t.factor else q for q, t in zip(d.q, tensors)]
        adapted = D.apply(lm.model, tensors, d)
    report.params, report.nonzero = sum(t.numel for t in tensors), d.nonzero()
    if not report.nonzero:
        report.note = "every delta rounds to 0"
        return None, None, _done(report, t0)
    block = D.encode(d, tensors)
    with torch.no_grad():
        gain, se = paired_gain(lm.model, adapted, tiles, T, stratified_k(T, STRATA), seed)
    report.delta_bytes = len(adapt_block_bytes(block))
    report.saved_bits, report.saved_se_bits = gain * coded_subpixels, se * coded_subpixels
    report.kept = pays(report)
    if not report.kept:
        report.note = "the deltas cost more bits than they save"
        return None, None, _done(report, t0)
    return block, adapted, _done(report, t0)


def for_file(lm: Any, float_model: Any, coded: Sequence[tuple[np.ndarray, bool]], spec: ChainSpec, n: int,
             asked: bool, device: torch.device) -> tuple[AdaptReport, torch.nn.Module, ChainSpec]:
    """The encoder's adaptation of a file's model-coded images (RGB arrays, and whether each
    is grey: one coded channel): (report, the model to code with, the spec to code with and
    store, version 4 when the deltas are kept). An effort level's adaptation is skipped
    where it cannot run (a float model); an explicit one (`asked`) is refused (AdaptError)."""
    if getattr(lm.model, "elementary", None) is not EXACT:
        if asked:
            raise AdaptError("adaptation needs an integer model (format version 3 files, e.g. "
                             "photo-int): a float model's files cannot carry deltas")
        return AdaptReport(steps=n, kept=False, note="a float model's files are not adapted"), lm.model, spec
    flm = float_model_for(lm, float_model, device)
    subpixels = sum(a.shape[0] * a.shape[1] * (1 if grey else 3) for a, grey in coded)
    block, adapted, report = adapt_model(lm, flm, [a for a, _ in coded], subpixels, spec.steps, n)
    if block is None or adapted is None:
        return report, lm.model, spec
    return report, adapted, dataclasses.replace(spec, version=ADAPTED_VERSION, adaptation=block)


MARGIN_SE = 2.0  # standard errors the estimated saving must clear the block's cost by


def pays(report: AdaptReport) -> bool:
    """The minimum-description-length rule: keep the deltas when the bits they are estimated
    to save exceed the bits of their block, by MARGIN_SE standard errors of the estimate
    (it is measured on the tiles the model was tuned on, so it errs on the hopeful side)."""
    return report.saved_bits - MARGIN_SE * report.saved_se_bits > 8 * report.delta_bytes


def _done(report: AdaptReport, t0: float) -> AdaptReport:
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def adapted_model(model: torch.nn.Module, config: Any, block: AdaptBlock) -> torch.nn.Module:
    """The integer model with a file's deltas added (DeltaError if they do not fit it)."""
    if block.subset not in SUBSET_NAMES:
        raise D.DeltaError(f"unknown adaptation subset {block.subset}")
    try:
        tensors = adapt_tensors(config, block.subset)
    except ValueError as e:  # a subset this model does not have
        raise D.DeltaError(str(e)) from None
    return D.apply(model, tensors, D.decode(block, tensors))
