"""How a file is coded with an integer model (format version 3) rather than a float one.

An integer model's results are exact (`exact.intops`, `exact.exactmath`), so nothing
about the machine is pinned or recorded: no thread count, no backend, no
environment tag, and the network may run on any device, in batches of any size.
The chain arithmetic runs on the CPU in float64 with `exactmath`'s functions; the
network on the device asked for. A float model's files (version 2) keep
`determinism.deterministic` and decode only where their float results repeat.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..exact.exactmath import EXACT
from . import container as fmt
from .determinism import deterministic


def is_exact(model: torch.nn.Module) -> bool:
    """Whether the model's results are the same on every machine (an integer model)."""
    return getattr(model, "elementary", None) is EXACT


def file_version(model: torch.nn.Module) -> int:
    """The format version a file coded with this model is written as."""
    return fmt.VERSION if is_exact(model) else fmt.FLOAT_VERSION


def chain_device(model: torch.nn.Module, device: torch.device) -> torch.device:
    """Where the chain's arithmetic runs: the CPU for an integer model (its float64
    operations then never depend on a GPU's division), else the model's device."""
    return torch.device("cpu") if is_exact(model) else device


@contextlib.contextmanager
def coding(model: torch.nn.Module, device: torch.device, threads: int) -> Iterator[None]:
    """The settings a file is coded under: for an integer model only the thread count
    asked for (0: leave it), which changes its speed and never its results."""
    if is_exact(model):
        old = torch.get_num_threads()
        try:
            if threads:
                torch.set_num_threads(threads)
            with torch.no_grad():
                yield
        finally:
            torch.set_num_threads(old)
    else:
        with deterministic(device, threads):
            yield
