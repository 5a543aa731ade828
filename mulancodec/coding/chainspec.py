"""What a file's chain is: the one description its encoder and decoder build it from.

`ChainSpec` holds everything both sides must agree on to rebuild every
distribution of a tile's bits-back chain: the model (by id), T, the grids, and
what the format version says about the arithmetic (an integer model's, exact on
any machine, or a float model's, which repeats only on the `Machine` it ran on).
The container stores it whole (`container.Header.chain`); the encoder codes
with the very spec it writes, and the decoder with the one it reads.

`chain_steps` is the one place the chain's T is decided when a caller leaves it
open, and `EFFORTS` (`effort_plan`) the one table that turns an effort level
(`--effort 1..9`, like cjxl's `-e`) into T and an adaptation budget.

An adapted file (format version 4) also carries an `AdaptBlock`: quantised,
entropy-coded changes to some of its model's float64 parameters (`mulancodec.adapt`),
which the decoder adds to the model named by `model_id` before it codes anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# T when neither the caller nor the model's file names one.
DEFAULT_STEPS = 100
# From this format version on a file is an integer model's: its results are exact, so it
# decodes on any machine and its header names none (no backend, precision, threads, tag).
EXACT_VERSION = 3
# Format version 4: version 3 with an adaptation block (an integer model's file whose model
# was fine-tuned on the image: `AdaptBlock`). Only adapted files are written as version 4.
ADAPTED_VERSION = 4
NO_MODEL = "0" * 16  # the model id of a spec that names no model (a compact file's)


def chain_steps(meta: Mapping[str, str] | None = None, steps: int | None = None) -> int:
    """T for a chain: `steps` when given, else the model's own default (its file's
    `default_steps` metadata, `meta`), else DEFAULT_STEPS.

    Every caller that leaves T open (encoder, eval, CLI) asks this, so one model
    codes and evaluates at one T.
    """
    if steps is not None:
        return steps
    try:
        return int((meta or {}).get("default_steps", DEFAULT_STEPS))
    except ValueError:
        return DEFAULT_STEPS


# Effort levels (`--effort`, `effort=`): T and the adaptation budget together, from fast to
# small. None as T means the model's own default (`chain_steps`: 50 for the shipped models),
# so effort 7, the default, writes exactly the files an encoder without efforts wrote.
DEFAULT_EFFORT = 7


@dataclass(frozen=True)
class Effort:
    """What one effort level codes with: T (None: the model's default), fine-tuning steps
    on the image (0: none), or, with `classical`, no model at all (the smallest of PNG,
    WebP and JPEG-XL, embedded)."""

    steps: int | None
    adapt: int = 0
    classical: bool = False

    def describe(self) -> str:
        if self.classical:
            return "smallest of PNG/WebP/JPEG-XL (no model)"
        t = "the model's default T (50)" if self.steps is None else f"T={self.steps}"
        return t + (f", adapt {self.adapt} steps" if self.adapt else "")


EFFORTS: dict[int, Effort] = {
    1: Effort(None, classical=True),
    2: Effort(10), 3: Effort(15), 4: Effort(20), 5: Effort(25), 6: Effort(35),
    7: Effort(None),
    8: Effort(None, adapt=50),
    9: Effort(100, adapt=100),
}


def effort_plan(effort: int | None, steps: int | None = None,
                adapt: int | None = None) -> tuple[Effort, int | None, int]:
    """(the level's Effort, T to ask `chain_steps` for, adaptation steps) for `effort`
    (None: DEFAULT_EFFORT); an explicit `steps` or `adapt` overrides the level's."""
    level = DEFAULT_EFFORT if effort is None else effort
    if level not in EFFORTS:
        raise ValueError(f"effort must be 1..9, not {effort}")
    e = EFFORTS[level]
    return e, e.steps if steps is None else steps, e.adapt if adapt is None else adapt


def effort_table() -> str:
    """The levels, one line each (for --help and the docs)."""
    return "\n".join(f"{k}: {e.describe()}" + (" (default)" if k == DEFAULT_EFFORT else "")
                      for k, e in EFFORTS.items())


def is_exact_version(version: int) -> bool:
    """Whether files of this format version are an integer model's (machine-independent)."""
    return version >= EXACT_VERSION


@dataclass(frozen=True, kw_only=True)
class Machine:
    """Where a float model's file (format versions 1-2) decodes: its float results repeat
    only with the backend, precision and CPU thread count it was encoded with."""

    backend: str  # "cpu" | "cuda" ("any": an integer model's file)
    bf16: bool = False  # bf16 autocast (no encoder writes it; a decoder refuses it)
    threads: int = 0  # CPU intra-op threads the encoder ran with (0: any)
    env_tag: int = 0  # CRC-32 of the numerics environment (torch version, device kind)


# What an integer model's file (version 3 on) pins: nothing.
ANY_MACHINE = Machine(backend="any")


@dataclass(frozen=True, kw_only=True)
class ChainSpec:
    """What both sides must agree on to rebuild every distribution (stored whole in the header)."""

    steps: int  # T (decided by `chain_steps` when a caller leaves it open)
    kappa: float = 1.0  # grid step as a fraction of the smaller of the two stds (measured best)
    window: float = 12.0  # coding window radius in stds (beyond it: escape codes)
    latent_delta: float = 1.0 / 256  # grid of the latent c (prior std 1)
    model_id: str = NO_MODEL  # 16 hex digits: the model the chain's distributions come from
    version: int = EXACT_VERSION  # the file's format version
    machine: Machine = ANY_MACHINE  # a float model's file: where it decodes
    adaptation: "AdaptBlock | None" = None  # version 4: the changes to the model's parameters

    @property
    def exact(self) -> bool:
        """An integer model's chain: the same results on any machine, thread count or batch."""
        return is_exact_version(self.version)

    @property
    def machine_bound(self) -> bool:
        """A float model's chain: it decodes only on `machine` (the header stores it)."""
        return not self.exact


@dataclass(frozen=True)
class AdaptBlock:
    """The stored changes to an integer model's float64 parameters (format version 4), as
    read and written; `mulancodec.adapt.deltas` codes and applies them. The tensors are
    those of `subset` for the model's config (`adapt.params.adapt_tensors`), in order."""

    subset: int  # which tensors (adapt.params.SUBSETS)
    step_exps: tuple[int, ...]  # per tensor kind (norm scale, norm shift, bias): step 2^-e
    params: int  # how many parameters the tensors hold together (checked against the model)
    scales: bytes  # per tensor, its Laplace scale's code (0: all of its deltas are 0)
    words: bytes  # the ANS words of every coded tensor's integers, u32 little-endian

    @property
    def tensors(self) -> int:
        return len(self.scales)
