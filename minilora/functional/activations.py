"""Elementwise activations: ReLU and GELU (tanh form), each a forward/backward pair."""
from __future__ import annotations

import math
from typing import NamedTuple

from ..backend import check_float, has_out, namespace, rowwise


class ReLUCache(NamedTuple):
    x: object  # (...)


def relu_forward(x):
    """y = max(x, 0)

    Inputs: x (...).  Returns: y (...), cache
    """
    check_float("x", x, "relu")
    xp = namespace(x)
    return xp.maximum(x, 0.0), ReLUCache(x)  # a scalar 0: no zeros_like(x) temporary


def relu_backward(dout, cache: ReLUCache):
    """dx = dout · [x > 0]   (the subgradient at 0 is taken as 0)"""
    xp = namespace(dout)
    return xp.where(cache.x > 0, dout, 0.0), {}


_C = math.sqrt(2.0 / math.pi)  # √(2/π)


class GELUCache(NamedTuple):
    x: object  # (...)
    t: object  # (...) tanh(√(2/π)(x + 0.044715 x³))


def gelu_forward(x):
    """y = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))   (the tanh form used by GPT-2)

    Inputs: x (...).  Returns: y (...), cache
    """
    check_float("x", x, "gelu")
    xp = namespace(x)
    if has_out(xp):  # NumPy/CuPy: the same steps with out= and no temporaries, rows on every core
        t, y = xp.empty_like(x), xp.empty_like(x)
        rowwise(_gelu_forward_out, x, t, y)
        return y, GELUCache(x, t)
    # Step by step on one fresh buffer: a new (N, 4C) temporary costs more than its arithmetic
    # (memory and page faults), and the one-line formula makes nine of them.
    z = x * x
    z *= 0.044715
    z += 1.0
    z *= x
    z *= _C  # z = √(2/π) (x + 0.044715 x³)
    t = xp.tanh(z)
    y = t + 1.0
    y *= x
    y *= 0.5  # y = ½ x (1 + t)
    return y, GELUCache(x, t)


def gelu_backward(dout, cache: GELUCache):
    """dy/dx = ½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²),   dx = dout · dy/dx"""
    x, t = cache
    xp = namespace(dout, x)
    if has_out(xp):  # as in gelu_forward
        dx = xp.empty_like(x)
        rowwise(_gelu_backward_out, dout, x, t, dx)
        return dx, {}
    # In place on two fresh buffers instead of a dozen temporaries (see gelu_forward).
    w = t * t
    w -= 1.0  # t² − 1
    g = x * x
    g *= 3 * 0.044715
    g += 1.0
    g *= x
    g *= -_C
    g *= w  # x (1 − t²) √(2/π) (1 + 3·0.044715 x²)
    g += t
    g += 1.0
    g *= 0.5  # g = dy/dx
    g *= dout
    return g, {}


def _gelu_forward_out(x, t, y):
    """gelu_forward's steps written into t and y with out= (NumPy, CuPy): no fresh (N, 4C)
    array at all, and row by row, so ``rowwise`` can give each core a block of rows."""
    xp = namespace(x)
    xp.multiply(x, x, out=y)
    y *= 0.044715
    y += 1.0
    y *= x
    y *= _C  # y = √(2/π) (x + 0.044715 x³) for now
    xp.tanh(y, out=t)
    xp.add(t, 1.0, out=y)
    y *= x
    y *= 0.5  # y = ½ x (1 + t)


def _gelu_backward_out(dout, x, t, dx):
    """gelu_backward's steps written into dx with out= (see ``_gelu_forward_out``)."""
    xp = namespace(x)
    w = t * t  # one temporary, a block's rows only
    w -= 1.0  # t² − 1
    xp.multiply(x, x, out=dx)
    dx *= 3 * 0.044715
    dx += 1.0
    dx *= x
    dx *= -_C
    dx *= w  # x (1 − t²) √(2/π) (1 + 3·0.044715 x²)
    dx += t
    dx += 1.0
    dx *= 0.5  # dy/dx
    dx *= dout


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "gelu": (gelu_forward, gelu_backward),
}
