"""QuantLinear: a frozen linear y = x W̃ᵀ whose weight W̃ = dequant(q) stays 4-bit (QLoRA's base).

    forward    y  = x W̃ᵀ          Q4_1Weight.matmul_t: a block of W̃'s rows at a time
    backward   dx = dout W̃        Q4_1Weight.rmatmul;  no dW, and nothing reaches the codes q

Frozen means "no dW", never "no backward": dx flows through W̃ whenever something before the
layer trains (``need_dx``). The derivation is in docs/qlora.md.

The packed weight (``self.weight``, a ``minilora.io.quant.Q4_1Weight``) lives on the module, not
in ``params``: it is not a parameter. ``named_parameters``, ``state_dict``, ``load_state_dict``,
the optimizers, ``astype`` and ``to`` never see it (a QuantLinear has no parameters at all), so
a checkpoint or an optimizer of a quantised model holds only the float arrays. Q4_1Weight does
its products in NumPy: a QuantLinear runs on the host only. ``weight_bytes(model)`` counts what a
model holds, float parameters and packed weights together.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np  # host-only: Q4_1Weight is NumPy bytes (as in minilora.io.quant)

from .. import backend, checks
from ..io.quant import Q4_1Weight
from .module import Module


class QuantCache(NamedTuple):
    x_shape: tuple  # (..., d_in)  the input's shape (x itself is not kept: there is no dW)
    W: Q4_1Weight  # (d_out, d_in) the weight the forward used


class QuantLinear(Module):
    """y = x W̃ᵀ with W̃ (d_out, d_in) held as a ``Q4_1Weight``; frozen, no bias, no parameters.

    ``QuantLinear(Q4_1Weight.from_raw(raw, (d_out, d_in)))``. The output has x's dtype (the
    products run in x's dtype promoted with float32, then are cast back: float16 stays float16).
    """

    def __init__(self, weight: Q4_1Weight):
        super().__init__()
        if not isinstance(weight, Q4_1Weight):
            raise TypeError(f"QuantLinear: weight must be a Q4_1Weight, got {type(weight).__name__}")
        self.weight = weight  # a plain attribute: not in params, so nothing trains or saves it

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_out(self) -> int:
        return self.weight.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the packed weight holds: d_out · d_in · 5/8 (float32 would hold 4 · d_out · d_in)."""
        return self.weight.nbytes

    def dequantize(self):
        """W̃ as a float32 (d_out, d_in) array — for tests and analysis; the forward never builds it."""
        return self.weight.dequantize()

    def forward(self, x):
        """y = x W̃ᵀ   x (..., d_in) -> (..., d_out)."""
        checks.floats(self.label, x=x)
        if backend.device_name(x) != "cpu":
            raise TypeError(f"{self.label}: a QuantLinear runs on the host (NumPy); got x on {backend.device_name(x)}")
        y = self.weight.matmul_t(x)  # (..., d_out); raises if x's last axis is not d_in
        self.cache = QuantCache(tuple(x.shape), self.weight)
        return y.astype(x.dtype, copy=False)

    def backward(self, dout):
        """dx = dout W̃ (only when ``need_dx``; there is no dW: W̃ is frozen, its codes are integers)."""
        if self.skips(dout):  # no parameters: nothing to do unless dx is wanted
            return None
        x_shape, W = self.cache
        if W is not self.weight:
            raise RuntimeError(f"{self.label}: the weight was replaced after forward; run forward again")
        checks.check_dout(self.label, dout, (*x_shape[:-1], self.d_out))
        return W.rmatmul(dout).astype(dout.dtype, copy=False)  # (..., d_in)

    def __repr__(self) -> str:
        return f"QuantLinear(d_in={self.d_in}, d_out={self.d_out}, nbytes={self.nbytes})"


def quantize_q4_1(W) -> Q4_1Weight:
    """Q4_1 of a float (d_out, d_in) matrix, as ggml's ``quantize_row_q4_1_ref`` computes it: per
    block of 32, m = min, d = (max − min) / 15, q = min(15, ⌊(w − m) / d + ½⌋), then d and m are
    stored as float16. For tests and synthetic weights; a checkpoint's own bytes are loaded with
    ``Q4_1Weight.from_raw``. Host-only (NumPy), like ``minilora.io.quant``."""
    W = np.asarray(backend.to_numpy(W), np.float32)
    if W.ndim != 2 or W.shape[1] % 32:
        raise ValueError(f"quantize_q4_1: W must be (d_out, d_in) with d_in a multiple of 32, got {W.shape}")
    d_out, d_in = W.shape
    w = W.reshape(d_out, d_in // 32, 32)  # (d_out, n_blocks, 32)
    lo, hi = w.min(-1), w.max(-1)  # (d_out, n_blocks)
    d = (hi - lo) / np.float32(15)  # (d_out, n_blocks)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, np.floor((w - lo[..., None]) * inv[..., None] + np.float32(0.5))).astype(np.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4)  # byte j = q_j | q_{j+16} << 4   (d_out, n_blocks, 16)
    return Q4_1Weight(d.astype(np.float16), lo.astype(np.float16), nibbles)


def weight_bytes(model) -> dict:
    """Bytes of weights ``model`` holds: ``{"float": parameters (float arrays), "quantized":
    packed Q4_1 weights of its QuantLinears, "total": both}``."""
    floats = sum(int(a.size) * a.dtype.itemsize for a in model.named_parameters().values())
    packed = sum(m.nbytes for _, m in model.named_modules() if isinstance(m, QuantLinear))
    return {"float": floats, "quantized": packed, "total": floats + packed}
