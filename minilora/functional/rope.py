"""Rotary position embeddings (Su et al., 2021) in HF transformers' "rotate_half" layout.

    θ_i = base^(−2i/hd)  (i < hd/2),      angle_{t,i} = (t + offset) · θ_i
    y = x ⊙ cos + rotate_half(x) ⊙ sin,   rotate_half(x) = [−x[..., hd/2:], x[..., :hd/2]]

Channel i and channel i + hd/2 of every head form a pair (not the adjacent channels 2i, 2i + 1
of the paper) and turn together by angle_{t,i} at position t: a rotation, so the backward is the
rotation by −angle_{t,i}. The cos and sin tables are (T, hd), each angle written twice, [a, a],
like HF's ``LlamaRotaryEmbedding``; they broadcast over batch rows and heads.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import checks
from ..backend import namespace, resolve_device


def rope_tables(T: int, hd: int, base: float, offset: int = 0, dtype: str = "float32", xp=None):
    """cos_{t,c} = cos((t + offset) · θ_{c mod hd/2}),  sin likewise,  θ_i = base^(−2i/hd)

    The angles are computed in float64 and rounded once, to ``dtype``, at the end (HF computes
    them in float32: the two agree to ~1e-7 · (t + offset) radians).

    Inputs:  T positions, hd even head width, base (SmolLM2's ``rope_theta`` is 100000),
             offset the first position (tokens already in a cache), dtype ("float16/32/64"),
             xp the namespace or device to build on ("cpu", "cuda" or a module; default "cpu")
    Returns: cos (T, hd), sin (T, hd), both of ``dtype``
    """
    checks.rope_table_inputs(T, hd, base, offset, dtype)
    xp = resolve_device("cpu" if xp is None else xp)
    i = xp.arange(hd // 2, dtype=xp.float64)  # (hd/2,)
    inv_freq = 1.0 / float(base) ** (2.0 * i / hd)  # (hd/2,)  θ_i, as HF writes it
    t = xp.arange(offset, offset + T, dtype=xp.float64)  # (T,)  the positions, exact integers
    angle = t[:, None] * inv_freq[None, :]  # (T, hd/2)
    angle = xp.concat([angle, angle], axis=-1)  # (T, hd)  channel i and i + hd/2 share θ_i
    out = getattr(xp, dtype)
    return xp.astype(xp.cos(angle), out), xp.astype(xp.sin(angle), out)


def rotate_half(x):
    """R x = [−x₂, x₁] with x₁ = x[..., :hd/2], x₂ = x[..., hd/2:]   (a quarter turn per pair)"""
    xp = namespace(x)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return xp.concat([-x2, x1], axis=-1)


def rotate_half_T(z):
    """Rᵀ z = [z₂, −z₁]   (the transpose of ``rotate_half``: the quarter turn back, Rᵀ = −R)"""
    xp = namespace(z)
    half = z.shape[-1] // 2
    z1, z2 = z[..., :half], z[..., half:]
    return xp.concat([z2, -z1], axis=-1)


class RoPECache(NamedTuple):
    cos: object  # (T, hd)
    sin: object  # (T, hd)


def rope_forward(x, cos, sin):
    """y = x ⊙ cos + rotate_half(x) ⊙ sin

    i.e. for each pair, with a = angle_{t,i}:
        y_i        = x_i cos a − x_{i+hd/2} sin a
        y_{i+hd/2} = x_{i+hd/2} cos a + x_i sin a

    Inputs:  x (B, H, T, hd), cos and sin (T, hd) from ``rope_tables`` (x's dtype)
    Returns: y (B, H, T, hd), cache
    """
    checks.rope_inputs(x, cos, sin)
    y = x * cos + rotate_half(x) * sin  # (B, H, T, hd)  the tables broadcast over B and H
    return y, RoPECache(cos, sin)


def rope_backward(dout, cache: RoPECache):
    """Backward of ``rope_forward``: y = (diag(cos) + diag(sin) R) x, so

        dx = dout ⊙ cos + Rᵀ(dout ⊙ sin)      (the rotation by −a: its transpose is its inverse)

    Inputs:  dout (B, H, T, hd), cache from ``rope_forward``
    Returns: dx (B, H, T, hd), {} (no parameters)
    """
    cos, sin = cache
    dx = dout * cos + rotate_half_T(dout * sin)  # (B, H, T, hd)
    return dx, {}
