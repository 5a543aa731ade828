"""One task per file, run here or in worker processes (the command line's `-j N`).

Workers are spawned, not forked: a fresh interpreter inherits no OpenMP thread
pool or CUDA context from the parent (forking after torch has run either can
hang). Each worker loads the model once and keeps it for the files it is given.
Results come back in task order, so what is printed does not depend on timing.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence


def init_worker(threads: int | None) -> None:
    """A worker's start: its torch CPU thread count, and the allocator tuned for coding."""
    import torch

    from .allocator import keep_freed_memory

    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


def run_all(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], workers: int,
            threads: int | None = None,
            crashed: Callable[[BaseException], Any] = lambda e: None) -> Iterator[Any]:
    """fn(*task) for every task, yielded in task order: in this process when `workers` is 1
    (or there is one task), else in up to `workers` spawned processes (`fn` must be a
    module-level function). A task whose worker died yields `crashed(error)` instead."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            yield fn(*t)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(threads,))
    try:
        futures: list[Future] = [pool.submit(fn, *t) for t in tasks]
        for f in futures:
            try:
                yield f.result()
            except BrokenProcessPool as e:
                yield crashed(e)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
