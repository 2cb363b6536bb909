"""LoRA-FA (Zhang et al., 2023): A frozen at its init, only B trains, and the cache keeps u = x̃ Aᵀ
(r numbers per row) instead of x (d_in per row) — docs/lora.md §10.

Expected magnitudes: dB and dx against central differences in float64 ~1e-10 (tolerance 1e-6);
the LoRA-FA pair against the LoRA pair: the same operations, so bit for bit.
"""
import numpy as np
import pytest

import minilora as ml
from minilora.cases import perturb_lora_B
from minilora.functional.lora import (LoRAFACache, cache_bytes, lora_backward, lora_fa_backward, lora_fa_forward,
                                      lora_forward)
from minilora.gradcheck import TOLERANCE, check_model, check_pair

from conftest import arr


def inputs(xp, mask=False, seed=0, N=(2, 3), d_in=7, d_out=5, r=2, dtype="float64"):
    g = np.random.default_rng(seed)
    out = dict(x=g.standard_normal((*N, d_in)), W=g.standard_normal((d_out, d_in)), b=g.standard_normal(d_out),
               A=g.standard_normal((r, d_in)), B=g.standard_normal((d_out, r)),
               mask=((g.random((*N, d_in)) > 0.3) / 0.7) if mask else None)
    out = {k: None if v is None else arr(v, xp, dtype) for k, v in out.items()}
    return {**out, "scale": 1.5}


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_fa_pair_matches_finite_differences(xp, mask):
    results = check_pair(lora_fa_forward, lora_fa_backward, inputs(xp, mask), wrt=["x", "B"])
    assert [r.array for r in results] == ["x", "B"]
    assert all(r.rel_error <= TOLERANCE for r in results), [(r.array, r.rel_error) for r in results]


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_fa_pair_is_the_lora_pair_without_dA(mask):
    inp = inputs(np, mask, dtype="float32")
    h, cache = lora_forward(**inp)
    h_fa, cache_fa = lora_fa_forward(**inp)
    dout = np.random.default_rng(1).standard_normal(h.shape).astype("float32")
    dx, grads = lora_backward(dout, cache, need=("x", "B"))
    dx_fa, grads_fa = lora_fa_backward(dout, cache_fa)
    assert np.array_equal(h, h_fa) and np.array_equal(dx, dx_fa) and np.array_equal(grads["B"], grads_fa["B"])
    assert set(grads_fa) == {"B"}


def test_the_cache_holds_no_x_and_refuses_dA():
    inp = inputs(np)
    _, cache = lora_fa_forward(**inp)
    assert isinstance(cache, LoRAFACache) and "x" not in cache._fields and "x_drop" not in cache._fields
    assert not any(a is inp["x"] for a in cache)
    with pytest.raises(ValueError, match=r"lora_fa_backward: A and W are frozen in LoRA-FA and the cache holds no x"):
        lora_fa_backward(np.ones((2, 3, 5)), cache, need=("x", "A", "B"))


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_cache_bytes_saved(mask):
    # a GPT-2-small-wide projection (d_in = 768, r = 8) on 512 rows, float32
    N, d_in, r = 512, 768, 8
    inp = inputs(np, mask, N=(N,), d_in=d_in, d_out=64, r=r, dtype="float32")
    _, lora_cache = lora_forward(**inp)
    _, fa_cache = lora_fa_forward(**inp)
    x_bytes, u_bytes, mask_bytes = 4 * N * d_in, 4 * N * r, (4 * N * d_in if mask else 0)
    # LoRA keeps x, u (and the mask and x̃ = x ⊙ mask with dropout); LoRA-FA keeps u (and the mask)
    assert cache_bytes(lora_cache) == x_bytes + u_bytes + 2 * mask_bytes
    assert cache_bytes(fa_cache) == u_bytes + mask_bytes
    if not mask:  # 1.5 MiB against 16 KiB: a factor d_in / r = 96 less (docs/lora.md §10)
        assert cache_bytes(lora_cache) == 1_589_248 and cache_bytes(fa_cache) == 16_384
        assert (cache_bytes(lora_cache) - cache_bytes(fa_cache)) == 4 * N * d_in


# ----------------------------------------------------------------------------- the module

X = np.random.default_rng(0).standard_normal((16, 6))
Y = np.arange(16) % 3


def fa_mlp(dtype="float64", **kw):
    model = ml.MLP((6, 7, 3), activation="gelu", seed=0, dtype=dtype)
    return model.add_lora(["fc1", "fc2"], r=2, alpha=4, freeze_A=True, **kw)


def test_freeze_A_trains_only_B_and_the_cache_drops_x():
    model = fa_mlp()
    assert list(model.named_parameters(trainable=True)) == ["fc1.lora.default.B", "fc2.lora.default.B"]
    model.forward(X)
    for layer in model.lora_layers().values():
        kind, cache = layer.cache
        assert kind == "lora_fa" and isinstance(cache, LoRAFACache)


def test_the_existing_freeze_mechanism_gives_the_same_path():
    model = ml.MLP((6, 7, 3), activation="gelu", seed=0).add_lora(["fc1", "fc2"], r=2, alpha=4)
    model.forward(X.astype("float32"))
    assert model.fc1.cache[0] == "lora"
    model.freeze("*.lora.*.A")
    model.forward(X.astype("float32"))
    assert model.fc1.cache[0] == "lora_fa" and model.fc2.cache[0] == "lora_fa"


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_module_gradients(dropout):
    model = fa_mlp(dropout=dropout)
    perturb_lora_B(model)  # B ≠ 0: dx's low-rank term is on
    rows = check_model(model, X, Y)
    assert [r.array for r in rows] == ["fc1.lora.default.B", "fc2.lora.default.B"]
    assert all(r.passed for r in rows), [(r.array, r.rel_error) for r in rows]


def test_A_is_bitwise_unchanged_by_training():
    model = fa_mlp(dtype="float32", dropout=0.1)
    A0 = {p: layer.adapters["default"].params["A"].copy() for p, layer in model.lora_layers().items()}
    B0 = {p: layer.adapters["default"].params["B"].copy() for p, layer in model.lora_layers().items()}
    opt = ml.AdamW(model, lr=1e-2, weight_decay=0.1)  # weight decay would shrink a trained A
    x = X.astype("float32")
    losses = [ml.train_step(model, opt, x, Y) for _ in range(10)]
    assert losses[-1] < losses[0]
    for p, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        assert ad.params["A"].tobytes() == A0[p].tobytes()
        assert not np.array_equal(ad.params["B"], B0[p])


def test_trainable_base_or_unfrozen_A_use_the_full_cache():
    model = fa_mlp()
    model.unfreeze("fc1.base.W")
    model.forward(X)
    assert model.fc1.cache[0] == "lora" and model.fc2.cache[0] == "lora_fa"  # fc1's dW needs x
    model.forward(X)
    model.unfreeze("fc2.lora.default.A")  # after the forward: its cache has no x for dA
    with pytest.raises(RuntimeError, match=r"fc2: A or the base was unfrozen after a LoRA-FA forward"):
        model.backward(np.ones((16, 3)))
    perturb_lora_B(model)
    rows = check_model(model, X, Y)  # forward again: the full LoRA pair, dA included
    assert "fc2.lora.default.A" in [r.array for r in rows] and all(r.passed for r in rows)
