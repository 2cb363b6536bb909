"""Optimizers update trainable parameters only, follow their equations, and never apply a
non-finite step."""
import numpy as np
import pytest

from conftest import arr
from minilora import MLP, SGD, AdamW, backend, fit, train_step


def set_grads(model, value):
    """Give every trainable parameter the constant gradient ``value`` (no backward needed)."""
    for _, m in model.named_modules():
        m.grads = {k: v * 0 + value for k, v in m.params.items() if k not in m.frozen}


def test_adamw_closed_form_with_constant_gradient(xp):
    # With a constant g, m̂ₜ = g and v̂ₜ = g² exactly, so each step moves θ by lr·g/(|g|+ε)
    # after the decoupled decay θ ← θ(1 − lr·wd).
    m = MLP((3, 4, 2), seed=0, dtype="float64", device=xp).add_lora(["fc1"], r=1, alpha=1)
    lr, wd, eps, g = 0.01, 0.1, 1e-8, 0.3
    opt = AdamW(m, lr=lr, weight_decay=wd, eps=eps)
    theta = {k: backend.to_numpy(v).copy() for k, v in m.named_parameters(trainable=True).items()}
    for _ in range(4):
        set_grads(m, g)
        opt.step()
        theta = {k: v * (1 - lr * wd) - lr * g / (g + eps) for k, v in theta.items()}
    for k, v in m.named_parameters(trainable=True).items():
        np.testing.assert_allclose(backend.to_numpy(v), theta[k], rtol=1e-10, atol=1e-12)


def test_sgd_momentum_two_steps():
    m = MLP((3, 2), seed=0, dtype="float64")
    p0 = m.fc1.W.copy()
    opt = SGD(m, lr=0.1, momentum=0.9)
    set_grads(m, 1.0)
    opt.step()
    set_grads(m, 2.0)
    opt.step()
    # v₁ = 1, v₂ = 0.9·1 + 2 = 2.9;  θ = θ₀ − 0.1·(1 + 2.9)
    np.testing.assert_allclose(m.fc1.W, p0 - 0.39, rtol=1e-12)


def test_optimizer_state_covers_trainable_parameters_only():
    m = MLP((100, 50, 10)).add_lora(r=2, alpha=4)
    opt = AdamW(m)
    assert set(opt.state) == set(m.named_parameters(trainable=True))
    assert opt.state_bytes() == 2 * 4 * m.num_parameters(trainable=True)  # m and v, float32
    assert SGD(m, momentum=0.0).state_bytes() == 0


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_stops_the_step_before_any_change(where):
    m = MLP((3, 4, 2), seed=0).add_lora(r=1, alpha=1)
    opt = AdamW(m)
    before = {k: v.copy() for k, v in m.named_parameters().items()}
    x, y = np.ones((2, 3), "float32"), np.array([0, 1])
    if where == "loss":
        x[0, 0] = np.nan
        with pytest.raises(FloatingPointError, match="loss is nan"):
            train_step(m, opt, x, y)
    else:
        set_grads(m, 1.0)
        m.fc1.lora.default.grads["B"][0, 0] = np.inf
        with pytest.raises(FloatingPointError, match="fc1.lora.default.B"):
            opt.step()
    for k, v in m.named_parameters().items():
        assert np.array_equal(v, before[k]), k
    assert opt.t == 0 and all(not np.any(s) for st in opt.state.values() for s in st)


def test_optimizer_notices_changed_trainable_set():
    m = MLP((3, 4, 2)).add_lora(r=1, alpha=1)
    opt = AdamW(m)
    m.add_lora(r=1, alpha=1, adapter="second")
    set_grads(m, 1.0)
    with pytest.raises(ValueError, match="trainable parameters changed"):
        opt.step()


def test_fit_learns_a_separable_problem(xp):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((256, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    m = MLP((5, 16, 2), seed=0, device=xp)
    X, Y = arr(x, xp, "float32"), arr(y, xp)

    def batches():
        while True:
            yield X, Y

    hist = fit(m, AdamW(m, lr=1e-2), batches(), 60, progress=False)
    assert hist["losses"][-1] < 0.5 * hist["losses"][0]
    assert hist["step_time"] > 0


@pytest.mark.parametrize("change", ["astype", "to"])
def test_optimizer_refuses_state_for_other_arrays_before_any_change(change):
    import array_api_strict

    m = MLP((3, 4, 2), seed=0)
    opt = AdamW(m, lr=1e-2, weight_decay=0.1)
    if change == "astype":
        m.astype("float64")
    else:
        m.to(array_api_strict)
    before = {k: backend.to_numpy(v).copy() for k, v in m.named_parameters().items()}
    set_grads(m, 1.0)
    with pytest.raises(ValueError, match="build a new optimizer"):
        opt.step()
    assert opt.t == 0
    for k, v in m.named_parameters().items():
        assert np.array_equal(backend.to_numpy(v), before[k]), k


def test_accuracy_counts_argmax_hits_and_restores_the_mode():
    from minilora.train import accuracy

    m = MLP((3, 4, 2), seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((20, 3))
    pred = m.forward(x).argmax(-1)
    y = pred.copy()
    y[:5] = 1 - y[:5]  # five wrong labels
    m.train()
    assert accuracy(m, x, y) == 15 / 20 and m.training
    m.eval()
    assert accuracy(m, x, pred) == 1.0 and not m.training


def _mlp_and_batches(n):
    m = MLP((4, 8, 3), seed=0)
    g = np.random.default_rng(0)
    return m, [(g.random((5, 4), dtype=np.float32), g.integers(0, 3, 5)) for _ in range(n)]


def test_fit_takes_a_list_of_batches():
    m, data = _mlp_and_batches(6)
    hist = fit(m, AdamW(m, lr=1e-2), data, 6, progress=False)
    assert len(hist["losses"]) == 6


def test_fit_says_when_the_batches_run_out():
    m, data = _mlp_and_batches(3)
    with pytest.raises(ValueError, match="batches ran out after 3 of 5 steps"):
        fit(m, AdamW(m, lr=1e-2), iter(data), 5, progress=False)


@pytest.mark.parametrize("steps", [-1, 2.0, True, "3"])
def test_fit_refuses_a_bad_step_count(steps):
    m, data = _mlp_and_batches(3)
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        fit(m, AdamW(m, lr=1e-2), data, steps, progress=False)


def test_unknown_loss_name_is_named():
    m, data = _mlp_and_batches(1)
    with pytest.raises(ValueError, match="unknown loss 'l2'; losses are"):
        train_step(m, AdamW(m), *data[0], loss="l2")


def test_fit_prints_one_line_instead_of_a_bar_when_not_a_terminal(capsys):
    m, data = _mlp_and_batches(4)
    fit(m, AdamW(m, lr=1e-2), data, 4, desc="adapt")  # pytest's capture is not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err  # no bar redraws
    assert err.count("\n") == 1 and err.startswith("adapt: 4 steps in ") and " -> " in err
