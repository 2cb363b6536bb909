"""Losses: softmax cross-entropy (stable log-sum-exp) and mean squared error.

Each forward returns a scalar loss (a 0-d array of the input's dtype) and a cache; each backward
takes ``dloss`` (a float, usually 1.0) and returns the gradient for the prediction.

``softmax_cross_entropy_forward(logits, targets, ignore_index=IGNORE)`` leaves out the positions
whose target is ``IGNORE`` (−100, PyTorch's ``ignore_index``): the loss on a completion only, its
prompt and padding masked. ``LOSSES["masked_cross_entropy"]`` is that loss, by name, for ``fit``.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .embedding import one_hot


IGNORE = -100  # a target that adds nothing to the loss (with ignore_index=IGNORE)


class CrossEntropyCache(NamedTuple):
    probs: object  # (N, V) softmax(logits)
    onehot: object  # (N, V) one-hot targets
    shape: tuple  # logits' original shape (..., V)
    keep: object = None  # (N, 1) 1 where the target counts, 0 where ignored; None: every one counts


def softmax(z):
    """softmax(z)_i = exp(z_i − max z) / Σ_j exp(z_j − max z)   over the last axis (stable)."""
    xp = namespace(z)
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def log_softmax(logits):
    """log softmax(z)_i = z_i − max z − log Σ_j exp(z_j − max z)   over the last axis."""
    xp = namespace(logits)
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


def softmax_cross_entropy_forward(logits, targets, ignore_index=None):
    """L = −(1/N) Σ_n log softmax(z_n)[y_n]

    With ``ignore_index``: only the kept positions K = {n : y_n ≠ ignore_index} count,
    L = −(1/|K|) Σ_{n∈K} log softmax(z_n)[y_n]  (a ValueError if K is empty).

    Inputs:  logits (..., V) floating, targets (...) integer class ids in [0, V) (or ignore_index)
    Returns: L (0-d array), cache
    """
    if ignore_index is None or not hasattr(targets, "__array_namespace__"):
        checks.cross_entropy_inputs(logits, targets)  # with ignore_index: checked below, once replaced
    xp = namespace(logits, targets)
    V = logits.shape[-1]
    z = xp.reshape(logits, (-1, V))  # (N, V)
    y = xp.reshape(targets, (-1,))  # (N,)
    keep = None
    if ignore_index is not None:
        kept = y != ignore_index  # (N,)
        if not bool(xp.any(kept)):
            raise ValueError(f"softmax_cross_entropy: every target is ignore_index = {ignore_index}; nothing to learn")
        y = xp.where(kept, y, xp.zeros_like(y))  # any valid id; its row is masked out below
        checks.cross_entropy_inputs(logits, xp.reshape(y, tuple(targets.shape)))
        keep = xp.astype(kept, z.dtype)[:, None]  # (N, 1)
    logp = log_softmax(z)  # (N, V)
    onehot = one_hot(y, V, z.dtype)  # (N, V)
    if keep is None:
        N = z.shape[0]
        loss = -xp.sum(logp * onehot) / N
    else:
        loss = -xp.sum(logp * onehot * keep) / xp.sum(keep)  # the mean over the kept rows only
    return loss, CrossEntropyCache(xp.exp(logp), onehot, tuple(logits.shape), keep)


def softmax_cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """dL/dz_n = (softmax(z_n) − onehot(y_n)) / N        (with ignore_index: · keep_n · N / |K|)"""
    probs, onehot, shape, keep = cache
    xp = namespace(probs)
    if keep is None:
        N = probs.shape[0]
        return xp.reshape((probs - onehot) * (dloss / N), shape), {}
    return xp.reshape((probs - onehot) * (keep * (dloss / float(xp.sum(keep)))), shape), {}


def masked_cross_entropy_forward(logits, targets):
    """``softmax_cross_entropy_forward`` with ``ignore_index=IGNORE``: targets −100 add nothing."""
    return softmax_cross_entropy_forward(logits, targets, ignore_index=IGNORE)


class MSECache(NamedTuple):
    diff: object  # (...) pred − target


def mse_forward(pred, target):
    """L = (1/n) Σ (pred − target)²   over all n elements

    Inputs: pred (...), target (...) same shape.  Returns: L (0-d array), cache
    """
    checks.mse_inputs(pred, target)
    xp = namespace(pred, target)
    diff = pred - target
    return xp.sum(diff * diff) / diff.size, MSECache(diff)


def mse_backward(dloss, cache: MSECache):
    """dL/dpred = 2 (pred − target) / n"""
    diff = cache.diff
    return diff * (2.0 * dloss / diff.size), {}


LOSSES = {
    "cross_entropy": (softmax_cross_entropy_forward, softmax_cross_entropy_backward),
    "masked_cross_entropy": (masked_cross_entropy_forward, softmax_cross_entropy_backward),
    "mse": (mse_forward, mse_backward),
}
