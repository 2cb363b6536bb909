"""lora_linear: dx, dA, dB of h = x Wᵀ + b + s (x̃ Aᵀ) Bᵀ — cases and classic mistakes."""
from __future__ import annotations

import numpy as np

from ...functional.lora import lora_forward as reference_forward  # noqa: F401  (the truth's forward)
from . import Case, Mistake

NAME = "lora_linear"
SUMMARY = "LoRA linear layer h = x Wᵀ + b + s·(x̃ Aᵀ) Bᵀ (scale, dropout mask): dx, dA, dB"
FORWARD, BACKWARD = "lora_forward", "lora_backward"
DX = "x"
GRADS = ("x", "A", "B")
DOCS = 'docs/lora.md, section 3 "Backward, derived step by step"'


def cases():
    """Three layers, every shape different (so a transpose shows), B random (so dA is not 0),
    scale ≠ 1 everywhere, and an inverted-dropout mask in two of them."""
    g = np.random.default_rng(20210617)

    def case(label, N, d_in, d_out, r, scale, p=None, bias=True):
        mask = None if p is None else (g.random((N, d_in)) >= p) / (1.0 - p)  # 0 or 1/(1-p)
        inputs = dict(x=g.standard_normal((N, d_in)), W=g.standard_normal((d_out, d_in)),
                      b=g.standard_normal(d_out) if bias else None, A=g.standard_normal((r, d_in)),
                      B=g.standard_normal((d_out, r)), scale=scale, mask=mask)
        return Case(label, inputs, g.standard_normal((N, d_out)))

    return [
        case("N=4 d_in=5 d_out=6 r=2, scale = alpha/r = 3/2, no dropout", 4, 5, 6, 2, 1.5),
        case("N=5 d_in=6 d_out=4 r=3, scale = 4/3, dropout mask p = 0.25", 5, 6, 4, 3, 4 / 3, p=0.25),
        case("N=3 d_in=4 d_out=5 r=2, rsLoRA scale = 8/√2, dropout mask p = 0.5, no bias",
             3, 4, 5, 2, 8 / np.sqrt(2), p=0.5, bias=False),
    ]


def _parts(inputs):
    """The forward's intermediates: x, x̃, the mask (1.0 when none), u = x̃ Aᵀ, W, A, B, s."""
    x, mask, A = inputs["x"], inputs["mask"], inputs["A"]
    m = 1.0 if mask is None else mask
    x_drop = x * m
    return x, x_drop, m, x_drop @ A.T, inputs["W"], A, inputs["B"], inputs["scale"]


def missing_scale(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"B": G.T @ u, "A": (G @ B).T @ xd, "x": G @ W + ((G @ B) @ A) * m}


def scale_twice(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"B": s * s * (G.T @ u), "A": s * s * (G @ B).T @ xd, "x": G @ W + s * s * ((G @ B) @ A) * m}


def dB_transposed(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"B": s * (u.T @ G)}  # (r, d_out)


def dB_from_x(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"B": s * (G.T @ x)}  # (d_out, d_in)


def dA_transposed(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"A": s * xd.T @ (G @ B)}  # (d_in, r)


def mask_forgotten_in_dA(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"A": s * (G @ B).T @ x}  # x where x̃ belongs


def mask_forgotten_in_dB(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"B": s * G.T @ (x @ A.T)}  # x Aᵀ where u = x̃ Aᵀ belongs


def mask_forgotten_in_dx(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"x": G @ W + s * (G @ B) @ A}


def mask_on_frozen_path(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"x": (G @ W + s * (G @ B) @ A) * m}


def dx_missing_low_rank(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"x": G @ W}


def dx_missing_frozen(inputs, G):
    x, xd, m, u, W, A, B, s = _parts(inputs)
    return {"x": s * ((G @ B) @ A) * m}


MISTAKES = [
    Mistake("missing scale", "the scale s = alpha / r is missing: h has s · (x̃ Aᵀ) Bᵀ, so every "
            "gradient through the low-rank path carries one factor s", missing_scale),
    Mistake("scale applied twice", "the scale s is applied twice (s² where s belongs): put it in "
            "once, either in du = s · dout B or in the final product, not both", scale_twice),
    Mistake("dB transposed", "dB is transposed: it must have B's shape (d_out, r) — check the "
            "order of the two factors dout and u", dB_transposed),
    Mistake("dB from x", "dB must have B's shape (d_out, r): B multiplies the low-rank code "
            "u = x̃ Aᵀ (the cache has it), not x", dB_from_x),
    Mistake("dA transposed", "dA is transposed: it must have A's shape (r, d_in) — check the "
            "order of the two factors", dA_transposed),
    Mistake("dropout mask forgotten in dA", "the dropout mask is missing from dA: A multiplies "
            "x̃ = x ⊙ mask, not x — the dropped entries had no influence on u", mask_forgotten_in_dA),
    Mistake("dropout mask forgotten in dB", "dB uses x Aᵀ, but the forward's code is u = x̃ Aᵀ "
            "with the dropout mask applied: use the cached u", mask_forgotten_in_dB),
    Mistake("dropout mask forgotten in dx", "the dropout mask is missing from the low-rank part "
            "of dx: x̃ = x ⊙ mask, so that part is (du A) ⊙ mask", mask_forgotten_in_dx),
    Mistake("mask on the frozen path", "the dropout mask multiplies all of dx, but the frozen "
            "path x Wᵀ sees the whole x: only the low-rank part of dx gets ⊙ mask", mask_on_frozen_path),
    Mistake("dx missing the low-rank term", "dx is missing the low-rank term: x reaches h along "
            "two paths, x Wᵀ and s · (x̃ Aᵀ) Bᵀ, and their gradients add", dx_missing_low_rank),
    Mistake("dx missing dout W", "dx is missing dout W: W is frozen (no dW), but the gradient "
            "still flows through it to x — frozen means no dW, never no backward", dx_missing_frozen),
]
