"""The promises LoRA makes, as properties over shapes, ranks, alpha, dtypes and backends."""
import copy

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import BACKEND_MODULES, arr, tol
from minilora import MLP, AdamW, backend, check_model, train_step
from minilora.functional import lora_backward, lora_forward
from minilora.nn import Linear, LoRALinear

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def lora_case(draw, dtypes=("float32", "float64")):
    d_in = draw(st.integers(1, 12))
    d_out = draw(st.integers(1, 12))
    r = draw(st.integers(1, min(d_in, d_out)))
    alpha = draw(st.floats(0.25, 64.0))
    rslora = draw(st.booleans())
    lead = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    dtype = draw(st.sampled_from(dtypes))
    xp = draw(st.sampled_from(BACKEND_MODULES))
    assume(not (dtype == "float16" and xp.__name__ == "array_api_strict"))  # the standard has no float16
    seed = draw(st.integers(0, 2**16))
    init = draw(st.sampled_from(["gaussian", "kaiming_uniform"]))
    return dict(d_in=d_in, d_out=d_out, r=r, alpha=alpha, rslora=rslora, lead=tuple(lead),
                dtype=dtype, xp=xp, seed=seed, init=init)


def make_layer(c):
    base = Linear(c["d_in"], c["d_out"], seed=c["seed"], dtype=c["dtype"], device=c["xp"])
    layer = LoRALinear(copy.deepcopy(base))
    layer.add_adapter("default", c["r"], c["alpha"], c["rslora"], init=c["init"], seed=c["seed"] + 1)
    layer.set_active("default")
    x = np.random.default_rng(c["seed"]).standard_normal(c["lead"] + (c["d_in"],))
    return base, layer, arr(x, c["xp"], c["dtype"])


def np_(a):
    return backend.to_numpy(a)


@SETTINGS
@given(lora_case(dtypes=("float16", "float32", "float64")))
def test_b_zero_at_init_gives_exactly_the_base_output(c):
    base, layer, x = make_layer(c)
    assert not np.any(np_(layer.lora.default.B))
    np.testing.assert_array_equal(np_(layer.forward(x)), np_(base.forward(x)))


@SETTINGS
@given(lora_case())
def test_at_step_zero_dA_is_zero_and_dB_is_not(c):
    _, layer, x = make_layer(c)
    layer.forward(x)
    dout = arr(np.random.default_rng(1).standard_normal(c["lead"] + (c["d_out"],)), c["xp"], c["dtype"])
    layer.backward(dout)
    g = layer.lora.default.grads
    assert not np.any(np_(g["A"]))  # dA = (scale · dout B)ᵀ x = 0 because B = 0
    assert np.any(np_(g["B"]))  # dB = scale · doutᵀ (x Aᵀ) ≠ 0
    assert layer.base.grads == {}  # frozen: no dW, no db


@SETTINGS
@given(lora_case(), st.floats(0.1, 3.0))
def test_merged_equals_unmerged_and_unmerge_restores_W(c, b_scale):
    _, layer, x = make_layer(c)
    B = np.random.default_rng(c["seed"] + 2).standard_normal((c["d_out"], c["r"])) * b_scale
    layer.lora.default.params["B"] = arr(B, c["xp"], c["dtype"])
    W0 = np_(layer.base.W).astype(np.float64).copy()
    y = np_(layer.forward(x)).astype(np.float64)
    layer.merge()
    assert layer.merged == "default"
    y_merged = np_(layer.forward(x)).astype(np.float64)
    scale = max(np.abs(y).max(), 1.0)
    assert np.abs(y_merged - y).max() <= 50 * tol(c["dtype"]) * scale
    layer.unmerge()
    assert layer.merged is None
    W1 = np_(layer.base.W).astype(np.float64)
    err = np.linalg.norm(W1 - W0) / np.linalg.norm(W0)
    # (W + ΔW) − ΔW rounds twice: |error| ≤ eps/2 · (|W + ΔW| + |W|) per entry, so the relative
    # drift is at most eps · (1 + ‖ΔW‖ / 2‖W‖). The float64 promise is 1e-12.
    ratio = np.linalg.norm(np_(layer.lora.default.delta()).astype(np.float64)) / np.linalg.norm(W0)
    bound = np.finfo(c["dtype"]).eps * (1 + ratio)
    assert err <= bound
    if c["dtype"] == "float64":
        assert err <= 1e-12


@SETTINGS
@given(lora_case(dtypes=("float64",)), st.floats(0.25, 8.0))
def test_delta_w_is_linear_in_alpha_and_has_rank_at_most_r(c, factor):
    _, layer, _ = make_layer(c)
    ad = layer.lora.default
    ad.params["B"] = arr(np.random.default_rng(3).standard_normal((c["d_out"], c["r"])), c["xp"], "float64")
    d1 = np_(ad.delta())
    ad.alpha *= factor
    d2 = np_(ad.delta())
    np.testing.assert_allclose(d2, factor * d1, rtol=1e-12, atol=1e-14)
    assert np.linalg.matrix_rank(d1) <= c["r"]
    assert d1.shape == (c["d_out"], c["d_in"])


@SETTINGS
@given(lora_case())
def test_trainable_count_is_r_times_d_in_plus_d_out(c):
    _, layer, _ = make_layer(c)
    assert layer.num_parameters(trainable=True) == c["r"] * (c["d_in"] + c["d_out"])
    assert layer.num_parameters(trainable=False) == c["d_out"] * (c["d_in"] + 1)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(BACKEND_MODULES), st.integers(0, 1000), st.booleans())
def test_whole_mlp_backward_equals_finite_differences(xp, seed, lora):
    gen = np.random.default_rng(seed)
    sizes = tuple(int(s) for s in gen.integers(2, 7, size=3))
    model = MLP(sizes, activation="gelu", seed=seed, dtype="float64", device=xp)
    if lora:
        model.add_lora(r=1, alpha=3.0, seed=seed)
        for l in model.lora_layers().values():  # B ≠ 0 so that dA is not trivially 0
            l.lora.default.params["B"] = arr(gen.standard_normal(l.lora.default.B.shape), xp, "float64")
    x = arr(gen.standard_normal((5, sizes[0])), xp, "float64")
    y = arr(gen.integers(0, sizes[-1], size=5), xp, "int64")
    for r in check_model(model, x, y, max_entries=None):
        assert r.passed, r


@SETTINGS
@given(lora_case(dtypes=("float32", "float64")))
def test_frozen_weights_bitwise_unchanged_after_training(c):
    model = MLP((c["d_in"], 8, c["d_out"] + 1), seed=c["seed"], dtype=c["dtype"], device=c["xp"])
    model.add_lora(r=1, alpha=c["alpha"], seed=c["seed"])
    frozen = {k: np_(v).copy() for k, v in model.named_parameters(trainable=False).items()}
    lora0 = {k: np_(v).copy() for k, v in model.named_parameters(trainable=True).items()}
    opt = AdamW(model, lr=1e-2)
    gen = np.random.default_rng(c["seed"])
    x = arr(gen.standard_normal((6, c["d_in"])), c["xp"], c["dtype"])
    y = arr(gen.integers(0, c["d_out"] + 1, size=6), c["xp"], "int64")
    for _ in range(3):
        train_step(model, opt, x, y)
    for k, v in model.named_parameters(trainable=False).items():
        assert np_(v).tobytes() == frozen[k].tobytes(), k
    assert any(not np.array_equal(np_(v), lora0[k]) for k, v in model.named_parameters(trainable=True).items())


@SETTINGS
@given(lora_case(dtypes=("float32",)))
def test_float32_in_gives_float32_everywhere(c):
    model = MLP((c["d_in"], 5, 3), seed=c["seed"], dtype="float32", device=c["xp"])
    model.add_lora(r=1, alpha=c["alpha"], seed=c["seed"], dropout=0.25)
    opt = AdamW(model, lr=1e-3, weight_decay=0.01)
    x = arr(np.ones((4, c["d_in"])), c["xp"], "float32")
    out = model.forward(x)
    assert backend.dtype_name(out) == "float32"
    train_step(model, opt, x, arr([0, 1, 2, 0], c["xp"], "int64"))
    arrays = {**model.named_parameters(), **{"grad " + k: v for k, v in model.named_grads().items()}}
    arrays.update({f"state {k} {i}": s for k, st_ in opt.state.items() for i, s in enumerate(st_)})
    for k, v in arrays.items():
        assert backend.dtype_name(v) == "float32", k


def test_lora_functional_pair_keeps_dtype():
    for dtype in ("float16", "float32"):
        g = np.random.default_rng(0)
        x, W, A, B = (g.standard_normal(s).astype(dtype) for s in [(3, 4), (5, 4), (2, 4), (5, 2)])
        h, cache = lora_forward(x, W, None, A, B, 2.0)
        dx, grads = lora_backward(h, cache)
        assert {h.dtype, dx.dtype, grads["A"].dtype, grads["B"].dtype} == {np.dtype(dtype)}
