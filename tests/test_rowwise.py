"""backend.rowwise (elementwise work split into row blocks across threads) and the fast paths
that use it: the same numbers as the plain array-API lines, on arrays big enough to be split."""
import array_api_strict
import numpy as np
import pytest

from minilora import backend
from minilora.functional.activations import gelu_backward, gelu_forward


def _axpy(a, b, out):  # row by row, in place: out = 2a + b
    out[...] = 2.0 * a + b


@pytest.mark.parametrize("rows", [1, 7, 1001])
def test_rowwise_writes_every_row(monkeypatch, rows):
    monkeypatch.setattr(backend, "THREADS", 3)  # more blocks than a 2-core machine would use
    monkeypatch.setattr(backend, "ROWWISE_MIN_SIZE", 1)  # split even small arrays
    gen = np.random.default_rng(0)
    a, b = gen.standard_normal((rows, 5)), gen.standard_normal((rows, 5))
    out = np.full_like(a, np.nan)
    backend.rowwise(_axpy, a, b, out)
    np.testing.assert_array_equal(out, 2.0 * a + b)


def test_rowwise_falls_back_to_a_plain_call_on_other_namespaces():
    a = array_api_strict.ones((4, 3))
    out = array_api_strict.zeros((4, 3))
    backend.rowwise(_axpy, a, a, out)
    assert bool(array_api_strict.all(out == 3.0))


def test_rowwise_reraises_a_workers_exception(monkeypatch):
    monkeypatch.setattr(backend, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(backend, "THREADS", 2)

    def fail_on_late_rows(a):
        if a[0, 0] >= 2:
            raise ValueError("row block failed")

    with pytest.raises(ValueError, match="row block failed"):
        backend.rowwise(fail_on_late_rows, np.arange(8.0).reshape(4, 2))


def _strict(a):
    return array_api_strict.asarray(a)


def test_gelu_fast_path_matches_plain_lines_on_a_split_array():
    # 600 x 500 = 300k elements: above ROWWISE_MIN_SIZE, so NumPy splits the rows
    gen = np.random.default_rng(1)
    x = gen.standard_normal((600, 500)).astype(np.float32) * 3
    dout = gen.standard_normal((600, 500)).astype(np.float32)
    y, cache = gelu_forward(x)
    dx, _ = gelu_backward(dout, cache)
    ys, cs = gelu_forward(_strict(x))  # array-API strict takes the plain lines
    dxs, _ = gelu_backward(_strict(dout), cs)
    np.testing.assert_allclose(y, backend.to_numpy(ys), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.t, backend.to_numpy(cs.t), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, backend.to_numpy(dxs), rtol=1e-5, atol=1e-6)


def test_attention_fast_path_matches_plain_lines_on_a_split_array():
    # (B, H, T, T) = (2, 2, 256, 256): 262k elements, so NumPy splits the B·H rows
    from minilora.functional.attention import attention_backward, attention_forward

    gen = np.random.default_rng(2)
    q, k, v, dout = (gen.standard_normal((2, 2, 256, 8)).astype(np.float32) for _ in range(4))
    out, cache = attention_forward(q, k, v)
    _, g = attention_backward(dout, cache)
    outs, caches = attention_forward(_strict(q), _strict(k), _strict(v))
    _, gs = attention_backward(_strict(dout), caches)
    np.testing.assert_allclose(cache.att, backend.to_numpy(caches.att), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out, backend.to_numpy(outs), rtol=1e-5, atol=1e-6)
    for n in ("q", "k", "v"):
        np.testing.assert_allclose(g[n], backend.to_numpy(gs[n]), rtol=1e-4, atol=1e-5)
    assert float(np.abs(np.triu(cache.att, k=1)).max()) == 0.0  # the future stays masked


def test_batched_matmul_equals_the_operator():
    # (4, 3, 160, 32) @ (4, 3, 32, 160): 61k-element inputs; split when the threshold allows it
    gen = np.random.default_rng(3)
    a = gen.standard_normal((4, 160, 3, 32)).astype(np.float32).transpose(0, 2, 1, 3)  # strided
    b = gen.standard_normal((4, 3, 160, 32)).astype(np.float32)
    bt = np.swapaxes(b, -1, -2)
    for min_size in (1, backend.ROWWISE_MIN_SIZE):
        backend.ROWWISE_MIN_SIZE, saved = min_size, backend.ROWWISE_MIN_SIZE
        try:
            np.testing.assert_allclose(backend.batched_matmul(a, bt), a @ bt, rtol=1e-5, atol=1e-5)
        finally:
            backend.ROWWISE_MIN_SIZE = saved
    sa, sb = _strict(np.ascontiguousarray(a)), _strict(b)  # other namespaces: the plain operator
    got = backend.batched_matmul(sa, array_api_strict.matrix_transpose(sb))
    np.testing.assert_allclose(backend.to_numpy(got), a @ bt, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_rowwise_works_in_a_forked_child(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(backend, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(backend, "THREADS", 2)
    a = np.arange(12.0).reshape(6, 2)
    out = np.zeros_like(a)
    backend.rowwise(_axpy, a, a, out)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # the child must build its own pool, not wait on the parent's
        got = pool.apply_async(_rowwise_in_child).get(timeout=30)
    np.testing.assert_array_equal(got, 3.0 * np.arange(12.0).reshape(6, 2))


def _rowwise_in_child():
    backend.ROWWISE_MIN_SIZE, backend.THREADS = 1, 2
    a = np.arange(12.0).reshape(6, 2)
    out = np.zeros_like(a)
    backend.rowwise(_axpy, a, a, out)
    return out
