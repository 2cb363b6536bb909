"""Modules: Linear, LoRALinear, MLP, LoRA placement by name, merge state, parameter listing."""
import copy

import numpy as np
import pytest

from minilora import MLP, AdamW, backend, train_step
from minilora.nn import Linear, LoRALinear


def test_linear_init_is_seeded_and_bounded():
    a, b = Linear(50, 7, seed=3), Linear(50, 7, seed=3)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.b, b.b)
    assert not np.array_equal(a.W, Linear(50, 7, seed=4).W)
    assert np.abs(a.W).max() <= 1 / np.sqrt(50)


def test_same_initial_numbers_on_every_backend(xp):
    m_np = MLP((6, 5, 3), seed=7).add_lora(r=2, alpha=4, seed=1)
    m_xp = MLP((6, 5, 3), seed=7, device=xp).add_lora(r=2, alpha=4, seed=1)
    for (k, v), (k2, v2) in zip(m_np.named_parameters().items(), m_xp.named_parameters().items()):
        assert k == k2 and np.array_equal(v, backend.to_numpy(v2))


def test_to_moves_every_parameter_and_back(xp):
    m = MLP((4, 3, 2), seed=0)
    before = {k: v.copy() for k, v in m.named_parameters().items()}
    m.to(xp)
    assert all(v.__array_namespace__() is xp for v in m.named_parameters().values())
    m.to("cpu")
    for k, v in m.named_parameters().items():
        assert isinstance(v, np.ndarray) and np.array_equal(v, before[k])


def test_cuda_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backend, "cupy_or_none", lambda: None)
    with pytest.raises(RuntimeError, match=r"minilora\[cuda12\]"):
        MLP((4, 3, 2)).to("cuda")
    with pytest.raises(RuntimeError, match="CuPy"):
        Linear(3, 2, device="cuda")


def test_gaussian_and_kaiming_inits():
    g = LoRALinear(Linear(400, 300, seed=0))
    g.add_adapter("g", r=8, alpha=16, init="gaussian", seed=0)
    k = LoRALinear(Linear(400, 300, seed=0))
    k.add_adapter("k", r=8, alpha=16, init="kaiming_uniform", seed=0)
    A_g, A_k = g.lora.g.A, k.lora.k.A
    assert abs(A_g.std() - 1 / 8) < 0.01  # N(0, 1/r²)
    assert np.abs(A_k).max() <= 1 / np.sqrt(400) and abs(A_k.std() - 1 / np.sqrt(3 * 400)) < 0.003
    assert not np.any(g.lora.g.B) and not np.any(k.lora.k.B)


def test_rslora_scale():
    layer = LoRALinear(Linear(32, 32))
    assert layer.add_adapter("a", r=16, alpha=8).scale == 8 / 16
    assert layer.add_adapter("b", r=16, alpha=8, rslora=True).scale == 8 / 4


def test_parameter_listing_names_shapes_and_counts():
    m = MLP((10, 20, 3), seed=0).add_lora(["fc1"], r=2, alpha=4)
    table = {p.name: p for p in m.parameter_table()}
    assert set(table) == {"fc1.base.W", "fc1.base.b", "fc1.lora.default.A", "fc1.lora.default.B", "fc2.W", "fc2.b"}
    assert table["fc1.lora.default.A"].shape == (2, 10) and table["fc1.lora.default.B"].shape == (20, 2)
    assert [p.name for p in m.parameter_table() if p.trainable] == ["fc1.lora.default.A", "fc1.lora.default.B"]
    assert m.num_parameters() == 10 * 20 + 20 + 20 * 3 + 3 + 2 * (10 + 20)
    assert m.num_parameters(trainable=True) == 2 * (10 + 20)
    assert "trainable 60 of" in m.summary()


def test_lora_placement_by_name_and_pattern():
    m = MLP((4, 5, 6, 3)).add_lora(["fc1", "fc3"], r=1, alpha=1)
    assert set(m.lora_layers()) == {"fc1", "fc3"}
    assert isinstance(m.fc2, Linear) and not isinstance(m.fc2, LoRALinear)
    m2 = MLP((4, 5, 6, 3)).add_lora("fc*", r={"fc1": 2, "*": 1}, alpha={"*": 2.0})
    assert m2.fc1.lora.default.r == 2 and m2.fc3.lora.default.r == 1


def test_merge_state_is_visible_and_training_while_merged_is_refused():
    m = MLP((4, 5, 3), seed=0).add_lora(r=2, alpha=4)
    opt = AdamW(m)
    x, y = np.ones((2, 4), "float32"), np.array([0, 1])
    m.merge()
    assert {l.merged for l in m.lora_layers().values()} == {"default"}
    with pytest.raises(RuntimeError, match="merged into W; call unmerge"):
        train_step(m, opt, x, y)
    m.unmerge()
    assert {l.merged for l in m.lora_layers().values()} == {None}
    train_step(m, opt, x, y)


def test_no_adapter_active_means_the_base_model():
    m = MLP((4, 5, 3), seed=0)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    y0 = m.forward(x)
    m.add_lora(r=2, alpha=4)
    for l in m.lora_layers().values():
        l.lora.default.params["B"] += 1.0
        l.set_active(None)
    assert np.array_equal(m.forward(x), y0)


def test_dropout_only_in_training_and_mask_is_inverted():
    layer = LoRALinear(Linear(200, 3, seed=0, dtype="float64"))
    layer.add_adapter("d", r=2, alpha=2, dropout=0.5, seed=0)
    layer.set_active("d")
    x = np.ones((50, 200))
    layer.forward(x)
    mask = layer.cache[1].mask
    assert set(np.unique(mask)) <= {0.0, 2.0} and abs(mask.mean() - 1.0) < 0.05
    layer.eval()
    layer.forward(x)
    assert layer.cache[1].mask is None


def test_deepcopy_is_independent():
    m = MLP((4, 5, 3), seed=0)
    c = copy.deepcopy(m)
    c.fc1.params["W"] += 1
    assert not np.array_equal(c.fc1.W, m.fc1.W)


def test_grads_are_overwritten_not_accumulated():
    m = MLP((4, 5, 3), seed=0, dtype="float64")
    x, y = np.ones((2, 4)), np.array([0, 2])
    from minilora.functional import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    for _ in range(2):
        _, cache = softmax_cross_entropy_forward(m.forward(x), y)
        m.backward(softmax_cross_entropy_backward(1.0, cache)[0])
        g = {k: v.copy() for k, v in m.named_grads().items()}
    _, cache = softmax_cross_entropy_forward(m.forward(x), y)
    m.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    for k, v in m.named_grads().items():
        assert np.array_equal(v, g[k])


def test_model_merge_is_all_or_none():
    m = MLP((4, 5, 3), seed=0).add_lora(r=2, alpha=4)
    m.fc1.lora.default.params["B"] += 0.1
    m.fc2.lora.default.params["B"] += 1e38  # fc2's merged W overflows to inf
    before = {k: v.copy() for k, v in m.named_parameters().items()}
    with pytest.raises(FloatingPointError, match="fc2: merging adapter 'default' gives non-finite"), \
            np.errstate(over="ignore"):
        m.merge()
    assert {l.merged for l in m.lora_layers().values()} == {None}
    for k, v in m.named_parameters().items():
        assert np.array_equal(v, before[k]), k


def test_bias_only_training_gets_bias_gradients():
    m = MLP((4, 5, 3), seed=0, dtype="float64")
    m.freeze("*.W")
    x, y = np.random.default_rng(0).standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    W0 = m.fc1.W.copy()
    opt = AdamW(m, lr=1e-2)
    train_step(m, opt, x, y)
    assert set(m.named_grads()) == {"fc1.b", "fc2.b"}
    assert np.array_equal(m.fc1.W, W0)
    from minilora.gradcheck import check_model

    assert all(r.passed for r in check_model(m, x, y))


def test_load_state_dict_round_trip_and_refusals(xp):
    src = MLP((4, 5, 3), seed=0)
    dst = MLP((4, 5, 3), seed=1, device=xp)
    dst.load_state_dict(src.state_dict())  # NumPy arrays onto any backend
    for k, v in dst.named_parameters().items():
        assert v.__array_namespace__() is xp and np.array_equal(backend.to_numpy(v), src.named_parameters()[k])
    before = {k: backend.to_numpy(v).copy() for k, v in dst.named_parameters().items()}
    bad = dict(src.state_dict(), **{"fc2.b": np.zeros(4, "float32")})
    with pytest.raises(ValueError, match=r"fc2.b has shape \(4,\) and dtype float32, the model's has shape \(3,\)"):
        dst.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing \['fc1.W'\]"):
        dst.load_state_dict({k: v for k, v in src.state_dict().items() if k != "fc1.W"})
    with pytest.raises(ValueError, match="dtype float64"):
        dst.load_state_dict({k: v.astype("float64") for k, v in src.state_dict().items()})
    for k, v in dst.named_parameters().items():  # every refusal left the model as it was
        assert np.array_equal(backend.to_numpy(v), before[k])
