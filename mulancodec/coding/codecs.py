"""A small craystack-style layer over constriction's stack ANS coder.

A codec is a pair push/pop over a `Stack`: push(stack, symbols) puts symbols
on the stack, pop(stack) takes the same symbols back off. Bits-back is
composed from codecs, as in craystack: `BitsBack` is a codec for data built
from a prior, a likelihood and a posterior, and `BitSwap` nests it along a
Markov chain of latents. Each derives its push and its pop from the one
definition, so an encoder and a decoder cannot drift apart.

Continuous variables live on grids both sides know: a value is an integer
`k` (the bin), and its distribution is given in bin units. Each Gaussian is
coded in a window of +-R bins around its own rounded mean; a value outside the
window is coded as an escape symbol followed by its exact offset, so every
integer stays codable whatever the model says.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Protocol, Sequence

import constriction
import numpy as np

# constriction's quantisation of each Gaussian is part of what a file's bits mean, so the
# version is pinned exactly (setup.cfg) and reported (`mulancodec info`, decode errors).
CONSTRICTION_VERSION = "0.5.0"

_model = constriction.stream.model
_Ans = constriction.stream.stack.AnsCoder

CHUNK_BITS = 16
_CHUNK = _model.Uniform(1 << CHUNK_BITS)
_PIXELS = _model.QuantizedGaussian(0, 255)
MAX_ESCAPE = 1 << (2 * CHUNK_BITS)  # escape offsets are coded as two 16-bit chunks
MIN_HEAD_BITS = 64  # a pop must leave at least this much on the stack
MAX_RADIUS = 1 << 22  # constriction's 24-bit models cannot give a wider window nonzero mass
MAX_CENTRE = 2.0 ** 52  # means (in bins) beyond this cannot be rounded to an int64 bin exactly


def constriction_version() -> str:
    """The installed constriction's version (files decode only with CONSTRICTION_VERSION)."""
    try:
        return metadata.version("constriction")
    except metadata.PackageNotFoundError:
        return str(getattr(constriction, "__version__", "unknown"))


class CodingError(Exception):
    """Symbols cannot be coded (out of range) or the stack is corrupt."""


class StackUnderflow(CodingError):
    """A pop needed more bits than the stack held: the encoder needs a larger seed."""


def seed_words(n: int) -> np.ndarray:
    """The first n words of a fixed pseudo-random sequence (splitmix64, our own: no
    library's generator may change it), top of stack first."""
    out = np.empty(n, np.uint32)
    for start in range(0, n, 1 << 16):  # in chunks: a long seed costs 4 bytes a word, not 40
        z = np.arange(start + 1, min(n, start + (1 << 16)) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z *= np.uint64(0x9E3779B97F4A7C15)
            z ^= z >> np.uint64(30)
            z *= np.uint64(0xBF58476D1CE4E5B9)
            z ^= z >> np.uint64(27)
            z *= np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
        out[start:start + len(z)] = z >> np.uint64(32)
    return out


class Stack:
    """The message: constriction's AnsCoder plus underflow detection and accounting."""

    def __init__(self, words: np.ndarray | None = None, *, seed: int = 0, sealed: bool = False) -> None:
        if seed:
            # bottom-first array whose top words do not depend on the seed length
            self.ans = _Ans(seed_words(seed)[::-1].copy(), seal=True)
        elif words is not None:
            if len(words) == 0 and not sealed:
                self.ans = _Ans()
            else:
                try:
                    self.ans = _Ans(np.ascontiguousarray(words, dtype=np.uint32), seal=sealed)
                except (ValueError, TypeError) as e:
                    raise CodingError(f"corrupt payload ({e})") from None
        else:
            self.ans = _Ans()
        self.checked = True  # pops are checked against underflow
        self.low_water = self.bits()

    def bits(self) -> int:
        return int(self.ans.num_valid_bits())

    def words(self) -> np.ndarray:
        return self.ans.get_compressed()

    def after_pop(self) -> None:
        b = self.bits()
        self.low_water = min(self.low_water, b)
        if self.checked and b < MIN_HEAD_BITS:
            raise StackUnderflow(f"stack ran low ({b} bits)")


class Codec(Protocol):
    def push(self, stack: Stack, symbols: Any) -> None: ...

    def pop(self, stack: Stack) -> Any: ...


@dataclass
class BitsBackStep:
    """One latent coded bits-back, without its prior: the part every level shares.

    `posterior(data)` is the codec of the latent given the data (q), `likelihood(latent)`
    the codec of the data given the latent (p). Pushing data pops its latent (getting
    bits back) and pushes the data; the caller then codes the latent with its prior.
    """

    posterior: Callable[[Any], Codec]
    likelihood: Callable[[Any], Codec]

    def push(self, stack: Stack, data: Any) -> Any:
        latent = self.posterior(data).pop(stack)
        self.likelihood(latent).push(stack, data)
        return latent

    def pop(self, stack: Stack, latent: Any) -> Any:
        data = self.likelihood(latent).pop(stack)
        self.posterior(data).push(stack, latent)
        return data


@dataclass
class BitsBack:
    """craystack's BBANS: a codec for data from prior p(z), likelihood p(x|z), posterior q(z|x).

    The expected cost of a push is -ELBO = E_q[-log p(x|z) - log p(z) + log q(z|x)].
    """

    prior: Codec
    step: BitsBackStep

    def push(self, stack: Stack, data: Any) -> None:
        self.prior.push(stack, self.step.push(stack, data))

    def pop(self, stack: Stack) -> Any:
        return self.step.pop(stack, self.prior.pop(stack))


@dataclass
class BitSwap:
    """A Markov chain of latents x -> z_0 -> ... -> z_n coded bits-back in Bit-Swap order.

    The same as `BitsBack` nested n + 1 deep (the prior of each level is the next
    level's codec, the last one's is `prior`), unrolled into a loop so that a chain
    of any length needs no recursion and only one step's bits on the stack at a time.
    """

    steps: Sequence[BitsBackStep]
    prior: Codec

    def push(self, stack: Stack, data: Any) -> None:
        for step in self.steps:
            data = step.push(stack, data)
        self.prior.push(stack, data)

    def pop(self, stack: Stack) -> Any:
        latent = self.prior.pop(stack)
        for step in reversed(self.steps):
            latent = step.pop(stack, latent)
        return latent


@dataclass
class Uniform:
    """n_bits-bit unsigned integers, each with probability 2^-n_bits."""

    n_bits: int
    count: int

    def push(self, stack: Stack, symbols: np.ndarray) -> None:
        s = np.asarray(symbols, dtype=np.int64)
        parts = []
        for shift in range(0, self.n_bits, CHUNK_BITS):
            parts.append(((s >> shift) & ((1 << CHUNK_BITS) - 1)).astype(np.int32))
        for p in reversed(parts):  # the decoder pops the low chunk first
            stack.ans.encode_reverse(p, _CHUNK)

    def pop(self, stack: Stack) -> np.ndarray:
        out = np.zeros(self.count, np.int64)
        for shift in range(0, self.n_bits, CHUNK_BITS):
            out |= stack.ans.decode(_CHUNK, self.count).astype(np.int64) << shift
        stack.after_pop()
        return out


@dataclass
class WindowedGaussian:
    """Integers k ~ N(mean, std^2) quantised to unit bins, coded in mean +- radius.

    mean and std are in bin units (float64 arrays of one length). With
    `escapes`, offsets beyond the window become an escape symbol +-(radius+1)
    followed by the exact offset, so any integer can be pushed. Posteriors are
    coded without escapes: ANS couples the quantile a pop reads to the slot of
    the symbol pushed just before, so a pushed escape would make the next pop
    an escape too, with a random offset.

    The same coupling ties each popped value's quantile to the symbol pushed
    just before it. Posterior pops run in `reverse` element order, so a
    subpixel's noise never comes from its own previous model error (a
    persistent per-pixel bias would otherwise feed back along the chain).
    """

    mean: np.ndarray
    std: np.ndarray
    radius: int
    escapes: bool = False
    reverse: bool = False

    def __post_init__(self) -> None:
        # checked before they reach constriction, whose errors here are Rust panics
        if not 1 <= self.radius <= MAX_RADIUS:
            raise CodingError(f"coding window of {self.radius} bins is out of range")
        if not np.all(np.abs(self.mean) < MAX_CENTRE) or not np.all(np.isfinite(self.std)):
            raise CodingError("model produced non-finite or out-of-range parameters")
        self.centre = np.rint(self.mean).astype(np.int64)
        self.rel = np.ascontiguousarray(self.mean - self.centre, dtype=np.float64)
        self.std = np.ascontiguousarray(np.maximum(self.std, 1e-6), dtype=np.float64)
        edge = self.radius + 1 if self.escapes else self.radius
        self.model = _model.QuantizedGaussian(-edge, edge)
        if self.reverse:
            self.rel, self.std = self.rel[::-1].copy(), self.std[::-1].copy()

    def push(self, stack: Stack, k: np.ndarray) -> None:
        s = np.asarray(k, dtype=np.int64) - self.centre
        out = np.abs(s) > self.radius
        if out.any():
            if not self.escapes:
                raise CodingError("value outside its coding window (corrupt stream?)")
            esc = self.radius + 1
            offset = np.abs(s[out]) - esc
            if offset.max() >= MAX_ESCAPE:
                raise CodingError("value out of codable range")
            Uniform(2 * CHUNK_BITS, int(out.sum())).push(stack, offset)
            s = np.where(out, np.sign(s) * esc, s)
        if self.reverse:
            s = s[::-1]
        stack.ans.encode_reverse(np.ascontiguousarray(s, dtype=np.int32), self.model, self.rel, self.std)

    def pop(self, stack: Stack) -> np.ndarray:
        sym = stack.ans.decode(self.model, self.rel, self.std).astype(np.int64)
        stack.after_pop()
        if self.reverse:
            sym = sym[::-1].copy()
        if self.escapes:
            esc = self.radius + 1
            out = np.abs(sym) == esc
            if out.any():
                offset = Uniform(2 * CHUNK_BITS, int(out.sum())).pop(stack)
                sym[out] = np.sign(sym[out]) * (esc + offset)
        return self.centre + sym


@dataclass
class PixelGaussian:
    """Pixels 0..255 with a Gaussian quantised to the pixel grid (p(x | z_0))."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(np.clip(self.mean, -1e6, 1e6), dtype=np.float64)
        self.std = np.ascontiguousarray(np.clip(self.std, 1e-6, 1e6), dtype=np.float64)
        if not np.all(np.isfinite(self.mean)) or not np.all(np.isfinite(self.std)):
            raise CodingError("model produced non-finite parameters")

    def push(self, stack: Stack, x: np.ndarray) -> None:
        stack.ans.encode_reverse(np.asarray(x, dtype=np.int32), _PIXELS, self.mean, self.std)

    def pop(self, stack: Stack) -> np.ndarray:
        x = stack.ans.decode(_PIXELS, self.mean, self.std)
        stack.after_pop()
        return x.astype(np.int64)
