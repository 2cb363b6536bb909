"""Elementwise activations: ReLU and GELU (tanh form), each a forward/backward pair."""
from __future__ import annotations

import math
from typing import NamedTuple

from ..backend import check_float, namespace, rowwise, write


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
    t, y = xp.empty_like(x), xp.empty_like(x)
    rowwise(_gelu_forward_rows, x, t, y)
    return y, GELUCache(x, t)


def gelu_backward(dout, cache: GELUCache):
    """dy/dx = ½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²),   dx = dout · dy/dx"""
    x, t = cache
    xp = namespace(dout, x)
    dx = xp.empty_like(x)
    rowwise(_gelu_backward_rows, dout, x, t, dx)
    return dx, {}


# The two bodies below are the equations above, one operation per line, written into arrays the
# caller allocated. Why not the one-line formulas: each makes about ten fresh (N, 4C)
# temporaries, and on a CPU a fresh multi-MB array costs more than its arithmetic. Row i of the
# outputs depends only on row i of the inputs, so ``rowwise`` can give each core a block of rows.


def _gelu_forward_rows(x, t, y):
    """t ← tanh(√(2/π) (x + 0.044715 x³)),   y ← ½ x (1 + t)"""
    xp = namespace(x)
    write(y, xp.multiply, x, x)  # y is scratch until the last three lines
    y *= 0.044715
    y += 1.0
    y *= x
    y *= _C  # √(2/π) (x + 0.044715 x³)
    write(t, xp.tanh, y)
    write(y, xp.add, t, 1.0)
    y *= x
    y *= 0.5  # ½ x (1 + t)


def _gelu_backward_rows(dout, x, t, dx):
    """dx ← dout · (½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²))"""
    xp = namespace(x)
    w = t * t  # one temporary, a block's rows only
    w -= 1.0  # t² − 1
    write(dx, xp.multiply, x, x)
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
