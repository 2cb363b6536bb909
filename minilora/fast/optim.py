"""Fast AdamW update: ``functional/optim.py``'s equations, in place through one work array.

The reference's one-line update makes about six parameter-sized temporaries per parameter per
step, and for full fine-tuning those cost more than the arithmetic. Here m, v and θ are updated
in place through one reused work array ``w`` (it grows to the largest parameter and is kept by
the optimizer), with the bias corrections folded into two scalars, and big parameters (fc1's W: 2.4M
numbers at d768) get their rows split across cores. On CuPy, with ``minilora.fast.cuda.USE_FUSED``,
the whole update is one fused kernel (``fast/cuda.py``) and needs no work array.
"""
from __future__ import annotations

import math
from functools import partial

from ..backend import namespace
from . import cuda
from .runtime import rowwise, write


class AdamWWork:
    """The reused work array: one buffer, sliced and reshaped to each parameter in turn."""

    def __init__(self):
        self.buffer = None

    def like(self, p):
        xp = namespace(p)
        n = math.prod(p.shape)
        b = self.buffer
        if b is None or b.size < n or b.dtype != p.dtype or namespace(b) is not xp:
            self.buffer = xp.empty(n, dtype=p.dtype)
        return xp.reshape(self.buffer[:n], p.shape)


def adamw_update(p, g, m, v, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, t: int, work: AdamWWork | None = None) -> None:
    """``functional.optim.adamw_update``, in place; ``work`` keeps the work array between calls."""
    step = lr / (1.0 - beta1**t)  # lr / (1−β₁ᵗ)
    rsqrt_c2 = 1.0 / math.sqrt(1.0 - beta2**t)  # 1 / √(1−β₂ᵗ)
    if cuda.fused(p, g, m, v):
        cuda.adamw_update(p, g, m, v, 1.0 - lr * weight_decay, beta1, beta2, eps, step, rsqrt_c2)
        return
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    w = (work or AdamWWork()).like(p)
    rowwise(partial(_update_rows, beta1=beta1, beta2=beta2, eps=eps, step=step, rsqrt_c2=rsqrt_c2),
            p, g, m, v, w)


def _update_rows(p, g, m, v, w, beta1, beta2, eps, step, rsqrt_c2):
    """The update on one block of rows of p, g, m, v (w: scratch)."""
    xp = namespace(p)
    write(w, xp.multiply, g, 1.0 - beta1)
    m *= beta1
    m += w  # m ← β₁ m + (1−β₁) g
    write(w, xp.multiply, g, g)
    w *= 1.0 - beta2
    v *= beta2
    v += w  # v ← β₂ v + (1−β₂) g²
    write(w, xp.sqrt, v)
    w *= rsqrt_c2
    w += eps  # √v̂ + ε
    write(w, xp.divide, m, w)
    w *= step  # lr m̂ / (√v̂ + ε)
    p -= w
