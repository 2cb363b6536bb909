"""LoRA on a token embedding (Hu et al., 2021; loralib's and PEFT's ``Embedding``): a frozen table E
plus a low-rank update ΔE = scale · (B A)ᵀ, looked up row by row.

    h = E[ids] + scale · (Aᵀ[ids]) Bᵀ          E (V, C), A (r, V), B (C, r), scale = alpha / r

PEFT's layout: an embedding maps a one-hot vector of length V (its d_in) to C numbers (its d_out),
so A is (r, V) and B is (C, r), as for a linear layer, and ΔW = B A is (C, V) — the transpose of
E's (V, C). Looking up id v reads column v of A: u = Aᵀ[ids] is a gather, then u Bᵀ is a product.
The unmerged path never builds B A (V·C numbers); it costs r·C per id.

The backward through the gather is a scatter-add: every occurrence of an id adds to that id's
column of A (and row of E when E trains). As in ``embedding.py``, the array API has no
scatter-add, so it is a product with the one-hot matrix of the ids, onehot (N, V)::

    dA = duᵀ onehot(ids)        dA[:, v] = Σ_{n : ids_n = v} du_n        (r, N) (N, V)

PEFT applies no dropout on this path (its ``lora_dropout`` is built but never called in
``Embedding.forward``), so neither does this pair.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .embedding import one_hot

ALL = ("E", "A", "B")  # the gradients lora_embedding_backward can return (ids have none)


class LoRAEmbeddingCache(NamedTuple):
    ids: object  # (N,)  flattened ids
    shape: tuple  # ids' original shape (...)
    u: object  # (N, r)  u = Aᵀ[ids], the gathered columns of A
    E: object  # (V, C)  the table (frozen or not)
    A: object  # (r, V)
    B: object  # (C, r)
    scale: float


def lora_embedding_forward(ids, E, A, B, scale: float, layer: str = "lora_embedding"):
    """h = E[ids] + scale · (Aᵀ[ids]) Bᵀ

    Inputs:  ids (...) integers in [0, V), E (V, C), A (r, V), B (C, r), scale (float)
    Returns: h (..., C), cache
    """
    checks.lora_embedding_inputs(layer, ids, E, A, B)
    xp = namespace(ids, E)
    C = E.shape[1]
    flat = xp.reshape(ids, (-1,))  # (N,)
    e = xp.take(E, flat, axis=0)  # (N, C)  the frozen lookup: rows of E
    u = xp.take(A, flat, axis=1).T  # (N, r)  the low-rank code: columns of A
    h = e + (scale * u) @ B.T  # (N, C)
    return xp.reshape(h, (*ids.shape, C)), LoRAEmbeddingCache(flat, tuple(ids.shape), u, E, A, B, scale)


def lora_embedding_backward(dout, cache: LoRAEmbeddingCache, need=ALL):
    """Backward of ``lora_embedding_forward`` (repeated ids add up; no gradient for ids):

        dB = scale · doutᵀ u            (C, r)
        du = scale · dout B             (N, r)
        dA = duᵀ onehot(ids)            (r, V)    dA[:, v] = Σ_{n : ids_n = v} du_n
        dE = onehot(ids)ᵀ dout          (V, C)    only when E trains

    Inputs:  dout (..., C), cache from ``lora_embedding_forward``; ``need`` names the gradients
             wanted, among "E", "A", "B" (an "x" in it is ignored: integer ids have no gradient)
    Returns: None, grads {"E": dE, "A": dA, "B": dB} restricted to ``need``
    """
    ids, _, u, E, A, B, scale = cache
    xp = namespace(dout, ids)
    V, C = E.shape
    dout2 = xp.reshape(dout, (-1, C))  # (N, C)
    grads = {}
    if "B" in need:
        grads["B"] = scale * (dout2.T @ u)  # (C, r)
    if "A" in need or "E" in need:
        onehot = one_hot(ids, V, dout.dtype)  # (N, V)  row n is 1 at column ids_n
        if "A" in need:
            du = dout2 @ (scale * B)  # (N, r)
            grads["A"] = du.T @ onehot  # (r, V)  the scatter-add of du into A's columns
        if "E" in need:
            grads["E"] = onehot.T @ dout2  # (V, C)
    return None, grads


def lora_embedding_delta(A, B, scale: float):
    """ΔE = scale · (B A)ᵀ   (V, C) — E's shape; only for merging and analysis, never in the forward."""
    return (scale * (B @ A)).T
