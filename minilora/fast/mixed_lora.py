"""The mixed-adapter batch as one gather: the same signatures and results as
``functional/mixed_lora.py``'s sub-batch loop, with the adapters stacked.

The K adapters are zero-padded to the largest rank R and stacked, with an all-zero adapter K for
the rows of no adapter (index −1), and each B carries its scale:

    𝔸 (K+1, R, d_in),   𝔹 (K+1, d_out, R) = scale_k · [B_k | 0]
    u = x̃ 𝔸[rows]ᵀ,  h = u 𝔹[rows]ᵀ         one batched product per step, whatever K is

Padding is exact: the extra columns of u multiply zero columns of 𝔹 and add nothing. The cost
is a (N, R, d_in) gather of 𝔸 and products at rank R for every row, so it pays when there are many
adapters of similar rank and few rows each; the loop pays when K is small
(benchmarks/mixed_batch.py measures both). Gradients come back unpadded, one dict per adapter.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import namespace
from ..functional.mixed_lora import mixed_inputs


class GatherCache(NamedTuple):
    x_drop: object  # (N, T, d_in)  x̃, with a token axis T (1 when x had none)
    mask: object  # (N, ..., d_in) or None
    rows: tuple  # (N,)
    adapters: tuple
    A_rows: object  # (N, R, d_in)  𝔸[rows]
    B_rows: object  # (N, d_out, R) 𝔹[rows], scale folded in
    u: object  # (N, T, R)
    shape: tuple  # x's shape


def _stack(xp, adapters, dtype, device):
    """𝔸 (K+1, R, d_in) and 𝔹 (K+1, d_out, R) = scale · B, zero-padded; the last adapter is zero."""
    R = max(A.shape[0] for A, _, _ in adapters)
    d_in, d_out = adapters[0][0].shape[1], adapters[0][1].shape[0]
    As, Bs = [], []
    for A, B, scale in adapters:
        r = A.shape[0]
        As.append(xp.concat([A, xp.zeros((R - r, d_in), dtype=dtype, device=device)], axis=0))
        Bs.append(xp.concat([scale * B, xp.zeros((d_out, R - r), dtype=dtype, device=device)], axis=1))
    As.append(xp.zeros((R, d_in), dtype=dtype, device=device))
    Bs.append(xp.zeros((d_out, R), dtype=dtype, device=device))
    return xp.stack(As), xp.stack(Bs)


def mixed_lowrank_forward(x, adapters, rows, mask=None, layer: str = "mixed_lora"):
    """Same as ``functional.mixed_lora.mixed_lowrank_forward``, as one gather (see above)."""
    rows = mixed_inputs(layer, x, adapters, rows, mask)
    xp = namespace(x)
    dev = getattr(x, "device", None)
    K = len(adapters)
    x_drop = x if mask is None else x * mask
    N, d_in = x.shape[0], x.shape[-1]
    x3 = xp.reshape(x_drop, (N, -1, d_in))  # (N, T, d_in)
    A_s, B_s = _stack(xp, adapters, x.dtype, dev)
    index = xp.asarray([K if a < 0 else a for a in rows], device=dev)
    A_rows, B_rows = xp.take(A_s, index, axis=0), xp.take(B_s, index, axis=0)  # (N, R, d_in), (N, d_out, R)
    u = x3 @ xp.permute_dims(A_rows, (0, 2, 1))  # (N, T, R)
    h = u @ xp.permute_dims(B_rows, (0, 2, 1))  # (N, T, d_out)
    d_out = B_s.shape[1]
    return (xp.reshape(h, (*x.shape[:-1], d_out)),
            GatherCache(x3, mask, rows, tuple(adapters), A_rows, B_rows, u, tuple(x.shape)))


def mixed_lowrank_backward(dout, cache: GatherCache, need=("x", "adapters")):
    """Same as ``functional.mixed_lora.mixed_lowrank_backward``: per row, then summed per adapter."""
    x3, mask, rows, adapters, A_rows, B_rows, u, shape = cache
    xp = namespace(dout, x3)
    N, d_out = dout.shape[0], dout.shape[-1]
    d3 = xp.reshape(dout, (N, -1, d_out))  # (N, T, d_out)
    du = d3 @ B_rows  # (N, T, R)     scale already in B_rows
    grads = [{} for _ in adapters]
    if "adapters" in need:
        dB_rows = xp.permute_dims(d3, (0, 2, 1)) @ u  # (N, d_out, R)  per row, before its scale
        dA_rows = xp.permute_dims(du, (0, 2, 1)) @ x3  # (N, R, d_in)
        for k, (A, B, scale) in enumerate(adapters):
            sel = [n for n, a in enumerate(rows) if a == k]
            if not sel:
                continue
            idx = xp.asarray(sel, device=getattr(dout, "device", None))
            r = A.shape[0]
            grads[k]["B"] = scale * xp.sum(xp.take(dB_rows, idx, axis=0), axis=0)[:, :r]  # (d_out, r)
            grads[k]["A"] = xp.sum(xp.take(dA_rows, idx, axis=0), axis=0)[:r, :]  # (r, d_in)
    dx = None
    if "x" in need:
        dx = xp.reshape(du @ A_rows, shape)  # (N, ..., d_in); zero on the rows of no adapter
        if mask is not None:
            dx = dx * mask
    return dx, grads
