"""softmax_cross_entropy: dlogits of L = −(1/N) Σ log softmax(z_n)[y_n] — cases and classic mistakes."""
from __future__ import annotations

import numpy as np

from ...functional.losses import softmax_cross_entropy_forward as reference_forward  # noqa: F401
from . import Case, Mistake

NAME = "softmax_cross_entropy"
SUMMARY = "mean softmax cross-entropy L = −(1/N) Σ log softmax(z_n)[y_n] ((N, V) and (B, T, V)): dlogits"
FORWARD, BACKWARD = "softmax_cross_entropy_forward", "softmax_cross_entropy_backward"
DX = "logits"
GRADS = ("logits",)
DOCS = 'docs/exercises.md, section "softmax_cross_entropy"'


def cases():
    """Peaked and flat rows, an upstream dloss ≠ 1 (the loss may itself be scaled), and a
    (B, T, V) input where N = B·T, not B."""
    g = np.random.default_rng(19890101)

    def case(label, shape, dloss):
        inputs = dict(logits=3.0 * g.standard_normal(shape), targets=g.integers(0, shape[-1], shape[:-1]))
        return Case(label, inputs, dloss)

    return [
        case("logits (5, 4), dloss = 1", (5, 4), 1.0),
        case("logits (6, 7), dloss = 0.37", (6, 7), 0.37),
        case("logits (2, 3, 5) = (B, T, V): N = 6 predictions, dloss = 1.7", (2, 3, 5), 1.7),
    ]


def _parts(inputs):
    """p, the one-hot targets (both (N, V)), log p, N, V and the logits' shape."""
    z = inputs["logits"]
    V = z.shape[-1]
    z2 = z.reshape(-1, V)
    logp = z2 - z2.max(axis=-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    onehot = np.eye(V)[inputs["targets"].reshape(-1)]
    return np.exp(logp), onehot, logp, z2.shape[0], V, z.shape


def not_divided_by_N(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((p - y) * dloss).reshape(shape)}


def divided_by_B(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((p - y) * dloss / shape[0]).reshape(shape)}


def one_hot_not_subtracted(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": (p * dloss / N).reshape(shape)}


def dloss_ignored(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((p - y) / N).reshape(shape)}


def sign_flipped(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((y - p) * dloss / N).reshape(shape)}


def divided_by_N_times_V(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((p - y) * dloss / (N * V)).reshape(shape)}


def log_probabilities(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": ((logp - y) * dloss / N).reshape(shape)}


def not_reshaped(inputs, dloss):
    p, y, logp, N, V, shape = _parts(inputs)
    return {"logits": (p - y) * dloss / N}  # (N, V) for a (B, T, V) input


MISTAKES = [
    Mistake("not divided by N", "the gradient is not divided by N: L is the mean over the N "
            "predictions, so every row's gradient carries 1/N", not_divided_by_N),
    Mistake("divided by B, not N = B·T", "divided by the batch size B = logits.shape[0], but the "
            "loss averages over all N = B·T predictions (the rows of the cache's probs)", divided_by_B),
    Mistake("one-hot not subtracted", "the one-hot target is not subtracted: ∂(−log p_y)/∂z_j = "
            "p_j − [j = y], and the − [j = y] comes from the −z_y in −log p_y", one_hot_not_subtracted),
    Mistake("dloss ignored", "dloss is ignored: the chain rule multiplies the whole gradient by the "
            "upstream dloss (it is not always 1)", dloss_ignored),
    Mistake("sign flipped", "the sign is flipped: the gradient is p − onehot (raising the target's "
            "logit lowers the loss)", sign_flipped),
    Mistake("divided by N·V", "divided by N·V, every entry of the logits; the loss averages over the "
            "N predictions only", divided_by_N_times_V),
    Mistake("log-probabilities for probabilities", "the gradient uses log p where the probabilities "
            "p = softmax(z) belong (the cache keeps p)", log_probabilities),
    Mistake("not reshaped", "dlogits must have the logits' own shape (..., V): reshape the (N, V) "
            "gradient back (the cache keeps the shape)", not_reshaped),
]
