"""Fast causal attention: ``functional/attention.py`` with the (B, H, T, T) work in place and
split across cores.

- S is computed once and turned into P in place (no second (B, H, T, T) array), row blocks of
  the batch axis on every core (``rowwise``);
- the (B, H) stacks of small products run as ``batched_matmul`` (each core one-thread BLAS);
- the softmax backward's row sums come from (T, hd) arrays, not (T, T) ones:
  rowsum(dP ⊙ P)_t = Σ_s (dout_t · v_s) P_ts = dout_t · out_t.
"""
from __future__ import annotations

import math
from functools import partial

from .. import checks
from ..backend import namespace
from ..functional.attention import ALL, AttentionCache, causal_bias
from .runtime import batched_matmul, rowwise, write


def attention_forward(q, k, v):
    """out = softmax(q kᵀ / √hd + M) v   (``functional.attention.attention_forward``)"""
    checks.attention_inputs(q, k, v)
    xp = namespace(q, k, v)
    T, hd = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(hd)
    qs = q * scale
    P = batched_matmul(qs, xp.matrix_transpose(k))  # S, turned into P in place
    rowwise(partial(_causal_softmax_rows, bias=causal_bias(T, xp, q.dtype)), P)
    out = batched_matmul(P, v)
    return out, AttentionCache(qs, k, v, P, scale, out)


def attention_backward(dout, cache: AttentionCache, need=ALL):
    """``functional.attention.attention_backward``, dS built in dP's buffer."""
    qs, k, v, P, scale, out = cache
    xp = namespace(dout, P)
    grads = {}
    if "v" in need:
        grads["v"] = batched_matmul(xp.matrix_transpose(P), dout)
    if "q" in need or "k" in need:
        dS = batched_matmul(dout, xp.matrix_transpose(v))  # dP, turned into dS in place
        if out is None:  # a cache built without the output
            rowsum = xp.sum(dS * P, axis=-1, keepdims=True)
        else:
            rowsum = xp.sum(dout * out, axis=-1, keepdims=True)
        rowwise(_softmax_backward_rows, dS, rowsum, P)
        if "q" in need:
            dq = batched_matmul(dS, k)
            dq *= scale
            grads["q"] = dq
        if "k" in need:
            grads["k"] = batched_matmul(xp.matrix_transpose(dS), qs)
    return None, {n: grads[n] for n in ALL if n in grads}


def _causal_softmax_rows(s, bias):
    """P = softmax(S + M) over the last axis, in place in s (..., T, T); row by row."""
    xp = namespace(s)
    s += bias
    s -= xp.max(s, axis=-1, keepdims=True)  # the diagonal is never masked: every max is finite
    write(s, xp.exp, s)  # exp(−∞) = 0 above the diagonal
    s /= xp.sum(s, axis=-1, keepdims=True)


def _softmax_backward_rows(ds, rowsum, P):
    """dS = P ⊙ (dP − rowsum) in place in ds; row by row."""
    ds -= rowsum
    ds *= P
