"""Input checks, out of the way of the math: one validator per idea.

Each forward in ``functional/`` opens with one call to a ``*_inputs`` function below, so the first
screen of every pair file is its equation. The messages name the layer, the argument and the
shapes or values; every check raises before anything is computed or changed.

Numbers: every real integer type counts as an int (``numbers.Integral``: ``int``, ``np.int64``)
and every real number type as a number (``numbers.Real``: ``float``, ``np.float32``), but never
``bool``; a number that must be finite is checked to be.
"""
from __future__ import annotations

import math
import numbers

from .backend import FLOAT_DTYPES, dtype_name, namespace

# ----------------------------------------------------------------------------- numbers


def is_int(v) -> bool:
    """True for any real integer (``int``, ``np.int64``, ...) that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """True for any real number (``float``, ``int``, ``np.float32``, ...) that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def positive_int(owner: str, name: str, v) -> int:
    """``int(v)``, or ``ValueError`` naming ``owner`` and ``name`` unless ``v`` is an int >= 1."""
    if not is_int(v) or v < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")
    return int(v)


def finite_number(owner: str, name: str, v, positive: bool = False) -> float:
    """``float(v)``, or ``ValueError`` unless ``v`` is a finite real number (and > 0 if asked)."""
    if not is_number(v) or not math.isfinite(v) or (positive and not v > 0):
        what = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{owner}: {name} must be {what}, got {v!r}")
    return float(v)


def in_range(owner: str, name: str, v, lo: float, hi: float) -> float:
    """``float(v)``, or ``ValueError`` unless ``v`` is a real number with lo <= v < hi."""
    if not is_number(v) or not lo <= v < hi:
        raise ValueError(f"{owner}: {name} must lie in [{lo:g}, {hi:g}), got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- arrays


def check_float(name: str, x, layer: str) -> str:
    """Raise ``TypeError`` unless ``x`` is a real floating array (float16/32/64); returns its
    dtype's name."""
    if not hasattr(x, "__array_namespace__"):
        raise TypeError(f"{layer}: argument '{name}' must be an array, got {type(x).__name__}")
    dtype = dtype_name(x)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{layer}: argument '{name}' must be a floating array (float16/32/64), "
            f"got dtype {dtype} with shape {tuple(x.shape)}"
        )
    return dtype


def check_same_dtype(layer: str, **arrays) -> None:
    """Raise ``TypeError`` if the named arrays do not share one dtype (no silent upcasts)."""
    _same_dtype(layer, {k: dtype_name(v) for k, v in arrays.items() if v is not None})


def _same_dtype(layer: str, named: dict) -> None:
    if len(set(named.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in named.items())
        raise TypeError(f"{layer}: arrays must share one dtype, got {desc}")


def floats(layer: str, **arrays) -> None:
    """Every named array (``None`` skipped) is floating, and they share one dtype and backend."""
    named = {k: check_float(k, a, layer) for k, a in arrays.items() if a is not None}
    _same_dtype(layer, named)
    namespace(*arrays.values())  # raises if the arrays come from two backends


def check_ids(ids, V: int, layer: str = "embedding", name: str = "ids") -> None:
    """Raise ``TypeError`` unless ``ids`` is an integer array, ``ValueError`` unless 0 <= ids < V."""
    if not hasattr(ids, "__array_namespace__"):
        raise TypeError(f"{layer}: argument '{name}' must be an integer array, got {type(ids).__name__}")
    if "int" not in dtype_name(ids):
        raise TypeError(
            f"{layer}: argument '{name}' must be an integer array of token ids, got dtype "
            f"{dtype_name(ids)} with shape {tuple(ids.shape)}"
        )
    if ids.size:
        xp = ids.__array_namespace__()
        lo, hi = int(xp.min(ids)), int(xp.max(ids))  # one device sync per call
        if lo < 0 or hi >= V:
            raise ValueError(
                f"{layer}: token ids in '{name}' must lie in [0, {V}) (the vocabulary size), "
                f"got values in [{lo}, {hi}]"
            )


def check_dout(layer: str, dout, expected_shape) -> None:
    """Raise ``ValueError`` unless the upstream gradient has the forward output's shape."""
    if not hasattr(dout, "shape") or tuple(dout.shape) != tuple(expected_shape):
        got = tuple(dout.shape) if hasattr(dout, "shape") else type(dout).__name__
        raise ValueError(
            f"{layer}: backward got dout of shape {got}, expected the forward output's shape "
            f"{tuple(expected_shape)}"
        )


# ----------------------------------------------------------------------------- one per pair


def linear_inputs(layer: str, x, W, b, **more) -> None:
    """y = x Wᵀ + b needs x (..., d_in), W (d_out, d_in), b (d_out,) or None, one dtype (shared
    with the arrays in ``more``)."""
    floats(layer, x=x, W=W, b=b, **more)
    if W.ndim != 2:
        raise ValueError(f"{layer}: W must be 2-D (d_out, d_in), got shape {tuple(W.shape)}")
    if x.ndim < 1 or x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"{layer}: x has shape {tuple(x.shape)} but W has shape {tuple(W.shape)}; "
            f"x's last axis must equal d_in = {W.shape[1]}"
        )
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(
            f"{layer}: b has shape {tuple(b.shape)}, expected (d_out,) = ({W.shape[0]},)"
        )


def lora_inputs(layer: str, x, W, b, A, B, mask) -> None:
    """The linear's checks, plus A (r, d_in), B (d_out, r) with one r and a mask shaped like x."""
    linear_inputs(layer, x, W, b, A=A, B=B, mask=mask)
    d_out, d_in = W.shape
    r = A.shape[0] if A.ndim else None
    if A.ndim != 2 or tuple(A.shape) != (r, d_in) or tuple(B.shape) != (d_out, r):
        raise ValueError(
            f"{layer}: expected A (r, d_in) = (r, {d_in}) and B (d_out, r) = ({d_out}, r) with "
            f"one r, got A {tuple(A.shape)} and B {tuple(B.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(x.shape):
        raise ValueError(
            f"{layer}: dropout mask has shape {tuple(mask.shape)}, expected x's {tuple(x.shape)}"
        )


def dora_inputs(layer: str, x, W, b, A, B, m, mask) -> None:
    """The LoRA checks, plus the magnitude m (d_out,) of the same dtype."""
    lora_inputs(layer, x, W, b, A, B, mask)
    floats(layer, x=x, m=m)
    if tuple(m.shape) != (W.shape[0],):
        raise ValueError(f"{layer}: magnitude m has shape {tuple(m.shape)}, expected (d_out,) = ({W.shape[0]},)")


def check_lora(layer: str, d_in: int, d_out: int, r, alpha) -> None:
    """Rank and alpha for a layer of shape (d_out, d_in): 1 <= r <= min(d_in, d_out), alpha > 0."""
    if not is_int(r):
        raise TypeError(f"{layer}: r must be an int, got {r!r}")
    if not 1 <= r <= min(d_in, d_out):
        raise ValueError(
            f"{layer}: r = {r} must satisfy 1 <= r <= min(d_in, d_out) = "
            f"min({d_in}, {d_out}) = {min(d_in, d_out)}"
        )
    if not is_number(alpha) or not math.isfinite(alpha) or not alpha > 0:
        raise ValueError(f"{layer}: alpha must be a positive number (finite), got {alpha!r}")


ADAPTER_INITS = ("gaussian", "kaiming_uniform", "pissa", "olora")  # the last two read W (nn/lora.py)


def check_adapter_options(layer: str, dropout=0.0, init="gaussian", name="default") -> None:
    """Raise ``ValueError`` naming ``layer`` for a bad dropout, init or adapter name."""
    if not is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{layer}: dropout must lie in [0, 1), got {dropout!r}")
    if init not in ADAPTER_INITS:
        raise ValueError(f"{layer}: init must be one of {ADAPTER_INITS}, got {init!r}")
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{layer}: adapter name must be a non-empty string without dots, got {name!r}")


def layernorm_inputs(x, gamma, beta, eps) -> None:
    """x (..., C), gamma and beta (C,), one dtype, eps > 0."""
    floats("layernorm", x=x, gamma=gamma, beta=beta)
    C = x.shape[-1] if x.ndim else None
    if tuple(gamma.shape) != (C,) or tuple(beta.shape) != (C,):
        raise ValueError(
            f"layernorm: x has shape {tuple(x.shape)}, so gamma and beta must have shape ({C},); "
            f"got gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)}"
        )
    if not is_number(eps) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"layernorm: eps must be a positive finite number, got {eps!r}")


def attention_inputs(q, k, v) -> None:
    """q, k, v: one floating dtype, one 4-D shape (B, H, T, hd)."""
    floats("attention", q=q, k=k, v=v)
    if q.ndim != 4 or tuple(k.shape) != tuple(q.shape) or tuple(v.shape) != tuple(q.shape):
        raise ValueError(
            "attention: q, k, v must share one shape (B, H, T, hd), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def heads_inputs(C: int, n_head) -> None:
    """``n_head`` is a positive int that divides the width ``C``."""
    if not is_int(n_head) or n_head < 1 or C % n_head:
        raise ValueError(
            f"split_heads: n_head = {n_head!r} must be a positive int dividing the width C = {C}"
        )


def embedding_inputs(ids, W) -> None:
    """W (V, C) floating, ids integers in [0, V)."""
    check_float("W", W, "embedding")
    if W.ndim != 2:
        raise ValueError(f"embedding: W must be 2-D (V, C), got shape {tuple(W.shape)}")
    check_ids(ids, W.shape[0])


def lora_embedding_inputs(layer: str, ids, E, A, B) -> None:
    """E (V, C), A (r, V), B (C, r) floating with one r, one dtype; ids integers in [0, V)."""
    floats(layer, E=E, A=A, B=B)
    if E.ndim != 2:
        raise ValueError(f"{layer}: E must be 2-D (V, C), got shape {tuple(E.shape)}")
    V, C = E.shape
    r = A.shape[0] if A.ndim == 2 else None
    if A.ndim != 2 or tuple(A.shape) != (r, V) or tuple(B.shape) != (C, r):
        raise ValueError(
            f"{layer}: E is (V, C) = {tuple(E.shape)}, so A must be (r, V) = (r, {V}) and B (C, r) = "
            f"({C}, r) with one r (PEFT's lora_embedding_A, lora_embedding_B); got A {tuple(A.shape)} "
            f"and B {tuple(B.shape)}"
        )
    check_ids(ids, V, layer)


def position_inputs(P, T) -> None:
    """P (n_ctx, C) floating, 0 <= T <= n_ctx."""
    check_float("P", P, "position_embedding")
    n_ctx = P.shape[0]
    if not is_int(T) or not 0 <= T <= n_ctx:
        raise ValueError(
            f"position_embedding: sequence length T = {T!r} must lie in [0, n_ctx = {n_ctx}] "
            "(the context length)"
        )


def cross_entropy_inputs(logits, targets) -> None:
    """logits (..., V) floating, targets (...) integer ids in [0, V)."""
    check_float("logits", logits, "softmax_cross_entropy")
    if not hasattr(targets, "__array_namespace__") or "int" not in dtype_name(targets):
        what = dtype_name(targets) if hasattr(targets, "dtype") else type(targets).__name__
        raise TypeError(f"softmax_cross_entropy: targets must be integer class ids, got dtype {what}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"softmax_cross_entropy: logits {tuple(logits.shape)} need targets of shape "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if logits.ndim == 0 or logits.size == 0:
        raise ValueError(
            f"softmax_cross_entropy: logits must hold at least one row of classes, got shape "
            f"{tuple(logits.shape)}"
        )
    V = logits.shape[-1]
    xp = targets.__array_namespace__()
    lo, hi = int(xp.min(targets)), int(xp.max(targets))
    if lo < 0 or hi >= V:
        raise ValueError(
            f"softmax_cross_entropy: target ids must lie in [0, {V}), got range [{lo}, {hi}]"
        )


def mse_inputs(pred, target) -> None:
    """pred and target: floating arrays of one shape, not empty."""
    check_float("pred", pred, "mse")
    check_float("target", target, "mse")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape"
        )
    if pred.size == 0:
        raise ValueError(f"mse: pred and target are empty (shape {tuple(pred.shape)})")


# ----------------------------------------------------------------------------- the Llama pairs


def rmsnorm_inputs(x, gamma, eps) -> None:
    """x (..., C), gamma (C,), one dtype, eps > 0 and finite."""
    floats("rmsnorm", x=x, gamma=gamma)
    C = x.shape[-1] if x.ndim else None
    if tuple(gamma.shape) != (C,):
        raise ValueError(
            f"rmsnorm: x has shape {tuple(x.shape)}, so gamma must have shape ({C},); "
            f"got gamma {tuple(gamma.shape)}"
        )
    finite_number("rmsnorm", "eps", eps, positive=True)


def rope_table_inputs(T, hd, base, offset, dtype) -> None:
    """T >= 1 positions, an even head width hd >= 2, base > 0, offset >= 0, a floating dtype."""
    positive_int("rope_tables", "T", T)
    if not is_int(hd) or hd < 2 or hd % 2:
        raise ValueError(f"rope_tables: hd must be an even positive int (pairs i, i + hd/2), got {hd!r}")
    finite_number("rope_tables", "base", base, positive=True)
    if not is_int(offset) or offset < 0:
        raise ValueError(f"rope_tables: offset must be an int >= 0 (the first position), got {offset!r}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"rope_tables: dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")


def rope_inputs(x, cos, sin) -> None:
    """x (B, H, T, hd) with hd even; cos and sin (T, hd); one floating dtype."""
    floats("rope", x=x, cos=cos, sin=sin)
    if x.ndim != 4:
        raise ValueError(f"rope: x must be 4-D (B, H, T, hd), got shape {tuple(x.shape)}")
    T, hd = x.shape[2], x.shape[3]
    if hd % 2:
        raise ValueError(
            f"rope: x has shape {tuple(x.shape)}; its head width hd = {hd} must be even "
            "(channels i and i + hd/2 rotate as a pair)"
        )
    if tuple(cos.shape) != (T, hd) or tuple(sin.shape) != (T, hd):
        raise ValueError(
            f"rope: x has shape {tuple(x.shape)}, so cos and sin must have shape (T, hd) = "
            f"({T}, {hd}); got cos {tuple(cos.shape)} and sin {tuple(sin.shape)}"
        )


def swiglu_inputs(gate, up) -> None:
    """gate and up: one floating dtype, one shape."""
    floats("swiglu", gate=gate, up=up)
    if tuple(gate.shape) != tuple(up.shape):
        raise ValueError(
            f"swiglu: gate and up must share one shape, got gate {tuple(gate.shape)} and "
            f"up {tuple(up.shape)}"
        )


def repeat_kv_inputs(k, n_rep) -> None:
    """k (B, Hkv, T, hd) floating, n_rep a positive int."""
    floats("repeat_kv", k=k)
    if k.ndim != 4:
        raise ValueError(f"repeat_kv: k must be 4-D (B, Hkv, T, hd), got shape {tuple(k.shape)}")
    positive_int("repeat_kv", "n_rep", n_rep)


def gqa_inputs(q, k, v) -> None:
    """q (B, H, T, hd), k and v (B, Hkv, T, hd) with H a multiple of Hkv; one floating dtype."""
    floats("gqa_attention", q=q, k=k, v=v)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.ndim != 4 or k.ndim != 4 or tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            "gqa_attention: expected q (B, H, T, hd) and k, v of one shape (B, Hkv, T, hd), "
            f"got {shapes}"
        )
    B, H, T, hd = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (B, T, hd):
        raise ValueError(
            f"gqa_attention: q, k, v must agree on B, T and hd = ({B}, {T}, {hd}), got {shapes}"
        )
    Hkv = k.shape[1]
    if Hkv < 1 or H % Hkv:
        raise ValueError(
            f"gqa_attention: the query heads H = {H} must be a multiple of the key/value heads "
            f"Hkv = {Hkv}, got {shapes}"
        )


def token_ids(layer: str, ids, n_ctx: int) -> None:
    """``TypeError``/``ValueError`` naming ``ids`` unless it is (B, T) integers, 1 <= T <= n_ctx."""
    from . import backend

    if not hasattr(ids, "__array_namespace__") or "int" not in backend.dtype_name(ids):
        what = backend.dtype_name(ids) if hasattr(ids, "dtype") else type(ids).__name__
        raise TypeError(f"{layer}: argument 'ids' must be an integer array (B, T), got {what}")
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"{layer}: argument 'ids' must have shape (B, T) with T >= 1, got shape {tuple(ids.shape)}")
    if ids.shape[1] > n_ctx:
        raise ValueError(
            f"{layer}: argument 'ids' has T = {ids.shape[1]} positions but the context length is "
            f"n_ctx = {n_ctx}; crop the sequence to its last {n_ctx} ids"
        )
