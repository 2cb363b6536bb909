"""Fast ReLU and GELU: the same pairs as ``functional/activations.py``, without temporaries.

Why: each one-line formula of the reference makes several fresh (N, 4C) arrays, and on a CPU a
fresh multi-MB array costs more than its arithmetic. Here every step writes into arrays
allocated once, and ``rowwise`` gives each core a block of rows (row i of each output depends
only on row i of the inputs). Namespaces without ``out=`` (the array API) run the reference; on
CuPy, with ``minilora.fast.cuda.USE_FUSED``, each pass is one fused kernel (``fast/cuda.py``).
"""
from __future__ import annotations

from .. import checks
from ..backend import namespace
from ..functional import activations as ref
from ..functional.activations import GELU_C, GELU_K, GELUCache, ReLUCache
from . import cuda
from .runtime import has_out, rowwise, write

relu_forward = ref.relu_forward  # one ufunc already: nothing to gain


def relu_backward(dout, cache: ReLUCache):
    """dx = dout · [x > 0], multiplied by the boolean mask itself (no cast to dout's dtype)."""
    xp = namespace(dout)
    if not has_out(xp):
        return ref.relu_backward(dout, cache)
    return dout * (cache.x > 0), {}


def gelu_forward(x):
    """``functional.activations.gelu_forward``, in place and split across cores."""
    checks.floats("gelu", x=x)
    xp = namespace(x)
    if not has_out(xp):
        return ref.gelu_forward(x)
    if cuda.fused(x):
        t, y = cuda.gelu_forward(x)
        return y, GELUCache(x, t)
    t, y = xp.empty_like(x), xp.empty_like(x)
    rowwise(_gelu_forward_rows, x, t, y)
    return y, GELUCache(x, t)


def gelu_backward(dout, cache: GELUCache):
    """``functional.activations.gelu_backward``, in place and split across cores."""
    x, t = cache
    xp = namespace(dout, x)
    if not has_out(xp):
        return ref.gelu_backward(dout, cache)
    if cuda.fused(dout, x, t):
        return cuda.gelu_backward(dout, x, t), {}
    dx = xp.empty_like(x)
    rowwise(_gelu_backward_rows, dout, x, t, dx)
    return dx, {}


def _gelu_forward_rows(x, t, y):
    """t ← tanh(√(2/π) (x + 0.044715 x³)),   y ← ½ x (1 + t);  y is scratch until the end."""
    xp = namespace(x)
    write(y, xp.multiply, x, GELU_K)  # the reference's order, (K x) x x: no x² to overflow
    y *= x
    y *= x
    y += x
    y *= GELU_C  # tanh_arg
    write(t, xp.tanh, y)  # tanh_out
    write(y, xp.add, t, 1.0)
    y *= x
    y *= 0.5


def _gelu_backward_rows(dout, x, t, dx):
    """dx ← dout · (½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²))"""
    xp = namespace(x)
    w = t * t  # one temporary, a block's rows only
    w -= 1.0
    w *= x  # −x sech²: 0 where tanh saturates, before any large factor meets it (float16)
    write(dx, xp.multiply, x, 3 * GELU_K)
    dx *= x
    dx += 1.0
    dx *= -GELU_C  # −dtanh_arg
    dx *= w  # x sech² · dtanh_arg
    dx += t
    dx += 1.0
    dx *= 0.5  # local_grad
    dx *= dout
