"""Every forward/backward pair of the foundation against central finite differences (float64).

A correct backward gives a relative error around 1e-9 or below; one wrong term gives ~1.
"""
import numpy as np
import pytest

from conftest import arr
from minilora import functional as F
from minilora.gradcheck import TOLERANCE, check_pair

G = np.random.default_rng(0)


def randn(xp, *shape):
    return arr(G.standard_normal(shape), xp, "float64")


def assert_all_pass(results, expected_arrays):
    assert [r.array for r in results] == expected_arrays
    for r in results:
        assert r.rel_error <= TOLERANCE, r


def test_linear_pair(xp):
    inputs = dict(x=randn(xp, 2, 3, 5), W=randn(xp, 4, 5), b=randn(xp, 4))
    assert_all_pass(check_pair(F.linear_forward, F.linear_backward, inputs), ["x", "W", "b"])


def test_linear_frozen_still_passes_dx(xp):
    x, W = randn(xp, 3, 5), randn(xp, 4, 5)
    y, cache = F.linear_forward(x, W)
    dx, grads = F.linear_backward(randn(xp, 3, 4), cache, need={"x"})  # W frozen: no dW
    assert grads == {} and tuple(dx.shape) == (3, 5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_lora_pair(xp, with_mask):
    x = randn(xp, 2, 3, 6)
    mask = None
    if with_mask:
        keep = G.random((2, 3, 6)) >= 0.3
        mask = arr(keep / 0.7, xp, "float64")
    inputs = dict(x=x, W=randn(xp, 5, 6), b=randn(xp, 5), A=randn(xp, 2, 6), B=randn(xp, 5, 2),
                  scale=1.7, mask=mask)
    results = check_pair(F.lora_forward, F.lora_backward, inputs)
    assert_all_pass(results, ["x", "A", "B"])


def test_lora_backward_gives_no_gradient_for_frozen_W(xp):
    inputs = dict(x=randn(xp, 3, 6), W=randn(xp, 5, 6), b=None, A=randn(xp, 2, 6), B=randn(xp, 5, 2), scale=2.0)
    _, cache = F.lora_forward(**inputs)
    dx, grads = F.lora_backward(randn(xp, 3, 5), cache)
    assert set(grads) == {"A", "B"}


def test_lora_equals_linear_with_explicit_delta(xp):
    x, W, b, A, B = randn(xp, 4, 6), randn(xp, 5, 6), randn(xp, 5), randn(xp, 3, 6), randn(xp, 5, 3)
    h, _ = F.lora_forward(x, W, b, A, B, 0.5)
    ref, _ = F.linear_forward(x, W + F.lora_delta(A, B, 0.5), b)
    np.testing.assert_allclose(np.from_dlpack(h), np.from_dlpack(ref), rtol=1e-12, atol=1e-12)


def test_relu_pair(xp):
    x = G.standard_normal((4, 5))
    x = np.where(np.abs(x) < 0.1, 0.5, x)  # keep away from the kink at 0
    results = check_pair(F.relu_forward, F.relu_backward, dict(x=arr(x, xp, "float64")))
    assert_all_pass(results, ["x"])


def test_gelu_pair(xp):
    results = check_pair(F.gelu_forward, F.gelu_backward, dict(x=randn(xp, 3, 7) * 2.0))
    assert_all_pass(results, ["x"])


def test_gelu_matches_its_definition(xp):
    x = G.standard_normal(50) * 3
    y, _ = F.gelu_forward(arr(x, xp, "float64"))
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(np.from_dlpack(y), expected, rtol=1e-13)


def test_cross_entropy_pair(xp):
    targets = arr(G.integers(0, 7, size=(2, 3)), xp, "int64")

    def forward(x, targets):
        return F.softmax_cross_entropy_forward(x, targets)

    results = check_pair(forward, F.softmax_cross_entropy_backward, dict(x=randn(xp, 2, 3, 7), targets=targets))
    assert_all_pass(results, ["x"])


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = arr([[1000.0, 0.0, -1000.0], [-5e3, 5e3, 0.0]], xp, "float32")
    loss, _ = F.softmax_cross_entropy_forward(logits, arr([0, 0], xp, "int64"))
    # row 0 is right with certainty (loss 0), row 1 is wrong by 1e4 nats: mean 5e3
    assert np.isfinite(float(loss)) and abs(float(loss) - 5e3) < 1.0


def test_cross_entropy_equals_minus_log_softmax(xp):
    z = G.standard_normal((5, 4))
    y = G.integers(0, 4, size=5)
    loss, _ = F.softmax_cross_entropy_forward(arr(z, xp, "float64"), arr(y, xp, "int64"))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert abs(float(loss) + np.mean(np.log(p[np.arange(5), y]))) < 1e-12


def test_mse_pair(xp):
    target = randn(xp, 3, 4)

    def forward(x, target):
        return F.mse_forward(x, target)

    assert_all_pass(check_pair(forward, F.mse_backward, dict(x=randn(xp, 3, 4), target=target)), ["x"])


def test_narrow_integer_ids_do_not_wrap(xp):
    # uint8 ids with V = 300 > 256: a one-hot built in uint8 would wrap column 257 onto 1
    V = 300
    logits = randn(xp, 3, V)
    wide = arr([1, 2, 257], xp, "int64")
    narrow = arr([1, 2, 255], xp, "uint8")
    loss_wide, cache = F.softmax_cross_entropy_forward(logits, wide)
    assert float(np.from_dlpack(cache.onehot).sum()) == 3.0
    _, cache8 = F.softmax_cross_entropy_forward(logits, narrow)
    assert np.from_dlpack(cache8.onehot).sum(axis=1).tolist() == [1.0, 1.0, 1.0]
    W = randn(xp, V, 4)
    _, c = F.embedding_forward(narrow, W)
    _, grads = F.embedding_backward(randn(xp, 3, 4), c)
    nonzero_rows = np.flatnonzero(np.abs(np.from_dlpack(grads["W"])).sum(axis=1))
    assert nonzero_rows.tolist() == [1, 2, 255]
