"""What a file's chain is: the one description its encoder and decoder build it from.

`ChainSpec` holds everything both sides must agree on to rebuild every
distribution of a tile's bits-back chain: the model (by id), T, the grids, and
what the format version says about the arithmetic (an integer model's, exact on
any machine, or a float model's, which repeats only on the `Machine` it ran on).
The container stores it whole (`container.Header.chain`); the encoder codes
with the very spec it writes, and the decoder with the one it reads.

`chain_steps` is the one place the chain's T is decided when a caller leaves it
open.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# T when neither the caller nor the model's file names one.
DEFAULT_STEPS = 100
# From this format version on a file is an integer model's: its results are exact, so it
# decodes on any machine and its header names none (no backend, precision, threads, tag).
EXACT_VERSION = 3
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

    @property
    def exact(self) -> bool:
        """An integer model's chain: the same results on any machine, thread count or batch."""
        return is_exact_version(self.version)

    @property
    def machine_bound(self) -> bool:
        """A float model's chain: it decodes only on `machine` (the header stores it)."""
        return not self.exact
