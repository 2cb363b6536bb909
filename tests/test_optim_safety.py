"""Optimizer arithmetic is safe in every dtype the library accepts, and bad hyper-parameters are
refused: float16 AdamW (issue 10, defect 1), non-finite updates, and values outside their meaning."""
import math

import numpy as np
import pytest

from minilora import MLP, AdamW, SGD, fast, train_step


def _lora_mlp(dtype):
    return MLP((8, 16, 4), "gelu", dtype=dtype, seed=0).add_lora(r=2, alpha=4)


def _data(dtype):
    g = np.random.default_rng(0)
    return g.standard_normal((6, 8)).astype(dtype), g.integers(0, 4, 6)


def _snapshot(model, opt):
    params = {k: np.array(v) for k, v in model.named_parameters().items()}
    state = {k: [np.array(a) for a in s] for k, s in opt.state.items()}
    return params, state


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_float16_adamw_keeps_lora_A_finite_at_step_one(path):
    # B = 0 at step 1 gives dA = 0 exactly; in float16 arithmetic eps = 1e-8 rounds to 0 and the
    # update is 0/0 = NaN. Computed in float32, A's update is 0: A must come out unchanged.
    model = _lora_mlp("float16")
    opt = AdamW(model, lr=1e-2)
    x, y = _data("float16")
    A0 = {k: np.array(v) for k, v in model.named_parameters().items() if k.endswith(".A")}
    names = fast.USE_FAST if path == "reference" else ()
    with fast.reference(*names) if path == "reference" else _nothing():
        train_step(model, opt, x, y)
        train_step(model, opt, x, y)
    for k, v in model.named_parameters().items():
        assert np.isfinite(np.asarray(v, np.float64)).all(), k
    for k, a in model.named_parameters(trainable=True).items():
        assert a.dtype == np.float16
        if k.endswith(".B"):
            assert np.abs(np.asarray(a, np.float64)).max() > 0  # B moved
    # after step 2, B != 0 so dA != 0 and A moves: the float32 update reached it
    assert any(not np.array_equal(A0[k], np.asarray(model.named_parameters()[k])) for k in A0)
    assert all(s.dtype == np.float32 for st in opt.state.values() for s in st)  # master moments


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_float16_update_past_the_range_raises_and_changes_nothing():
    model = _lora_mlp("float16")
    x, y = _data("float16")
    opt = AdamW(model, lr=1e3)
    model.backward(np.ones_like(model.forward(x)) * np.float16(1e-2))
    adapter = model.fc1.lora.default
    adapter.params["B"][...] = np.float16(65000.0)  # a step of lr = 1e3 pushes it past 65,504
    adapter.grads["B"] = np.full_like(adapter.params["B"], -1.0)  # finite: the update moves B up
    before = _snapshot(model, opt)
    with pytest.raises(FloatingPointError, match="non-finite in float16"):
        opt.step()
    after = _snapshot(model, opt)
    for k in before[0]:
        np.testing.assert_array_equal(before[0][k], after[0][k])
    for k in before[1]:
        for a, b in zip(before[1][k], after[1][k]):
            np.testing.assert_array_equal(a, b)
    assert opt.t == 0


def test_float32_update_that_overflows_is_named():
    model = _lora_mlp("float32")
    x, y = _data("float32")
    opt = SGD(model, lr=1e37, momentum=0.0)  # finite steps everywhere but at B = 3.4e38
    model.backward(np.ones_like(model.forward(x)))
    adapter = model.fc2.lora.default
    adapter.params["B"][...] = np.float32(3.4e38)  # float32 max is 3.40282e38
    adapter.grads["B"] = np.full_like(adapter.params["B"], -1.0)
    with pytest.raises(FloatingPointError, match="fc2.lora.default.B"):
        opt.step()


@pytest.mark.parametrize("kwargs, match", [
    (dict(betas=(1.0, 0.999)), r"betas\[0\] must lie in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(betas=(0.9,)), "betas must be a pair"),
    (dict(lr=math.nan), "lr must be a positive finite number, got nan"),
    (dict(lr=math.inf), "lr must be a positive finite number, got inf"),
    (dict(lr=0.0), "lr must be a positive finite number"),
    (dict(eps=0.0), "eps must be a positive finite number"),
    (dict(eps=math.inf), "eps must be a positive finite number"),
    (dict(weight_decay=math.nan), "weight_decay must be a finite number"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
])
def test_adamw_refuses_hyper_parameters_outside_their_meaning(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(_lora_mlp("float32"), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(momentum=1.0), r"momentum must lie in \[0, 1\)"),
    (dict(momentum=math.nan), "momentum must lie in"),
    (dict(lr=-1.0), "lr must be a positive finite number"),
    (dict(weight_decay=math.inf), "weight_decay must be a finite number"),
])
def test_sgd_refuses_hyper_parameters_outside_their_meaning(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(_lora_mlp("float32"), **kwargs)


def test_numpy_scalars_are_accepted_as_hyper_parameters():
    model = _lora_mlp("float32")
    opt = AdamW(model, lr=np.float32(1e-2), betas=(np.float64(0.9), np.float32(0.99)),
                eps=np.float64(1e-8), weight_decay=np.int64(0))
    x, y = _data("float32")
    assert math.isfinite(train_step(model, opt, x, y))
    assert isinstance(opt.lr, float) and opt.beta2 == pytest.approx(0.99)
