"""Gradient checking: compare a hand-written backward with central finite differences.

For an output ``y = f(θ)`` and a fixed random upstream gradient ``dout``, the scalar
``s(θ) = Σ f(θ) ⊙ dout`` has ``∂s/∂θ`` equal to what ``backward(dout)`` must return. Each entry is
estimated in float64 by central differences::

    ∂s/∂θᵢ ≈ (s(θ + h eᵢ) − s(θ − h eᵢ)) / 2h        (error O(h²); h = 1e-6)

and compared with the analytic gradient by the relative error ``‖a − n‖₂ / max(‖a‖₂, ‖n‖₂)``
(0 when both are 0). In float64 a correct backward gives ~1e-9 or less; a wrong term gives ~1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import backend
from .functional.losses import LOSSES

TOLERANCE = 1e-6  # float64 relative error accepted everywhere in minilora's tests


class CheckResult(NamedTuple):
    component: str
    array: str
    rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.rel_error <= self.tolerance)


def rel_error(a, b) -> float:
    """‖a − b‖₂ / max(‖a‖₂, ‖b‖₂), computed in float64 on the host; 0 if both are 0."""
    a = backend.to_numpy(a).astype(np.float64)
    b = backend.to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denom = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_gradient(s, x, h: float = 1e-6, indices=None) -> np.ndarray:
    """Central differences of the scalar function ``s()`` with respect to the array ``x``.

    ``x`` (float64, any backend) is perturbed *in place* one entry at a time and restored.
    ``indices``: iterable of index tuples to estimate (default: every entry); others stay 0.
    Returns a NumPy float64 array of ``x``'s shape.
    """
    if backend.dtype_name(x) != "float64":
        raise TypeError(f"numerical_gradient: x must be float64, got {backend.dtype_name(x)}")
    grad = np.zeros(tuple(x.shape))
    for idx in indices if indices is not None else np.ndindex(*x.shape):
        old = float(x[idx])
        x[idx] = old + h
        plus = float(s())
        x[idx] = old - h
        minus = float(s())
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def random_like(x, seed=0):
    """A standard-normal array with ``x``'s shape, dtype and backend (the test's ``dout``)."""
    g = np.random.default_rng(seed).standard_normal(tuple(x.shape))
    return backend.from_numpy(g.astype(backend.dtype_name(x)), backend.namespace(x))


def check_pair(forward, backward, inputs: dict, wrt=None, dout=None, seed=0, name=None,
               tolerance=TOLERANCE, h=1e-6) -> list:
    """Check ``backward`` against finite differences of ``forward``.

    ``forward(**inputs) -> (out, cache)`` and ``backward(dout, cache) -> (dx, grads)``.
    The input named ``"x"`` is compared with ``dx``; any other name with ``grads[name]``.
    ``wrt``: names to check (default: "x" if present, then every key of ``grads``).
    Returns one ``CheckResult`` per checked array.
    """
    name = name or getattr(forward, "__name__", "pair").removesuffix("_forward")
    out, cache = forward(**inputs)
    if dout is None:
        dout = random_like(out, seed)
    dx, grads = backward(dout, cache)
    analytic = dict(grads)
    if "x" in inputs and dx is not None:
        analytic["x"] = dx
    if wrt is None:
        wrt = [k for k in ["x", *grads] if k in analytic]
    xp = backend.namespace(out)

    def s():
        return xp.sum(forward(**inputs)[0] * dout)

    results = []
    for k in wrt:
        if k not in analytic:
            raise KeyError(f"check_pair({name}): backward returned no gradient for {k!r}")
        num = numerical_gradient(s, inputs[k], h)
        results.append(CheckResult(name, k, rel_error(analytic[k], num), tolerance))
    return results


def check_model(model, x, y, loss: str = "cross_entropy", max_entries: int | None = 60, seed=0,
                name=None, tolerance=TOLERANCE, h=1e-6) -> list:
    """Check every trainable gradient of ``model`` on the loss of one batch ``(x, y)``.

    The model must be float64 (``model.astype("float64")``); it is put in eval mode so that
    dropout is off. ``max_entries`` random entries per array are checked (None: all).
    Returns one ``CheckResult`` per trainable array.
    """
    if model.dtype != "float64":
        raise TypeError(f"check_model: the model must be float64, got {model.dtype}; use model.astype('float64')")
    loss_forward, loss_backward = LOSSES[loss]
    was_training = model.training
    model.eval()
    try:
        value, cache = loss_forward(model.forward(x), y)
        model.backward(loss_backward(1.0, cache)[0])
        grads = model.named_grads()

        def s():
            return loss_forward(model.forward(x), y)[0]

        gen = np.random.default_rng(seed)
        results = []
        for k, p in model.named_parameters(trainable=True).items():
            all_idx = list(np.ndindex(*p.shape))
            if max_entries is not None and len(all_idx) > max_entries:
                picks = gen.choice(len(all_idx), size=max_entries, replace=False)
                all_idx = [all_idx[i] for i in sorted(picks)]
            num = numerical_gradient(s, p, h, all_idx)
            ana = backend.to_numpy(grads[k])
            sel = tuple(np.array(all_idx).T)
            results.append(CheckResult(name or type(model).__name__, k, rel_error(ana[sel], num[sel]), tolerance))
        return results
    finally:
        model.train(was_training)


def format_table(results) -> str:
    """component | array | relative error | tolerance | pass/fail, one line per result."""
    w1 = max([len(r.component) for r in results] + [9])
    w2 = max([len(r.array) for r in results] + [5])
    lines = [f"{'component':<{w1}}  {'array':<{w2}}  {'rel. error':>10}  {'tolerance':>9}  result"]
    for r in results:
        lines.append(f"{r.component:<{w1}}  {r.array:<{w2}}  {r.rel_error:>10.2e}  {r.tolerance:>9.0e}  "
                     f"{'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)
