"""Every fast pair equals its reference pair: ``minilora.fast.PAIRS`` and ``UPDATES``, column by column.

For each pair: the forward's output, every cache field, and every gradient for every ``need``
subset, on every backend of the ``xp`` fixture (on array_api_strict the fast pairs fall back to
the reference or run their in-place lines without ``out=``; on NumPy and CuPy they run the real
fast code), in float32 and float64 (float16 too where the pair accepts it and the backend has it).

Exact (bit for bit, ``assert_array_equal``) where the fast code does the same operations in the
same order: linear, lora, relu, layernorm, and AdamW's moments m and v. Within a stated tolerance
elsewhere (ε = the dtype's machine epsilon; measured differences are a few ε):

- GELU, ``ULPS_GELU`` = 16 ε, relative and absolute: the fast forward evaluates the tanh argument
  as √(2/π)·(x·(1 + 0.044715 x²)) and the backward as a different product order than the
  reference's one-line formulas (measured: ≤ 1 ε forward, ≤ 4 ε backward);
- attention, ``ULPS_ATTENTION`` = 64 ε times the largest reference value: the fast backward's
  softmax row sums come from dout·out (hd terms) instead of Σ dP ⊙ P (T terms), a different
  reduction order, and split products run one-thread BLAS per block (measured ≤ 4 ε; forward
  measured bitwise on NumPy, still compared within the tolerance);
- AdamW's θ, ``ULPS_ADAMW`` = 16 ε relative to the largest |θ|: the fast update folds the bias
  corrections into two scalars (lr/(1−β₁ᵗ), 1/√(1−β₂ᵗ)) and applies the weight decay as its own
  multiply first (measured ≤ 2 ε after 4 steps);
- whole models in float64, ``ULPS_MODEL`` = 64 ε times the largest reference gradient: the GELU and
  attention differences above, carried through every layer (measured ≤ 4 ε for the tiny GPT).

The row-split (``runtime.rowwise``) and ``batched_matmul`` paths are run both split (THREADS = 3,
ROWWISE_MIN_SIZE = 1, or an array at the real threshold) and unsplit (the threshold above every
array), and the tests assert which one ran by counting ``runtime._get_pool`` (one call per split
``rowwise``) and ``runtime._matmul_into`` (one call per matmul block).

Mutations confirmed caught (each planted alone by a scratch pytest plugin, ``pytest -p``, that
monkeypatched the fast functions or ``fast.PAIRS`` at import; no library file was edited):
lora backward without ``dx_lora *= mask``; lora backward's dA from x instead of x̃; lora forward
with x̃ on the frozen path; linear forward without the bias; relu backward with ``x >= 0``;
GELU_K changed in the fast forward (0.044715 -> 0.0447); 3·GELU_K -> 2·GELU_K in the fast GELU
backward only; layernorm backward without the x̂·mean(dx̂ x̂) term; layernorm forward with the
variance of x instead of x − μ; attention without the causal bias; attention's dq without the
1/√hd; attention's ``out is None`` row-sum path wrong; rowwise that runs only its first block;
batched_matmul that skips the last of its 3 blocks; AdamW without the weight decay; AdamW without the
β₂ bias correction; AdamWWork reusing a buffer of the wrong dtype; ``reference()`` without its
try/finally; ``pair()`` ignoring the switch.

Discrepancies this file found, each fixed and kept as a test: ``reference("gelu", "nope")``
left gelu switched; the fast GELU pair and the fast AdamW update raised IndexError on 0-d
arrays; the ReLU backwards disagreed on a non-finite dout at x ≤ 0 (both now compute
dout · [x > 0]); the fast GELU backward in float16 returned NaN for 256 ≤ |x| < ~700 (it squared
x first; it now multiplies in the reference's order).
"""
import collections
import contextlib
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import arr
import minilora
from minilora import backend, fast
from minilora.fast import runtime
from minilora.fast.optim import AdamWWork
from minilora.functional.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward

ULPS_GELU = 16
ULPS_ATTENTION = 64
ULPS_ADAMW = 16
ULPS_MODEL = 64


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def own_switch(monkeypatch):
    """Each test gets its own copy of the switch: a test (or a bug) that leaves a name switched
    cannot leak into the next test. ``pair``, ``update`` and ``reference`` read the module's
    ``USE_FAST`` at call time, so they all see the copy."""
    monkeypatch.setattr(fast, "USE_FAST", dict(fast.USE_FAST))


@pytest.fixture(params=["unsplit", "split"])
def split(request, monkeypatch):
    """"split": THREADS = 3 and ROWWISE_MIN_SIZE = 1, so even these small arrays are cut into
    row blocks on NumPy; "unsplit": a threshold above every array here. Returns a record of
    the splits that ran: ``pools`` (one entry per split rowwise call), ``blocks`` (one entry
    per block of a split batched_matmul)."""
    if request.param == "split":
        monkeypatch.setattr(runtime, "THREADS", 3)
        monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    else:
        monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1 << 40)
    record = SimpleNamespace(mode=request.param, pools=[], blocks=[])
    get_pool, matmul_into = runtime._get_pool, runtime._matmul_into

    def counting_get_pool(workers):
        record.pools.append(workers)
        return get_pool(workers)

    def counting_matmul_into(a, b, out):
        record.blocks.append(a.shape[0])  # list.append: safe from the pool's threads
        matmul_into(a, b, out)

    monkeypatch.setattr(runtime, "_get_pool", counting_get_pool)
    monkeypatch.setattr(runtime, "_matmul_into", counting_matmul_into)
    return record


def splits_on(split, xp) -> bool:
    """Only NumPy splits: CuPy and array_api_strict get the plain call."""
    return split.mode == "split" and xp is np


def randn(shape, dtype, seed, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def skip_unsupported(xp, dtype):
    if dtype == "float16" and xp.__name__ == "array_api_strict":
        pytest.skip("array_api_strict has no float16")


def pairs(name):
    """((ref_forward, ref_backward), (fast_forward, fast_backward)), read at call time."""
    return fast.PAIRS[name]


def _host(got, want, what):
    assert backend.namespace(got) is backend.namespace(want), what
    g, w = backend.to_numpy(got), backend.to_numpy(want)
    assert g.dtype == w.dtype, f"{what}: dtype {g.dtype} != {w.dtype}"
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    return g, w


def assert_exact(got, want, what=""):
    """Bit for bit (as numbers: −0.0 == +0.0, NaN == NaN), same namespace, dtype and shape."""
    g, w = _host(got, want, what)
    np.testing.assert_array_equal(g, w, err_msg=what)


def close(ulps, scaled=False):
    """A comparison: |got − want| ≤ ulps·ε·(|want| + s), s = 1, or the largest |want| if scaled."""

    def compare(got, want, what=""):
        g, w = _host(got, want, what)
        eps = float(np.finfo(w.dtype).eps)
        s = max(1.0, float(np.max(np.abs(w)))) if scaled and w.size else 1.0
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=ulps * eps,
                                   atol=ulps * eps * s, err_msg=what)

    return compare


def assert_caches(got, want, compare):
    """Same NamedTuple type, and every field equal: arrays by ``compare`` (one comparison, or a
    dict field -> comparison), None on both sides together, numbers exactly."""
    assert type(got) is type(want)
    for field in want._fields:
        g, w = getattr(got, field), getattr(want, field)
        if g is None or w is None:
            assert g is None and w is None, f"cache.{field}: {g!r} vs {w!r}"
        elif isinstance(w, (int, float)):
            assert type(g) is type(w) and g == w, f"cache.{field}: {g!r} != {w!r}"
        else:
            (compare[field] if isinstance(compare, dict) else compare)(g, w, f"cache.{field}")


def subsets(names):
    return [c for r in range(len(names) + 1) for c in itertools.combinations(names, r)]


def assert_backwards(name, dout, ref_cache, fast_cache, names, compare):
    """For every ``need`` subset of ``names``: the same gradient keys (in the same order) on both
    sides, dx None exactly when "x" is not needed, and every array equal by ``compare``."""
    (_, ref_backward), (_, fast_backward) = pairs(name)
    for need in subsets(names):
        dx_ref, grads_ref = ref_backward(dout, ref_cache, need=need)
        dx_fast, grads_fast = fast_backward(dout, fast_cache, need=need)
        expected = [n for n in names if n in need and n != "x"]
        assert list(grads_ref) == expected and list(grads_fast) == expected, (need, list(grads_fast))
        assert (dx_ref is None) == (dx_fast is None) == ("x" not in need), need
        if dx_ref is not None:
            compare(dx_fast, dx_ref, f"dx, need={need}")
        for n in expected:
            compare(grads_fast[n], grads_ref[n], f"d{n}, need={need}")


def snapshot(*arrays):
    return [None if a is None else backend.to_numpy(a).copy() for a in arrays]


def assert_unchanged(before, arrays, what):
    """The fast pairs write in place into their own fresh arrays, never into their inputs."""
    for i, (b, a) in enumerate(zip(before, arrays)):
        if b is not None:
            np.testing.assert_array_equal(backend.to_numpy(a), b, err_msg=f"{what}: input {i} was written")


# ----------------------------------------------------------------------------- linear and lora: exact

LEADING = [pytest.param((7,), id="2d"), pytest.param((2, 5), id="3d")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lead", LEADING)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_pair_is_exact(xp, dtype, lead, bias):
    x = arr(randn((*lead, 6), dtype, 1), xp)
    W = arr(randn((4, 6), dtype, 2), xp)
    b = arr(randn((4,), dtype, 3), xp) if bias else None
    dout = arr(randn((*lead, 4), dtype, 4), xp)
    before = snapshot(x, W, b, dout)
    (ref_forward, _), (fast_forward, _) = pairs("linear")
    y_ref, c_ref = ref_forward(x, W, b, layer="fc")
    y_fast, c_fast = fast_forward(x, W, b, layer="fc")
    assert_exact(y_fast, y_ref, "y")
    assert_caches(c_fast, c_ref, assert_exact)
    assert_backwards("linear", dout, c_ref, c_fast, ("x", "W", "b"), assert_exact)
    assert_unchanged(before, (x, W, b, dout), "linear")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lead", LEADING)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "nomask"])
def test_lora_pair_is_exact(xp, dtype, lead, bias, with_mask):
    d_in, d_out, r, scale = 6, 4, 3, 4 / 3  # scale = alpha / r = 4 / 3: not a power of two
    x = arr(randn((*lead, d_in), dtype, 1), xp)
    W = arr(randn((d_out, d_in), dtype, 2), xp)
    b = arr(randn((d_out,), dtype, 3), xp) if bias else None
    A = arr(randn((r, d_in), dtype, 4), xp)
    B = arr(randn((d_out, r), dtype, 5), xp)  # non-zero: B = 0 would make dA = 0 on both sides
    keep = np.random.default_rng(6).random((*lead, d_in)) >= 0.3
    mask = arr((keep / 0.7).astype(dtype), xp) if with_mask else None  # inverted dropout
    dout = arr(randn((*lead, d_out), dtype, 7), xp)
    before = snapshot(x, W, b, A, B, mask, dout)
    (ref_forward, ref_backward), (fast_forward, _) = pairs("lora")
    h_ref, c_ref = ref_forward(x, W, b, A, B, scale, mask, layer="q")
    h_fast, c_fast = fast_forward(x, W, b, A, B, scale, mask, layer="q")
    assert_exact(h_fast, h_ref, "h")
    assert_caches(c_fast, c_ref, assert_exact)
    assert_backwards("lora", dout, c_ref, c_fast, ("x", "A", "B"), assert_exact)
    assert_unchanged(before, (x, W, b, A, B, mask, dout), "lora")
    # the test has teeth: the dA path is live, and the mask changes dx
    _, grads = ref_backward(dout, c_ref, need=("A",))
    assert np.any(backend.to_numpy(grads["A"]) != 0)
    if with_mask:
        assert not np.all(keep)


# ----------------------------------------------------------------------------- relu: exact


def special_inputs(shape, dtype, seed, large):
    """Normal values with exact +0.0 / −0.0 and ±``large`` planted in the first rows."""
    x = randn(shape, dtype, seed, scale=2.0).reshape(-1)
    specials = np.array([0.0, -0.0, large, -large, 1.0, -1.0, large / 7, -large / 7], dtype)
    x[: specials.size] = specials
    x[-3:] = 0.0
    return x.reshape(shape)


RELU_LARGE = {"float16": 6e4, "float32": 1e30, "float64": 1e300}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_relu_pair_is_exact(xp, dtype):
    skip_unsupported(xp, dtype)
    x = arr(special_inputs((5, 8), dtype, 1, RELU_LARGE[dtype]), xp)
    dout = arr(randn((5, 8), dtype, 2), xp)  # negative dout at x ≤ 0: −0.0 in the fast multiply,
    before = snapshot(x, dout)  # +0.0 from the reference's where; equal as numbers
    (ref_forward, ref_backward), (fast_forward, fast_backward) = pairs("relu")
    y_ref, c_ref = ref_forward(x)
    y_fast, c_fast = fast_forward(x)
    assert_exact(y_fast, y_ref, "y")
    assert_caches(c_fast, c_ref, assert_exact)
    dx_ref, g_ref = ref_backward(dout, c_ref)
    dx_fast, g_fast = fast_backward(dout, c_fast)
    assert g_ref == {} and g_fast == {}
    assert_exact(dx_fast, dx_ref, "dx")
    assert float(backend.to_numpy(dx_ref).reshape(-1)[0]) == 0.0  # x = 0 passes no gradient
    assert_unchanged(before, (x, dout), "relu")


def test_relu_backward_treats_non_finite_dout_like_the_reference():
    # both compute dout · [x > 0]: an inf/NaN arriving at x <= 0 stays non-finite (0 · inf),
    # so the optimizer's guard sees it, instead of being silently zeroed
    x = np.array([-1.0, 0.0, 2.0])
    dout = np.array([np.inf, np.nan, -3.0])
    (ref_forward, ref_backward), (fast_forward, fast_backward) = pairs("relu")
    with np.errstate(invalid="ignore"):
        dx_fast = fast_backward(dout, fast_forward(x)[1])[0]
    with np.errstate(invalid="ignore"):
        dx_ref = ref_backward(dout, ref_forward(x)[1])[0]
    np.testing.assert_array_equal(dx_fast, dx_ref)  # [nan, nan, -3] on both sides
    assert np.isnan(dx_ref[:2]).all() and dx_ref[2] == -3.0


# ----------------------------------------------------------------------------- gelu: within ULPS_GELU

# |x| large enough that tanh saturates; float16 stays below 60 so that no x³ (reference) or
# x² (fast) overflows: the overflow band is the xfail below.
GELU_LARGE = {"float16": 60.0, "float32": 1e4, "float64": 1e4}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gelu_pair_within_tolerance(xp, dtype, split):
    skip_unsupported(xp, dtype)
    x = arr(special_inputs((4, 7, 8), dtype, 1, GELU_LARGE[dtype]), xp)
    dout = arr(randn((4, 7, 8), dtype, 2), xp)
    before = snapshot(x, dout)
    (ref_forward, ref_backward), (fast_forward, fast_backward) = pairs("gelu")
    y_ref, c_ref = ref_forward(x)
    y_fast, c_fast = fast_forward(x)
    compare = close(ULPS_GELU)
    compare(y_fast, y_ref, "y")
    assert_caches(c_fast, c_ref, {"x": assert_exact, "t": compare})
    dx_ref, g_ref = ref_backward(dout, c_ref)
    dx_fast, g_fast = fast_backward(dout, c_fast)
    assert g_ref == {} and g_fast == {}
    compare(dx_fast, dx_ref, "dx")
    # GELU(0) = 0 exactly and dGELU/dx(0) = 1/2 exactly, on both sides
    assert_exact(y_fast[0, 0, :2], y_ref[0, 0, :2])
    assert_exact(dx_fast[0, 0, :2], dx_ref[0, 0, :2])
    assert_unchanged(before, (x, dout), "gelu")
    assert bool(split.pools) == splits_on(split, xp)  # the forward and backward were (not) split


@pytest.mark.parametrize("rows_less", [0, 1], ids=["at_threshold", "below_threshold"])
def test_gelu_splits_at_the_real_threshold(monkeypatch, rows_less):
    """The real ROWWISE_MIN_SIZE: an array of exactly that many elements is split, one row
    fewer is not (THREADS = 3 so that a one-core machine splits too)."""
    monkeypatch.setattr(runtime, "THREADS", 3)
    pools = []
    get_pool = runtime._get_pool
    monkeypatch.setattr(runtime, "_get_pool", lambda w: pools.append(w) or get_pool(w))
    C = 64
    x = special_inputs((runtime.ROWWISE_MIN_SIZE // C - rows_less, C), "float32", 3, 1e4)
    dout = randn(x.shape, "float32", 4)
    (ref_forward, ref_backward), (fast_forward, fast_backward) = pairs("gelu")
    y_ref, c_ref = ref_forward(x)
    y_fast, c_fast = fast_forward(x)
    compare = close(ULPS_GELU)
    compare(y_fast, y_ref, "y")
    compare(c_fast.t, c_ref.t, "t")
    compare(fast_backward(dout, c_fast)[0], ref_backward(dout, c_ref)[0], "dx")
    assert len(pools) == (2 if rows_less == 0 else 0)


def test_gelu_float16_backward_for_large_x():
    x = np.array([300.0, -300.0, 500.0, -500.0], np.float16)
    dout = np.ones_like(x)
    (ref_forward, ref_backward), (fast_forward, fast_backward) = pairs("gelu")
    with np.errstate(over="ignore", invalid="ignore"):
        dx_ref = ref_backward(dout, ref_forward(x)[1])[0]  # [1, 0, 1, 0]
        dx_fast = fast_backward(dout, fast_forward(x)[1])[0]
    assert_exact(dx_fast, dx_ref)


def test_gelu_pair_on_a_0d_array():
    x = np.array(0.5)
    (ref_forward, _), (fast_forward, _) = pairs("gelu")
    y_ref, _ = ref_forward(x)
    y_fast, _ = fast_forward(x)
    close(ULPS_GELU)(y_fast, y_ref)


# ----------------------------------------------------------------------------- layernorm: exact


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("lead", LEADING)
def test_layernorm_pair_is_exact(xp, dtype, lead):
    """Exact: x − μ, ·rstd, ·γ, +β and dx's −, −, · are the reference's operations, in its order."""
    skip_unsupported(xp, dtype)
    C = 16
    x = arr(randn((*lead, C), dtype, 1, scale=3.0, shift=5.0), xp)  # mean ≈ 5: x − μ matters
    gamma = arr(randn((C,), dtype, 2, shift=1.0), xp)
    beta = arr(randn((C,), dtype, 3), xp)
    dout = arr(randn((*lead, C), dtype, 4), xp)
    before = snapshot(x, gamma, beta, dout)
    (ref_forward, _), (fast_forward, _) = pairs("layernorm")
    y_ref, c_ref = ref_forward(x, gamma, beta, 1e-5)
    y_fast, c_fast = fast_forward(x, gamma, beta, 1e-5)
    assert_exact(y_fast, y_ref, "y")
    assert_caches(c_fast, c_ref, assert_exact)
    assert_backwards("layernorm", dout, c_ref, c_fast, ("x", "gamma", "beta"), assert_exact)
    assert_unchanged(before, (x, gamma, beta, dout), "layernorm")


# ----------------------------------------------------------------------------- attention: within ULPS_ATTENTION


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T", [1, 9])
def test_attention_pair_within_tolerance(xp, dtype, T, split):
    Bsz, H, hd = 4, 2, 8  # 4 batch rows: 3 blocks when split
    q, k, v = (arr(randn((Bsz, H, T, hd), dtype, s), xp) for s in (1, 2, 3))
    dout = arr(randn((Bsz, H, T, hd), dtype, 4), xp)
    before = snapshot(q, k, v, dout)
    (ref_forward, _), (fast_forward, _) = pairs("attention")
    out_ref, c_ref = ref_forward(q, k, v)
    out_fast, c_fast = fast_forward(q, k, v)
    compare = close(ULPS_ATTENTION, scaled=True)
    compare(out_fast, out_ref, "out")
    assert_caches(c_fast, c_ref, {"qs": assert_exact, "k": assert_exact, "v": assert_exact,
                                  "att": compare, "out": compare})
    for P in (c_ref.att, c_fast.att):  # the causal mask: exactly 0 above the diagonal
        P = backend.to_numpy(P)
        assert np.all(np.triu(P, 1) == 0) and np.all(np.diagonal(P, axis1=-2, axis2=-1) > 0)
    forward_blocks = len(split.blocks)
    assert_backwards("attention", dout, c_ref, c_fast, ("q", "k", "v"), compare)
    # a cache built without the output: the fast backward takes its row sums from dS ⊙ P
    assert_backwards("attention", dout, c_ref, c_fast._replace(out=None), ("q", "k", "v"), compare)
    assert_unchanged(before, (q, k, v, dout), "attention")
    if splits_on(split, xp):  # both products of the forward, then the backward's, in 3 blocks
        assert forward_blocks == 2 * 3 and len(split.blocks) > forward_blocks and split.pools
    else:
        assert not split.blocks and not split.pools


# ----------------------------------------------------------------------------- adamw: θ within ULPS_ADAMW, m and v exact

HYPER = dict(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)  # not the defaults
SHAPES = [(6, 5), (7,), (3, 2, 4), (1, 9)]  # the largest first: the work array is made once


def adamw_state(shape, dtype, seed, xp):
    gen = np.random.default_rng(seed)
    p = gen.standard_normal(shape).astype(dtype)
    m = (gen.standard_normal(shape) * 0.1).astype(dtype)
    v = (gen.random(shape) * 0.01).astype(dtype)
    grads = [gen.standard_normal(shape).astype(dtype) for _ in range(4)]
    return [arr(a, xp) for a in (p, m, v)], [arr(g, xp) for g in grads]


def run_adamw(xp, shapes, dtypes):
    """Four steps over parameters of several shapes (and ``dtypes``), the reference on one copy,
    the fast update on another with one shared ``AdamWWork``; compares after every step.
    Returns the work buffer seen after each fast call."""
    ref_update, fast_update = fast.UPDATES["adamw"]
    work = AdamWWork()
    states = []
    for i, (shape, dtype) in enumerate(zip(shapes, itertools.cycle(dtypes))):
        (p, m, v), grads = adamw_state(shape, dtype, i, xp)
        ref = [backend.from_numpy(backend.to_numpy(a).copy(), xp) for a in (p, m, v)]
        states.append((ref, [p, m, v], grads))
    buffers = []
    for t in range(1, 5):
        for ref, fst, grads in states:
            g = grads[t - 1]
            ref_update(ref[0], g, ref[1], ref[2], **HYPER, t=t)
            fast_update(fst[0], g, fst[1], fst[2], **HYPER, t=t, work=work)
            buffers.append(work.buffer)
            close(ULPS_ADAMW, scaled=True)(fst[0], ref[0], f"p, step {t}")
            assert_exact(fst[1], ref[1], f"m, step {t}")
            assert_exact(fst[2], ref[2], f"v, step {t}")
    return buffers


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_update_matches_the_reference(xp, dtype, split):
    buffers = run_adamw(xp, SHAPES, [dtype])
    assert all(b is buffers[0] for b in buffers)  # one work array, made once, reused by all
    assert buffers[0].size == max(int(np.prod(s)) for s in SHAPES)
    assert bool(split.pools) == splits_on(split, xp)


def test_adamw_work_reused_across_dtypes_and_growing_shapes(xp, split):
    """The smallest parameter first: the buffer grows, and is rebuilt when the dtype changes;
    a stale float32 buffer under a float64 parameter would lose precision silently."""
    buffers = run_adamw(xp, SHAPES[::-1], ["float64", "float32"])
    assert len({id(b) for b in buffers}) > 1
    assert bool(split.pools) == splits_on(split, xp)


def test_adamw_update_on_a_0d_parameter():
    ref_update, fast_update = fast.UPDATES["adamw"]
    ref = [np.array(1.0), np.array(0.0), np.array(0.0)]
    fst = [a.copy() for a in ref]
    g = np.array(0.5)
    ref_update(ref[0], g, ref[1], ref[2], **HYPER, t=1)
    fast_update(fst[0], g, fst[1], fst[2], **HYPER, t=1)
    close(ULPS_ADAMW)(fst[0], ref[0])


# ----------------------------------------------------------------------------- the switch


DEFAULTS = {name: name not in ("mixed_lora",) for name in (*fast.PAIRS, *fast.UPDATES)}  # the switch's defaults


def test_pair_is_fast_by_default_and_reference_inside_the_block():
    assert set(fast.USE_FAST) == set(fast.PAIRS) | set(fast.UPDATES)
    assert fast.SLOWER_ON_NUMPY == ("mixed_lora",)  # the one pair measured slower on NumPy: off
    assert all(on == (name not in fast.SLOWER_ON_NUMPY) for name, on in fast.USE_FAST.items())
    for name, (ref, fst) in fast.PAIRS.items():
        assert fast.pair(name) is (ref if name in fast.SLOWER_ON_NUMPY else fst)
    assert fast.update("adamw") is fast.UPDATES["adamw"][1]
    with fast.reference():
        for name, (ref, fst) in fast.PAIRS.items():
            assert fast.pair(name) is ref
        assert fast.update("adamw") is fast.UPDATES["adamw"][0]
    for name, (ref, fst) in fast.PAIRS.items():
        assert fast.pair(name) is (ref if name in fast.SLOWER_ON_NUMPY else fst)
    assert fast.update("adamw") is fast.UPDATES["adamw"][1]


def test_reference_is_restored_after_an_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with fast.reference():
            assert fast.pair("lora") is fast.PAIRS["lora"][0]
            raise RuntimeError("inside the block")
    assert fast.USE_FAST == DEFAULTS
    assert fast.pair("lora") is fast.PAIRS["lora"][1]


def test_reference_of_one_name_flips_only_that_name():
    with fast.reference("gelu"):
        for name, (ref, fst) in fast.PAIRS.items():
            assert fast.pair(name) is (ref if name in ("gelu", *fast.SLOWER_ON_NUMPY) else fst), name
        assert fast.update("adamw") is fast.UPDATES["adamw"][1]
        with fast.reference("attention", "adamw"):  # nested: both, and the outer one kept
            assert fast.pair("gelu") is fast.PAIRS["gelu"][0]
            assert fast.pair("attention") is fast.PAIRS["attention"][0]
            assert fast.update("adamw") is fast.UPDATES["adamw"][0]
            assert fast.pair("lora") is fast.PAIRS["lora"][1]
        assert fast.pair("attention") is fast.PAIRS["attention"][1]
        assert fast.pair("gelu") is fast.PAIRS["gelu"][0]
    assert fast.USE_FAST == DEFAULTS


def test_use_fast_entry_switches_one_layer():
    fast.USE_FAST["layernorm"] = False
    assert fast.pair("layernorm") is fast.PAIRS["layernorm"][0]
    assert fast.pair("attention") is fast.PAIRS["attention"][1]


def test_unknown_names_raise_keyerror():
    with pytest.raises(KeyError):
        fast.pair("softmax")
    with pytest.raises(KeyError):
        fast.update("sgd")
    with pytest.raises(KeyError, match="unknown name 'softmax'"):
        with fast.reference("softmax"):
            pass  # pragma: no cover
    assert fast.USE_FAST == DEFAULTS


def test_unknown_name_after_a_known_one_leaves_the_switch_unchanged():
    with pytest.raises(KeyError):
        with fast.reference("gelu", "softmax"):
            pass  # pragma: no cover
    assert fast.USE_FAST["gelu"] is True


# ----------------------------------------------------------------------------- whole models


def count_columns(monkeypatch):
    """Wrap both columns of every pair with a call counter keyed (name, "reference" | "fast")."""
    ran = collections.Counter()

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            ran[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name, columns in list(fast.PAIRS.items()):
        wrapped = tuple(
            (counted(fwd, (name, col)), counted(bwd, (name, col)))
            for col, (fwd, bwd) in zip(("reference", "fast"), columns)
        )
        monkeypatch.setitem(fast.PAIRS, name, wrapped)
    return ran


def perturb_lora_B(model, seed=1):
    """B = 0 at init hides dA; a random B makes every LoRA gradient non-trivial."""
    gen = np.random.default_rng(seed)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            ad.params["B"] = arr(gen.standard_normal(tuple(B.shape)) * 0.5, backend.namespace(B),
                                 backend.dtype_name(B))
    return model


def loss_and_grads(model, x, y):
    logits = model.forward(x)
    loss, cache = softmax_cross_entropy_forward(logits, y)
    dlogits, _ = softmax_cross_entropy_backward(1.0, cache)
    model.backward(dlogits)
    return loss, model.named_grads()


def assert_same_model_run(make, x, y, used, monkeypatch):
    """The model from ``make()`` gives the same loss and named_grads on the fast pairs (default)
    as a fresh ``make()`` under ``fast.reference()``; and each side ran only its own column."""
    ran = count_columns(monkeypatch)
    loss_fast, grads_fast = loss_and_grads(make(), x, y)
    assert {n for n, col in ran if col == "fast"} == used and not any(c == "reference" for _, c in ran)
    ran.clear()
    with fast.reference():
        loss_ref, grads_ref = loss_and_grads(make(), x, y)
    assert {n for n, col in ran if col == "reference"} == used and not any(c == "fast" for _, c in ran)
    compare = close(ULPS_MODEL, scaled=True)
    compare(loss_fast, loss_ref, "loss")
    assert list(grads_fast) == list(grads_ref) and grads_ref
    scale = max(float(np.max(np.abs(backend.to_numpy(g)))) for g in grads_ref.values())
    for name, g in grads_ref.items():
        # one scale for every gradient: the largest, so a tiny gradient is not held to 64 ε of itself
        g_ref, g_fast = backend.to_numpy(g), backend.to_numpy(grads_fast[name])
        assert g_fast.dtype == g_ref.dtype and g_fast.shape == g_ref.shape, name
        np.testing.assert_allclose(g_fast, g_ref, rtol=ULPS_MODEL * np.finfo(g_ref.dtype).eps,
                                   atol=ULPS_MODEL * np.finfo(g_ref.dtype).eps * scale, err_msg=name)


def test_mlp_with_lora_same_loss_and_grads(xp, split, monkeypatch):
    def make():  # built fresh for each side: the dropout masks come from the adapter's seeded rng
        m = minilora.MLP((6, 8, 4), "gelu", dtype="float64", device=xp)
        return perturb_lora_B(m.add_lora(r=2, alpha=4, dropout=0.25))

    gen = np.random.default_rng(0)
    x = arr(gen.standard_normal((5, 6)), xp, "float64")
    y = arr(gen.integers(0, 4, 5), xp, "int64")
    assert_same_model_run(make, x, y, {"lora", "linear", "gelu"}, monkeypatch)
    assert bool(split.pools) == splits_on(split, xp)


def test_gpt_with_lora_same_loss_and_grads(xp, split, monkeypatch):
    def make():
        m = minilora.GPT("tiny", dtype="float64", device=xp)
        return perturb_lora_B(m.add_lora(["q", "v"], r=2, alpha=4))

    gen = np.random.default_rng(0)
    ids = arr(gen.integers(0, 97, (3, 5)), xp, "int64")
    targets = arr(gen.integers(0, 97, (3, 5)), xp, "int64")
    assert_same_model_run(make, ids, targets, {"lora", "linear", "gelu", "layernorm", "attention"},
                          monkeypatch)
    assert bool(split.pools) == splits_on(split, xp)
    assert bool(split.blocks) == splits_on(split, xp)  # attention's products split inside the model


def test_mlp_adamw_steps_match_under_reference(xp, monkeypatch):
    """Two optimizer steps through ``minilora.AdamW`` (fast update with its shared work array
    by default, the reference update inside ``fast.reference()``) leave the same parameters."""
    gen = np.random.default_rng(0)
    x = arr(gen.standard_normal((5, 6)), xp, "float64")
    y = arr(gen.integers(0, 4, 5), xp, "int64")
    results = []
    for ctx in (contextlib.nullcontext(), fast.reference()):  # only AdamW is not exact here
        with ctx:
            m = perturb_lora_B(minilora.MLP((6, 8, 4), "relu", dtype="float64", device=xp).add_lora(r=2, alpha=4))
            opt = minilora.AdamW(m, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
            for _ in range(2):
                minilora.train_step(m, opt, x, y)
            results.append(m.named_parameters(trainable=True))
    assert list(results[0]) == list(results[1]) and results[0]
    for name, p in results[1].items():
        close(ULPS_ADAMW * 4, scaled=True)(results[0][name], p, name)
