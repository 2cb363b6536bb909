"""Grouped-query attention (Ainslie et al., 2023): H query heads share Hkv key/value heads.

    n_rep = H / Hkv,      k̃ = repeat_kv(k),  ṽ = repeat_kv(v)      (B, Hkv, T, hd) -> (B, H, T, hd)
    out = softmax(q k̃ᵀ / √hd + M) ṽ

Query head j reads key/value head j // n_rep (HF transformers' ``repeat_kv``): n_rep consecutive
query heads form a group around one kv head. The attention itself is ``attention_forward`` of
``functional/attention.py`` on the repeated k̃, ṽ; the backward runs attention's backward, then
repeat_kv's, which adds up the n_rep copies. Multi-head attention is n_rep = 1, multi-query
attention is Hkv = 1.

Convention: three array inputs and no parameters, so the backward returns
``(None, {"q": dq, "k": dk, "v": dv})`` with dk, dv of k's and v's own shape (B, Hkv, T, hd).
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .attention import AttentionCache, attention_backward, attention_forward

ALL = ("q", "k", "v")  # the gradients gqa_attention_backward can return


class RepeatKVCache(NamedTuple):
    n_rep: int  # copies of each kv head
    shape: tuple  # (B, Hkv, T, hd)  the input's shape


def repeat_kv_forward(k, n_rep: int):
    """k̃[:, j] = k[:, j // n_rep]      (each kv head written n_rep times, consecutively)

    Inputs:  k (B, Hkv, T, hd), n_rep >= 1
    Returns: k̃ (B, Hkv · n_rep, T, hd) (k itself when n_rep = 1), cache
    """
    checks.repeat_kv_inputs(k, n_rep)
    xp = namespace(k)
    B, Hkv, T, hd = k.shape
    cache = RepeatKVCache(n_rep, (B, Hkv, T, hd))
    if n_rep == 1:
        return k, cache
    k5 = xp.broadcast_to(k[:, :, None, :, :], (B, Hkv, n_rep, T, hd))  # (B, Hkv, n_rep, T, hd)
    return xp.reshape(k5, (B, Hkv * n_rep, T, hd)), cache  # (B, H, T, hd)  one copy


def repeat_kv_backward(dout, cache: RepeatKVCache):
    """dk[:, j] = Σ_{r < n_rep} dout[:, j · n_rep + r]      (a copied input adds its gradients)

    Inputs:  dout (B, H, T, hd), cache from ``repeat_kv_forward``
    Returns: dk (B, Hkv, T, hd), {} (no parameters)
    """
    n_rep, (B, Hkv, T, hd) = cache
    if n_rep == 1:
        return dout, {}
    xp = namespace(dout)
    dout5 = xp.reshape(dout, (B, Hkv, n_rep, T, hd))  # (B, Hkv, n_rep, T, hd)
    return xp.sum(dout5, axis=2), {}  # (B, Hkv, T, hd)


class GQACache(NamedTuple):
    attention: AttentionCache  # attention on q and the repeated k̃, ṽ (holds P (B, H, T, T))
    repeat_k: RepeatKVCache
    repeat_v: RepeatKVCache


def gqa_attention_forward(q, k, v):
    """out = softmax(q repeat_kv(k)ᵀ / √hd + M) repeat_kv(v)      (causal mask M)

    Inputs:  q (B, H, T, hd), k and v (B, Hkv, T, hd), H a multiple of Hkv
    Returns: out (B, H, T, hd), cache
    """
    checks.gqa_inputs(q, k, v)
    n_rep = q.shape[1] // k.shape[1]
    k_rep, repeat_k = repeat_kv_forward(k, n_rep)  # (B, H, T, hd)
    v_rep, repeat_v = repeat_kv_forward(v, n_rep)  # (B, H, T, hd)
    out, attention = attention_forward(q, k_rep, v_rep)  # (B, H, T, hd)
    return out, GQACache(attention, repeat_k, repeat_v)


def gqa_attention_backward(dout, cache: GQACache, need=ALL):
    """Backward of ``gqa_attention_forward``: attention's backward, then repeat_kv's

        dq, dk̃, dṽ = attention_backward(dout)          each (B, H, T, hd)
        dk = Σ_group dk̃,   dv = Σ_group dṽ             each (B, Hkv, T, hd)

    Inputs:  dout (B, H, T, hd), cache from ``gqa_attention_forward``; ``need`` names the
             gradients wanted, among "q", "k", "v"
    Returns: (None, {"q": dq, "k": dk, "v": dv}) restricted to ``need``
    """
    attention, repeat_k, repeat_v = cache
    _, grads = attention_backward(dout, attention, need)  # {"q", "k", "v"}: (B, H, T, hd)
    if "k" in grads:
        grads["k"] = repeat_kv_backward(grads["k"], repeat_k)[0]  # (B, Hkv, T, hd)
    if "v" in grads:
        grads["v"] = repeat_kv_backward(grads["v"], repeat_v)[0]  # (B, Hkv, T, hd)
    return None, grads
