"""Losses: softmax cross-entropy (stable log-sum-exp) and mean squared error.

Each forward returns a scalar loss (a 0-d array of the input's dtype) and a cache; each backward
takes ``dloss`` (a float, usually 1.0) and returns the gradient for the prediction.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .embedding import one_hot


class CrossEntropyCache(NamedTuple):
    probs: object  # (N, V) softmax(logits)
    onehot: object  # (N, V) one-hot targets
    shape: tuple  # logits' original shape (..., V)


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


def softmax_cross_entropy_forward(logits, targets):
    """L = −(1/N) Σ_n log softmax(z_n)[y_n]

    Inputs:  logits (..., V) floating, targets (...) integer class ids in [0, V)
    Returns: L (0-d array), cache
    """
    checks.cross_entropy_inputs(logits, targets)
    xp = namespace(logits, targets)
    V = logits.shape[-1]
    z = xp.reshape(logits, (-1, V))  # (N, V)
    y = xp.reshape(targets, (-1,))  # (N,)
    logp = log_softmax(z)  # (N, V)
    onehot = one_hot(y, V, z.dtype)  # (N, V)
    N = z.shape[0]
    loss = -xp.sum(logp * onehot) / N
    return loss, CrossEntropyCache(xp.exp(logp), onehot, tuple(logits.shape))


def softmax_cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """dL/dz_n = (softmax(z_n) − onehot(y_n)) / N"""
    probs, onehot, shape = cache
    xp = namespace(probs)
    N = probs.shape[0]
    return xp.reshape((probs - onehot) * (dloss / N), shape), {}


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
    "mse": (mse_forward, mse_backward),
}
