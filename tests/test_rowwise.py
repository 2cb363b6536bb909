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
