"""Fast ``linear`` and ``lora`` pairs: the reference equations with in-place adds.

Same signatures, same caches, same numbers as ``functional/linear.py`` and ``functional/lora.py``
(the in-place ``+=`` does the same additions in the same order: tests check equality bit for bit).
The only difference: ``y = x Wᵀ`` is fresh, so ``y += b`` writes into it instead of allocating
a second (..., d_out) array; the backwards' sums likewise.
"""
from __future__ import annotations

from .. import checks
from ..backend import namespace
from ..functional.linear import ALL as LINEAR_ALL
from ..functional.linear import LinearCache, linear_backward  # noqa: F401  (the same backward)
from ..functional.lora import ALL as LORA_ALL
from ..functional.lora import LoRACache


def linear_forward(x, W, b=None, layer: str = "linear"):
    """y = x Wᵀ + b   (``functional.linear.linear_forward``, bias added in place)"""
    checks.linear_inputs(layer, x, W, b)
    y = x @ W.T
    if b is not None:
        y += b
    return y, LinearCache(x, W)


def lora_forward(x, W, b, A, B, scale: float, mask=None, layer: str = "lora"):
    """h = x Wᵀ + b + scale · (x̃ Aᵀ) Bᵀ   (``functional.lora.lora_forward``, sums in place)"""
    checks.lora_inputs(layer, x, W, b, A, B, mask)
    x_drop = x if mask is None else x * mask
    u = x_drop @ A.T
    h = x @ W.T
    if b is not None:
        h += b
    h += (scale * u) @ B.T
    return h, LoRACache(x, mask, x_drop, u, W, A, B, scale)


def lora_backward(dout, cache: LoRACache, need=LORA_ALL):
    """``functional.lora.lora_backward`` with the dropout mask and the two dx terms applied in
    place into the fresh products."""
    x, mask, x_drop, u, W, A, B, scale = cache
    xp = namespace(dout, x)
    d_out, d_in = W.shape
    r = A.shape[0]
    dout2 = xp.reshape(dout, (-1, d_out))
    u2 = xp.reshape(u, (-1, r))
    du2 = dout2 @ (scale * B)
    grads = {}
    if "A" in need:
        grads["A"] = du2.T @ xp.reshape(x_drop, (-1, d_in))
    if "B" in need:
        grads["B"] = scale * (dout2.T @ u2)
    dx = None
    if "x" in need:
        dx_lora = xp.reshape(du2 @ A, tuple(x.shape))
        if mask is not None:
            dx_lora *= mask
        dx = dout @ W
        dx += dx_lora
    return dx, grads


__all__ = ["linear_forward", "linear_backward", "lora_forward", "lora_backward", "LINEAR_ALL"]
