"""Exercise causal_attention: the backward of causal scaled dot-product attention, by hand.

    S = q kᵀ / √hd + M,     M_ts = 0 if s ≤ t else −∞      (position t sees only s ≤ t)
    P = softmax(S)  (each row, over s),     out = P v

q, k, v are (B, H, T, hd): batch, heads, time, head size; every (batch, head) pair is its own
attention and ``@`` runs them all at once. The forward below is complete: read it, keep it, and
use what its cache holds. Your job is ``attention_backward``: dq, dk and dv.

    write:   attention_backward, below
    grade:   minilora exercise grade causal_attention.py
    read:    docs/transformer.md, section "Causal self-attention" (after you have tried)

Rules: this file imports numpy (and the standard library's math, typing) only. The grader refuses
a file that imports minilora, torch, importlib, or calls __import__ / exec / eval.
"""
import math
from typing import NamedTuple

import numpy as np

EXERCISE = "causal_attention"  # the grader reads this line to know which exercise the file is


class AttentionCache(NamedTuple):
    qs: np.ndarray  # (B, H, T, hd)  q / √hd
    k: np.ndarray  # (B, H, T, hd)
    v: np.ndarray  # (B, H, T, hd)
    att: np.ndarray  # (B, H, T, T)   P = softmax(S); exactly 0 above the diagonal
    scale: float  # 1 / √hd


def softmax(S):
    """softmax over the last axis, stable: exp(S − max S) / Σ exp(S − max S)."""
    e = np.exp(S - np.max(S, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def causal_bias(T):
    """M (T, T): 0 on and below the diagonal, −∞ above it (s > t is the future of t)."""
    t = np.arange(T)
    return np.where(t[:, None] >= t[None, :], 0.0, -np.inf)


def attention_forward(q, k, v):
    """out = softmax(q kᵀ / √hd + M) v      (causal mask M)

    Inputs:  q, k, v (B, H, T, hd)
    Returns: out (B, H, T, hd), cache
    """
    T, hd = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(hd)
    qs = q * scale  # (B, H, T, hd)
    S = qs @ np.swapaxes(k, -1, -2) + causal_bias(T)  # (B, H, T, T)
    P = softmax(S)  # (B, H, T, T)   exp(−∞) = 0 above the diagonal
    out = P @ v  # (B, H, T, hd)
    return out, AttentionCache(qs, k, v, P, scale)


def attention_backward(dout, cache):
    """Backward of ``attention_forward``: the gradients of the loss L for q, k and v.

    Inputs:  dout (B, H, T, hd) = ∂L/∂out;  cache from ``attention_forward``
    Returns: None,  {"q": dq, "k": dk, "v": dv}, each (B, H, T, hd)
             (no parameters: the three input gradients go in the dict, None stands for dx)

    Derive them in the reverse order of the forward (P, S: (B, H, T, T)):

        out = P v                → dv = ∂L/∂v and dP = ∂L/∂P        (two matrix products)
        P_t = softmax(S_t)       → dS = ∂L/∂S: every P_ts' of row t depends on every S_ts of that row
        S = q kᵀ / √hd + M       → dq, dk  (M is a constant; where is the 1/√hd?)

    ``np.swapaxes(a, -1, -2)`` transposes the last two axes of a 4-D array.
    """
    qs, k, v, P, scale = cache
    # --- solution: dv, dP, dS, dq and dk ---
    dv = np.swapaxes(P, -1, -2) @ dout  # (B, H, T, hd)
    dP = dout @ np.swapaxes(v, -1, -2)  # (B, H, T, T)
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))  # (B, H, T, T)  0 where P is masked
    dq = (dS @ k) * scale  # (B, H, T, hd)
    dk = np.swapaxes(dS, -1, -2) @ qs  # (B, H, T, hd)  qs carries the 1/√hd
    # --- end of solution ---
    return None, {"q": dq, "k": dk, "v": dv}
