"""Exercise softmax_cross_entropy: the gradient of the mean cross-entropy for the logits, by hand.

    p_n = softmax(z_n),    L = −(1/N) Σ_n log p_n[y_n]          (N = number of predictions)

logits z (..., V) may be (N, V) or (B, T, V) — then N = B·T, every position is one prediction.
The forward below is complete: read it, keep it, and use what its cache holds. Your job is
``softmax_cross_entropy_backward``: dlogits.

    write:   softmax_cross_entropy_backward, below
    grade:   minilora exercise grade softmax_cross_entropy.py
    read:    docs/exercises.md, section "softmax_cross_entropy" (after you have tried)

Rules: this file imports numpy (and the standard library's math, typing) only. The grader refuses
a file that imports minilora, torch, importlib, or calls __import__ / exec / eval.
"""
from typing import NamedTuple

import numpy as np

EXERCISE = "softmax_cross_entropy"  # the grader reads this line to know which exercise the file is


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V)  p = softmax(z), one row per prediction
    onehot: np.ndarray  # (N, V)  1 at the target class, 0 elsewhere
    shape: tuple  # the logits' own shape (..., V)


def softmax_cross_entropy_forward(logits, targets):
    """L = −(1/N) Σ_n log softmax(z_n)[y_n]      (stable: the row max is subtracted first)

    Inputs:  logits (..., V) floating, targets (...) integer class ids in [0, V)
    Returns: L (a 0-d array), cache
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1)  # (N,)
    z = z - np.max(z, axis=-1, keepdims=True)  # softmax(z) = softmax(z − max z): no overflow
    logp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))  # (N, V)  log softmax
    onehot = np.eye(V, dtype=logits.dtype)[y]  # (N, V)
    N = z.shape[0]
    loss = -np.sum(logp * onehot) / N
    return loss, CrossEntropyCache(np.exp(logp), onehot, logits.shape)


def softmax_cross_entropy_backward(dloss, cache):
    """Backward of ``softmax_cross_entropy_forward``: the gradient for the logits.

    Inputs:  dloss (a float) = ∂(final loss)/∂L, often 1.0 but not always;  cache from the forward
    Returns: dlogits (..., V) — the logits' own shape —,  {} (no parameters)

    Derive it for one row first (log p_j = z_j − log Σ_k exp z_k):

        ∂(−log p_y)/∂z_j = ?        then L averages the rows: what does the 1/N do?
        and the chain rule multiplies by dloss.
    """
    probs, onehot, shape = cache
    # --- solution: dlogits ---
    N = probs.shape[0]
    dlogits = (probs - onehot) * (dloss / N)  # (N, V)
    dlogits = dlogits.reshape(shape)  # (..., V)
    # --- end of solution ---
    return dlogits, {}
