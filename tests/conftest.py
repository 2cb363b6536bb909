"""Shared test fixtures: the ``xp`` fixture runs a test on every usable array backend.

- ``numpy``            always;
- ``array_api_strict`` always (a strict namespace: any NumPy-only call in the math fails here);
- ``cupy``             automatically when CuPy imports and a GPU is usable.
"""

import numpy as np
import pytest

from minilora import backend

try:  # a dev dependency (pip install -e ".[dev]"); a bare GPU machine may lack it
    import array_api_strict
except ImportError:  # pragma: no cover - CI installs it
    array_api_strict = None

BACKENDS = [pytest.param(np, id="numpy")]
if array_api_strict is not None:
    BACKENDS.append(pytest.param(array_api_strict, id="strict"))
_cp = backend.cupy_or_none()
if _cp is not None:
    BACKENDS.append(pytest.param(_cp, id="cupy"))
BACKEND_MODULES = [p.values[0] for p in BACKENDS]


@pytest.fixture(params=BACKENDS)
def xp(request):
    return request.param


def arr(a, xp, dtype=None):
    """Move a NumPy array (or nested list) to ``xp``, optionally casting."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    return backend.from_numpy(a, xp)


def tol(dtype: str) -> float:
    """Relative tolerance for comparing two computations of the same quantity in ``dtype``."""
    return {"float16": 2e-2, "float32": 2e-5, "float64": 1e-12}[dtype]


def plant(monkeypatch, name, forward=None, backward=None):
    """Put a (planted, wrong) forward or backward in place of layer ``name``'s pair, in both
    columns of ``minilora.fast.PAIRS``, so the bug reaches the models whichever path runs."""
    from minilora import fast

    (rf, rb), (ff, fb) = fast.PAIRS[name]
    monkeypatch.setitem(fast.PAIRS, name, ((forward or rf, backward or rb), (forward or ff, backward or fb)))


def randomized(model, seed=1):
    """Every parameter (RMSNorm γ and LoRA's B included) moved off its init, so no term hides."""
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        for k, v in m.params.items():
            m.params[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(v.dtype)
    return model
