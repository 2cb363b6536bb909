"""SiLU and the SwiGLU gate of Llama's MLP (Shazeer, 2020), each a forward/backward pair.

    σ(x) = 1 / (1 + e^(−x)),   silu(x) = x · σ(x),   h = silu(gate) ⊙ up

In a Llama block ``gate = x W_gateᵀ`` and ``up = x W_upᵀ`` are two linears of the same input and
``down(h)`` follows: the linears are the linear/LoRA pairs, this file is only the elementwise
part between them.

Convention: SwiGLU has two array inputs and no parameters, so its backward returns
``(None, {"gate": dgate, "up": dup})``, like attention's three.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace

ALL = ("gate", "up")  # the gradients swiglu_backward can return


def sigmoid(x):
    """σ(x) = 1 / (1 + e^(−x)) for x >= 0,  e^x / (1 + e^x) for x < 0

    Both branches are written with z = e^(−|x|) ∈ (0, 1], which never overflows: no inf, no NaN
    and no warning for any finite x in float16, float32 or float64 (z underflows quietly to 0).
    """
    xp = namespace(x)
    z = xp.exp(-xp.abs(x))  # (...)  e^(−|x|)
    return xp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


class SiLUCache(NamedTuple):
    x: object  # (...)
    sig: object  # (...)  σ(x)


def silu_forward(x):
    """y = x · σ(x)      (a.k.a. swish; σ computed stably)

    Inputs: x (...).  Returns: y (...), cache
    """
    checks.floats("silu", x=x)
    sig = sigmoid(x)
    y = x * sig
    return y, SiLUCache(x, sig)


def silu_backward(dout, cache: SiLUCache):
    """dy/dx = σ + x σ (1 − σ) = σ (1 + x (1 − σ)),   dx = dout · dy/dx      (σ' = σ (1 − σ))"""
    x, sig = cache
    local_grad = sig * (1.0 + x * (1.0 - sig))
    return dout * local_grad, {}


class SwiGLUCache(NamedTuple):
    silu: SiLUCache  # the gate's SiLU (holds gate and σ(gate))
    s: object  # (...)  silu(gate)
    up: object  # (...)


def swiglu_forward(gate, up):
    """h = silu(gate) ⊙ up

    Inputs:  gate, up (...) of one shape and dtype (in Llama (B, T, d_ff))
    Returns: h (...), cache
    """
    checks.swiglu_inputs(gate, up)
    s, silu_cache = silu_forward(gate)
    h = s * up
    return h, SwiGLUCache(silu_cache, s, up)


def swiglu_backward(dout, cache: SwiGLUCache, need=ALL):
    """Backward of ``swiglu_forward`` (the product rule, then SiLU's backward):

        dup = dout ⊙ silu(gate)
        ds = dout ⊙ up,     dgate = ds ⊙ σ (1 + gate (1 − σ))

    Inputs:  dout (...), cache from ``swiglu_forward``; ``need`` names the gradients wanted,
             among "gate", "up"
    Returns: (None, {"gate": dgate, "up": dup}) restricted to ``need``, each of gate's shape
    """
    silu_cache, s, up = cache
    grads = {}
    if "gate" in need:
        ds = dout * up  # (...)
        grads["gate"] = silu_backward(ds, silu_cache)[0]
    if "up" in need:
        grads["up"] = dout * s
    return None, grads
