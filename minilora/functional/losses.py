"""Losses: softmax cross-entropy (stable log-sum-exp) and mean squared error.

Each forward returns a scalar loss (a 0-d array of the input's dtype) and a cache; each backward
takes ``dloss`` (a float, usually 1.0) and returns the gradient for the prediction.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import check_float, dtype_name, namespace
from .embedding import one_hot


class CrossEntropyCache(NamedTuple):
    probs: object  # (N, V) softmax(logits)
    onehot: object  # (N, V) one-hot targets
    shape: tuple  # logits' original shape (..., V)


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
    check_float("logits", logits, "softmax_cross_entropy")
    xp = namespace(logits, targets)
    if "int" not in dtype_name(targets):
        raise TypeError(
            f"softmax_cross_entropy: targets must be integer class ids, got dtype "
            f"{dtype_name(targets)}"
        )
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"softmax_cross_entropy: logits {tuple(logits.shape)} need targets of shape "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    V = logits.shape[-1]
    z = xp.reshape(logits, (-1, V))  # (N, V)
    y = xp.reshape(targets, (-1,))  # (N,)
    if y.shape[0] and (int(xp.min(y)) < 0 or int(xp.max(y)) >= V):
        raise ValueError(
            f"softmax_cross_entropy: target ids must lie in [0, {V}), got range "
            f"[{int(xp.min(y))}, {int(xp.max(y))}]"
        )
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
    check_float("pred", pred, "mse")
    check_float("target", target, "mse")
    xp = namespace(pred, target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape"
        )
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
