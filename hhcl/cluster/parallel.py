"""Block loops of the sparse stages and of the CPU kNN: worker threads and reused scratch buffers.

Workers: the sparse stages are hundreds of short memory-bound ops. OpenMP inside each op (intra-op threads) pays
a barrier per op, and on a shared machine a descheduled thread stalls every barrier (5-15x slower measured, see
benchmarks/RESULTS.md), so `sparse_threads` runs the ops on one thread. Independent row blocks are instead handed
to plain worker threads (torch releases the GIL inside ops): no barriers, the OS schedules them, and a block is
computed by the same ops whichever thread runs it, so results are bit-identical to the sequential loop.
On CUDA (or with one CPU thread) the loop simply runs in order on the calling thread.

Scratch: the dense [rows, N] blocks the stages scatter into are a few large buffers. A fresh one costs a page
fault per 4 KB page on first touch (about 2 ms per MB on the shared VM this was measured on: more than the work
done in it), so on the CPU they come from a small pool and go back to it after the loop. A buffer handed out
zeroed must be all zeros again when it is returned (the stages clear what they wrote); one that was in use when
an exception went through is dropped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

R = TypeVar("R")
B = TypeVar("B")
SCRATCH_BYTES = 16 * 2**20  # one scratch buffer: under glibc's 32 MB mmap ceiling, a few blocks of rows at N ~ 10^4
_MAX_WORKERS = 2  # the sparse work is memory-bound: more threads than this gain little on a small machine
_POOL_BYTES = 128 * 2**20  # scratch kept between calls (CPU only)
_state = threading.local()
_pool: dict[tuple[str, int, bool], list[Tensor]] = {}  # (device, bytes, zeroed) -> free buffers
_pool_lock = threading.Lock()


def workers() -> int:
    """Worker threads `map_blocks` uses in the current thread (1 = run in order)."""
    return getattr(_state, "workers", 1)


def outer_threads() -> int | None:
    """The intra-op thread count `block_workers` was given (the one before ops went single-threaded), if any."""
    return getattr(_state, "threads", None)


@contextlib.contextmanager
def block_workers(count: int) -> Iterator[None]:
    """Let `map_blocks` calls made by this thread use up to `count` worker threads."""
    old = workers(), outer_threads()
    _state.workers, _state.threads = max(1, min(count, _MAX_WORKERS)), count
    try:
        yield
    finally:
        _state.workers, _state.threads = old


def _take(device: torch.device, nbytes: int, zeroed: bool) -> Tensor:
    """One buffer of nbytes bytes: zeros if zeroed, else any content."""
    if device.type == "cpu":
        with _pool_lock:
            free = _pool.get((str(device), nbytes, zeroed))
            if free:
                return free.pop()
    if zeroed:
        return torch.zeros(nbytes, dtype=torch.uint8, device=device)
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def _give_back(buf: Tensor, zeroed: bool) -> None:
    if buf.device.type != "cpu":
        return
    with _pool_lock:
        if sum(b.numel() for v in _pool.values() for b in v) + buf.numel() <= _POOL_BYTES:
            _pool.setdefault((str(buf.device), buf.numel(), zeroed), []).append(buf)


def scratch_bytes(n: int) -> int:
    """Bytes of one scratch buffer for [rows, n] blocks of 4-byte entries: SCRATCH_BYTES, or one row."""
    return max(SCRATCH_BYTES, 4 * n)


def scratch_rows(n: int) -> int:
    """Rows of an [rows, n] block of 4-byte entries that fit one scratch buffer."""
    return max(1, min(n, scratch_bytes(n) // (4 * n)))


@contextlib.contextmanager
def scratch(device: torch.device, spec: Sequence[tuple[torch.dtype, bool]], nbytes: int) -> Iterator[list[Tensor]]:
    """Buffers of nbytes bytes, one per (dtype, zeroed) in spec, viewed as that dtype (1-D)."""
    raw = [_take(device, nbytes, zeroed) for _, zeroed in spec]
    yield [b.view(dtype) for b, (dtype, _) in zip(raw, spec, strict=True)]
    for b, (_, zeroed) in zip(raw, spec, strict=True):  # not reached when the body raised: dropped
        _give_back(b, zeroed)


def map_blocks(
    blocks: Sequence[B],
    fn: Callable[[list[Tensor], B], R],
    device: torch.device,
    spec: Sequence[tuple[torch.dtype, bool]] = (),
    nbytes: int = SCRATCH_BYTES,
) -> list[R]:
    """[fn(bufs, b) for b in blocks] in order; bufs = one set of scratch buffers (see `scratch`) per worker."""
    count = min(workers(), len(blocks))
    if count <= 1:
        with scratch(device, spec, nbytes) as bufs:
            return [fn(bufs, b) for b in blocks]
    out: list = [None] * len(blocks)
    todo = iter(range(len(blocks)))
    lock = threading.Lock()

    def work() -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP setting: ops stay single-threaded here too
        with scratch(device, spec, nbytes) as bufs:
            while True:
                with lock:
                    b = next(todo, None)
                if b is None:
                    return
                out[b] = fn(bufs, blocks[b])

    with ThreadPoolExecutor(count, thread_name_prefix="hhcl-cluster") as pool:
        for f in [pool.submit(work) for _ in range(count)]:
            f.result()
    return out
