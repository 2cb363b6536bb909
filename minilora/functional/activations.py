"""Elementwise activations: ReLU and GELU (tanh form), each a forward/backward pair."""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import checks
from ..backend import namespace


class ReLUCache(NamedTuple):
    x: object  # (...)


def relu_forward(x):
    """y = max(x, 0)

    Inputs: x (...).  Returns: y (...), cache
    """
    checks.floats("relu", x=x)
    xp = namespace(x)
    return xp.maximum(x, 0.0), ReLUCache(x)


def relu_backward(dout, cache: ReLUCache):
    """dx = dout · [x > 0]   (the subgradient at 0 is taken as 0)"""
    xp = namespace(dout)
    step = xp.astype(cache.x > 0, dout.dtype)  # [x > 0]: 1 where x > 0, else 0
    return dout * step, {}


GELU_C = math.sqrt(2.0 / math.pi)  # √(2/π)
GELU_K = 0.044715  # the cubic's coefficient in the tanh approximation


class GELUCache(NamedTuple):
    x: object  # (...)
    t: object  # (...) tanh_out = tanh(√(2/π)(x + 0.044715 x³))


def gelu_forward(x):
    """y = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))   (the tanh form used by GPT-2)

    Inputs: x (...).  Returns: y (...), cache
    """
    checks.floats("gelu", x=x)
    xp = namespace(x)
    tanh_arg = GELU_C * (x + GELU_K * x * x * x)
    tanh_out = xp.tanh(tanh_arg)
    y = 0.5 * x * (1.0 + tanh_out)
    return y, GELUCache(x, tanh_out)


def gelu_backward(dout, cache: GELUCache):
    """dy/dx = ½(1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²),   dx = dout · dy/dx"""
    x, tanh_out = cache
    sech2 = 1.0 - tanh_out * tanh_out  # d tanh(a)/da = 1 − tanh²(a)
    dtanh_arg = GELU_C * (1.0 + 3.0 * GELU_K * x * x)  # d tanh_arg / dx
    local_grad = 0.5 * (1.0 + tanh_out) + 0.5 * x * sech2 * dtanh_arg
    return dout * local_grad, {}


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "gelu": (gelu_forward, gelu_backward),
}
