"""The backend seam: the only module in minilora that imports NumPy or CuPy.

Math code never imports an array library. It asks this module for the namespace of its inputs::

    xp = namespace(x, W)          # numpy, cupy, or any array-API namespace (array-api-strict)
    y = xp.tanh(x @ W.T)

Everything that depends on *which* library runs is here:

- ``namespace(*arrays)``       array namespace shared by the inputs (mixing backends is an error);
- ``check_float(name, x, layer)`` floating dtypes only, with an error naming the layer;
- ``to_numpy(a)`` / ``from_numpy(a, device)``   moves between host and device;
- ``resolve_device(device)``   "cpu" -> numpy, "cuda" -> cupy (clear error if missing), or a namespace;
- ``has_out(xp)`` / ``rowwise(fn, *arrays)``: the fast paths of elementwise work on NumPy and CuPy
  (``out=`` buffers instead of fresh temporaries; row blocks on every CPU core);
- ``batched_matmul(a, b)``: attention's stacks of small products, split across cores;
- ``rng(seed)`` and ``normal`` / ``uniform``: initial weights are drawn on the CPU by a seeded
  NumPy generator and then moved, so NumPy and CuPy runs start from identical numbers.
"""
from __future__ import annotations

import math
import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

FLOAT_DTYPES = ("float16", "float32", "float64")


def namespace(*arrays):
    """Return the array namespace shared by ``arrays`` (``None`` entries are ignored).

    NumPy >= 2, CuPy >= 14 and array-api-strict arrays all expose ``__array_namespace__``.
    Raises ``TypeError`` if the arrays come from two different libraries.
    """
    xp = None
    first = None
    for a in arrays:
        if a is None:
            continue
        try:
            this = a.__array_namespace__()
        except AttributeError:
            raise TypeError(
                f"expected an array (numpy, cupy or array-API), got {type(a).__name__}"
            ) from None
        if xp is None:
            xp, first = this, a
        elif this is not xp:
            raise TypeError(
                "arrays from two backends mixed in one call: "
                f"{type(first).__module__}.{type(first).__name__} and "
                f"{type(a).__module__}.{type(a).__name__}; move them with .to(device) first"
            )
    if xp is None:
        raise TypeError("namespace() needs at least one array")
    return xp


def dtype_name(x) -> str:
    """'float32', 'int64', ... for any backend's array."""
    d = x.dtype
    name = getattr(d, "name", None)
    if isinstance(name, str):
        return name
    return str(d).rsplit(".", 1)[-1]  # array_api_strict.float32 -> float32


def check_float(name: str, x, layer: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a real floating array (float16/32/64)."""
    if not hasattr(x, "__array_namespace__"):
        raise TypeError(f"{layer}: argument '{name}' must be an array, got {type(x).__name__}")
    if dtype_name(x) not in FLOAT_DTYPES:
        raise TypeError(
            f"{layer}: argument '{name}' must be a floating array (float16/32/64), "
            f"got dtype {dtype_name(x)} with shape {tuple(x.shape)}"
        )


def check_same_dtype(layer: str, **arrays) -> None:
    """Raise ``TypeError`` if the named arrays do not share one dtype (no silent upcasts)."""
    named = {k: dtype_name(v) for k, v in arrays.items() if v is not None}
    if len(set(named.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in named.items())
        raise TypeError(f"{layer}: arrays must share one dtype, got {desc}")


# ----------------------------------------------------------------------------- devices


def cupy_or_none():
    """The ``cupy`` module if it imports *and* a CUDA device is usable, else ``None``."""
    try:
        import cupy  # noqa: PLC0415  (the one place CuPy is imported)

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        cupy.zeros(1)  # fails here if the driver/runtime is unusable
        return cupy
    except Exception:  # ImportError, CUDARuntimeError, ...
        return None


def cuda_available() -> bool:
    return cupy_or_none() is not None


def resolve_device(device):
    """Map ``"cpu"`` / ``"cuda"`` / an array namespace to an array namespace."""
    if isinstance(device, types.ModuleType):
        return device
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        cp = cupy_or_none()
        if cp is None:
            raise RuntimeError(
                "device 'cuda' requested but CuPy or a usable GPU is missing: install CuPy for "
                "your CUDA version with `pip install 'minilora[cuda12]'` or "
                "`pip install 'minilora[cuda13]'`, and check that `nvidia-smi` sees a GPU"
            )
        return cp
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or an array namespace")


def device_name(x) -> str:
    xp = namespace(x)
    if xp is np:
        return "cpu"
    if xp.__name__.startswith("cupy"):
        return "cuda"
    return xp.__name__


def to_numpy(a) -> np.ndarray:
    """Copy (or view) any backend's array as a NumPy array on the host."""
    if isinstance(a, (np.ndarray, np.generic, float, int)):  # NumPy scalars too (e.g. a loss)
        return np.asarray(a)
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.from_dlpack(a)


def from_numpy(a: np.ndarray, device="cpu"):
    """Move a NumPy array to ``device`` ("cpu", "cuda" or a namespace); never changes dtype."""
    xp = resolve_device(device)
    if xp is np:
        return a
    return xp.asarray(a)


def move(a, device):
    """Move any array to ``device``; a no-op if it already lives there."""
    xp = resolve_device(device)
    if a.__array_namespace__() is xp:
        return a
    return from_numpy(to_numpy(a), xp)


def is_finite(a) -> bool:
    """True if every element of ``a`` is finite (one reduction, any backend)."""
    xp = namespace(a)
    return bool(xp.all(xp.isfinite(a)))


def all_finite(arrays) -> bool:
    """True if every element of every array is finite, cheaply: one sum per array, one sync.

    A NaN or ±Inf anywhere makes its sum non-finite. The sums allocate nothing of the arrays'
    size (``isfinite`` would allocate a boolean copy of each) and are added on the device, so a
    GPU waits once, not once per array. Only a sum that overflows while every element is
    finite (values near the dtype's maximum) is decided by the exact per-array test instead.
    """
    arrays = list(arrays)
    if not arrays:
        return True
    xp = namespace(*arrays)
    total = xp.sum(arrays[0])
    for a in arrays[1:]:
        total = total + xp.sum(a)
    if math.isfinite(float(total)):
        return True
    return all(is_finite(a) for a in arrays)


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
    n = arrays[0].shape[0]
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


_blas_controller = None  # threadpoolctl's controller, found once (False: threadpoolctl missing)
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
    2x slower than one thread. On NumPy, with threadpoolctl installed, the stack is split across
    ``THREADS`` threads instead, each running one-thread BLAS on its share of the matrices
    (d256: 2.6 -> 0.9 ms per product; d768: 8.7 -> 3.8 ms). Anything else is a plain ``a @ b``.
    Safe from several threads at once: their split products take turns (see ``_blas_lock``).
    """
    global _blas_controller, _blas_limiter
    if (namespace(a, b) is not np or a.ndim < 3 or a.shape[:-2] != b.shape[:-2]
            or THREADS < 2 or a.shape[0] < 2 or a.size < ROWWISE_MIN_SIZE):
        return a @ b
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415  (optional)

            _blas_controller = ThreadpoolController()
        except ImportError:
            _blas_controller = False
    if not _blas_controller:
        return a @ b
    out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=np.result_type(a, b))
    with _blas_lock, _blas_controller.limit(limits=1, user_api="blas") as limiter:
        _blas_limiter = limiter
        try:
            rowwise(_matmul_into, a, b, out)  # returns only when every block is done
        finally:
            _blas_limiter = None
    return out  # the limit was lifted on the way out of the with, on this thread


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


# ----------------------------------------------------------------------------- seeded init


def rng(seed) -> np.random.Generator:
    """A seeded NumPy generator; all initial weights and dropout masks come from one of these."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def normal(gen: np.random.Generator, shape, std: float, dtype: str, device="cpu"):
    """N(0, std^2) drawn on the CPU in float64, cast to ``dtype``, then moved to ``device``."""
    a = gen.standard_normal(shape) * std
    return from_numpy(a.astype(dtype), device)


def uniform(gen: np.random.Generator, shape, bound: float, dtype: str, device="cpu"):
    """U(-bound, bound) drawn on the CPU, cast to ``dtype``, then moved to ``device``."""
    a = gen.uniform(-bound, bound, size=shape)
    return from_numpy(a.astype(dtype), device)


def zeros(shape, dtype: str, device="cpu"):
    xp = resolve_device(device)
    return xp.zeros(shape, dtype=getattr(xp, dtype))


def dropout_mask(gen: np.random.Generator, shape, p: float, dtype: str, device="cpu"):
    """Inverted-dropout mask: 0 with probability ``p``, else ``1/(1-p)`` (so E[mask] = 1)."""
    keep = gen.random(shape) >= p
    return from_numpy((keep / (1.0 - p)).astype(dtype), device)
