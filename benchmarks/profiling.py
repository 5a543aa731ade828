"""Where mulancodec's time goes: the network vs ANS coding, measured from outside.

The package is not instrumented, so for the duration of a `CodingProfile`
block the methods that run the network and the ANS coder are wrapped (on
their classes) with timers, and restored afterwards:

- network: `TileBatch.denoise` (the denoiser, once per step), `MuLAN.latent_posterior`
  (q(c|x)) and `MuLAN.schedule` (the schedule net);
- ANS: push/pop of `WindowedGaussian` (latents z_i and c) and `PixelGaussian` (x).

Everything else (building the codecs' parameter arrays, chain arithmetic,
the container, the embedded-PNG/WebP fallback) is "other". On CUDA a network
call is timed up to a device synchronize, so its seconds are not billed to
whichever call later waits for the result.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import torch

from mulancodec.coding import bitsback, codecs
from mulancodec.model import mulan

BUCKETS = ("network", "ans")

_TARGETS: list[tuple[type, str, str]] = [
    (bitsback.TileBatch, "denoise", "network"),
    (mulan.MuLAN, "latent_posterior", "network"),
    (mulan.MuLAN, "schedule", "network"),
    (codecs.WindowedGaussian, "push", "ans"),
    (codecs.WindowedGaussian, "pop", "ans"),
    (codecs.PixelGaussian, "push", "ans"),
    (codecs.PixelGaussian, "pop", "ans"),
]


class CodingProfile:
    """Context manager accumulating seconds (and calls) per bucket while it is open."""

    def __init__(self, sync_cuda: bool = False) -> None:
        self.seconds = {b: 0.0 for b in BUCKETS}
        self.calls = {b: 0 for b in BUCKETS}
        self.sync_cuda = sync_cuda
        self._saved: list[tuple[type, str, Any]] = []

    def _wrap(self, fn: Callable, bucket: str) -> Callable:
        sync = self.sync_cuda and torch.cuda.is_available()

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync:
                    torch.cuda.synchronize()
                self.seconds[bucket] += time.perf_counter() - t
                self.calls[bucket] += 1
        return timed

    def __enter__(self) -> "CodingProfile":
        for cls, name, bucket in _TARGETS:
            orig = cls.__dict__[name]
            self._saved.append((cls, name, orig))
            setattr(cls, name, self._wrap(orig, bucket))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, orig in reversed(self._saved):
            setattr(cls, name, orig)
        self._saved.clear()

    def split(self, total_s: float, n_images: int, prefix: str) -> dict[str, float]:
        """Per-image seconds of network / ANS / other, keyed `{prefix}_network_s` etc."""
        n = max(1, n_images)
        other = max(0.0, total_s - sum(self.seconds.values()))
        out = {f"{prefix}_{b}_s": self.seconds[b] / n for b in BUCKETS}
        out[f"{prefix}_other_s"] = other / n
        out[f"{prefix}_network_calls"] = self.calls["network"]
        return out
