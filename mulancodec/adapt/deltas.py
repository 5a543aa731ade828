"""Adaptation deltas: quantised, entropy-coded, and added to an integer model exactly.

Each adapted tensor's change is stored as integers q with one power-of-two step per
tensor kind (`KINDS`): the delta is q x 2^-e, an exact float64 value, and the decoder
adds it to the integer model's float64 buffer: one IEEE addition per parameter, the
same bits on every machine. The integers of a tensor are coded with constriction's
QuantizedLaplace(0, b), b from a one-byte code per tensor (`scale_of`), in one small
ANS stream of their own; a tensor whose integers are all 0 is not coded (code 0).

A low-rank subset's factor pairs (`params.FACTORS`: B per output, A per input and tap,
integers on one grid of their own, the fourth kind) change a convolution's integer
weights by their outer product times 2^(FACTOR_EXP0 - e), rounded half away from zero:
integer arithmetic, the same anywhere; the new weights are clamped to +-255 (each
output's largest weight is there: `QConv.quantize`). Where the convolution reads zero points, its
float64 bias absorbs the new weights' sum times them, as `QConv.quantize` does.

What a decoder accepts is bounded before anything is decoded: the subset must be
known and its tensor count and parameter count those of the model, every step and
scale code in range, the words no more than the parameters could need, and no
decoded delta can exceed MAX_DELTA in magnitude (the Laplace's support is cut there);
changed weights must keep each output's sum within the budget (`QConv.exact`), or the
block is refused.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import constriction
import numpy as np
import torch

from ..coding.chainspec import AdaptBlock
from ..coding.container import ADAPT_KIND_NAMES, ADAPT_KINDS, ADAPT_STEP_EXPS, adapt_kinds
from ..exact.intops import LIMB_MAX, WEIGHT_BUDGET, Derived
from .params import FACTORS, LOWRANK_SUBSETS, SUBSET_NAMES, AdaptTensor

KINDS = ADAPT_KIND_NAMES  # one step per kind (`kind_of`)
assert len(KINDS) == adapt_kinds(LOWRANK_SUBSETS[0]) == ADAPT_KINDS + 1
FACTOR = 3  # the factors' kind
FACTOR_EXP0 = 8  # a pair's product counts 2^(FACTOR_EXP0 - e) weight units: e = 1..30, 2^7 .. 2^-22
MAX_DELTA = 4.0  # no stored delta exceeds this in magnitude (a hostile file's included)
MAX_Q = (1 << 15) - 1  # and no integer exceeds this (the coder's support)
SCALE_ZERO = 0  # the scale code of a tensor whose integers are all 0 (not coded)


class DeltaError(ValueError):
    """A delta block that cannot be (or was not) made from the model it names."""


def kind_of(t: AdaptTensor) -> int:
    """0 for a norm's scale (gamma), 1 for its shift (beta), 2 for a bias, 3 for a factor."""
    if t.factor:
        return FACTOR
    return 0 if t.int_name.endswith(".gamma") else 1 if t.int_name.endswith(".beta") else 2


def key_of(t: AdaptTensor) -> str:
    """A tensor's name in a fine-tuning's results: its float name, and a factor's letter."""
    return f"{t.float_name}#{t.factor}" if t.factor else t.float_name


def scale_of(code: int) -> float:
    """The Laplace scale (in steps) a one-byte code 1..255 stands for: 2^((code - 96) / 8),
    so 2^-11.9 .. 2^19.9 in steps of 9%."""
    return 2.0 ** ((code - 96) / 8.0)


def q_limit(exp: int, kind: int = 0) -> int:
    """The largest integer a tensor of step 2^-exp may hold: |q| 2^-exp <= MAX_DELTA (a
    factor's, MAX_Q: what its product may do to the weights is checked on them)."""
    return MAX_Q if kind == FACTOR else min(MAX_Q, int(MAX_DELTA * 2.0 ** exp))


@dataclass
class Deltas:
    """One adaptation: the integers of each tensor of `subset` (in `adapt_tensors` order)
    and the step exponent of each kind."""

    subset: int
    step_exps: tuple[int, ...]
    q: list[np.ndarray]  # int64, one per tensor

    def values(self, tensors: Sequence[AdaptTensor]) -> list[tuple[AdaptTensor, np.ndarray]]:
        """Each float64 tensor's deltas, q x 2^-e (exact: |q| < 2^15); factors are not here."""
        return [(t, q.astype(np.float64) * 2.0 ** -self.step_exps[kind_of(t)])
                for q, t in zip(self.q, tensors) if not t.factor]

    def weight_deltas(self, tensors: Sequence[AdaptTensor]) -> list[tuple[str, np.ndarray]]:
        """(integer conv weight, its change: the outer product of each factor pair, in weight
        units, int64), in the order of the pairs."""
        return [(tensors[b].int_name, lowrank_product(self.q[b], self.q[a], self.step_exps[FACTOR]))
                for b, a in factor_pairs(tensors)]

    def nonzero(self) -> int:
        return int(sum(np.count_nonzero(q) for q in self.q))


def factor_pairs(tensors: Sequence[AdaptTensor]) -> list[tuple[int, int]]:
    """The positions of each factor pair's B and A (`params.FACTORS`: B, then A)."""
    return [(i, i + 1) for i, t in enumerate(tensors) if t.factor == FACTORS[0]]


def lowrank_product(qb: np.ndarray, qa: np.ndarray, e: int) -> np.ndarray:
    """The weight change (out, in x taps) of a factor pair: qb qa^T x 2^(FACTOR_EXP0 - e),
    rounded half away from zero; exact int64 (|q| <= MAX_Q, so |qb qa| < 2^30)."""
    prod = np.outer(qb.astype(np.int64), qa.astype(np.int64))
    shift = FACTOR_EXP0 - e
    if shift >= 0:
        return prod << shift
    half = np.int64(1) << (-shift - 1)
    return np.sign(prod) * ((np.abs(prod) + half) >> -shift)


def conv_scales(int_model: torch.nn.Module, weight: str) -> tuple[np.ndarray, np.ndarray]:
    """(per output, per input channel) of an integer conv: a weight unit is worth
    out[o] / in[i] in the float model's weight (`QConv.quantize`)."""
    mods = dict(int_model.named_modules())
    name = weight.rsplit(".", 1)[0]
    block, conv = name.rsplit(".", 1)
    norm = mods[f"{block}.norm{conv[-1]}"]  # conv1 reads norm1's grid, conv2 norm2's
    return (mods[name].w_scale.detach().double().cpu().numpy(),
            norm.out_scale.detach().double().cpu().numpy())


def _factor_units(deltas: dict[str, torch.Tensor], tensors: Sequence[AdaptTensor],
                  int_model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Each factor in weight units (`conv_scales`), each pair balanced (equal rms: the
    product is the same, and one grid suits both)."""
    out: dict[str, np.ndarray] = {}
    for i, j in factor_pairs(tensors):
        t, a_t = tensors[i], tensors[j]
        w_out, w_in = conv_scales(int_model, t.int_name)
        b = deltas[key_of(t)].detach().double().cpu().numpy().reshape(-1) / w_out
        a = deltas[key_of(a_t)].detach().double().cpu().numpy().reshape(len(w_in), -1) * w_in[:, None]
        a = a.reshape(-1)
        rb, ra = float(np.sqrt(np.mean(b * b))), float(np.sqrt(np.mean(a * a)))
        c = math.sqrt(rb / ra) if rb > 0 and ra > 0 else 1.0
        out[key_of(t)], out[key_of(a_t)] = b / c, a * c
    return out


def factor_exp(deltas: dict[str, torch.Tensor], tensors: Sequence[AdaptTensor], int_model: torch.nn.Module,
               rms_q: float) -> int:
    """The factors' step exponent that gives their integers about `rms_q` rms (the
    geometric mean over the pairs)."""
    units = _factor_units(deltas, tensors, int_model)
    logs = [math.log2(float(np.sqrt(np.mean(v * v)))) for v in units.values() if v.any()]
    if not logs:
        return FACTOR_EXP0
    # a factor's step is 2^(shift / 2) for the product's 2^shift: rms / step = rms_q
    shift = 2 * (sum(logs) / len(logs) - math.log2(rms_q))
    lo, hi = ADAPT_STEP_EXPS
    return min(max(round(FACTOR_EXP0 - shift), lo), hi)


def quantize(deltas: dict[str, torch.Tensor], tensors: Sequence[AdaptTensor], subset: int,
             step_exps: Sequence[int], int_model: torch.nn.Module | None = None) -> Deltas:
    """Float deltas (`key_of` -> tensor; a factor's: its value) onto their kinds' grids,
    clamped to what a file may hold. Factors need the integer model (their weight units)."""
    units = _factor_units(deltas, tensors, int_model) if any(t.factor for t in tensors) else {}
    qs = []
    for t in tensors:
        e = step_exps[kind_of(t)]
        lim = q_limit(e, kind_of(t))
        if t.factor:
            shift = FACTOR_EXP0 - e  # B's step 2^floor(shift / 2), A's the rest
            step = shift // 2 if t.factor == "B" else shift - shift // 2
            v = units[key_of(t)] * 2.0 ** -step
        else:
            v = deltas[t.float_name].detach().double().cpu().numpy().reshape(-1) * 2.0 ** e
        qs.append(np.clip(np.rint(v), -lim, lim).astype(np.int64))
    return Deltas(subset, tuple(int(e) for e in step_exps), qs)


def _laplace(exp: int, kind: int) -> constriction.stream.model.QuantizedLaplace:
    lim = q_limit(exp, kind)
    return constriction.stream.model.QuantizedLaplace(-lim, lim)


def _laplace_bits(q: np.ndarray, b: float) -> float:
    """About what coding q with QuantizedLaplace(0, b) costs, in bits (to pick b)."""
    a = np.abs(q).astype(np.float64)
    p0 = -math.expm1(-0.5 / b)
    x = 0.5 / b  # log2(2 sinh x), without overflow for the small scales of sparse tensors
    rest = np.log2(0.5) + x / math.log(2) + math.log2(-math.expm1(-2 * x)) - (a / b) / math.log(2)
    return float(-np.where(a == 0, math.log2(p0), rest).sum())


def best_scale_code(q: np.ndarray) -> int:
    """The scale code that codes q in the fewest bits (SCALE_ZERO for all zeros)."""
    if not q.any():
        return SCALE_ZERO
    guess = 96 + 8 * math.log2(max(float(np.abs(q).mean()), 2.0 ** -11))
    lo, hi = max(1, int(guess) - 12), min(255, int(guess) + 12)
    return min(range(lo, hi + 1), key=lambda c: _laplace_bits(q, scale_of(c)))


def encode(d: Deltas, tensors: Sequence[AdaptTensor]) -> AdaptBlock:
    """The block a file stores for these deltas."""
    codes = [best_scale_code(q) for q in d.q]
    coder = constriction.stream.stack.AnsCoder()
    for q, t, c in reversed(list(zip(d.q, tensors, codes))):  # the decoder pops the first first
        if c != SCALE_ZERO:
            scales = np.full(len(q), scale_of(c))
            coder.encode_reverse(q.astype(np.int32), _laplace(d.step_exps[kind_of(t)], kind_of(t)),
                                 np.zeros(len(q)), scales)
    words = coder.get_compressed().astype("<u4").tobytes()
    return AdaptBlock(subset=d.subset, step_exps=d.step_exps, params=sum(t.numel for t in tensors),
                      scales=bytes(codes), words=words)


def check_block(block: AdaptBlock, tensors: Sequence[AdaptTensor]) -> None:
    """Raise DeltaError unless the block fits the tensors of its subset for this model."""
    if block.subset not in SUBSET_NAMES:
        raise DeltaError(f"unknown adaptation subset {block.subset}")
    if block.tensors != len(tensors) or block.params != sum(t.numel for t in tensors):
        raise DeltaError(f"the adaptation block holds {block.tensors} tensors of {block.params} "
                         f"parameters, but the model's {SUBSET_NAMES[block.subset]} are "
                         f"{len(tensors)} tensors of {sum(t.numel for t in tensors)}")
    if len(block.step_exps) != adapt_kinds(block.subset) or not all(
            ADAPT_STEP_EXPS[0] <= e <= ADAPT_STEP_EXPS[1] for e in block.step_exps):
        raise DeltaError("adaptation step out of range")


def decode(block: AdaptBlock, tensors: Sequence[AdaptTensor]) -> Deltas:
    """The deltas a block holds, checked against the model's tensors; DeltaError for a
    block that does not decode to exactly its words."""
    check_block(block, tensors)
    words = np.frombuffer(block.words, dtype="<u4").astype(np.uint32)
    if len(words) and words[-1] == 0:
        raise DeltaError("corrupt adaptation block (its last word is 0)")
    coder = constriction.stream.stack.AnsCoder(words) if len(words) else constriction.stream.stack.AnsCoder()
    qs = []
    for t, c in zip(tensors, block.scales):
        if c == SCALE_ZERO:
            qs.append(np.zeros(t.numel, np.int64))
            continue
        e = block.step_exps[kind_of(t)]
        qs.append(coder.decode(_laplace(e, kind_of(t)), np.zeros(t.numel), np.full(t.numel, scale_of(c)))
                  .astype(np.int64))
    if not coder.is_empty():
        raise DeltaError("corrupt adaptation block (its words do not decode to its tensors)")
    return Deltas(block.subset, tuple(block.step_exps), qs)


def apply(model: torch.nn.Module, tensors: Sequence[AdaptTensor], d: Deltas) -> torch.nn.Module:
    """A copy of an integer model with the deltas added to its float64 buffers and the
    factor pairs' products to its conv weights, its derived values (factors, host copies:
    `intops.Derived`) made anew. `model` is not changed; the copy shares its other tensors
    (weights, tables), which coding never writes to. DeltaError when changed weights would
    leave a convolution inexact."""
    changed = {t.int_name for t in tensors}
    changed |= {t.int_name.rsplit(".", 1)[0] + ".bias" for t in tensors if t.factor}
    shared = {id(b): b for name, b in model.named_buffers() if name not in changed}
    shared.update({id(p): p for p in model.parameters()})
    out = copy.deepcopy(model, shared)
    buffers = dict(out.named_buffers())
    mods = dict(out.named_modules())
    with torch.no_grad():
        for t, v in d.values(tensors):
            buf = buffers[t.int_name]
            buf.add_(torch.from_numpy(v).to(buf.device).view_as(buf))
        for name, dw in d.weight_deltas(tensors):
            _add_weights(mods[name.rsplit(".", 1)[0]], dw)
    for m in out.modules():
        if isinstance(m, Derived):
            Derived.prepare(m)  # forget derived values only: the tables do not change
    return out


def _add_weights(conv: torch.nn.Module, dw: np.ndarray) -> None:
    """Add an integer change to a one-limb `QConv`'s weights, checked exact first; a conv
    reading zero points gets its bias's share of them anew (`QConv.quantize`)."""
    old = conv.weight.detach().cpu().numpy().astype(np.int64).reshape(dw.shape[0], -1)
    w = np.clip(old + dw, -LIMB_MAX, LIMB_MAX)  # every output's largest weight is at the bound
    if np.abs(w).sum(1).max() > WEIGHT_BUDGET:
        raise DeltaError("the adaptation's weight changes would make the network inexact")
    conv.weight = torch.from_numpy(w.reshape(conv.weight.shape)).to(conv.weight.dtype).to(conv.weight.device)
    if conv.in_zero is not None:  # integer sums, exact in float64 whatever their order
        zero = conv.in_zero.detach().cpu().numpy()
        change = (w - old).reshape(conv.weight.shape).sum((2, 3)).astype(np.float64)
        offset = (change * zero[None, :]).sum(1)
        conv.bias.sub_(torch.from_numpy(offset).to(conv.bias) * conv.w_scale)


def apply_float(model: torch.nn.Module, tensors: Sequence[AdaptTensor], d: Deltas,
                int_model: torch.nn.Module | None = None) -> torch.nn.Module:
    """A copy of the float model with the same (dequantised) deltas added: what the integer
    model's adapted parameters stand for (for measuring; factors need the integer model)."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for t, v in d.values(tensors):
            p = params[t.float_name]
            p.add_(torch.from_numpy(v).to(p).view_as(p))
        for name, dw in d.weight_deltas(tensors):
            assert int_model is not None, "factors need the integer model's scales"
            w_out, w_in = conv_scales(int_model, name)
            p = params[next(t.float_name for t in tensors if t.int_name == name)]
            unit = w_out[:, None, None, None] / w_in[None, :, None, None]
            p.add_(torch.from_numpy(dw.reshape(p.shape) * unit).to(p))
    return out
