"""The fast layer's runtime: threads for elementwise work, BLAS thread control, ``out=`` writes.

None of this is math; it is how the fast pairs in ``minilora/fast/`` make NumPy go faster:

- ``has_out(xp)`` / ``write(out, fn, *args)``: ``fn(*args, out=out)`` where the library takes
  ``out=`` (NumPy, CuPy), a plain assignment elsewhere (the array API has no ``out=``);
- ``rowwise(fn, *arrays)``: an in-place, row-by-row function split into row blocks that run on
  ``THREADS`` threads (NumPy's ufuncs release the GIL);
- ``batched_matmul(a, b)``: attention's stacks of small products split across cores, each core
  running one-thread BLAS (threadpoolctl, a required dependency; imported on first use, and
  where it is missing — a bare CUDA machine with only NumPy and CuPy — BLAS keeps its own
  thread count: ``blas_threads`` changes nothing and ``batched_matmul`` is a plain ``a @ b``);
- fork safety: a forked child gets fresh locks, no pool and its BLAS thread count back.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ..backend import namespace


def write(out, fn, *args) -> None:
    """``out[...] = fn(*args)``, without the temporary where the library allows it:
    NumPy and CuPy take ``fn(*args, out=out)``; other namespaces (the array API has no ``out=``)
    get the plain assignment."""
    if has_out(out.__array_namespace__()):
        fn(*args, out=out)
    else:
        out[...] = fn(*args)


def has_out(xp) -> bool:
    """True if ``xp``'s elementwise functions take ``out=`` (NumPy and CuPy; the array API
    standard has no ``out=``, so code must keep a plain fallback for other namespaces)."""
    return getattr(xp, "__name__", "") in ("numpy", "cupy")


# Elementwise work runs on this many threads (NumPy only). NumPy's ufuncs release the GIL, so
# plain Python threads run them in parallel; BLAS already uses every core for the products.
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
ROWWISE_MIN_SIZE = 1 << 18  # below ~256k elements a thread hand-off costs more than it saves
_pool, _pool_size = None, 0
_pool_lock = threading.Lock()  # two threads' first calls must not both build (and swap) a pool


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, made once; again if THREADS grows (a forked child starts without one)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="minilora-rowwise")
            _pool_size = workers
        return _pool


def rowwise(fn, *arrays):
    """Call ``fn(*arrays)``, on NumPy split into row blocks that run on ``THREADS`` threads.

    ``fn`` must work row by row and in place: row i of what it writes depends only on row i
    (axis 0) of each array, and it returns nothing. The first array decides the rows; every
    array shares its axis-0 length. Other namespaces (CuPy is already parallel, array-API
    strict), small arrays and a single core get the plain call ``fn(*arrays)``. It returns, or
    raises (the first block's exception, else the first failed worker's), only once every
    block has finished.
    """
    n = arrays[0].shape[0] if arrays[0].ndim else 1  # a 0-d array is one row
    threads = min(THREADS, n)
    if threads < 2 or namespace(*arrays) is not np or arrays[0].size < ROWWISE_MIN_SIZE:
        fn(*arrays)
        return
    pool = _get_pool(threads - 1)
    cuts = [n * i // threads for i in range(threads + 1)]
    blocks = [[a[lo:hi] for a in arrays] for lo, hi in zip(cuts[:-1], cuts[1:])]
    jobs = []
    try:
        for b in blocks[1:]:
            jobs.append(pool.submit(fn, *b))
        fn(*blocks[0])  # the first block on this thread, while the pool runs the others
    finally:
        # even when fn (or a submit) raised: no worker may still be writing once we return
        wait(jobs)
    for job in jobs:
        job.result()  # re-raises an exception from a worker


def _matmul_into(a, b, out):
    np.matmul(a, b, out=out)


_blas_controller = None  # threadpoolctl's controller, found on first use (False: not installed)
# BLAS's thread count is process-wide, and a limit saves the count it finds on entry and puts
# it back on exit. Two overlapping limits on two threads therefore break it: the second saves
# the first's 1 and "restores" it last, leaving BLAS on one thread for good. (A shared count
# with the first entry lowering and the last exit restoring fails too: threadpoolctl 3.8 lets
# only one thread at a time set a pthreads OpenBLAS's count, and the last out may not be it.)
# So one product at a time holds the limit, set and restored on the same thread. A caller
# waiting here loses little: the product it waits for already uses THREADS cores.
_blas_lock = threading.Lock()
_blas_limiter = None  # the limit in force while _blas_lock is held (for a forked child)


def batched_matmul(a, b):
    """``a @ b`` for two stacks of matrices (..., m, k) and (..., k, n) with the same leading axes.

    Attention's products are stacks of small matrices ((B, H) of them, T x hd), and OpenBLAS
    runs each small product on every core with a hand-off per product: at d256 that made them
    2x slower than one thread. On NumPy the stack is split across
    ``THREADS`` threads instead, each running one-thread BLAS on its share of the matrices
    (d256: 2.6 -> 0.9 ms per product; d768: 8.7 -> 3.8 ms). Anything else is a plain ``a @ b``.
    Safe from several threads at once: their split products take turns (see ``_blas_lock``).
    """
    global _blas_limiter
    if (namespace(a, b) is not np or a.ndim < 3 or a.shape[:-2] != b.shape[:-2]
            or THREADS < 2 or a.shape[0] < 2 or a.size < ROWWISE_MIN_SIZE):
        return a @ b
    controller = _controller()
    if controller is None:  # no threadpoolctl: one-thread BLAS per core is out of reach
        return a @ b
    out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=np.result_type(a, b))
    with _blas_lock, controller.limit(limits=1, user_api="blas") as limiter:
        _blas_limiter = limiter
        try:
            rowwise(_matmul_into, a, b, out)  # returns only when every block is done
        finally:
            _blas_limiter = None
    return out  # the limit was lifted on the way out of the with, on this thread


def _controller():
    """threadpoolctl's controller (it finds the BLAS libraries once), or None where
    threadpoolctl is not installed."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415
        except ImportError:
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController()
    return _blas_controller or None


def _reset_in_forked_child():
    """A fork copies only the forking thread: a lock another thread held stays held for good,
    and a pool's threads are gone. So the child gets new locks and no pool, and if a product
    on another thread had BLAS limited at the fork, the child's BLAS gets its count back."""
    global _pool, _pool_size, _pool_lock, _blas_lock, _blas_limiter
    _pool, _pool_size = None, 0
    _pool_lock, _blas_lock = threading.Lock(), threading.Lock()
    if _blas_limiter is not None:
        limiter, _blas_limiter = _blas_limiter, None
        limiter.__exit__(None, None, None)  # restores the count it found on entry


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_forked_child)


# ---- BLAS threads per problem size -------------------------------------------------------------
# OpenBLAS hands every product to all of its threads. For the small products of the demos and the
# tests (a 64-row batch through 256-wide layers) the hand-off costs more than the second core
# gives, and on a busy machine it is far worse: a thread that finishes waits, spinning, for one
# that was descheduled (`minilora demo` took 57 s on two BLAS threads next to one other process,
# 13 s on one). Products below BLAS_THREADED_MIN_MACS multiply-adds therefore run on one thread
# inside `fit`; larger ones keep BLAS's own count. (benchmarks/blas_threads.py measures both.)
BLAS_THREADED_MIN_MACS = 1 << 26  # 67M: the GPT demo's 33M runs on one thread, the benchmark's 103M+ on all
_blas_choice = None  # the innermost blas_threads() in force on the main thread, if any
_NO_CHOICE = object()


def blas_threads_for(macs: int) -> int | None:
    """The BLAS thread count `fit` uses for a step whose largest product has ``macs``
    multiply-adds: 1 below ``BLAS_THREADED_MIN_MACS``, else None (BLAS's own count)."""
    return 1 if macs < BLAS_THREADED_MIN_MACS else None


class blas_threads:
    """``with blas_threads(n):`` run BLAS (NumPy's OpenBLAS/MKL, via threadpoolctl) on ``n``
    threads inside the block; the count found on entry is restored on exit.

    ``n=None`` leaves BLAS's count as it is. Either way the block is an explicit choice, so
    ``fit(blas_threads="auto")`` inside it does not choose again. BLAS's count is process-wide
    and a limit is a save/restore pair, so only the main thread sets it; on other threads the
    block changes nothing (two overlapping save/restore pairs would leave the wrong count).
    """

    def __init__(self, n: int | None):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"blas_threads: n must be a positive int or None, got {n!r}")
        self.n, self._limiter, self._outer = n, None, _NO_CHOICE

    def __enter__(self):
        global _blas_choice
        if threading.current_thread() is not threading.main_thread():
            return self
        self._outer, _blas_choice = _blas_choice, self
        controller = _controller() if self.n is not None else None
        if controller is not None:  # None: n is None, or no threadpoolctl to set the count with
            self._limiter = controller.limit(limits=self.n, user_api="blas")
        return self

    def __exit__(self, *exc):
        global _blas_choice
        if self._outer is _NO_CHOICE:
            return False
        if self._limiter is not None:
            self._limiter.__exit__(*exc)  # restores the count found on entry
            self._limiter = None
        _blas_choice, self._outer = self._outer, _NO_CHOICE
        return False


def chosen_blas_threads() -> bool:
    """True inside a ``blas_threads(...)`` block on the main thread."""
    return _blas_choice is not None


def auto_blas_threads(macs: int):
    """``blas_threads(blas_threads_for(macs))``, unless a caller already chose (then a block
    that changes nothing): what ``fit`` and the demos use."""
    if chosen_blas_threads():
        return contextlib.nullcontext()
    return blas_threads(blas_threads_for(macs))
