"""Layer normalisation (Ba et al., 2016) over the last axis, as a forward/backward pair.

    μ = mean_c x_c,   σ² = mean_c (x_c − μ)²,   x̂ = (x − μ) / √(σ² + ε),   y = γ ⊙ x̂ + β

Every row (all leading axes) is normalised on its own over its C channels.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import check_float, check_same_dtype, namespace


class LayerNormCache(NamedTuple):
    xhat: object  # (..., C)  normalised input, before the affine part
    rstd: object  # (..., 1)  1 / √(σ² + ε)
    gamma: object  # (C,)


def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """y = γ ⊙ (x − μ) / √(σ² + ε) + β      (μ, σ² over the last axis)

    Inputs:  x (..., C), gamma (C,), beta (C,), eps > 0
    Returns: y (..., C), cache
    """
    for name, a in (("x", x), ("gamma", gamma), ("beta", beta)):
        check_float(name, a, "layernorm")
    check_same_dtype("layernorm", x=x, gamma=gamma, beta=beta)
    C = x.shape[-1] if x.ndim else None
    if tuple(gamma.shape) != (C,) or tuple(beta.shape) != (C,):
        raise ValueError(
            f"layernorm: x has shape {tuple(x.shape)}, so gamma and beta must have shape ({C},); "
            f"got gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"layernorm: eps must be positive, got {eps!r}")
    xp = namespace(x, gamma, beta)
    mu = xp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., C)
    var = xp.mean(xc * xc, axis=-1, keepdims=True)  # (..., 1)  biased variance, as in PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc
    xhat *= rstd  # (..., C)  in place: xc is not needed again (no second (..., C) buffer)
    y = xhat * gamma
    y += beta  # in place, as above
    return y, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache: LayerNormCache, frozen: bool = False, need_dx: bool = True):
    """Backward of ``layernorm_forward``:

        dγ = Σ_rows dout ⊙ x̂,   dβ = Σ_rows dout
        dx̂ = dout ⊙ γ
        dx = (1/√(σ² + ε)) · (dx̂ − mean_c dx̂ − x̂ ⊙ mean_c(dx̂ ⊙ x̂))

    (the two means remove the components of dx̂ along the directions the normalisation
    projected out: the constant shift and the scale of x̂).

    Inputs:  dout (..., C), cache from ``layernorm_forward``; ``frozen`` skips dγ, dβ;
             ``need_dx`` False skips dx
    Returns: dx (..., C) or None, grads {"gamma": (C,), "beta": (C,)} (empty if ``frozen``)
    """
    xhat, rstd, gamma = cache
    xp = namespace(dout, xhat)
    dx = None
    if need_dx:
        dxhat = dout * gamma  # (..., C)
        m1 = xp.mean(dxhat, axis=-1, keepdims=True)  # (..., 1)
        m2 = xp.mean(dxhat * xhat, axis=-1, keepdims=True)  # (..., 1)
        dx = dxhat  # built in place from dx̂: two (..., C) temporaries fewer
        dx -= m1
        dx -= xhat * m2
        dx *= rstd  # (..., C)
    if frozen:
        return dx, {}
    C = xhat.shape[-1]
    dout2 = xp.reshape(dout, (-1, C))  # (N, C)  all leading axes are rows
    xhat2 = xp.reshape(xhat, (-1, C))  # (N, C)
    return dx, {"gamma": xp.sum(dout2 * xhat2, axis=0), "beta": xp.sum(dout2, axis=0)}
