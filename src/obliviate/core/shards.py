"""Work split into fixed shards, each computed at one intra-op thread, in as many Python threads as the caller's
torch thread budget allows, and combined in shard order. The result is then the same, bit for bit, at any thread
count: it depends on the shards, never on how many threads ran them.

Why: torch's CPU kernels split their reductions by the number of threads, so a run at two threads rounds
differently from one at a single thread. One training step differs in the last bits only, but 1,800 steps of the
image world's model grow that into another model (2 to 3 of 144 prompts apart in its factor accuracies). A shard at
one thread always rounds the same way, whichever Python thread runs it.

torch releases the GIL inside its kernels, so two shards in two Python threads run about as fast as one batch at
two intra-op threads (docs/benchmarks.md, "Results that do not depend on the thread count").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def one_thread() -> Iterator[int]:
    """Run the block at one intra-op thread; yields the thread count it had, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def map_shards(fn: Callable[[T], R], shards: Sequence[T], threads: int | None = None) -> list[R]:
    """[fn(s) for s in shards], each call at one intra-op thread, in min(threads, len(shards)) Python threads
    (`threads`: the caller's torch thread count by default). Results come back in the shards' order. `fn` must not
    touch torch's global random generator (the threads would race for it): give each shard its own generator or
    draw the randomness before."""
    with one_thread() as n:
        workers = max(1, min(threads or n, len(shards)))
        if workers == 1:
            return [fn(s) for s in shards]
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, shards))


def sharded_backward(
    loss_of: Callable[[T], torch.Tensor], shards: Sequence[T], params: list[torch.Tensor], threads: int | None = None
) -> torch.Tensor:
    """Set each parameter's `.grad` to the sum over shards of d loss_of(shard) / d param, summed in shard order, and
    return the summed loss (detached). `loss_of(shard)` must be the shard's share of the batch loss (for a mean
    over the batch: the shard's sum divided by the batch's count), so that the sum is the batch's loss and its
    gradient the batch's gradient, up to rounding that does not depend on `threads`."""

    def one(shard):
        loss = loss_of(shard)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), grads

    outs = map_shards(one, shards, threads)
    total = outs[0][0]
    for loss, _ in outs[1:]:
        total = total + loss
    for i, p in enumerate(params):
        parts = [g[i] for _, g in outs if g[i] is not None]
        grad = parts[0] if parts else None
        for g in parts[1:]:
            grad = grad + g
        p.grad = grad
    return total
