"""The Llama block's pure pairs: RMSNorm, RoPE, SiLU/SwiGLU, repeat_kv and grouped-query attention.

Gradient checks run in float64 on every backend of the ``xp`` fixture (NumPy, array-api-strict,
CuPy when a GPU is usable); a correct backward gives relative errors around 1e-9 (central
differences, h = 1e-6), a wrong term gives ~1e-1 or more. The PyTorch parity tests (marked
``crosscheck``, skipped when torch is missing) write each layer as transformers' Llama code does,
in torch, and compare forward and autograd gradients in float64 (tolerance 1e-10; the two
computations differ by ~1e-15).
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import arr, tol
from minilora import backend
from minilora.functional.attention import attention_backward, attention_forward
from minilora.functional.gqa import (
    gqa_attention_backward,
    gqa_attention_forward,
    repeat_kv_backward,
    repeat_kv_forward,
)
from minilora.functional.rmsnorm import rmsnorm_backward, rmsnorm_forward
from minilora.functional.rope import rope_backward, rope_forward, rope_tables, rotate_half
from minilora.functional.swiglu import silu_backward, silu_forward, swiglu_backward, swiglu_forward
from minilora.gradcheck import TOLERANCE, check_pair

try:
    import torch
except ImportError:
    torch = None

HINT = "install `pip install torch==2.13.0` (CPU build), then `pip install 'minilora[crosscheck]'`"
needs_torch = pytest.mark.skipif(torch is None, reason=f"PyTorch is not installed: {HINT}")
PARITY = 1e-10  # float64 minilora vs float64 torch: ~1e-15 apart

# The xp fixture is a module, not state: reusing it across hypothesis examples is safe.
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def randn(xp, shape, seed=0, dtype="float64"):
    return arr(np.random.default_rng(seed).standard_normal(shape), xp, dtype)


def host(a):
    return backend.to_numpy(a)


def assert_all_pass(results, arrays):
    assert [r.array for r in results] == arrays, "every gradient is checked, in order"
    for r in results:
        assert r.rel_error <= TOLERANCE, f"{r.component}.{r.array}: relative error {r.rel_error:.2e}"


# ----------------------------------------------------------------------------- gradient checks


@pytest.mark.parametrize("shape, eps", [((7,), 0.3), ((2, 5), 1e-3), ((2, 3, 4), 0.05)])
def test_rmsnorm_gradcheck(xp, shape, eps):
    x = randn(xp, shape, 0) * 2.0 + 0.5  # a non-zero mean: RMSNorm does not remove it
    inputs = dict(x=x, gamma=randn(xp, shape[-1:], 1), eps=eps)
    assert_all_pass(check_pair(rmsnorm_forward, rmsnorm_backward, inputs), ["x", "gamma"])


@pytest.mark.parametrize("B, H, T, hd, offset, base",
                         [(2, 3, 5, 4, 7, 10000.0), (1, 2, 6, 8, 3, 100000.0), (1, 1, 3, 2, 1000, 500.0)])
def test_rope_gradcheck(xp, B, H, T, hd, offset, base):
    cos, sin = rope_tables(T, hd, base, offset=offset, dtype="float64", xp=xp)
    inputs = dict(x=randn(xp, (B, H, T, hd)), cos=cos, sin=sin)
    assert_all_pass(check_pair(rope_forward, rope_backward, inputs), ["x"])


def test_rope_gradcheck_with_arbitrary_tables(xp):
    """The backward is the exact transpose for any (T, hd) tables, not only rotations whose
    halves repeat [c, c]: a term applied to the wrong half (sin[i] for sin[i + hd/2]) shows here."""
    inputs = dict(x=randn(xp, (2, 2, 3, 6), 0), cos=randn(xp, (3, 6), 1), sin=randn(xp, (3, 6), 2))
    assert_all_pass(check_pair(rope_forward, rope_backward, inputs), ["x"])


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 3)])
def test_silu_gradcheck(xp, shape):
    x = randn(xp, shape) * 4.0  # both tails of σ, and near 0
    assert_all_pass(check_pair(silu_forward, silu_backward, dict(x=x)), ["x"])


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_swiglu_gradcheck(xp, shape):
    inputs = dict(gate=randn(xp, shape, 0) * 3.0, up=randn(xp, shape, 1))
    assert_all_pass(check_pair(swiglu_forward, swiglu_backward, inputs), ["gate", "up"])


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_gradcheck(xp, n_rep):
    def forward(x):
        return repeat_kv_forward(x, n_rep)

    results = check_pair(forward, repeat_kv_backward, dict(x=randn(xp, (2, 2, 3, 4))), name="repeat_kv")
    assert_all_pass(results, ["x"])


@pytest.mark.parametrize("B, H, Hkv, T, hd", [(2, 3, 3, 5, 4), (2, 3, 1, 5, 4), (1, 6, 2, 4, 2), (1, 4, 2, 3, 3)])
def test_gqa_attention_gradcheck(xp, B, H, Hkv, T, hd):
    """n_rep = H / Hkv = 1 (multi-head), 3 with one kv head (multi-query), 3 and 2 with groups."""
    q, k, v = randn(xp, (B, H, T, hd), 0), randn(xp, (B, Hkv, T, hd), 1), randn(xp, (B, Hkv, T, hd), 2)
    results = check_pair(gqa_attention_forward, gqa_attention_backward, dict(q=q, k=k, v=v))
    assert_all_pass(results, ["q", "k", "v"])


def test_rope_then_gqa_gradcheck(xp):
    """The order a Llama block uses: RoPE on q and k, then grouped attention; still exact."""
    cos, sin = rope_tables(5, 4, 100000.0, offset=2, dtype="float64", xp=xp)

    def forward(q, k, v):
        qr, q_cache = rope_forward(q, cos, sin)
        kr, k_cache = rope_forward(k, cos, sin)
        out, cache = gqa_attention_forward(qr, kr, v)
        return out, (q_cache, k_cache, cache)

    def backward(dout, caches):
        q_cache, k_cache, cache = caches
        _, g = gqa_attention_backward(dout, cache)
        return None, {"q": rope_backward(g["q"], q_cache)[0], "k": rope_backward(g["k"], k_cache)[0], "v": g["v"]}

    q, k, v = randn(xp, (2, 6, 5, 4), 0), randn(xp, (2, 2, 5, 4), 1), randn(xp, (2, 2, 5, 4), 2)
    assert_all_pass(check_pair(forward, backward, dict(q=q, k=k, v=v), name="rope+gqa"), ["q", "k", "v"])


# ----------------------------------------------------------------------------- need=


def test_backwards_compute_only_what_need_names(xp):
    x, gamma = randn(xp, (2, 3, 4), 0), randn(xp, (4,), 1)
    y, cache = rmsnorm_forward(x, gamma, 1e-3)
    dout = randn(xp, tuple(y.shape), 2)
    dx, g = rmsnorm_backward(dout, cache)
    dx_only, none = rmsnorm_backward(dout, cache, need=("x",))
    no_dx, g_only = rmsnorm_backward(dout, cache, need=("gamma",))
    assert none == {} and no_dx is None and list(g_only) == ["gamma"]
    np.testing.assert_array_equal(host(dx_only), host(dx))
    np.testing.assert_array_equal(host(g_only["gamma"]), host(g["gamma"]))

    gate, up = randn(xp, (3, 4), 3), randn(xp, (3, 4), 4)
    h, cache = swiglu_forward(gate, up)
    _, full = swiglu_backward(h, cache)
    for need in [("gate",), ("up",)]:
        none, part = swiglu_backward(h, cache, need=need)
        assert none is None and list(part) == list(need)
        np.testing.assert_array_equal(host(part[need[0]]), host(full[need[0]]))

    q, k, v = randn(xp, (1, 6, 4, 2), 5), randn(xp, (1, 2, 4, 2), 6), randn(xp, (1, 2, 4, 2), 7)
    out, cache = gqa_attention_forward(q, k, v)
    _, full = gqa_attention_backward(out, cache)
    assert list(full) == ["q", "k", "v"]
    for need in [("q",), ("k",), ("v",), ("k", "v"), ("q", "v")]:
        none, part = gqa_attention_backward(out, cache, need=need)
        assert none is None and list(part) == list(need)
        for n in need:
            assert tuple(part[n].shape) == tuple(full[n].shape)
            np.testing.assert_array_equal(host(part[n]), host(full[n]))


# ----------------------------------------------------------------------------- properties


@FEW
@given(T=st.integers(1, 6), half=st.integers(1, 4), offset=st.integers(0, 5000),
       base=st.sampled_from([500.0, 10000.0, 100000.0]), seed=st.integers(0, 2**16))
def test_rope_preserves_the_norm_of_every_pair(xp, T, half, offset, base, seed):
    hd = 2 * half
    cos, sin = rope_tables(T, hd, base, offset=offset, dtype="float64", xp=xp)
    x = randn(xp, (2, 3, T, hd), seed)
    y, cache = rope_forward(x, cos, sin)
    xn, yn = host(x), host(y)
    pair_norm = lambda a: a[..., :half] ** 2 + a[..., half:] ** 2  # noqa: E731  (..., hd/2)
    np.testing.assert_allclose(pair_norm(yn), pair_norm(xn), rtol=1e-12, atol=1e-14)
    # a rotation's transpose is its inverse: the backward of y gives x back
    np.testing.assert_allclose(host(rope_backward(y, cache)[0]), xn, rtol=1e-12, atol=1e-14)


@FEW
@given(T=st.integers(2, 7), half=st.integers(1, 4), offset=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_the_position_difference(xp, T, half, offset, seed):
    """RoPE(q at m) · RoPE(k at n) = f(m − n): the same q, k at every position give a score
    matrix that is constant along each diagonal, and unchanged when every position shifts."""
    hd = 2 * half
    q0, k0 = np.random.default_rng(seed).standard_normal((2, hd))
    q, k = (arr(np.broadcast_to(a, (1, 1, T, hd)).copy(), xp) for a in (q0, k0))

    def scores(start):
        cos, sin = rope_tables(T, hd, 100000.0, offset=start, dtype="float64", xp=xp)
        qr, kr = rope_forward(q, cos, sin)[0], rope_forward(k, cos, sin)[0]
        return host(qr @ xp.matrix_transpose(kr))[0, 0]  # (T, T)  S[m, n] = RoPE(q)_m · RoPE(k)_n

    S = scores(0)
    np.testing.assert_allclose(S[1:, 1:], S[:-1, :-1], rtol=0, atol=1e-9)  # Toeplitz: f(m − n)
    np.testing.assert_allclose(scores(offset), S, rtol=0, atol=1e-9)
    assert not np.allclose(S[0, 1:], S[0, 0])  # and it does depend on m − n


def test_rope_tables_layout(xp):
    T, hd, base, offset = 5, 6, 10000.0, 4
    cos, sin = rope_tables(T, hd, base, offset=offset, dtype="float64", xp=xp)
    assert backend.namespace(cos) is xp and tuple(cos.shape) == tuple(sin.shape) == (T, hd)
    theta = base ** (-2.0 * np.arange(hd // 2) / hd)  # (hd/2,)
    angle = np.arange(offset, offset + T)[:, None] * theta  # (T, hd/2)
    np.testing.assert_allclose(host(cos), np.cos(np.concatenate([angle, angle], -1)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(host(sin), np.sin(np.concatenate([angle, angle], -1)), rtol=0, atol=1e-15)
    # the offset is a slice of the longer table, and position 0 is the identity
    long_cos, long_sin = rope_tables(T + offset, hd, base, dtype="float64", xp=xp)
    np.testing.assert_array_equal(host(long_cos)[offset:], host(cos))
    np.testing.assert_array_equal(host(long_sin)[offset:], host(sin))
    assert np.all(host(long_cos)[0] == 1) and np.all(host(long_sin)[0] == 0)
    assert backend.dtype_name(rope_tables(2, 4, base, xp=xp)[0]) == "float32"  # the default dtype


def test_rotate_half_pairs_channel_i_with_i_plus_half(xp):
    x = arr(np.arange(6.0).reshape(1, 1, 1, 6), xp)  # channels 0..5, hd/2 = 3
    np.testing.assert_array_equal(host(rotate_half(x))[0, 0, 0], [-3, -4, -5, 0, 1, 2])


@FEW
@given(rows=st.integers(1, 4), C=st.integers(1, 9), seed=st.integers(0, 2**16),
       c=st.floats(0.01, 100), eps=st.floats(1e-6, 1.0))
def test_rmsnorm_ignores_the_scale_of_x(xp, rows, C, seed, c, eps):
    x, gamma = randn(xp, (rows, C), seed), randn(xp, (C,), 1)
    y = host(rmsnorm_forward(x, gamma, eps)[0])
    # exactly: x / √(mean x² + ε) = cx / √(mean (cx)² + c²ε)
    np.testing.assert_allclose(host(rmsnorm_forward(x * c, gamma, eps * c * c)[0]), y, rtol=1e-12, atol=1e-14)
    # and with a negligible ε the scale of x is invisible: x̂ has unit root mean square per row
    y_tiny, cache = rmsnorm_forward(x * c, gamma, 1e-30)
    np.testing.assert_allclose(host(y_tiny), host(rmsnorm_forward(x, gamma, 1e-30)[0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.sqrt(np.mean(host(cache.xhat) ** 2, -1)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_silu_is_stable_at_plus_minus_1000(xp, dtype):
    if dtype == "float16" and xp.__name__ == "array_api_strict":
        pytest.skip("array_api_strict has no float16")
    values = [-1000.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1000.0]
    x = arr(values, xp, dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")  # an overflow in exp would warn: make it fail
        y, cache = silu_forward(x)
        dx, _ = silu_backward(arr(np.ones(len(values)), xp, dtype), cache)
    yn, dxn = host(y), host(dx)
    assert yn.dtype == dxn.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(yn)) and np.all(np.isfinite(dxn))
    assert yn[0] == 0 and yn[-1] == 1000 and dxn[0] == 0 and dxn[-1] == 1  # the two asymptotes
    xs = np.array(values)
    sig = 1 / (1 + np.exp(-np.clip(xs, -700, 700)))  # the float64 reference, away from overflow
    np.testing.assert_allclose(yn, xs * sig, rtol=50 * tol(dtype), atol=50 * tol(dtype))
    np.testing.assert_allclose(dxn, sig * (1 + xs * (1 - sig)), rtol=50 * tol(dtype), atol=50 * tol(dtype))


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_layout_and_its_backward_sums_the_copies(xp, n_rep):
    B, Hkv, T, hd = 2, 2, 3, 2
    k = arr(np.arange(B * Hkv * T * hd, dtype=np.float64).reshape(B, Hkv, T, hd), xp)
    k_rep, cache = repeat_kv_forward(k, n_rep)
    assert tuple(k_rep.shape) == (B, Hkv * n_rep, T, hd)
    for j in range(Hkv * n_rep):  # query head j reads kv head j // n_rep
        np.testing.assert_array_equal(host(k_rep)[:, j], host(k)[:, j // n_rep])
    dout = arr(np.random.default_rng(0).standard_normal((B, Hkv * n_rep, T, hd)), xp)
    dk, none = repeat_kv_backward(dout, cache)
    assert none == {} and tuple(dk.shape) == (B, Hkv, T, hd)
    d = host(dout)
    expected = np.stack([sum(d[:, j * n_rep + r] for r in range(n_rep)) for j in range(Hkv)], axis=1)
    np.testing.assert_allclose(host(dk), expected, rtol=1e-15, atol=0)


def test_gqa_is_attention_on_repeated_heads(xp):
    q, k, v = randn(xp, (2, 6, 4, 3), 0), randn(xp, (2, 2, 4, 3), 1), randn(xp, (2, 2, 4, 3), 2)
    out, cache = gqa_attention_forward(q, k, v)
    k3, v3 = (arr(np.repeat(host(a), 3, axis=1), xp) for a in (k, v))  # head j <- kv head j // 3
    ref, ref_cache = attention_forward(q, k3, v3)
    np.testing.assert_array_equal(host(out), host(ref))
    assert tuple(cache.attention.att.shape) == (2, 6, 4, 4)
    # with n_rep = 1 it is attention itself, gradients and all
    out1, cache1 = gqa_attention_forward(q, k3, v3)
    np.testing.assert_array_equal(host(out1), host(ref))
    g1, g = gqa_attention_backward(out1, cache1)[1], attention_backward(out1, ref_cache)[1]
    for n in ("q", "k", "v"):
        np.testing.assert_array_equal(host(g1[n]), host(g[n]))


def test_float32_in_float32_out(xp):
    f = "float32"
    x = randn(xp, (2, 3, 4, 4), 0, f)
    y, c = rmsnorm_forward(x, randn(xp, (4,), 1, f), 1e-5)
    dx, g = rmsnorm_backward(y, c)
    assert {backend.dtype_name(a) for a in (y, dx, g["gamma"])} == {f}
    cos, sin = rope_tables(4, 4, 10000.0, offset=3, xp=xp)
    y, c = rope_forward(x, cos, sin)
    assert {backend.dtype_name(a) for a in (cos, sin, y, rope_backward(y, c)[0])} == {f}
    h, c = swiglu_forward(x, x)
    assert {backend.dtype_name(a) for a in (h, *swiglu_backward(h, c)[1].values())} == {f}
    kv = randn(xp, (2, 1, 4, 4), 2, f)
    o, c = gqa_attention_forward(x, kv, kv)
    assert {backend.dtype_name(a) for a in (o, *gqa_attention_backward(o, c)[1].values())} == {f}


# ----------------------------------------------------------------------------- bad input


def test_rmsnorm_rejects_bad_gamma_and_eps(xp):
    x = randn(xp, (2, 4))
    with pytest.raises(ValueError, match=r"rmsnorm.*\(2, 4\).*gamma must have shape \(4,\).*\(3,\)"):
        rmsnorm_forward(x, randn(xp, (3,)), 1e-5)
    for eps in (0.0, -1e-5, math.inf, math.nan, True, "1e-5"):
        with pytest.raises(ValueError, match="rmsnorm: eps must be a positive finite number"):
            rmsnorm_forward(x, randn(xp, (4,)), eps)
    with pytest.raises(TypeError, match="rmsnorm.*share one dtype"):
        rmsnorm_forward(x, randn(xp, (4,), 0, "float32"), 1e-5)


def test_rope_rejects_bad_tables_and_shapes(xp):
    with pytest.raises(ValueError, match="rope_tables: hd must be an even"):
        rope_tables(4, 5, 10000.0, xp=xp)
    with pytest.raises(ValueError, match="rope_tables: T must be a positive int"):
        rope_tables(0, 4, 10000.0, xp=xp)
    with pytest.raises(ValueError, match="rope_tables: base must be a positive finite"):
        rope_tables(4, 4, 0.0, xp=xp)
    with pytest.raises(ValueError, match="rope_tables: offset must be an int >= 0"):
        rope_tables(4, 4, 10000.0, offset=-1, xp=xp)
    with pytest.raises(ValueError, match="rope_tables: dtype must be one of"):
        rope_tables(4, 4, 10000.0, dtype="int32", xp=xp)
    cos, sin = rope_tables(3, 4, 10000.0, dtype="float64", xp=xp)
    with pytest.raises(ValueError, match=r"rope: x has shape \(1, 2, 3, 5\); its head width hd = 5 must be even"):
        rope_forward(randn(xp, (1, 2, 3, 5)), cos, sin)
    with pytest.raises(ValueError, match=r"rope: x has shape \(1, 2, 4, 4\), so cos and sin must have shape "
                                         r"\(T, hd\) = \(4, 4\); got cos \(3, 4\) and sin \(3, 4\)"):
        rope_forward(randn(xp, (1, 2, 4, 4)), cos, sin)
    with pytest.raises(ValueError, match=r"rope: x must be 4-D \(B, H, T, hd\), got shape \(3, 4\)"):
        rope_forward(randn(xp, (3, 4)), cos, sin)
    with pytest.raises(TypeError, match="rope.*share one dtype"):
        rope_forward(randn(xp, (1, 1, 3, 4), 0, "float32"), cos, sin)


def test_swiglu_rejects_mismatched_gate_and_up(xp):
    with pytest.raises(ValueError, match=r"swiglu: gate and up must share one shape, got gate \(2, 3\) and up \(2, 4\)"):
        swiglu_forward(randn(xp, (2, 3)), randn(xp, (2, 4)))
    with pytest.raises(TypeError, match="swiglu.*share one dtype"):
        swiglu_forward(randn(xp, (2, 3)), randn(xp, (2, 3), 0, "float32"))
    with pytest.raises(TypeError, match="silu: argument 'x' must be a floating array"):
        silu_forward(arr([1, 2], xp, "int64"))


def test_gqa_rejects_heads_that_do_not_group(xp):
    q = randn(xp, (1, 4, 3, 2))
    with pytest.raises(ValueError, match=r"gqa_attention: the query heads H = 4 must be a multiple of the "
                                         r"key/value heads Hkv = 3"):
        gqa_attention_forward(q, randn(xp, (1, 3, 3, 2)), randn(xp, (1, 3, 3, 2)))
    with pytest.raises(ValueError, match=r"gqa_attention: q, k, v must agree on B, T and hd = \(1, 3, 2\)"):
        gqa_attention_forward(q, randn(xp, (1, 2, 5, 2)), randn(xp, (1, 2, 5, 2)))
    with pytest.raises(ValueError, match=r"gqa_attention: expected q \(B, H, T, hd\) and k, v of one shape"):
        gqa_attention_forward(q, randn(xp, (1, 2, 3, 2)), randn(xp, (1, 1, 3, 2)))
    with pytest.raises(ValueError, match="repeat_kv: n_rep must be a positive int, got 0"):
        repeat_kv_forward(randn(xp, (1, 2, 3, 2)), 0)
    with pytest.raises(ValueError, match=r"repeat_kv: k must be 4-D \(B, Hkv, T, hd\)"):
        repeat_kv_forward(randn(xp, (2, 3, 2)), 2)


# ----------------------------------------------------------------------------- PyTorch parity


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes; the machine is shared
    yield
    torch.set_num_threads(before)


def leaf(a):
    """A float64 (or float32) torch leaf that requires a gradient, from any backend's array."""
    return torch.from_numpy(host(a).copy()).requires_grad_(True)


def assert_close(mine, theirs, rtol=PARITY, what=""):
    mine, theirs = host(mine), theirs.detach().numpy()
    err = np.linalg.norm(mine - theirs) / max(np.linalg.norm(theirs), 1e-300)
    assert err <= rtol, f"{what}: relative error {err:.2e} against PyTorch"


def torch_rmsnorm(x, weight, eps):
    """transformers' LlamaRMSNorm.forward, without its float32 round trip (this is float64)."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def torch_rotate_half(x):
    """transformers' rotate_half."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.crosscheck
@needs_torch
def test_rmsnorm_matches_llama_rmsnorm(xp, one_thread):
    x, gamma, eps = randn(xp, (2, 3, 8), 0), randn(xp, (8,), 1), 1e-3
    y, cache = rmsnorm_forward(x, gamma, eps)
    dout = randn(xp, (2, 3, 8), 2)
    dx, g = rmsnorm_backward(dout, cache)
    tx, tw = leaf(x), leaf(gamma)
    ty = torch_rmsnorm(tx, tw, eps)
    ty.backward(torch.from_numpy(host(dout)))
    assert_close(y, ty, what="y")
    assert_close(dx, tx.grad, what="dx")
    assert_close(g["gamma"], tw.grad, what="dgamma")


@pytest.mark.crosscheck
@needs_torch
def test_rmsnorm_float32_matches_llama_rmsnorm_as_written(xp, one_thread):
    """In float32 the class's own float32 round trip is a no-op: the same numbers to ~1e-7."""
    x, gamma = randn(xp, (4, 16), 0, "float32"), randn(xp, (16,), 1, "float32")
    tx = torch.from_numpy(host(x).copy())
    hidden = tx.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + 1e-5)
    ty = torch.from_numpy(host(gamma).copy()) * hidden.to(tx.dtype)
    assert_close(rmsnorm_forward(x, gamma, 1e-5)[0], ty, rtol=50 * tol("float32"), what="y float32")


@pytest.mark.crosscheck
@needs_torch
def test_rope_matches_rotate_half_in_torch(xp, one_thread):
    B, H, T, hd, base, offset = 2, 3, 6, 8, 100000.0, 5
    cos, sin = rope_tables(T, hd, base, offset=offset, dtype="float64", xp=xp)
    # transformers' LlamaRotaryEmbedding and apply_rotary_pos_emb, in float64
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).double() / hd))
    position_ids = torch.arange(offset, offset + T, dtype=torch.float64)
    freqs = position_ids[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    assert_close(cos, emb.cos(), what="cos")
    assert_close(sin, emb.sin(), what="sin")
    x = randn(xp, (B, H, T, hd))
    y, cache = rope_forward(x, cos, sin)
    dout = randn(xp, (B, H, T, hd), 1)
    tx = leaf(x)
    ty = tx * emb.cos() + torch_rotate_half(tx) * emb.sin()
    ty.backward(torch.from_numpy(host(dout)))
    assert_close(y, ty, what="y")
    assert_close(rope_backward(dout, cache)[0], tx.grad, what="dx")


@pytest.mark.crosscheck
@needs_torch
def test_rope_float32_tables_differ_from_transformers_float32_angles_by_rounding(one_thread):
    """transformers computes the angles in float32; these are float64 angles rounded once. The gap
    grows with the position, ~6e-8 · t (1e-4 at t = 2048 for SmolLM2's hd = 64, base = 1e5)."""
    T, hd, base = 2048, 64, 100000.0
    cos, sin = rope_tables(T, hd, base)
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = (inv_freq[:, None] @ torch.arange(T).float()[None, :]).T
    emb = torch.cat((freqs, freqs), dim=-1)
    bound = 1.2e-7 * np.arange(T)[:, None] + 1e-6  # (T, 1)
    assert np.all(np.abs(cos - emb.cos().numpy()) <= bound)
    assert np.all(np.abs(sin - emb.sin().numpy()) <= bound)


@pytest.mark.crosscheck
@needs_torch
def test_swiglu_matches_torch_silu(xp, one_thread):
    gate, up = randn(xp, (3, 7), 0) * 5.0, randn(xp, (3, 7), 1)
    h, cache = swiglu_forward(gate, up)
    dout = randn(xp, (3, 7), 2)
    _, g = swiglu_backward(dout, cache)
    tg, tu = leaf(gate), leaf(up)
    th = torch.nn.functional.silu(tg) * tu
    th.backward(torch.from_numpy(host(dout)))
    assert_close(h, th, what="h")
    assert_close(g["gate"], tg.grad, what="dgate")
    assert_close(g["up"], tu.grad, what="dup")
    x = arr([-1000.0, 1000.0], xp, "float32")
    assert_close(silu_forward(x)[0], torch.nn.functional.silu(torch.tensor([-1000.0, 1000.0])), what="silu ±1000")


@pytest.mark.crosscheck
@needs_torch
@pytest.mark.parametrize("H, Hkv", [(3, 3), (6, 2), (3, 1)])
def test_gqa_matches_torch_sdpa_with_repeat_interleave(xp, one_thread, H, Hkv):
    B, T, hd = 2, 5, 4
    q, k, v = randn(xp, (B, H, T, hd), 0), randn(xp, (B, Hkv, T, hd), 1), randn(xp, (B, Hkv, T, hd), 2)
    out, cache = gqa_attention_forward(q, k, v)
    dout = randn(xp, (B, H, T, hd), 3)
    _, g = gqa_attention_backward(dout, cache)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    n_rep = H // Hkv
    tout = torch.nn.functional.scaled_dot_product_attention(
        tq, tk.repeat_interleave(n_rep, dim=1), tv.repeat_interleave(n_rep, dim=1), is_causal=True)
    tout.backward(torch.from_numpy(host(dout)))
    assert_close(out, tout, what="out")
    for n, t in (("q", tq), ("k", tk), ("v", tv)):
        assert tuple(g[n].shape) == tuple(t.shape)
        assert_close(g[n], t.grad, what=f"d{n}")
