"""DoRA (Liu et al., 2024, arXiv 2402.09353): a LoRA update whose rows are re-normalised, with a
trained magnitude per output row.

    V  = W + scale · B A                 the direction, (d_out, d_in)
    n  = ‖V‖ per row                     n_j = √(Σ_i V_ji²), (d_out,)   (PEFT: norm over dim=1)
    W′ = (m / n) ⊙ V                     row j of V scaled to length m_j
    y  = x W′ᵀ + b                       without dropout
    y  = x Wᵀ + b + x̃ (W′ − W)ᵀ          with dropout, x̃ = x ⊙ mask: PEFT's DoRA path — the base
                                         sees x, the adapter's part W′ − W sees x̃

m (d_out,) starts at ‖W‖ per row, so with B = 0 the layer is the base. Two backwards: the exact
one differentiates through n; PEFT's (``exact=False``, the paper's §4.3) treats n as a constant.
Derivation, line for line: docs/dora.md.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace

ALL = ("x", "A", "B", "m")  # the gradients dora_backward returns by default ("W", "b" on request)


def row_norm(V):
    """n_j = ‖V_j‖ = √(Σ_i V_ji²) for a (d_out, d_in) matrix: (d_out,)."""
    xp = namespace(V)
    return xp.sqrt(xp.sum(V * V, axis=1))


class DoRACache(NamedTuple):
    x: object  # (..., d_in)   input
    mask: object  # (..., d_in)   inverted-dropout mask, or None
    x_drop: object  # (..., d_in)   x̃ = x ⊙ mask (x itself when mask is None)
    u: object  # (..., r)      u = x̃ Aᵀ, the low-rank code
    z: object  # (..., d_out)  z = x̃ Vᵀ
    W: object  # (d_out, d_in) the base weight
    A: object  # (r, d_in)
    B: object  # (d_out, r)
    m: object  # (d_out,)      magnitude
    V: object  # (d_out, d_in) V = W + scale · B A
    n: object  # (d_out,)      n = ‖V‖ per row
    g: object  # (d_out,)      g = m / n
    scale: float


def dora_forward(x, W, b, A, B, m, scale: float, mask=None, layer: str = "dora"):
    """y = x Wᵀ + b + x̃ (W′ − W)ᵀ,   W′ = (m / ‖W + scale · B A‖_rows) ⊙ (W + scale · B A)

    Without a mask (x̃ = x) this is y = x W′ᵀ + b.

    Inputs:  x (..., d_in), W (d_out, d_in), b (d_out,) or None, A (r, d_in), B (d_out, r),
             m (d_out,), scale (float), mask (..., d_in) inverted-dropout mask or None
    Returns: y (..., d_out), cache
    """
    checks.dora_inputs(layer, x, W, b, A, B, m, mask)
    x_drop = x if mask is None else x * mask  # (..., d_in)
    u = x_drop @ A.T  # (..., r)       kept for the backward (dB, dA through the low rank)
    V = W + scale * (B @ A)  # (d_out, d_in)  formed once per call: its row norms need it
    n = row_norm(V)  # (d_out,)
    g = m / n  # (d_out,)        W′ = g ⊙ V, row by row
    z = x_drop @ V.T  # (..., d_out)   z = x̃ Vᵀ = x̃ Wᵀ + scale · u Bᵀ
    y = g * z  # (..., d_out)   x̃ W′ᵀ
    if mask is not None:
        y = y + (x - x_drop) @ W.T  # x Wᵀ − x̃ Wᵀ: the base path sees all of x
    if b is not None:
        y = y + b
    return y, DoRACache(x, mask, x_drop, u, z, W, A, B, m, V, n, g, scale)


def dora_backward(dout, cache: DoRACache, need=ALL, exact: bool = True):
    """Backward of ``dora_forward``; ``exact=False`` treats n as a constant (PEFT, paper §4.3).

        dg = Σ_rows dout ⊙ z                      (d_out,)
        dm = dg / n                               (d_out,)
        c  = −dg ⊙ g / n²  (exact)  or  0         (d_out,)   dV = dzᵀ x̃ + c ⊙ V (never formed)
        dz = dout ⊙ g                             (..., d_out)
        du = scale · dz B                         (..., r)
        dB = scale · dzᵀ u + scale · (c ⊙ V) Aᵀ   (d_out, r)
        dA = duᵀ x̃ + scale · (c ⊙ B)ᵀ V          (r, d_in)
        dx = dz V                                  no mask
        dx = dout W + (dz V − dout W) ⊙ mask       with a mask
        dW = dzᵀ x̃ + c ⊙ V + doutᵀ (x − x̃),  db = Σ_rows dout    (only when asked: W, b frozen)

    Inputs:  dout (..., d_out), cache from ``dora_forward``; ``need`` names the gradients wanted
             among "x", "A", "B", "m" (and "W", "b" for a trainable base)
    Returns: dx (..., d_in) or None if "x" is not needed, grads restricted to ``need``
    """
    x, mask, x_drop, u, z, W, A, B, m, V, n, g, scale = cache
    xp = namespace(dout, x)
    d_out, d_in = W.shape
    r = A.shape[0]
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)
    z2 = xp.reshape(z, (-1, d_out))  # (N, d_out)
    x_drop2 = xp.reshape(x_drop, (-1, d_in))  # (N, d_in)
    dg = xp.sum(dout2 * z2, axis=0)  # (d_out,)
    c = -dg * g / (n * n) if exact else xp.zeros_like(n)  # (d_out,)  ∂L/∂n_j / n_j
    dz2 = dout2 * g  # (N, d_out)
    grads = {}
    if "m" in need:
        grads["m"] = dg / n  # (d_out,)
    if "B" in need:
        dB = scale * (dz2.T @ xp.reshape(u, (-1, r)))  # (d_out, r)
        if exact:
            dB = dB + scale * ((c[:, None] * V) @ A.T)  # through the norm
        grads["B"] = dB
    if "A" in need:
        du2 = dz2 @ (scale * B)  # (N, r)
        dA = du2.T @ x_drop2  # (r, d_in)
        if exact:
            dA = dA + scale * ((c[:, None] * B).T @ V)  # through the norm
        grads["A"] = dA
    if "W" in need:
        dW = dz2.T @ x_drop2 + c[:, None] * V  # (d_out, d_in)  dV, and V = W + ...
        if mask is not None:
            dW = dW + dout2.T @ xp.reshape(x - x_drop, (-1, d_in))  # the base path's x Wᵀ − x̃ Wᵀ
        grads["W"] = dW
    if "b" in need:
        grads["b"] = xp.sum(dout2, axis=0)  # (d_out,)
    dx = None
    if "x" in need:
        dx_drop = xp.reshape(dz2 @ V, tuple(x.shape))  # (..., d_in)  ∂L/∂x̃ from z = x̃ Vᵀ
        if mask is None:
            dx = dx_drop
        else:
            dx_base = dout @ W  # (..., d_in)
            dx = dx_base + (dx_drop - dx_base) * mask
    return dx, grads


def dora_weight(W, A, B, m, scale: float):
    """W′ = (m / ‖V‖_rows) ⊙ V, V = W + scale · B A   (d_out, d_in) — for merging; also returns n."""
    V = W + scale * (B @ A)
    n = row_norm(V)
    return (m / n)[:, None] * V, n
