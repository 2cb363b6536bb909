"""Affine layer: y = x Wᵀ + b.

Letter legend (whole package): N rows (any leading shape ``...``), d_in, d_out, r (LoRA rank),
B batch, T time, C channels, H heads, V vocabulary.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import check_float, check_same_dtype, namespace


class LinearCache(NamedTuple):
    x: object  # (..., d_in)  input
    W: object  # (d_out, d_in)


def check_linear_shapes(layer: str, x, W, b) -> None:
    """Raise ``ValueError`` naming the layer and the shapes if ``x``, ``W``, ``b`` disagree."""
    for name, a in (("x", x), ("W", W), ("b", b)):
        if a is not None:
            check_float(name, a, layer)
    check_same_dtype(layer, x=x, W=W, b=b)
    if W.ndim != 2:
        raise ValueError(f"{layer}: W must be 2-D (d_out, d_in), got shape {tuple(W.shape)}")
    if x.ndim < 1 or x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"{layer}: x has shape {tuple(x.shape)} but W has shape {tuple(W.shape)}; "
            f"x's last axis must equal d_in = {W.shape[1]}"
        )
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(
            f"{layer}: b has shape {tuple(b.shape)}, expected (d_out,) = ({W.shape[0]},)"
        )


def linear_forward(x, W, b=None, layer: str = "linear"):
    """y = x Wᵀ + b

    Inputs:  x (..., d_in), W (d_out, d_in), b (d_out,) or None; ``layer`` names it in errors
    Returns: y (..., d_out), cache
    """
    check_linear_shapes(layer, x, W, b)
    namespace(x, W, b)  # raises if backends are mixed
    y = x @ W.T
    if b is not None:
        y += b  # in place: y is fresh, so no second (..., d_out) buffer
    return y, LinearCache(x, W)


def linear_backward(dout, cache: LinearCache, frozen: bool = False, need_dx: bool = True):
    """dx = dout W,   dW = doutᵀ x  (summed over all rows),   db = Σ_rows dout

    A frozen layer still passes the gradient through (dx); it only skips dW and db.

    Inputs:  dout (..., d_out), cache from ``linear_forward``
    Returns: dx (..., d_in) or None if ``need_dx`` is False,
             grads {"W": (d_out, d_in), "b": (d_out,)}  (empty if ``frozen``)
    """
    x, W = cache
    xp = namespace(dout, x)
    dx = dout @ W if need_dx else None
    if frozen:
        return dx, {}
    d_out, d_in = W.shape
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)  all leading axes are rows
    x2 = xp.reshape(x, (-1, d_in))  # (N, d_in)
    return dx, {"W": dout2.T @ x2, "b": xp.sum(dout2, axis=0)}
