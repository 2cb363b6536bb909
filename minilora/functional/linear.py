"""Affine layer: y = x Wᵀ + b.

Letter legend (whole package): N rows (any leading shape ``...``), d_in, d_out, r (LoRA rank),
B batch, T time, C channels, H heads, V vocabulary.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace

ALL = ("x", "W", "b")  # the gradients linear_backward can return


class LinearCache(NamedTuple):
    x: object  # (..., d_in)  input
    W: object  # (d_out, d_in)


def linear_forward(x, W, b=None, layer: str = "linear"):
    """y = x Wᵀ + b

    Inputs:  x (..., d_in), W (d_out, d_in), b (d_out,) or None; ``layer`` names it in errors
    Returns: y (..., d_out), cache
    """
    checks.linear_inputs(layer, x, W, b)
    y = x @ W.T
    if b is not None:
        y = y + b
    return y, LinearCache(x, W)


def linear_backward(dout, cache: LinearCache, need=ALL):
    """dx = dout W,   dW = doutᵀ x  (summed over all rows),   db = Σ_rows dout

    A frozen layer still passes the gradient through (dx); it only skips dW and db.

    Inputs:  dout (..., d_out), cache from ``linear_forward``; ``need`` names the gradients
             wanted, among "x", "W", "b"
    Returns: dx (..., d_in) or None if "x" is not needed, grads {"W": (d_out, d_in), "b": (d_out,)}
             restricted to ``need``
    """
    x, W = cache
    xp = namespace(dout, x)
    d_out, d_in = W.shape
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)  all leading axes are rows
    x2 = xp.reshape(x, (-1, d_in))  # (N, d_in)
    dx = dout @ W if "x" in need else None
    grads = {}
    if "W" in need:
        grads["W"] = dout2.T @ x2
    if "b" in need:
        grads["b"] = xp.sum(dout2, axis=0)
    return dx, grads
