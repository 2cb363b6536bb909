"""Exercise layernorm: the backward of layer normalisation, by hand.

    μ = mean_c x_c,   σ² = mean_c (x_c − μ)²,   x̂ = (x − μ) / √(σ² + ε),   y = γ ⊙ x̂ + β

Every row (all leading axes: x may be (N, C) or (B, T, C)) is normalised on its own over its C
channels; γ and β (C,) are shared by every row. The forward below is complete: read it, keep it,
and use what its cache holds. Your job is ``layernorm_backward``: dx, dgamma and dbeta.

    write:   layernorm_backward, below
    grade:   minilora exercise grade layernorm.py
    read:    docs/transformer.md, section "LayerNorm" (after you have tried)

Rules: this file imports numpy (and the standard library's math, typing) only. The grader refuses
a file that imports minilora, torch, importlib, or calls __import__ / exec / eval.
"""
from typing import NamedTuple

import numpy as np

EXERCISE = "layernorm"  # the grader reads this line to know which exercise the file is


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C)  x̂, the normalised input before the affine part
    rstd: np.ndarray  # (..., 1)  1 / √(σ² + ε), one per row
    gamma: np.ndarray  # (C,)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """y = γ ⊙ (x − μ) / √(σ² + ε) + β      (μ, σ² over the last axis; biased variance)

    Inputs:  x (..., C), gamma (C,), beta (C,), eps > 0
    Returns: y (..., C), cache
    """
    mu = np.mean(x, axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu  # (..., C)
    var = np.mean(xc * xc, axis=-1, keepdims=True)  # (..., 1)  divide by C, as PyTorch does
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd  # (..., C)
    y = gamma * xhat + beta  # (..., C)
    return y, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """Backward of ``layernorm_forward``: the gradients of the loss L for x, γ and β.

    Inputs:  dout (..., C) = ∂L/∂y;  cache from ``layernorm_forward``
    Returns: dx (..., C),  {"gamma": dgamma (C,), "beta": dbeta (C,)}

    Derive them (one row at a time for dx; rstd = 1/√(σ² + ε)):

        dgamma_c = Σ_rows ∂L/∂y_c · ∂y_c/∂γ_c,   dbeta_c = Σ_rows ∂L/∂y_c     (sum over ALL leading axes)
        dx̂ = ∂L/∂x̂ first (y = γ ⊙ x̂ + β), then
        dx_c = Σ_c' dx̂_c' ∂x̂_c'/∂x_c — and x̂_c' = (x_c' − μ) · rstd depends on x_c three ways:
               directly, through μ and through σ² (both are means over the row's C channels);
               differentiate all three, then write the sum over c' without a loop

    Each gradient has the shape of its array.
    """
    xhat, rstd, gamma = cache
    # --- solution: dgamma, dbeta and dx ---
    C = xhat.shape[-1]
    dout2 = dout.reshape(-1, C)  # (N, C)  every leading axis is a row
    xhat2 = xhat.reshape(-1, C)  # (N, C)
    dgamma = np.sum(dout2 * xhat2, axis=0)  # (C,)
    dbeta = np.sum(dout2, axis=0)  # (C,)
    dxhat = dout * gamma  # (..., C)
    mean_dxhat = np.mean(dxhat, axis=-1, keepdims=True)  # (..., 1)  from μ
    mean_dxhat_xhat = np.mean(dxhat * xhat, axis=-1, keepdims=True)  # (..., 1)  from σ²
    dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)  # (..., C)
    # --- end of solution ---
    return dx, {"gamma": dgamma, "beta": dbeta}
