"""The AdamW update as its equations: a function of (θ, g, m, v) that updates them in place.

    m ← β₁ m + (1−β₁) g;   v ← β₂ v + (1−β₂) g²
    m̂ = m / (1−β₁ᵗ);       v̂ = v / (1−β₂ᵗ)                        (bias corrections)
    θ ← θ − lr · wd · θ − lr · m̂ / (√v̂ + ε)                        (decoupled weight decay)

``minilora.optim.AdamW`` calls this (or the fast version beside it, ``minilora/fast/optim.py``)
once per trainable parameter per step. The arrays are written in place (``a[...] = ...``), so
every reference to a parameter — a module's dict, a cache — sees the new value.
"""
from __future__ import annotations

from ..backend import namespace


def adamw_update(p, g, m, v, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, t: int) -> None:
    """One AdamW step for parameter ``p`` with gradient ``g`` and moments ``m``, ``v`` (all one
    shape); ``t`` is the step number, from 1."""
    xp = namespace(p, g, m, v)
    m[...] = beta1 * m + (1.0 - beta1) * g
    v[...] = beta2 * v + (1.0 - beta2) * (g * g)
    m_hat = m / (1.0 - beta1**t)
    v_hat = v / (1.0 - beta2**t)
    p[...] = p - lr * weight_decay * p - lr * m_hat / (xp.sqrt(v_hat) + eps)
