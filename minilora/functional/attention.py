"""Causal scaled dot-product attention (Vaswani et al., 2017) over H heads, as one pair.

    S = q kᵀ / √hd + M,      M_ts = 0 if s <= t else −∞     (position t sees only s <= t)
    P = softmax(S)  (each row),      out = P v

All heads and batch rows go through one batched matmul on 4-D arrays (B, H, T, hd): there is
no Python loop over batch, heads or time. ``split_heads`` / ``merge_heads`` move between the
model's (B, T, C) layout and the per-head (B, H, T, hd) layout, C = H · hd.

Convention: attention has three array inputs and no parameters, so its backward returns
``(None, {"q": dq, "k": dk, "v": dv})`` — the package's ``(dx, grads)`` shape with the three
input gradients in the dict (``gradcheck.check_pair`` then checks all three by name).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .losses import softmax

ALL = ("q", "k", "v")  # the gradients attention_backward can return


def split_heads(x, n_head: int):
    """(B, T, C) -> (B, H, T, hd) with hd = C / H; head h holds channels [h·hd, (h+1)·hd)."""
    B, T, C = x.shape
    checks.heads_inputs(C, n_head)
    xp = namespace(x)
    x = xp.reshape(x, (B, T, n_head, C // n_head))  # (B, T, H, hd)  a view
    return xp.permute_dims(x, (0, 2, 1, 3))  # (B, H, T, hd)  a view; matmul takes strides


def merge_heads(x):
    """(B, H, T, hd) -> (B, T, C), the inverse of ``split_heads`` (and its backward)."""
    B, H, T, hd = x.shape
    xp = namespace(x)
    x = xp.permute_dims(x, (0, 2, 1, 3))  # (B, T, H, hd)
    return xp.reshape(x, (B, T, H * hd))  # one copy here: the heads become contiguous channels


def causal_bias(T: int, xp, dtype):
    """M (T, T): 0 on and below the diagonal, −∞ above (s > t is the future of t)."""
    i = xp.arange(T)
    zero = xp.zeros((T, T), dtype=dtype)
    return xp.where(i[:, None] >= i[None, :], zero, zero - math.inf)


class AttentionCache(NamedTuple):
    qs: object  # (B, H, T, hd)  q / √hd
    k: object  # (B, H, T, hd)
    v: object  # (B, H, T, hd)
    att: object  # (B, H, T, T)   P = softmax(S); exactly 0 above the diagonal
    scale: float  # 1 / √hd
    out: object = None  # (B, H, T, hd)  P v, the output (a reference, not a copy)


def attention_forward(q, k, v):
    """out = softmax(q kᵀ / √hd + M) v      (causal mask M, stable softmax over the last axis)

    Inputs:  q, k, v (B, H, T, hd)
    Returns: out (B, H, T, hd), cache (holds the attention weights ``cache.att`` (B, H, T, T))
    """
    checks.attention_inputs(q, k, v)
    xp = namespace(q, k, v)
    T, hd = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(hd)
    qs = q * scale  # (B, H, T, hd)  q / √hd
    S = qs @ xp.matrix_transpose(k) + causal_bias(T, xp, q.dtype)  # (B, H, T, T)
    P = softmax(S)  # (B, H, T, T)  exp(−∞) = 0 above the diagonal
    out = P @ v  # (B, H, T, hd)
    return out, AttentionCache(qs, k, v, P, scale, out)


def attention_backward(dout, cache: AttentionCache, need=ALL):
    """Backward of ``attention_forward``:

        dv = Pᵀ dout                        dP = dout vᵀ
        dS = P ⊙ (dP − rowsum(dP ⊙ P))      (softmax backward; 0 wherever P is masked)
        dq = dS k / √hd                     dk = dSᵀ q / √hd

    Inputs:  dout (B, H, T, hd), cache from ``attention_forward``; ``need`` names the
             gradients wanted, among "q", "k", "v"
    Returns: (None, {"q": dq, "k": dk, "v": dv}) restricted to ``need``, each (B, H, T, hd)
    """
    qs, k, v, P, scale, _ = cache
    xp = namespace(dout, P)
    grads = {}
    if "v" in need:
        grads["v"] = xp.matrix_transpose(P) @ dout  # (B, H, T, hd)
    if "q" in need or "k" in need:
        dP = dout @ xp.matrix_transpose(v)  # (B, H, T, T)
        dS = P * (dP - xp.sum(dP * P, axis=-1, keepdims=True))  # (B, H, T, T)
        if "q" in need:
            grads["q"] = (dS @ k) * scale  # (B, H, T, hd)
        if "k" in need:
            grads["k"] = xp.matrix_transpose(dS) @ qs  # (B, H, T, hd); qs carries the 1/√hd
    return None, {n: grads[n] for n in ALL if n in grads}  # in the order q, k, v
