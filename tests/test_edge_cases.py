"""The cases the other tests step around: kinks and boundary points in the inputs, hyper-parameters
away from their defaults, both columns (reference and fast), every entry of small arrays.

Written against the survivors of ``python mutation/run.py`` (docs/mutation.md): each test
exercises the exact case a planted one-line bug breaks, and checks it against the equation
written out independently here in NumPy, not against numbers copied from a run.
"""
import numpy as np
import pytest

from conftest import arr
from minilora import MLP, SGD, AdamW, backend, fast
from minilora import functional as F
from minilora.gradcheck import TOLERANCE, check_model, check_pair
from minilora.nn.transformer import GPT

G = np.random.default_rng(2024)


def host(a):
    return backend.to_numpy(a)


@pytest.fixture(params=["reference", "fast"])
def column(request, monkeypatch):
    """Run the test with every pair on its reference, or every pair fast."""
    monkeypatch.setattr(fast, "USE_FAST", dict(fast.USE_FAST))
    for name in fast.USE_FAST:
        fast.USE_FAST[name] = request.param == "fast"
    return request.param


# ----------------------------------------------------------------------------- activations at the kink


def test_relu_backward_at_the_kink_passes_no_gradient(xp, column):
    # x = 0 exactly, on both sides of it, and a NaN-free dout: the subgradient at 0 is 0
    x = np.array([[-1.0, -0.0, 0.0, 1e-300, 2.0], [0.0, 3.0, -2.0, 0.0, 1.0]])
    dout = G.standard_normal(x.shape)
    forward, backward = fast.pair("relu")
    y, cache = forward(arr(x, xp))
    dx, _ = backward(arr(dout, xp), cache)
    np.testing.assert_array_equal(host(y), np.maximum(x, 0.0))
    np.testing.assert_array_equal(host(dx), np.where(x > 0, dout, 0.0))


# ----------------------------------------------------------------------------- layernorm's eps


def numpy_layernorm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


@pytest.mark.parametrize("eps", [1e-5, 0.25, 4.0])
def test_layernorm_uses_the_eps_it_is_given(xp, column, eps):
    # a constant row (σ² = 0: x̂ = 0 whatever ε) and rows whose σ² is comparable with ε
    x = np.concatenate([np.full((1, 6), 3.0), 0.7 * G.standard_normal((3, 6)) + 1.0])
    gamma, beta = G.standard_normal(6), G.standard_normal(6)
    forward, _ = fast.pair("layernorm")
    y, _ = forward(arr(x, xp), arr(gamma, xp), arr(beta, xp), eps)
    np.testing.assert_allclose(host(y), numpy_layernorm(x, gamma, beta, eps), rtol=1e-12, atol=1e-12)


def test_layernorm_backward_matches_finite_differences_at_a_large_eps(column):
    forward, backward = fast.pair("layernorm")
    inputs = dict(x=G.standard_normal((2, 3, 5)), gamma=G.standard_normal(5), beta=G.standard_normal(5))
    results = check_pair(lambda x, gamma, beta: forward(x, gamma, beta, 2.0), backward, inputs, name="ln")
    assert [r.array for r in results] == ["x", "gamma", "beta"]
    assert all(r.rel_error <= TOLERANCE for r in results), results


# ----------------------------------------------------------------------------- embeddings at their boundaries


@pytest.mark.parametrize("T", [1, 5, 6])  # 6 = n_ctx: no unused row; 5 = n_ctx − 1: exactly one
def test_position_backward_pads_every_unused_row(xp, T):
    n_ctx, C = 6, 3
    P = arr(G.standard_normal((n_ctx, C)), xp)
    dout = G.standard_normal((2, T, C))
    out, cache = F.position_forward(P, T)
    _, g = F.position_backward(arr(dout, xp), cache)
    want = np.zeros((n_ctx, C))
    want[:T] = dout.sum(0)
    np.testing.assert_allclose(host(g["P"]), want, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(host(out), host(P)[:T])


def test_one_hot_of_narrow_ids_beyond_their_range(xp):
    V = 300  # > 256: the column index does not fit a uint8
    ids = np.array([0, 1, 255, 44], np.uint8)
    onehot = host(F.embedding.one_hot(arr(ids, xp), V, xp.float64))
    np.testing.assert_array_equal(onehot, np.eye(V)[ids.astype(np.int64)])


# ----------------------------------------------------------------------------- optimizers away from their defaults


def set_grads(model, grads):
    for _, m in model.named_modules():
        m.grads = {k: grads[f"{m.path}.{k}" if m.path else k].copy()
                   for k in m.params if k not in m.frozen}


def random_grads(model, seed):
    g = np.random.default_rng(seed)
    return {k: g.standard_normal(v.shape) for k, v in model.named_parameters(trainable=True).items()}


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_sgd_weight_decay_pulls_the_weights(momentum):
    # θ ← θ − lr (g + wd θ), or with momentum v ← μ v + g + wd θ, θ ← θ − lr v
    m = MLP((3, 4, 2), seed=0, dtype="float64")
    lr, wd = 0.1, 0.3
    opt = SGD(m, lr=lr, momentum=momentum, weight_decay=wd)
    theta = {k: v.copy() for k, v in m.named_parameters(trainable=True).items()}
    vel = {k: np.zeros_like(v) for k, v in theta.items()}
    for step in range(3):
        grads = random_grads(m, step)
        set_grads(m, grads)
        opt.step()
        for k in theta:
            vel[k] = momentum * vel[k] + grads[k] + wd * theta[k]
            theta[k] = theta[k] - lr * (vel[k] if momentum else grads[k] + wd * theta[k])
    for k, v in m.named_parameters(trainable=True).items():
        np.testing.assert_allclose(v, theta[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_adamw_follows_its_equations_with_every_hyper_parameter_changed(column, dtype):
    # different gradients every step, so that β₁ ≠ β₂ matters (a constant gradient hides it),
    # and an ε large enough to move the update; float16 parameters update in float32
    lr, b1, b2, eps, wd = 0.05, 0.8, 0.95, 0.1, 0.05
    m = MLP((3, 4, 2), seed=0, dtype=dtype).add_lora(r=2, alpha=3)
    opt = AdamW(m, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    theta = {k: v.astype(np.float64) for k, v in m.named_parameters(trainable=True).items()}
    mom = {k: np.zeros_like(v) for k, v in theta.items()}
    sec = {k: np.zeros_like(v) for k, v in theta.items()}
    for t in range(1, 5):
        grads = {k: g.astype(dtype) for k, g in random_grads(m, t).items()}
        set_grads(m, grads)
        opt.step()
        for k in theta:
            g = grads[k].astype(np.float64)
            mom[k] = b1 * mom[k] + (1 - b1) * g
            sec[k] = b2 * sec[k] + (1 - b2) * g * g
            m_hat, v_hat = mom[k] / (1 - b1**t), sec[k] / (1 - b2**t)
            theta[k] = theta[k] - lr * wd * theta[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
            if dtype == "float16":  # the parameter is stored in float16 after every step
                theta[k] = theta[k].astype(np.float16).astype(np.float64)
    rtol = 1e-12 if dtype == "float64" else 2e-3
    for k, v in m.named_parameters(trainable=True).items():
        np.testing.assert_allclose(v.astype(np.float64), theta[k], rtol=rtol, atol=rtol * 1e-2, err_msg=k)
    assert opt.t == 4


# ----------------------------------------------------------------------------- gradient checks


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_check_model_turns_dropout_off_and_restores_the_mode(training):
    gen = np.random.default_rng(3)
    m = MLP((5, 6, 3), activation="gelu", seed=1, dtype="float64").add_lora(r=2, alpha=4, dropout=0.5)
    for layer in m.lora_layers().values():
        layer.lora.default.params["B"] = gen.standard_normal(layer.lora.default.B.shape)
    x, y = gen.standard_normal((4, 5)), gen.integers(0, 3, 4)
    m.train(training)
    results = check_model(m, x, y, max_entries=None)
    assert results and all(r.passed for r in results), results
    assert all(l.training == training for _, l in m.named_modules())  # the mode it had, put back


def test_whole_gpt_gradient_check_on_every_entry(column):
    """Every entry of every array of a one-block GPT small enough to check them all (about 300),
    with T = n_ctx − 1 so that the position embedding has an unused row, and LayerNorms away
    from their init (γ = 1, β = 0 hide a forgotten γ)."""
    m = GPT("tiny", vocab_size=5, n_ctx=4, n_layer=1, n_head=2, n_embd=4, init_std=0.5, dtype="float64")
    gen = np.random.default_rng(0)
    for k, v in m.named_parameters().items():
        if k.endswith((".gamma", ".beta")):
            v[...] = gen.standard_normal(v.shape) * 0.5 + (1.0 if k.endswith(".gamma") else 0.0)
    ids, y = gen.integers(0, 5, (2, 3)), gen.integers(0, 5, (2, 3))
    results = check_model(m, ids, y, max_entries=None)
    assert len(results) == len(m.named_parameters())
    for r in results:
        if r.array.endswith("attn.k.b"):  # exactly 0 (softmax ignores a shift of a whole row):
            assert np.abs(m.named_grads()[r.array]).max() < 1e-12  # a relative error of noise
            continue
        assert r.rel_error <= TOLERANCE, f"{r.array}: {r.rel_error:.2e}"
