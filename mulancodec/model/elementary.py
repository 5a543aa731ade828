"""The elementary functions the chain's per-step Gaussians are computed with.

`model.mulan` builds every Gaussian from exp, expm1, sigmoid and sqrt taken from an
`Elementary`: `TORCH` (fast, differentiable: training, and files of format versions
1 and 2), or `exact.exactmath.EXACT` (the same float64 bits on every machine: the
integer codec's chain arithmetic, format version 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class Elementary:
    """The elementary functions the chain's Gaussians are computed with."""

    exp: Callable[[Tensor], Tensor]
    expm1: Callable[[Tensor], Tensor]
    sigmoid: Callable[[Tensor], Tensor]
    sqrt: Callable[[Tensor], Tensor]

    def once(self, name: str, args: tuple[Tensor, ...], compute: Callable[[], T]) -> T:
        """compute(), a function `name` of the tensors args: computed afresh here; a coder that
        asks for the same one again may remember it (`coding.bitsback.Remembering`)."""
        return compute()


TORCH = Elementary(torch.exp, torch.expm1, torch.sigmoid, torch.sqrt)
