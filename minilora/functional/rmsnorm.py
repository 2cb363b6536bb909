"""Root-mean-square normalisation (Zhang & Sennrich, 2019) over the last axis, as a pair.

    rstd = 1 / √(mean_c x_c² + ε),   x̂ = x · rstd,   y = γ ⊙ x̂

LayerNorm without the mean and without β, as in Llama (HF transformers' ``LlamaRMSNorm``): every
row (all leading axes) is rescaled on its own to unit root mean square, then scaled by γ.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace
from .layernorm import affine_grads

ALL = ("x", "gamma")  # the gradients rmsnorm_backward can return


class RMSNormCache(NamedTuple):
    xhat: object  # (..., C)  x · rstd, before the scale γ
    rstd: object  # (..., 1)  1 / √(mean_c x² + ε)
    gamma: object  # (C,)


def rmsnorm_forward(x, gamma, eps: float = 1e-5):
    """y = γ ⊙ x / √(mean_c x² + ε)      (the mean over the last axis)

    Inputs:  x (..., C), gamma (C,), eps > 0 (SmolLM2's ``rms_norm_eps`` is 1e-5)
    Returns: y (..., C), cache
    """
    checks.rmsnorm_inputs(x, gamma, eps)
    xp = namespace(x, gamma)
    ms = xp.mean(x * x, axis=-1, keepdims=True)  # (..., 1)  mean square
    rstd = 1.0 / xp.sqrt(ms + eps)  # (..., 1)
    xhat = x * rstd  # (..., C)
    y = gamma * xhat
    return y, RMSNormCache(xhat, rstd, gamma)


def rmsnorm_backward(dout, cache: RMSNormCache, need=ALL):
    """Backward of ``rmsnorm_forward``:

        dγ = Σ_rows dout ⊙ x̂
        dx̂ = dout ⊙ γ
        dx = rstd · (dx̂ − x̂ ⊙ mean_c(dx̂ ⊙ x̂))

    (LayerNorm's dx without the mean of dx̂: RMSNorm removes only the scale of x, not a shift).

    Inputs:  dout (..., C), cache from ``rmsnorm_forward``; ``need`` names the gradients wanted,
             among "x", "gamma"
    Returns: dx (..., C) or None if "x" is not needed, grads {"gamma": (C,)} restricted to ``need``
    """
    xhat, rstd, gamma = cache
    xp = namespace(dout, xhat)
    dx = None
    if "x" in need:
        dxhat = dout * gamma  # (..., C)
        mean_dxhat_xhat = xp.mean(dxhat * xhat, axis=-1, keepdims=True)  # (..., 1)
        dx = rstd * (dxhat - xhat * mean_dxhat_xhat)  # (..., C)
    return dx, affine_grads(dout, xhat, ("gamma",) if "gamma" in need else ())  # dγ; no β here
