"""The backend seam: the only module in minilora that imports NumPy or CuPy.

Math code never imports an array library. It asks this module for the namespace of its inputs::

    xp = namespace(x, W)          # numpy, cupy, or any array-API namespace (array-api-strict)
    y = xp.tanh(x @ W.T)

Everything that depends on *which* library runs is here, and nothing else:

- ``namespace(*arrays)``, ``dtype_name(x)``: the array library and dtype of any backend's arrays
  (mixing backends is an error);
- ``resolve_device(device)``, ``device_name(x)``, ``to_numpy`` / ``from_numpy`` / ``move``:
  "cpu" -> numpy, "cuda" -> cupy (clear error if missing), moves between host and device;
- ``is_finite`` / ``all_finite``: one reduction (and one device sync) to test for NaN and Inf;
- ``synchronize(x)``: wait for the device that holds ``x`` (before timing or printing);
- ``rng(seed)`` and ``normal`` / ``uniform`` / ``dropout_mask``: initial weights and masks are
  drawn on the CPU by a seeded NumPy generator and then moved, so NumPy and CuPy runs start from
  identical numbers.

Thread pools, BLAS thread limits and ``out=`` buffers are speed, not the seam: they live in
``minilora/fast/runtime.py``.
"""
from __future__ import annotations

import math
import types

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
    if isinstance(d, np.dtype):  # NumPy and CuPy; NumPy computes dtype.name on every access
        name = _NUMPY_DTYPE_NAMES.get(d)
        if name is None:
            name = _NUMPY_DTYPE_NAMES[d] = d.name
        return name
    name = getattr(d, "name", None)
    if isinstance(name, str):
        return name
    return str(d).rsplit(".", 1)[-1]  # array_api_strict.float32 -> float32


_NUMPY_DTYPE_NAMES: dict = {}


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


def synchronize(x) -> None:
    """Wait until the device holding ``x`` has finished its queued work (a no-op on the CPU).

    GPU calls return before the work is done; a timer read without this measures the queueing.
    """
    if device_name(x) == "cuda":
        namespace(x).cuda.Device().synchronize()


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
