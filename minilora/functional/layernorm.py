"""Layer normalisation (Ba et al., 2016) over the last axis, as a forward/backward pair.

    μ = mean_c x_c,   σ² = mean_c (x_c − μ)²,   x̂ = (x − μ) / √(σ² + ε),   y = γ ⊙ x̂ + β

Every row (all leading axes) is normalised on its own over its C channels.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace

ALL = ("x", "gamma", "beta")  # the gradients layernorm_backward can return


class LayerNormCache(NamedTuple):
    xhat: object  # (..., C)  normalised input, before the affine part
    rstd: object  # (..., 1)  1 / √(σ² + ε)
    gamma: object  # (C,)


def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """y = γ ⊙ (x − μ) / √(σ² + ε) + β      (μ, σ² over the last axis)

    Inputs:  x (..., C), gamma (C,), beta (C,), eps > 0
    Returns: y (..., C), cache
    """
    checks.layernorm_inputs(x, gamma, beta, eps)
    xp = namespace(x, gamma, beta)
    mu = xp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., C)
    var = xp.mean(xc * xc, axis=-1, keepdims=True)  # (..., 1)  biased variance, as in PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., C)
    y = gamma * xhat + beta
    return y, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache: LayerNormCache, need=ALL):
    """Backward of ``layernorm_forward``:

        dγ = Σ_rows dout ⊙ x̂,   dβ = Σ_rows dout
        dx̂ = dout ⊙ γ
        dx = (1/√(σ² + ε)) · (dx̂ − mean_c dx̂ − x̂ ⊙ mean_c(dx̂ ⊙ x̂))

    (the two means remove the components of dx̂ along the directions the normalisation
    projected out: the constant shift and the scale of x̂).

    Inputs:  dout (..., C), cache from ``layernorm_forward``; ``need`` names the gradients
             wanted, among "x", "gamma", "beta"
    Returns: dx (..., C) or None if "x" is not needed, grads {"gamma": (C,), "beta": (C,)}
             restricted to ``need``
    """
    xhat, rstd, gamma = cache
    xp = namespace(dout, xhat)
    dx = None
    if "x" in need:
        dxhat = dout * gamma  # (..., C)
        mean_dxhat = xp.mean(dxhat, axis=-1, keepdims=True)  # (..., 1)
        mean_dxhat_xhat = xp.mean(dxhat * xhat, axis=-1, keepdims=True)  # (..., 1)
        dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)  # (..., C)
    return dx, affine_grads(dout, xhat, need)


def affine_grads(dout, xhat, need=ALL):
    """dγ = Σ_rows dout ⊙ x̂,   dβ = Σ_rows dout   (those named in ``need``)."""
    xp = namespace(dout, xhat)
    C = xhat.shape[-1]
    dout2 = xp.reshape(dout, (-1, C))  # (N, C)  all leading axes are rows
    xhat2 = xp.reshape(xhat, (-1, C))  # (N, C)
    grads = {}
    if "gamma" in need:
        grads["gamma"] = xp.sum(dout2 * xhat2, axis=0)
    if "beta" in need:
        grads["beta"] = xp.sum(dout2, axis=0)
    return grads
