"""causal_attention: dq, dk, dv of softmax(q kᵀ/√hd + M) v — cases and classic mistakes."""
from __future__ import annotations

import numpy as np

from ...functional.attention import attention_forward as reference_forward  # noqa: F401
from . import Case, Mistake

NAME = "causal_attention"
SUMMARY = "causal attention out = softmax(q kᵀ/√hd + M) v, one or more heads (B, H, T, hd): dq, dk, dv"
FORWARD, BACKWARD = "attention_forward", "attention_backward"
DX = None  # no parameters: the backward returns (None, {"q": dq, "k": dk, "v": dv})
GRADS = ("q", "k", "v")
DOCS = 'docs/transformer.md, section "Causal self-attention"'


def cases():
    """One head; two batch rows of two heads; three heads with hd = 2 — every hd ≠ 1, so a
    missing or doubled 1/√hd shows, and T ≠ hd, so a wrong transpose shows."""
    g = np.random.default_rng(20170612)

    def case(label, B, H, T, hd):
        shape = (B, H, T, hd)
        inputs = dict(q=g.standard_normal(shape), k=g.standard_normal(shape), v=g.standard_normal(shape))
        return Case(label, inputs, g.standard_normal(shape))

    return [
        case("B=1 H=1 T=4 hd=3 (one head)", 1, 1, 4, 3),
        case("B=2 H=2 T=3 hd=4", 2, 2, 3, 4),
        case("B=1 H=3 T=5 hd=2", 1, 3, 5, 2),
    ]


def _T(a):
    return np.swapaxes(a, -1, -2)


def _softmax(S):
    e = np.exp(S - S.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _parts(inputs, dout, masked=True):
    """q, k, v, P, dP = dout vᵀ and c = 1/√hd; P without the causal mask when ``masked`` is False."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    T, hd = q.shape[-2], q.shape[-1]
    c = 1.0 / np.sqrt(hd)
    future = np.arange(T)[None, :] > np.arange(T)[:, None]  # s > t
    S = (q * c) @ _T(k)
    P = _softmax(np.where(future, -np.inf, S) if masked else S)
    return q, k, v, P, dout @ _T(v), c


def _dS(P, dP):
    return P * (dP - (dP * P).sum(axis=-1, keepdims=True))


def scale_forgotten(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    dS = _dS(P, dP)
    return {"q": dS @ k, "k": _T(dS) @ q}


def scale_twice(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    dS = _dS(P, dP)
    return {"q": dS @ k * c * c, "k": _T(dS) @ q * c * c}  # e.g. the cached q/√hd times 1/√hd again


def dk_not_transposed(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    return {"k": _dS(P, dP) @ q * c}


def dq_transposed(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    return {"q": _T(_dS(P, dP)) @ k * c}


def dv_not_transposed(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    return {"v": P @ dout}


def no_rowsum(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    dS = P * dP  # the softmax backward without − rowsum(dP ⊙ P)
    return {"q": dS @ k * c, "k": _T(dS) @ q * c}


def rowsum_wrong_axis(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    dS = P * (dP - (dP * P).sum(axis=-2, keepdims=True))  # summed over t, not s
    return {"q": dS @ k * c, "k": _T(dS) @ q * c}


def no_P_factor(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout)
    dS = dP - (dP * P).sum(axis=-1, keepdims=True)  # not zero above the diagonal
    return {"q": dS @ k * c, "k": _T(dS) @ q * c}


def mask_forgotten(inputs, dout):
    q, k, v, P, dP, c = _parts(inputs, dout, masked=False)  # P recomputed without M
    dS = _dS(P, dP)
    return {"q": dS @ k * c, "k": _T(dS) @ q * c, "v": _T(P) @ dout}


MISTAKES = [
    Mistake("1/√hd forgotten", "the 1/√hd is missing: S = q kᵀ/√hd, so dq = (dS k)/√hd and "
            "dk = (dSᵀ q)/√hd each carry it once", scale_forgotten),
    Mistake("1/√hd applied twice", "the 1/√hd is applied twice: the cache's qs = q/√hd already "
            "carries it (dk = dSᵀ qs needs no second factor)", scale_twice),
    Mistake("dk not transposed", "dk uses dS where dSᵀ belongs: S_ts = q_t · k_s/√hd, so k_s "
            "collects the column s of dS", dk_not_transposed),
    Mistake("dq transposed", "dq uses dSᵀ where dS belongs: S_ts = q_t · k_s/√hd, so q_t collects "
            "the row t of dS", dq_transposed),
    Mistake("dv not transposed", "dv = P dout is missing a transpose: out_t = Σ_s P_ts v_s, so v_s "
            "collects the column s of P (dv = Pᵀ dout)", dv_not_transposed),
    Mistake("softmax backward without the rowsum term", "the softmax backward is missing "
            "− rowsum(dP ⊙ P): every P_ts' of a row depends on every S_ts of it, not only on S_ts'",
            no_rowsum),
    Mistake("rowsum over the wrong axis", "the softmax backward's row sum runs over the wrong axis: "
            "sum dP ⊙ P over s, the last axis (keepdims), one sum per query t", rowsum_wrong_axis),
    Mistake("softmax backward without the P ⊙ factor", "dS is not zero above the diagonal: the "
            "softmax backward is P ⊙ (dP − rowsum(dP ⊙ P)), and the P ⊙ also applies the causal mask",
            no_P_factor),
    Mistake("causal mask not applied", "the causal mask is missing: P and dS must be 0 above the "
            "diagonal (s > t is the future of t) — use the masked P the forward cached", mask_forgotten),
]
