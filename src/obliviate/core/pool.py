"""A process pool for independent jobs (one torch thread budget split between workers)."""

from __future__ import annotations

import os


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Workers:
    """`map` over independent demo jobs (picklable functions of picklable jobs): in `n` spawned processes that
    share this process's threads when n > 1 (default: 2 where there are at least 2 cores and threads), else in
    this process. Results come back in the jobs' order; workers take jobs in that order, so put long ones first.
    Two single-thread processes beat one two-thread process on models too small to keep two threads busy: the 1M-
    parameter UNet's training step runs 0.37 s with 2 threads, 0.55 s with 1 thread in each of two processes side
    by side (1.35x the throughput, measured 2026-11-28)."""

    def __init__(self, n: int | None):
        import torch

        self.n = n if n is not None else (2 if (os.cpu_count() or 1) >= 2 and torch.get_num_threads() >= 2 else 1)
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import torch

            threads = max(1, torch.get_num_threads() // self.n)
            self.pool = ProcessPoolExecutor(
                self.n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(threads,)
            )
        return self

    def map(self, fn, jobs):
        """Yields each job's result, in the jobs' order, as soon as it and those before it are done."""
        if self.pool:
            yield from self.pool.map(fn, jobs)
        else:
            for job in jobs:
                yield fn(job)

    def __exit__(self, *exc):
        if self.pool:
            self.pool.shutdown(cancel_futures=True)
