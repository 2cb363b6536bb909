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
from functools import partial
from typing import NamedTuple

from ..backend import (
    batched_matmul,
    check_float,
    check_same_dtype,
    namespace,
    rowwise,
    write,
)


def split_heads(x, n_head: int):
    """(B, T, C) -> (B, H, T, hd) with hd = C / H; head h holds channels [h·hd, (h+1)·hd)."""
    B, T, C = x.shape
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(
            f"split_heads: n_head = {n_head!r} must be a positive int dividing the width C = {C}"
        )
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
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_float(name, a, "attention")
    check_same_dtype("attention", q=q, k=k, v=v)
    if q.ndim != 4 or tuple(k.shape) != tuple(q.shape) or tuple(v.shape) != tuple(q.shape):
        raise ValueError(
            "attention: q, k, v must share one shape (B, H, T, hd), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    xp = namespace(q, k, v)
    T, hd = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(hd)
    qs = q * scale  # (B, H, T, hd); scaling q costs T·hd per head, scaling S would cost T·T
    # batched_matmul(a, b) is a @ b, with the (B, H) small products split across cores (NumPy)
    s = batched_matmul(qs, xp.matrix_transpose(k))  # (B, H, T, T)
    bias = causal_bias(T, xp, q.dtype)
    att = s  # P = softmax(S + M) overwrites S in place: no second (B, H, T, T) array
    rowwise(partial(_causal_softmax_rows, bias=bias), att)  # the batch rows split across cores
    out = batched_matmul(att, v)  # (B, H, T, hd)
    return out, AttentionCache(qs, k, v, att, scale, out)


def attention_backward(dout, cache: AttentionCache, need=("q", "k", "v")):
    """Backward of ``attention_forward``:

        dv = Pᵀ dout                        dP = dout vᵀ
        dS = P ⊙ (dP − rowsum(dP ⊙ P))      (softmax backward; 0 wherever P is masked)
        rowsum(dP ⊙ P)_t = Σ_s (dout_t · v_s) P_ts = dout_t · out_t   (a (T, hd) sum, not (T, T))
        dq = dS k / √hd                     dk = dSᵀ q / √hd

    Inputs:  dout (B, H, T, hd), cache from ``attention_forward``; ``need`` names the
             gradients wanted (a frozen projection with nothing trainable below it needs none:
             each one skipped saves a (B, H, T, T)-sized product)
    Returns: (None, {"q": dq, "k": dk, "v": dv}) restricted to ``need``, each (B, H, T, hd)
    """
    qs, k, v, att, scale, out = cache
    xp = namespace(dout, att)
    dq = dk = dv = None
    if "v" in need:
        dv = batched_matmul(xp.matrix_transpose(att), dout)  # (B, H, T, hd); @ as in the forward
    if "q" in need or "k" in need:
        ds = batched_matmul(dout, xp.matrix_transpose(v))  # (B, H, T, T)  dP, turned into dS in place below
        if out is None:  # a cache built without the output
            rowsum = xp.sum(ds * att, axis=-1, keepdims=True)  # (B, H, T, 1)
        else:  # the same row sums from (T, hd) arrays: no (B, H, T, T) temporary
            rowsum = xp.sum(dout * out, axis=-1, keepdims=True)
        rowwise(_softmax_backward_inplace, ds, rowsum, att)  # dS = P ⊙ (dP − rowsum), in ds
        if "q" in need:
            dq = batched_matmul(ds, k)  # (B, H, T, hd)
            dq *= scale  # in place: no second (B, H, T, hd) buffer
        if "k" in need:
            dk = batched_matmul(xp.matrix_transpose(ds), qs)  # (B, H, T, hd); qs already carries the 1/√hd
    grads = {"q": dq, "k": dk, "v": dv}
    return None, {n: g for n, g in grads.items() if n in need}


def _causal_softmax_rows(s, bias):
    """P = softmax(S + M) over the last axis, in place in s (..., T, T); row by row, for
    ``rowwise``."""
    xp = namespace(s)
    s += bias
    s -= xp.max(s, axis=-1, keepdims=True)  # the diagonal is never masked: every max is finite
    write(s, xp.exp, s)  # exp(−∞) = 0 above the diagonal
    s /= xp.sum(s, axis=-1, keepdims=True)


def _softmax_backward_inplace(ds, rowsum, att):
    """dS = P ⊙ (dP − rowsum) in place in ds (plain in-place operators: any namespace);
    row by row, so ``rowwise`` can give each core a block of (B) rows."""
    ds -= rowsum
    ds *= att
