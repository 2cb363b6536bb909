"""Embedding lookups: token embeddings (a row of W per id) and learned position embeddings.

    token:     out[b, t] = W[ids[b, t]]                       W (V, C)
    position:  out[t]    = P[t],   t = 0 … T−1                P (n_ctx, C)

The token backward must add up the gradients of every occurrence of an id. The array API has no
scatter-add, so it is a matrix product with the one-hot matrix of the ids::

    dW = onehot(ids)ᵀ · dout         (V, N) · (N, C),   N = number of ids

This costs N·V·C multiply-adds and an (N, V) temporary: cheap for a character vocabulary
(V ≈ 100, about as much work as the language-model head's own dW), wasteful for V = 50k, where
a scatter-add (``np.add.at`` / ``cupyx.scatter_add``) would be the tool.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from ..checks import check_ids  # noqa: F401  (where older code imported it from)


class EmbeddingCache(NamedTuple):
    ids: object  # (N,)  flattened ids
    V: int  # vocabulary size (rows of W)
    shape: tuple  # ids' original shape (...)


def embedding_forward(ids, W):
    """out = W[ids]

    Inputs:  ids (...) integers in [0, V), W (V, C)
    Returns: out (..., C), cache
    """
    checks.embedding_inputs(ids, W)
    V, C = W.shape
    xp = namespace(ids, W)
    flat = xp.reshape(ids, (-1,))  # (N,)
    out = xp.take(W, flat, axis=0)  # (N, C)
    return xp.reshape(out, (*ids.shape, C)), EmbeddingCache(flat, V, tuple(ids.shape))


def one_hot(ids, V: int, dtype):
    """onehot (N, V): row n is 1 at column ids[n], 0 elsewhere.  ids (N,) integers in [0, V).

    The comparison runs in int64 so that narrow id dtypes (uint8 with V > 256) cannot wrap.
    """
    xp = namespace(ids)
    wide = xp.astype(ids, xp.int64)
    return xp.astype(wide[:, None] == xp.arange(V, dtype=xp.int64)[None, :], dtype)


def embedding_backward(dout, cache: EmbeddingCache):
    """dW = onehot(ids)ᵀ dout   (repeated ids add up); no dx for integer ids.

    Inputs:  dout (..., C), cache from ``embedding_forward``
    Returns: None, grads {"W": (V, C)}
    """
    ids, V, _ = cache
    xp = namespace(dout, ids)
    C = dout.shape[-1]
    onehot = one_hot(ids, V, dout.dtype)  # (N, V)
    return None, {"W": xp.matrix_transpose(onehot) @ xp.reshape(dout, (-1, C))}


class PositionCache(NamedTuple):
    n_ctx: int  # rows of P
    T: int  # positions used


def position_forward(P, T: int):
    """out = P[0:T]    (a view; it broadcasts over the batch when added to (B, T, C))

    Inputs:  P (n_ctx, C), T <= n_ctx
    Returns: out (T, C), cache
    """
    checks.position_inputs(P, T)
    T = int(T)
    return P[:T, :], PositionCache(P.shape[0], T)


def position_backward(dout, cache: PositionCache):
    """dP[t] = Σ_batch dout[…, t, :] for t < T, 0 for the unused rows t >= T.

    Inputs:  dout (..., T, C), cache from ``position_forward``
    Returns: None, grads {"P": (n_ctx, C)}
    """
    n_ctx, T = cache
    xp = namespace(dout)
    C = dout.shape[-1]
    dP = xp.sum(xp.reshape(dout, (-1, T, C)), axis=0)  # (T, C)
    if T < n_ctx:
        dP = xp.concat([dP, xp.zeros((n_ctx - T, C), dtype=dout.dtype)], axis=0)  # (n_ctx, C)
    return None, {"P": dP}
