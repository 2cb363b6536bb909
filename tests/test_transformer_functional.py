"""The transformer's pure pairs: LayerNorm, causal attention, token and position embeddings.

Gradient checks run in float64 on every backend of the ``xp`` fixture; a correct backward gives
relative errors around 1e-9 (central differences, h = 1e-6), a wrong term gives ~1.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import arr, tol
from minilora import backend
from minilora.functional.attention import (
    attention_backward,
    attention_forward,
    causal_bias,
    merge_heads,
    split_heads,
)
from minilora.functional.embedding import (
    embedding_backward,
    embedding_forward,
    position_backward,
    position_forward,
)
from minilora.functional.layernorm import layernorm_backward, layernorm_forward
from minilora.gradcheck import TOLERANCE, check_pair

# The xp fixture is a module, not state: reusing it across hypothesis examples is safe.
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def randn(xp, shape, seed=0, dtype="float64"):
    return arr(np.random.default_rng(seed).standard_normal(shape), xp, dtype)


def assert_all_pass(results):
    assert results, "no arrays were checked"
    for r in results:
        assert r.rel_error <= TOLERANCE, f"{r.component}.{r.array}: relative error {r.rel_error:.2e}"


# ----------------------------------------------------------------------------- gradient checks


def test_layernorm_gradcheck(xp):
    inputs = dict(x=randn(xp, (2, 3, 5), 0), gamma=randn(xp, (5,), 1), beta=randn(xp, (5,), 2))
    results = check_pair(layernorm_forward, layernorm_backward, inputs)
    assert [r.array for r in results] == ["x", "gamma", "beta"]
    assert_all_pass(results)


def test_attention_gradcheck_with_causal_mask(xp):
    q, k, v = (randn(xp, (2, 2, 5, 3), s) for s in range(3))
    results = check_pair(attention_forward, attention_backward, dict(q=q, k=k, v=v))
    assert [r.array for r in results] == ["q", "k", "v"]
    assert_all_pass(results)


def test_attention_gradcheck_through_split_and_merge(xp):
    """The heads helpers around the core: (B, T, C) in, (B, T, C) out, still exact."""

    def fwd(x):
        out, cache = attention_forward(split_heads(x, 2), split_heads(x * 0.5, 2), split_heads(x, 2))
        return merge_heads(out), cache

    def bwd(dout, cache):
        _, g = attention_backward(split_heads(dout, 2), cache)
        return merge_heads(g["q"]) + 0.5 * merge_heads(g["k"]) + merge_heads(g["v"]), {}

    assert_all_pass(check_pair(fwd, bwd, dict(x=randn(xp, (2, 4, 6))), name="heads"))


def test_embedding_gradcheck_with_repeated_ids(xp):
    ids = arr([[1, 1, 3, 1], [3, 0, 1, 1]], xp, "int64")  # id 1 five times, id 3 twice, 2 and 4 never
    results = check_pair(embedding_forward, embedding_backward, dict(ids=ids, W=randn(xp, (5, 3))))
    assert [r.array for r in results] == ["W"]
    assert_all_pass(results)


def test_embedding_gradient_adds_repeated_rows(xp):
    ids = arr([2, 2, 2, 0], xp, "int64")
    dout = arr(np.arange(12.0).reshape(4, 3), xp)
    _, cache = embedding_forward(ids, randn(xp, (4, 3)))
    _, g = embedding_backward(dout, cache)
    expected = np.zeros((4, 3))
    expected[2] = [0 + 3 + 6, 1 + 4 + 7, 2 + 5 + 8]
    expected[0] = [9, 10, 11]
    np.testing.assert_array_equal(backend.to_numpy(g["W"]), expected)


def test_position_gradcheck(xp):
    dout = randn(xp, (2, 4, 3), 5)  # (B, T, C): the (T, C) output broadcasts over B
    results = check_pair(position_forward, position_backward, dict(P=randn(xp, (6, 3)), T=4), dout=dout)
    assert_all_pass(results)


# ----------------------------------------------------------------------------- properties


@FEW
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 6), hd=st.integers(1, 4),
       seed=st.integers(0, 2**16), big=st.booleans())
def test_attention_weights_are_causal_probabilities(xp, B, H, T, hd, seed, big):
    shape = (B, H, T, hd)
    s = 300.0 if big else 1.0  # large logits: the stable softmax must not overflow
    q, k, v = (randn(xp, shape, seed + i) * s for i in range(3))
    out, cache = attention_forward(q, k, v)
    att = backend.to_numpy(cache.att)
    assert att.shape == (B, H, T, T)
    assert np.all(np.isfinite(att)) and np.all(att >= 0)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert np.all(att[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)  # future: exactly 0
    np.testing.assert_allclose(backend.to_numpy(out), att @ backend.to_numpy(v), rtol=1e-12, atol=1e-9)


@FEW
@given(T=st.integers(2, 6), t=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_attention_output_at_t_ignores_later_positions(xp, T, t, seed):
    t = t % (T - 1)  # some position with a future
    q, k, v = (randn(xp, (1, 2, T, 3), seed + i) for i in range(3))
    k2, v2 = (backend.to_numpy(a).copy() for a in (k, v))
    k2[:, :, t + 1:] += 10.0
    v2[:, :, t + 1:] -= 7.0
    out1 = backend.to_numpy(attention_forward(q, k, v)[0])
    out2 = backend.to_numpy(attention_forward(q, arr(k2, xp), arr(v2, xp))[0])
    np.testing.assert_array_equal(out1[:, :, : t + 1], out2[:, :, : t + 1])
    assert not np.allclose(out1[:, :, t + 1:], out2[:, :, t + 1:])


def test_causal_bias_is_zero_on_and_below_the_diagonal(xp):
    M = backend.to_numpy(causal_bias(4, xp, xp.float64))
    assert np.all(M[np.tril_indices(4)] == 0) and np.all(M[np.triu_indices(4, 1)] == -np.inf)


@FEW
@given(rows=st.integers(1, 4), C=st.integers(2, 9), seed=st.integers(0, 2**16),
       loc=st.floats(-100, 100), spread=st.floats(0.01, 100))
def test_layernorm_normalises_each_row_before_the_affine_part(xp, rows, C, seed, loc, spread):
    x = randn(xp, (rows, C), seed) * spread + loc
    eps = 1e-5
    _, cache = layernorm_forward(x, randn(xp, (C,), 1), randn(xp, (C,), 2), eps=eps)
    xhat = backend.to_numpy(cache.xhat)
    var = backend.to_numpy(x).var(-1)
    np.testing.assert_allclose(xhat.mean(-1), 0.0, atol=1e-9)
    # unit variance up to the ε that guards division by zero: var(x̂) = σ² / (σ² + ε) exactly
    np.testing.assert_allclose(xhat.var(-1), var / (var + eps), rtol=1e-9)
    wide = var > 1e3 * eps  # rows that are not nearly constant: unit variance to 1e-3
    np.testing.assert_allclose(xhat.var(-1)[wide], 1.0, rtol=1e-3)


def test_layernorm_affine_part(xp):
    x, g, b = randn(xp, (3, 4), 0), randn(xp, (4,), 1), randn(xp, (4,), 2)
    y, cache = layernorm_forward(x, g, b)
    np.testing.assert_allclose(
        backend.to_numpy(y),
        backend.to_numpy(cache.xhat) * backend.to_numpy(g) + backend.to_numpy(b), rtol=1e-14)


def test_heads_roundtrip_and_layout(xp):
    x = arr(np.arange(2 * 3 * 6, dtype=np.float64).reshape(2, 3, 6), xp)
    h = split_heads(x, 3)
    assert tuple(h.shape) == (2, 3, 3, 2)
    hn = backend.to_numpy(h)
    np.testing.assert_array_equal(hn[1, 2, 0], backend.to_numpy(x)[1, 0, 4:6])  # head 2 = channels 4:6
    np.testing.assert_array_equal(backend.to_numpy(merge_heads(h)), backend.to_numpy(x))


def test_float32_in_float32_out(xp):
    f = "float32"
    x = randn(xp, (2, 3, 4), 0, f)
    y, c = layernorm_forward(x, randn(xp, (4,), 1, f), randn(xp, (4,), 2, f))
    dx, g = layernorm_backward(y, c)
    assert {backend.dtype_name(a) for a in (y, dx, g["gamma"], g["beta"])} == {f}
    q = split_heads(x, 2)
    o, c = attention_forward(q, q, q)
    _, g = attention_backward(o, c)
    assert {backend.dtype_name(a) for a in (o, c.att, *g.values())} == {f}
    e, c = embedding_forward(arr([[0, 2]], xp, "int64"), randn(xp, (3, 4), 0, f))
    assert backend.dtype_name(e) == f and backend.dtype_name(embedding_backward(e, c)[1]["W"]) == f


def test_float32_attention_matches_float64(xp):
    q, k, v = (randn(xp, (2, 2, 5, 4), s) for s in range(3))
    out64 = backend.to_numpy(attention_forward(q, k, v)[0])
    out32 = backend.to_numpy(attention_forward(*(xp.astype(a, xp.float32) for a in (q, k, v)))[0])
    np.testing.assert_allclose(out32, out64, rtol=0, atol=50 * tol("float32"))


# ----------------------------------------------------------------------------- bad input


def test_embedding_rejects_ids_outside_the_vocabulary(xp):
    W = randn(xp, (5, 2))
    with pytest.raises(ValueError, match=r"ids.*\[0, 5\).*\[0, 7\]"):
        embedding_forward(arr([[0, 7]], xp, "int64"), W)
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        embedding_forward(arr([-1, 2], xp, "int64"), W)
    with pytest.raises(TypeError, match="ids.*integer.*float64"):
        embedding_forward(arr([0.0, 1.0], xp), W)


def test_position_rejects_sequences_longer_than_the_context(xp):
    with pytest.raises(ValueError, match=r"T = 9.*n_ctx = 8"):
        position_forward(randn(xp, (8, 2)), 9)


def test_split_heads_rejects_a_head_count_that_does_not_divide_the_width(xp):
    with pytest.raises(ValueError, match=r"n_head = 4.*C = 6"):
        split_heads(randn(xp, (1, 2, 6)), 4)


def test_attention_and_layernorm_reject_bad_shapes(xp):
    with pytest.raises(ValueError, match="q, k, v"):
        attention_forward(randn(xp, (1, 1, 3, 2)), randn(xp, (1, 1, 4, 2)), randn(xp, (1, 1, 3, 2)))
    with pytest.raises(ValueError, match=r"gamma and beta must have shape \(4,\)"):
        layernorm_forward(randn(xp, (2, 4)), randn(xp, (3,)), randn(xp, (4,)))
    with pytest.raises(TypeError, match="same|share one dtype"):
        layernorm_forward(randn(xp, (2, 4)), randn(xp, (4,), 0, "float32"), randn(xp, (4,)))


def test_scale_is_one_over_sqrt_hd(xp):
    q = randn(xp, (1, 1, 2, 9))
    _, cache = attention_forward(q, q, q)
    assert math.isclose(cache.scale, 1 / 3)
