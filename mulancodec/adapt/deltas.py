"""Adaptation deltas: quantised, entropy-coded, and added to an integer model exactly.

Each adapted tensor's change is stored as integers q with one power-of-two step per
tensor kind (`KINDS`): the delta is q x 2^-e, an exact float64 value, and the decoder
adds it to the integer model's float64 buffer: one IEEE addition per parameter, the
same bits on every machine. The integers of a tensor are coded with constriction's
QuantizedLaplace(0, b), b from a one-byte code per tensor (`scale_of`), in one small
ANS stream of their own; a tensor whose integers are all 0 is not coded (code 0).

What a decoder accepts is bounded before anything is decoded: the subset must be
known and its tensor count and parameter count those of the model, every step and
scale code in range, the words no more than the parameters could need, and no
decoded delta can exceed MAX_DELTA in magnitude (the Laplace's support is cut there).
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
from ..coding.container import ADAPT_KINDS, ADAPT_STEP_EXPS
from ..exact.intops import Derived
from .params import SUBSET_NAMES, AdaptTensor

KINDS = ("norm scale", "norm shift", "bias")  # one step per kind (see `kind_of`)
assert len(KINDS) == ADAPT_KINDS
MAX_DELTA = 4.0  # no stored delta exceeds this in magnitude (a hostile file's included)
MAX_Q = (1 << 15) - 1  # and no integer exceeds this (the coder's support)
SCALE_ZERO = 0  # the scale code of a tensor whose integers are all 0 (not coded)


class DeltaError(ValueError):
    """A delta block that cannot be (or was not) made from the model it names."""


def kind_of(t: AdaptTensor) -> int:
    """0 for a norm's scale (gamma), 1 for its shift (beta), 2 for a bias."""
    return 0 if t.int_name.endswith(".gamma") else 1 if t.int_name.endswith(".beta") else 2


def scale_of(code: int) -> float:
    """The Laplace scale (in steps) a one-byte code 1..255 stands for: 2^((code - 96) / 8),
    so 2^-11.9 .. 2^19.9 in steps of 9%."""
    return 2.0 ** ((code - 96) / 8.0)


def q_limit(exp: int) -> int:
    """The largest integer a tensor of step 2^-exp may hold: |q| 2^-exp <= MAX_DELTA."""
    return min(MAX_Q, int(MAX_DELTA * 2.0 ** exp))


@dataclass
class Deltas:
    """One adaptation: the integers of each tensor of `subset` (in `adapt_tensors` order)
    and the step exponent of each kind."""

    subset: int
    step_exps: tuple[int, ...]
    q: list[np.ndarray]  # int64, one per tensor

    def values(self, tensors: Sequence[AdaptTensor]) -> list[np.ndarray]:
        """Each tensor's float64 deltas, q x 2^-e (exact: |q| < 2^15)."""
        return [q.astype(np.float64) * 2.0 ** -self.step_exps[kind_of(t)] for q, t in zip(self.q, tensors)]

    def nonzero(self) -> int:
        return int(sum(np.count_nonzero(q) for q in self.q))


def quantize(deltas: dict[str, torch.Tensor], tensors: Sequence[AdaptTensor], subset: int,
             step_exps: Sequence[int]) -> Deltas:
    """Float deltas (float model name -> tensor) onto their kinds' grids, clamped to what a
    file may hold."""
    qs = []
    for t in tensors:
        e = step_exps[kind_of(t)]
        lim = q_limit(e)
        v = deltas[t.float_name].detach().double().cpu().numpy().reshape(-1)
        qs.append(np.clip(np.rint(v * 2.0 ** e), -lim, lim).astype(np.int64))
    return Deltas(subset, tuple(int(e) for e in step_exps), qs)


def _laplace(exp: int) -> constriction.stream.model.QuantizedLaplace:
    lim = q_limit(exp)
    return constriction.stream.model.QuantizedLaplace(-lim, lim)


def _laplace_bits(q: np.ndarray, b: float) -> float:
    """About what coding q with QuantizedLaplace(0, b) costs, in bits (to pick b)."""
    a = np.abs(q).astype(np.float64)
    p0 = -math.expm1(-0.5 / b)
    rest = np.log2(0.5) + np.log2(2 * math.sinh(0.5 / b)) - (a / b) / math.log(2)
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
            coder.encode_reverse(q.astype(np.int32), _laplace(d.step_exps[kind_of(t)]),
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
    if len(block.step_exps) != len(KINDS) or not all(
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
        qs.append(coder.decode(_laplace(e), np.zeros(t.numel), np.full(t.numel, scale_of(c)))
                  .astype(np.int64))
    if not coder.is_empty():
        raise DeltaError("corrupt adaptation block (its words do not decode to its tensors)")
    return Deltas(block.subset, tuple(block.step_exps), qs)


def apply(model: torch.nn.Module, tensors: Sequence[AdaptTensor], d: Deltas) -> torch.nn.Module:
    """A copy of an integer model with the deltas added to its float64 buffers, its derived
    values (factors, host copies: `intops.Derived`) made anew. `model` is not changed; the
    copy shares its other tensors (weights, tables), which coding never writes to."""
    changed = {t.int_name for t in tensors}
    shared = {id(b): b for name, b in model.named_buffers() if name not in changed}
    shared.update({id(p): p for p in model.parameters()})
    out = copy.deepcopy(model, shared)
    buffers = dict(out.named_buffers())
    with torch.no_grad():
        for t, v in zip(tensors, d.values(tensors)):
            buf = buffers[t.int_name]
            buf.add_(torch.from_numpy(v).to(buf.device).view_as(buf))
    for m in out.modules():
        if isinstance(m, Derived):
            Derived.prepare(m)  # forget derived values only: the tables do not change
    return out


def apply_float(model: torch.nn.Module, tensors: Sequence[AdaptTensor], d: Deltas) -> torch.nn.Module:
    """A copy of the float model with the same (dequantised) deltas added: what the integer
    model's adapted parameters stand for (for measuring)."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for t, v in zip(tensors, d.values(tensors)):
            p = params[t.float_name]
            p.add_(torch.from_numpy(v).to(p).view_as(p))
    return out
