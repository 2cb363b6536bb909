"""LoRA linear layer (Hu et al., 2021): a frozen W plus a trainable low-rank update ΔW = B A.

    h = x Wᵀ + b + scale · (x̃ Aᵀ) Bᵀ,      x̃ = dropout(x),   scale = alpha / r
                                                      (rsLoRA: scale = alpha / √r)

Shapes follow the paper and PyTorch/PEFT: W (d_out, d_in), A (r, d_in), B (d_out, r), so
ΔW = B A has W's shape and an exported A, B is a PEFT ``lora_A`` / ``lora_B`` with no transpose.

The unmerged path never builds B A: it costs r·(d_in + d_out) multiply-adds per row, not
d_in·d_out. The backward returns gradients for A and B only — W is frozen — but dx still flows
through W *and* through the low-rank path.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import checks
from ..backend import namespace
from ..checks import check_lora  # noqa: F401  (where older code imported it from)

ALL = ("x", "A", "B")  # the gradients lora_backward can return


def lora_scale(r: int, alpha: float, rslora: bool = False) -> float:
    """scale = alpha / r, or alpha / √r with rsLoRA (Kalajdzievski, 2023)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoRACache(NamedTuple):
    x: object  # (..., d_in)  input
    mask: object  # (..., d_in)  inverted-dropout mask, or None
    x_drop: object  # (..., d_in)  x̃ = x ⊙ mask (x itself when mask is None)
    u: object  # (..., r)     u = x̃ Aᵀ, the low-rank code
    W: object  # (d_out, d_in) frozen
    A: object  # (r, d_in)
    B: object  # (d_out, r)
    scale: float


def lora_forward(x, W, b, A, B, scale: float, mask=None, layer: str = "lora"):
    """h = x Wᵀ + b + scale · (x̃ Aᵀ) Bᵀ,   x̃ = x ⊙ mask  (mask None: x̃ = x)

    Inputs:  x (..., d_in), W (d_out, d_in), b (d_out,) or None, A (r, d_in), B (d_out, r),
             scale (float), mask (..., d_in) inverted-dropout mask or None
    Returns: h (..., d_out), cache
    """
    checks.lora_inputs(layer, x, W, b, A, B, mask)
    x_drop = x if mask is None else x * mask  # (..., d_in)
    u = x_drop @ A.T  # (..., r)    the low-rank code
    h = x @ W.T  # (..., d_out)  the frozen path
    if b is not None:
        h = h + b
    h = h + (scale * u) @ B.T  # scale on the r-wide code: the cheapest place for it
    return h, LoRACache(x, mask, x_drop, u, W, A, B, scale)


def lora_backward(dout, cache: LoRACache, need=ALL):
    """Backward of ``lora_forward``: gradients for A and B only (W is frozen).

        dB = scale · doutᵀ u            (d_out, r)
        du = scale · dout B             (..., r)
        dA = duᵀ x̃                      (r, d_in)
        dx = dout W + (du A) ⊙ mask     (..., d_in)

    At initialisation B = 0, so du = 0 and dA = 0 while dB ≠ 0: only B moves on the first step.

    Inputs:  dout (..., d_out), cache from ``lora_forward``; ``need`` names the gradients
             wanted, among "x", "A", "B"
    Returns: dx (..., d_in) or None if "x" is not needed, grads {"A": dA, "B": dB} restricted
             to ``need``
    """
    x, mask, x_drop, u, W, A, B, scale = cache
    xp = namespace(dout, x)
    d_out, d_in = W.shape
    r = A.shape[0]
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)
    u2 = xp.reshape(u, (-1, r))  # (N, r)
    du2 = dout2 @ (scale * B)  # (N, r); scale folded into the small B
    grads = {}
    if "A" in need:
        grads["A"] = du2.T @ xp.reshape(x_drop, (-1, d_in))  # (r, d_in)
    if "B" in need:
        grads["B"] = scale * (dout2.T @ u2)  # (d_out, r)
    dx = None
    if "x" in need:
        dx_lora = xp.reshape(du2 @ A, tuple(x.shape))  # (..., d_in)
        if mask is not None:
            dx_lora = dx_lora * mask
        dx = dout @ W + dx_lora
    return dx, grads


def lora_delta(A, B, scale: float):
    """ΔW = scale · B A   (d_out, d_in) — only for merging and analysis, never in the forward."""
    return scale * (B @ A)


# ----------------------------------------------------------------------------- the low-rank path alone
# For a base that is not a plain W (a 4-bit QuantLinear, ``nn/quantized.py``): the layer adds
# base(x) and this path itself, h = base(x) + lowrank(x), and dx = base'(dout) + the dx below.


class LowRankCache(NamedTuple):
    x: object  # (..., d_in)  input
    mask: object  # (..., d_in)  inverted-dropout mask, or None
    x_drop: object  # (..., d_in)  x̃ = x ⊙ mask (x itself when mask is None)
    u: object  # (..., r)     u = x̃ Aᵀ, the low-rank code
    A: object  # (r, d_in)
    B: object  # (d_out, r)
    scale: float


def _lowrank_inputs(layer: str, x, A, B, mask) -> None:
    """x (..., d_in), A (r, d_in), B (d_out, r), mask shaped like x; one float dtype."""
    checks.floats(layer, x=x, A=A, B=B, mask=mask)
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0] or x.ndim < 1 or x.shape[-1] != A.shape[1]:
        raise ValueError(f"{layer}: expected x (..., d_in), A (r, d_in), B (d_out, r) with one r and d_in; "
                         f"got x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape):
        raise ValueError(f"{layer}: dropout mask has shape {tuple(mask.shape)}, expected x's {tuple(x.shape)}")


def lowrank_forward(x, A, B, scale: float, mask=None, layer: str = "lowrank"):
    """h_lr = scale · (x̃ Aᵀ) Bᵀ,   x̃ = x ⊙ mask  (mask None: x̃ = x)

    ``lora_forward`` is ``linear_forward`` plus this.

    Inputs:  x (..., d_in), A (r, d_in), B (d_out, r), scale (float),
             mask (..., d_in) inverted-dropout mask or None
    Returns: h_lr (..., d_out), cache
    """
    _lowrank_inputs(layer, x, A, B, mask)
    x_drop = x if mask is None else x * mask  # (..., d_in)
    u = x_drop @ A.T  # (..., r)     the low-rank code
    h = (scale * u) @ B.T  # (..., d_out)
    return h, LowRankCache(x, mask, x_drop, u, A, B, scale)


def lowrank_backward(dout, cache: LowRankCache, need=ALL):
    """Backward of ``lowrank_forward``:

        dB = scale · doutᵀ u            (d_out, r)
        du = scale · dout B             (..., r)
        dA = duᵀ x̃                      (r, d_in)
        dx = (du A) ⊙ mask              (..., d_in)   the low-rank path's share of dx only

    Inputs:  dout (..., d_out), cache from ``lowrank_forward``; ``need`` names the gradients
             wanted, among "x", "A", "B"
    Returns: dx (..., d_in) or None if "x" is not needed, grads {"A": dA, "B": dB} restricted
             to ``need``
    """
    x, mask, x_drop, u, A, B, scale = cache
    xp = namespace(dout, x)
    (d_out, r), d_in = B.shape, A.shape[1]
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)
    du2 = dout2 @ (scale * B)  # (N, r)
    grads = {}
    if "B" in need:
        grads["B"] = scale * (dout2.T @ xp.reshape(u, (-1, r)))  # (d_out, r)
    if "A" in need:
        grads["A"] = du2.T @ xp.reshape(x_drop, (-1, d_in))  # (r, d_in)
    dx = None
    if "x" in need:
        dx = xp.reshape(du2 @ A, tuple(x.shape))  # (..., d_in)
        if mask is not None:
            dx = dx * mask
    return dx, grads


# ----------------------------------------------------------------------------- LoRA-FA: A frozen
# LoRA-FA (Zhang et al., 2023, arXiv 2308.03303) freezes A after its random init and trains B only.
# With A and W frozen nothing in the backward needs x: dB = scale · doutᵀ u needs the r-wide code
# u = x̃ Aᵀ, and dx = dout W + (du A) ⊙ mask needs only the weights (and the mask). The cache keeps
# u — r numbers per row instead of d_in (docs/lora.md §10).

FA_ALL = ("x", "B")  # the gradients lora_fa_backward can return


class LoRAFACache(NamedTuple):
    x_shape: tuple  # (..., d_in)  the input's shape: x itself is not kept
    mask: object  # (..., d_in)  inverted-dropout mask, or None (dx needs it)
    u: object  # (..., r)     u = x̃ Aᵀ, the low-rank code
    W: object  # (d_out, d_in) frozen
    A: object  # (r, d_in)     frozen
    B: object  # (d_out, r)
    scale: float


def lora_fa_forward(x, W, b, A, B, scale: float, mask=None, layer: str = "lora_fa"):
    """h = x Wᵀ + b + scale · (x̃ Aᵀ) Bᵀ, as ``lora_forward``; the cache drops x (A, W frozen).

    Inputs:  x (..., d_in), W (d_out, d_in), b (d_out,) or None, A (r, d_in), B (d_out, r),
             scale (float), mask (..., d_in) inverted-dropout mask or None
    Returns: h (..., d_out), cache (no x, no x̃)
    """
    checks.lora_inputs(layer, x, W, b, A, B, mask)
    x_drop = x if mask is None else x * mask  # (..., d_in)  used here, not kept
    u = x_drop @ A.T  # (..., r)
    h = x @ W.T  # (..., d_out)
    if b is not None:
        h = h + b
    h = h + (scale * u) @ B.T
    return h, LoRAFACache(tuple(x.shape), mask, u, W, A, B, scale)


def lora_fa_backward(dout, cache: LoRAFACache, need=FA_ALL):
    """Backward of ``lora_fa_forward``: dB and dx, no dA (A is frozen, and x is gone).

        dB = scale · doutᵀ u            (d_out, r)
        du = scale · dout B             (..., r)
        dx = dout W + (du A) ⊙ mask     (..., d_in)

    Inputs:  dout (..., d_out), cache from ``lora_fa_forward``; ``need`` among "x", "B"
    Returns: dx (..., d_in) or None, grads {"B": dB} restricted to ``need``
    """
    x_shape, mask, u, W, A, B, scale = cache
    if "A" in need or "W" in need:
        raise ValueError("lora_fa_backward: A and W are frozen in LoRA-FA and the cache holds no x "
                         f"to compute their gradient (need = {sorted(need)}); use lora_forward")
    xp = namespace(dout, u)
    d_out = W.shape[0]
    r = A.shape[0]
    dout2 = xp.reshape(dout, (-1, d_out))  # (N, d_out)
    grads = {}
    if "B" in need:
        grads["B"] = scale * (dout2.T @ xp.reshape(u, (-1, r)))  # (d_out, r)
    dx = None
    if "x" in need:
        du2 = dout2 @ (scale * B)  # (N, r)   du = scale · dout B
        dx_lora = xp.reshape(du2 @ A, x_shape)  # (..., d_in)
        if mask is not None:
            dx_lora = mask * dx_lora
        dx = dout @ W + dx_lora
    return dx, grads


def cache_bytes(cache, weights=("W", "A", "B", "m", "V")) -> int:
    """Bytes of the activations a cache keeps: every array field except the weights (which the
    model holds anyway), each distinct array counted once (x̃ is x when there is no mask)."""
    seen, total = set(), 0
    for name, a in zip(cache._fields, cache):
        if name in weights or not hasattr(a, "__array_namespace__") or id(a) in seen:
            continue
        seen.add(id(a))
        total += math.prod(a.shape) * (a.__array_namespace__().finfo(a.dtype).bits // 8)
    return total


# ----------------------------------------------------------------------------- inits from W
# PiSSA (Meng et al., 2024, arXiv 2404.02948) and OLoRA (Büyükakyüz, 2024, arXiv 2406.01775) start
# A, B from W itself and move that part out of the base: W_res = W − scale · B A, so the adapted
# layer still equals the base at step 0 (W_res + scale · B A = W), and the base is rewritten.
# Computed in float32 (float64 for a float64 W), as PEFT's ``pissa_init`` / ``olora_init``.


def _work_dtype(W):
    xp = namespace(W)
    return xp, (xp.float64 if W.dtype == xp.float64 else xp.float32)


def pissa_init(W, r: int, scale: float):
    """PiSSA: W = U Σ Vᵀ;  B = U_r √(Σ_r / scale),  A = √(Σ_r / scale) V_rᵀ,  so scale · B A is
    the best rank-r part of W (PEFT's ``pissa_init``: Sr /= scaling). Returns (A, B, W_res)."""
    xp, work = _work_dtype(W)
    U, S, Vh = xp.linalg.svd(xp.astype(W, work), full_matrices=False)  # (d_out, k), (k,), (k, d_in)
    root = xp.sqrt(S[:r] / scale)  # (r,)
    A = root[:, None] * Vh[:r, :]  # (r, d_in)
    B = U[:, :r] * root[None, :]  # (d_out, r)
    W_res = xp.astype(W, work) - scale * (B @ A)  # (d_out, d_in)  the rewritten base
    return xp.astype(A, W.dtype), xp.astype(B, W.dtype), xp.astype(W_res, W.dtype)


def olora_init(W, r: int, scale: float):
    """OLoRA: W = Q R (reduced QR);  B = Q_r (orthonormal columns),  A = R_r (first r rows), and
    W_res = W − scale · B A (PEFT's ``olora_init``; the scale is not folded into A, B). Returns
    (A, B, W_res)."""
    xp, work = _work_dtype(W)
    Q, R = xp.linalg.qr(xp.astype(W, work))  # (d_out, k), (k, d_in)
    A, B = R[:r, :], Q[:, :r]  # (r, d_in), (d_out, r)
    W_res = xp.astype(W, work) - scale * (B @ A)
    return xp.astype(A, W.dtype), xp.astype(B, W.dtype), xp.astype(W_res, W.dtype)
