"""Exercise lora_linear: the backward of a LoRA linear layer, by hand.

    h = x Wᵀ + b + s · (x̃ Aᵀ) Bᵀ        x̃ = x ⊙ mask  (no mask: x̃ = x),   s = alpha / r

W (d_out, d_in) and b (d_out,) are frozen; A (r, d_in) and B (d_out, r) are trained. The forward
below is complete: read it, keep it, and use what its cache holds. Your job is ``lora_backward``:
dx, dA and dB.

    write:   lora_backward, below
    grade:   minilora exercise grade lora_linear.py
    read:    docs/lora.md, section 3 "Backward, derived step by step" (after you have tried)

Rules: this file imports numpy (and the standard library's math, typing) only. The grader refuses
a file that imports minilora, torch, importlib, or calls __import__ / exec / eval.
"""
from typing import NamedTuple

import numpy as np

EXERCISE = "lora_linear"  # the grader reads this line to know which exercise the file is


class LoRACache(NamedTuple):
    x: np.ndarray  # (N, d_in)     the input
    mask: object  # (N, d_in)     the inverted-dropout mask (0 or 1/(1-p)), or None
    x_drop: np.ndarray  # (N, d_in)     x̃ = x ⊙ mask (x itself when there is no mask)
    u: np.ndarray  # (N, r)        u = x̃ Aᵀ, the low-rank code
    W: np.ndarray  # (d_out, d_in) frozen
    A: np.ndarray  # (r, d_in)
    B: np.ndarray  # (d_out, r)
    scale: float  # s = alpha / r  (or alpha / √r with rsLoRA)


def lora_forward(x, W, b, A, B, scale, mask=None):
    """h = x Wᵀ + b + scale · (x̃ Aᵀ) Bᵀ,    x̃ = x ⊙ mask  (mask None: x̃ = x)

    Inputs:  x (N, d_in), W (d_out, d_in), b (d_out,) or None, A (r, d_in), B (d_out, r),
             scale (float), mask (N, d_in) or None
    Returns: h (N, d_out), cache
    """
    x_drop = x if mask is None else x * mask  # (N, d_in)
    u = x_drop @ A.T  # (N, r)       the low-rank code
    h = x @ W.T  # (N, d_out)   the frozen path sees the whole x
    if b is not None:
        h = h + b
    h = h + scale * (u @ B.T)  # (N, d_out)   the low-rank path
    return h, LoRACache(x, mask, x_drop, u, W, A, B, scale)


def lora_backward(dout, cache):
    """Backward of ``lora_forward``: the gradients of the loss L for x, A and B (no dW: W is frozen).

    Inputs:  dout (N, d_out) = ∂L/∂h;  cache from ``lora_forward``
    Returns: dx (N, d_in),  {"A": dA (r, d_in), "B": dB (d_out, r)}

    Derive them from the forward, entry by entry (G = dout, u = x̃ Aᵀ):

        h_nj = Σ_i x_ni W_ji + b_j + s Σ_k u_nk B_jk,        u_nk = Σ_i x̃_ni A_ki,   x̃_ni = x_ni mask_ni

        dB_jk = ∂L/∂B_jk = Σ_n G_nj ∂h_nj/∂B_jk                      → a (d_out, r) matrix product
        dA_ki = ∂L/∂A_ki = Σ_n Σ_j G_nj ∂h_nj/∂u_nk · ∂u_nk/∂A_ki    → (r, d_in); which input multiplies A?
        dx_ni = ∂L/∂x_ni: x reaches h along two paths, x Wᵀ and s (x̃ Aᵀ) Bᵀ, and the two add

    Each gradient has the shape of its array; each is one or two matrix products.
    """
    x, mask, x_drop, u, W, A, B, scale = cache
    # --- solution: dB, dA and dx (a matrix product or two each) ---
    dB = scale * (dout.T @ u)  # (d_out, r)
    du = scale * (dout @ B)  # (N, r)        ∂L/∂u
    dA = du.T @ x_drop  # (r, d_in)     x̃, not x, multiplies A
    dx_lora = du @ A  # (N, d_in)     ∂L/∂x̃
    if mask is not None:
        dx_lora = dx_lora * mask  # x̃ = x ⊙ mask
    dx = dout @ W + dx_lora  # (N, d_in)     the frozen path plus the low-rank path
    # --- end of solution ---
    return dx, {"A": dA, "B": dB}
