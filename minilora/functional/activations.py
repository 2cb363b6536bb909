"""Elementwise activations: ReLU and GELU (tanh form), each a forward/backward pair."""
from __future__ import annotations

import math
from typing import NamedTuple

from ..backend import check_float, namespace


class ReLUCache(NamedTuple):
    x: object  # (...)


def relu_forward(x):
    """y = max(x, 0)

    Inputs: x (...).  Returns: y (...), cache
    """
    check_float("x", x, "relu")
    xp = namespace(x)
    return xp.maximum(x, xp.zeros_like(x)), ReLUCache(x)


def relu_backward(dout, cache: ReLUCache):
    """dx = dout · [x > 0]   (the subgradient at 0 is taken as 0)"""
    xp = namespace(dout)
    return xp.where(cache.x > 0, dout, xp.zeros_like(dout)), {}


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
    t = xp.tanh(_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), GELUCache(x, t)


def gelu_backward(dout, cache: GELUCache):
    """dy/dx = ½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²),   dx = dout · dy/dx"""
    x, t = cache
    dydx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * x * x)
    return dout * dydx, {}


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "gelu": (gelu_forward, gelu_backward),
}
