"""Pin what changes the network's float results while a file is coded (and only then).

Both sides of a file must run the network bit-identically: same CPU thread count,
deterministic kernels, no TF32, no cuDNN autotuning. `deterministic()` sets these for
the duration of one encode or decode and gives the caller back every setting it had.

One setting cannot be scoped that way: cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per
process (PyTorch caches the workspace size and its determinism check on first use), so
setting it inside a decode is too late in a process that already ran a CUDA matmul, and
restoring it afterwards would be a lie. It is therefore set, if the process has not set
it, when the `mulancodec` package is imported (before torch is imported by the package,
so before any CUDA work it causes); `deterministic()` never changes the environment: on
CUDA it refuses to run when the variable does not hold a deterministic value.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .codecs import CodingError

CUBLAS_VAR = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_CONFIG = ":4096:8"  # what mulancodec/__init__.py sets (it cannot import this module: torch)
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the values cuBLAS documents as reproducible


def _check_cublas_config() -> None:
    value = os.environ.get(CUBLAS_VAR)
    if value not in CUBLAS_DETERMINISTIC:
        raise CodingError(f"{CUBLAS_VAR} is {value!r}: CUDA coding needs {CUBLAS_VAR}={CUBLAS_CONFIG} "
                          "set before the process first uses CUDA (importing mulancodec first does it)")


@contextlib.contextmanager
def deterministic(device: torch.device, threads: int) -> Iterator[None]:
    """Pin threads (CPU) or kernels, TF32 and autotuning (CUDA), in inference mode (no autograd
    bookkeeping: about 1% faster than no_grad on one CPU thread); restore all."""
    if device.type != "cpu":
        _check_cublas_config()
    old_threads = torch.get_num_threads()
    old_det = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    old_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        if device.type == "cpu":
            torch.set_num_threads(threads)
        else:
            torch.use_deterministic_algorithms(True)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old_cudnn
