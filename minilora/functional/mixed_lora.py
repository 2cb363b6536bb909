"""Mixed-adapter batches: each row of a batch goes through its own LoRA adapter.

    h_n = scale_{a_n} · (x̃_n A_{a_n}ᵀ) B_{a_n}ᵀ          a_n ∈ {0, …, K−1}, or −1: no adapter (0)

x holds N rows (sequences) of any number of tokens; ``rows`` (N,) names each row's adapter by its
index in ``adapters = [(A_0, B_0, scale_0), …]``. The frozen base path x Wᵀ + b is the layer's
and is not here. This is PEFT's ``adapter_names=`` at inference, written as the equation:
one sub-batch per adapter, the rows of adapter k multiplied by A_k and B_k only. The backward
is the same loop, so adapter k's gradient comes from its rows alone — which lets one batch
*train* several adapters at once (PEFT refuses ``adapter_names`` while training).

The fast layer's ``fast/mixed_lora.py`` computes the same thing as one gather over a stack of
zero-padded adapters, proven equal by tests/test_mixed_lora.py.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace


class MixedCache(NamedTuple):
    x_drop: object  # (N, ..., d_in)  x̃ = x ⊙ mask (x itself when mask is None)
    mask: object  # (N, ..., d_in)  inverted-dropout mask, or None
    rows: tuple  # (N,) each row's adapter index, −1 for none
    adapters: tuple  # adapter k as a triple: A_k, B_k of shapes r_k × d_in, d_out × r_k, and scale_k
    u: dict  # {k: u_k (N_k, ..., r_k)}: the low-rank code of adapter k's rows


def mixed_inputs(layer: str, x, adapters, rows, mask) -> tuple:
    """Check the arguments of ``mixed_lowrank_forward``; returns ``rows`` as a tuple of ints."""
    if not adapters:
        raise ValueError(f"{layer}: a mixed batch needs at least one adapter")
    for k, (A, B, _) in enumerate(adapters):
        checks.floats(layer, x=x, A=A, B=B, mask=mask)
        if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0] or x.ndim < 2 or x.shape[-1] != A.shape[1]:
            raise ValueError(f"{layer}: adapter {k}: expected x (N, ..., d_in), A (r, d_in), B (d_out, r); "
                             f"got x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}")
        if B.shape[0] != adapters[0][1].shape[0]:
            raise ValueError(f"{layer}: adapter {k}: B is {tuple(B.shape)}, adapter 0's B is "
                             f"{tuple(adapters[0][1].shape)}: every adapter must have one d_out")
    rows = tuple(int(a) for a in rows)
    if len(rows) != x.shape[0]:
        raise ValueError(f"{layer}: rows names {len(rows)} adapters, the batch x {tuple(x.shape)} has {x.shape[0]} rows")
    bad = sorted({a for a in rows if not -1 <= a < len(adapters)})
    if bad:
        raise ValueError(f"{layer}: rows holds adapter indices {bad}; there are {len(adapters)} adapters "
                         f"(indices 0..{len(adapters) - 1}, −1 for none)")
    if mask is not None and tuple(mask.shape) != tuple(x.shape):
        raise ValueError(f"{layer}: dropout mask has shape {tuple(mask.shape)}, expected x's {tuple(x.shape)}")
    return rows


def rows_of(rows: tuple, k: int) -> list:
    """The batch rows that use adapter k (k = −1: the rows that use none)."""
    return [n for n, a in enumerate(rows) if a == k]


def unsort_rows(xp, parts: list, rows: tuple, like):
    """Stack the per-adapter blocks ``parts`` (adapter 0's rows, adapter 1's, …, then the rows of
    no adapter) back into the batch's row order: one ``take`` with the inverse permutation."""
    order = [n for k in range(-1, max(rows) + 1) for n in rows_of(rows, k) if k >= 0]
    order += rows_of(rows, -1)
    inverse = [0] * len(rows)
    for position, n in enumerate(order):
        inverse[n] = position
    stacked = xp.concat(parts, axis=0) if len(parts) > 1 else parts[0]
    return xp.take(stacked, xp.asarray(inverse, device=getattr(like, "device", None)), axis=0)


def mixed_lowrank_forward(x, adapters, rows, mask=None, layer: str = "mixed_lora"):
    """h_n = scale_{a_n} · (x̃_n A_{a_n}ᵀ) B_{a_n}ᵀ for every row n (0 where a_n = −1)

    Inputs:  x (N, ..., d_in); adapters [(A_k (r_k, d_in), B_k (d_out, r_k), scale_k), …];
             rows (N,) ints in [−1, K); mask (N, ..., d_in) inverted-dropout mask or None
    Returns: h_lr (N, ..., d_out), cache
    """
    rows = mixed_inputs(layer, x, adapters, rows, mask)
    xp = namespace(x)
    x_drop = x if mask is None else x * mask  # (N, ..., d_in)
    d_out = adapters[0][1].shape[0]
    parts, u = [], {}
    for k, (A, B, scale) in enumerate(adapters):
        sel = rows_of(rows, k)
        if sel:
            x_k = xp.take(x_drop, xp.asarray(sel, device=getattr(x, "device", None)), axis=0)  # (N_k, ..., d_in)
            u[k] = x_k @ A.T  # (N_k, ..., r_k)   adapter k's rows only
            parts.append((scale * u[k]) @ B.T)  # (N_k, ..., d_out)
    n_none = len(rows_of(rows, -1))
    if n_none:  # rows of no adapter: no low-rank term
        parts.append(xp.zeros((n_none, *x.shape[1:-1], d_out), dtype=x.dtype, device=getattr(x, "device", None)))
    h = unsort_rows(xp, parts, rows, x)  # (N, ..., d_out)
    return h, MixedCache(x_drop, mask, rows, tuple(adapters), u)


def mixed_lowrank_backward(dout, cache: MixedCache, need=("x", "adapters")):
    """Backward of ``mixed_lowrank_forward``, adapter by adapter over its own rows S_k:

        du_k = scale_k · dout[S_k] B_k                 (N_k, ..., r_k)
        dB_k = scale_k · Σ_{S_k} doutᵀ u_k             (d_out, r_k)
        dA_k = Σ_{S_k} du_kᵀ x̃                         (r_k, d_in)
        dx[S_k] = (du_k A_k) ⊙ mask[S_k]                (N_k, ..., d_in); 0 on rows of no adapter

    Inputs:  dout (N, ..., d_out), cache; ``need``: "x" for dx, "adapters" for the dA, dB
    Returns: dx (N, ..., d_in) or None, grads [{"A": dA_k, "B": dB_k} (empty for an adapter with
             no rows in the batch), …]
    """
    x_drop, mask, rows, adapters, u = cache
    xp = namespace(dout, x_drop)
    dev = getattr(dout, "device", None)
    d_out, d_in = dout.shape[-1], x_drop.shape[-1]
    grads = [{} for _ in adapters]
    parts = []
    for k, (A, B, scale) in enumerate(adapters):
        if k not in u:
            continue  # no row of this batch used adapter k: it receives no gradient
        sel = xp.asarray(rows_of(rows, k), device=dev)
        r = A.shape[0]
        dout_k = xp.take(dout, sel, axis=0)  # (N_k, ..., d_out)
        dout_2 = xp.reshape(dout_k, (-1, d_out))  # (M_k, d_out), M_k = adapter k's tokens
        du_k = dout_2 @ (scale * B)  # (M_k, r)
        if "adapters" in need:
            grads[k]["B"] = scale * (dout_2.T @ xp.reshape(u[k], (-1, r)))  # (d_out, r)
            grads[k]["A"] = du_k.T @ xp.reshape(xp.take(x_drop, sel, axis=0), (-1, d_in))  # (r, d_in)
        if "x" in need:
            dx_k = xp.reshape(du_k @ A, (*dout_k.shape[:-1], d_in))  # (N_k, ..., d_in)
            parts.append(dx_k if mask is None else dx_k * xp.take(mask, sel, axis=0))
    dx = None
    if "x" in need:
        n_none = len(rows_of(rows, -1))
        if n_none:
            parts.append(xp.zeros((n_none, *x_drop.shape[1:]), dtype=dout.dtype, device=dev))
        dx = unsort_rows(xp, parts, rows, dout)
    return dx, grads
