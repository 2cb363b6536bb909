"""layernorm: dx, dgamma, dbeta of y = γ ⊙ (x − μ)/√(σ² + ε) + β — cases and classic mistakes."""
from __future__ import annotations

import numpy as np

from ...functional.layernorm import layernorm_forward as reference_forward  # noqa: F401
from . import Case, Mistake

NAME = "layernorm"
SUMMARY = "LayerNorm y = γ ⊙ (x − μ)/√(σ² + ε) + β over the last axis (2-D and 3-D x): dx, dgamma, dbeta"
FORWARD, BACKWARD = "layernorm_forward", "layernorm_backward"
DX = "x"
GRADS = ("x", "gamma", "beta")
DOCS = 'docs/transformer.md, section "LayerNorm"'


def cases():
    """Rows with a mean far from 0 and a spread far from 1, random γ and β, a (B, T, C) input
    (γ, β are shared by every leading axis), and a large ε (so a forgotten ε shows)."""
    g = np.random.default_rng(20160721)

    def case(label, shape, eps):
        C = shape[-1]
        inputs = dict(x=2.0 + 3.0 * g.standard_normal(shape), gamma=1.0 + 0.5 * g.standard_normal(C),
                      beta=g.standard_normal(C), eps=eps)
        return Case(label, inputs, g.standard_normal(shape))

    return [
        case("x (4, 5), eps = 1e-5", (4, 5), 1e-5),
        case("x (2, 3, 4) = (B, T, C), eps = 1e-5", (2, 3, 4), 1e-5),
        case("x (3, 6), eps = 5.0 (large: the backward must use √(σ² + ε))", (3, 6), 5.0),
    ]


def _parts(inputs):
    """x̂, rstd = 1/√(σ² + ε), σ (without ε), γ, x and C — the forward's intermediates."""
    x, gamma, eps = inputs["x"], inputs["gamma"], inputs["eps"]
    xc = x - x.mean(axis=-1, keepdims=True)
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return xc * rstd, rstd, np.sqrt(var), gamma, x, x.shape[-1]


def _mean(a):
    return a.mean(axis=-1, keepdims=True)


def dx_no_mean_term(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    dxhat = dy * gamma
    return {"x": rstd * (dxhat - xhat * _mean(dxhat * xhat))}


def dx_no_variance_term(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    dxhat = dy * gamma
    return {"x": rstd * (dxhat - _mean(dxhat))}


def dx_constant_statistics(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"x": rstd * dy * gamma}


def dx_without_gamma(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    dxhat = dy  # dout ⊙ γ belongs here
    return {"x": rstd * (dxhat - _mean(dxhat) - xhat * _mean(dxhat * xhat))}


def dx_variance_term_sign(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    dxhat = dy * gamma
    return {"x": rstd * (dxhat - _mean(dxhat) + xhat * _mean(dxhat * xhat))}


def dx_without_eps(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    dxhat = dy * gamma
    return {"x": (dxhat - _mean(dxhat) - xhat * _mean(dxhat * xhat)) / std}


def dgamma_without_xhat(inputs, dy):
    return {"gamma": dy.reshape(-1, dy.shape[-1]).sum(axis=0)}


def dgamma_with_x(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"gamma": (dy * x).reshape(-1, C).sum(axis=0)}


def affine_summed_over_first_axis_only(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}  # (T, C) for a (B, T, C) x


def affine_not_summed(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"gamma": dy * xhat, "beta": dy}  # x's shape, not (C,)


def affine_averaged(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"gamma": (dy * xhat).reshape(-1, C).mean(axis=0), "beta": dy.reshape(-1, C).mean(axis=0)}


def dbeta_with_xhat(inputs, dy):
    xhat, rstd, std, gamma, x, C = _parts(inputs)
    return {"beta": (dy * xhat).reshape(-1, C).sum(axis=0)}


MISTAKES = [
    Mistake("missing the mean term", "dx is missing the − mean_c(dx̂) term: μ depends on every x_c "
            "of the row, so shifting the row changes nothing — dx must sum to zero over c", dx_no_mean_term),
    Mistake("missing the variance term", "dx is missing the − x̂ ⊙ mean_c(dx̂ ⊙ x̂) term: σ² depends "
            "on every x_c of the row too (differentiate rstd = (σ² + ε)^(−1/2) through σ²)",
            dx_no_variance_term),
    Mistake("μ and σ² treated as constants", "dx treats μ and σ² as constants: both are means over "
            "the row's x_c, and each gives one more term (− mean_c dx̂ and − x̂ ⊙ mean_c(dx̂ ⊙ x̂))",
            dx_constant_statistics),
    Mistake("γ forgotten in dx", "γ is missing from dx: y = γ ⊙ x̂ + β, so dx̂ = dout ⊙ γ comes first",
            dx_without_gamma),
    Mistake("variance term with the wrong sign", "the x̂ ⊙ mean_c(dx̂ ⊙ x̂) term has the wrong sign: "
            "it is subtracted (∂rstd/∂σ² = −rstd³/2)", dx_variance_term_sign),
    Mistake("ε forgotten in the backward", "the backward divides by σ, not √(σ² + ε): use the "
            "forward's rstd = 1/√(σ² + ε), which the cache keeps", dx_without_eps),
    Mistake("dgamma without x̂", "dγ is missing the x̂ factor: y = γ ⊙ x̂ + β, so dγ = Σ_rows dout ⊙ x̂",
            dgamma_without_xhat),
    Mistake("dgamma with x", "dγ multiplies dout by x, but γ multiplies x̂, the normalised input "
            "(the cache has it)", dgamma_with_x),
    Mistake("summed over the first axis only", "sum over every leading axis: γ and β are shared by "
            "all rows, B·T of them for a (B, T, C) input, and their gradients have shape (C,)",
            affine_summed_over_first_axis_only),
    Mistake("not summed over rows", "γ and β are shared by every row, so their gradients are the "
            "sum of each row's and have shape (C,): sum over the rows", affine_not_summed),
    Mistake("averaged over rows", "the gradient is averaged over the rows; it must be summed: each "
            "row adds its own share to the shared γ and β", affine_averaged),
    Mistake("dbeta with x̂", "dβ has an x̂ factor it does not need: y = γ ⊙ x̂ + β, so dβ = Σ_rows dout",
            dbeta_with_xhat),
]
