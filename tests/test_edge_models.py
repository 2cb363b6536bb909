"""Modules at their edges: validation of *both* arrays of a pair, LoRA placement against near-miss
layer names, adapter state across switches, requires-grad plans that start at one array, the
GPT's config reaching every layer, and sampling at temperatures other than 0 and 1.

Written against the survivors of ``python mutation/run.py`` (docs/mutation.md).
"""
import math

import numpy as np
import pytest

from minilora import MLP, backend
from minilora import functional as F
from minilora.functional.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minilora.gradcheck import TOLERANCE, check_model, numerical_gradient
from minilora.nn import LoRALinear
from minilora.nn.lora import add_lora, linear_paths, lora_layers
from minilora.nn.transformer import GPT, LayerNorm

G = np.random.default_rng(7)


def randn(*shape, dtype="float64"):
    return G.standard_normal(shape).astype(dtype)


def tiny(**kw):
    kw = {"vocab_size": 11, "n_ctx": 6, "n_embd": 8, "init_std": 0.5, "dtype": "float64", **kw}
    return GPT("tiny", **kw)


def random_B(model, seed=1):
    g = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        for ad in layer.adapters.values():
            ad.params["B"] = g.standard_normal(ad.params["B"].shape).astype(ad.params["B"].dtype)
    return model


# ----------------------------------------------------------------------------- both arrays validated


def test_layernorm_checks_beta_as_well_as_gamma():
    x = randn(2, 4)
    with pytest.raises(ValueError, match=r"got gamma \(4,\) and beta \(3,\)"):
        F.layernorm_forward(x, randn(4), randn(3))
    with pytest.raises(ValueError, match=r"got gamma \(4,\) and beta \(4, 1\)"):
        F.layernorm_forward(x, randn(4), randn(4, 1))


@pytest.mark.parametrize("eps", [0.0, -1e-5, math.inf, math.nan])
def test_layernorm_refuses_an_eps_that_is_not_positive_and_finite(eps):
    with pytest.raises(ValueError, match="eps must be a positive finite number"):
        F.layernorm_forward(randn(2, 4), randn(4), randn(4), eps=eps)


@pytest.mark.parametrize("B_shape", [(5, 3), (4, 2), (2, 5)])
def test_lora_checks_B_as_well_as_A(B_shape):
    x, W, A = randn(3, 4), randn(5, 4), randn(2, 4)
    with pytest.raises(ValueError, match=rf"fc1: expected A .*got A \(2, 4\) and B \({B_shape[0]}, {B_shape[1]}\)"):
        F.lora_forward(x, W, None, A, randn(*B_shape), 1.0, layer="fc1")


def test_dropout_mask_shape_not_just_its_rank():
    x, W, A, B = randn(3, 4), randn(5, 4), randn(2, 4), randn(5, 2)
    for bad in [(3, 1), (1, 4), (4, 3)]:
        with pytest.raises(ValueError, match=rf"dropout mask has shape \({bad[0]}, {bad[1]}\), expected x's \(3, 4\)"):
            F.lora_forward(x, W, None, A, B, 1.0, mask=np.ones(bad))


@pytest.mark.parametrize("target", [np.zeros((2, 3), np.int64), np.zeros((2, 3), bool)])
def test_mse_checks_target_as_well_as_pred(target):
    with pytest.raises(TypeError, match="mse: argument 'target' must be a floating array"):
        F.mse_forward(np.zeros((2, 3)), target)
    with pytest.raises(TypeError, match="mse: argument 'pred' must be a floating array"):
        F.mse_forward(target, np.zeros((2, 3)))


def test_rank_bound_is_the_smaller_side_both_ways():
    for sizes, r in [((4, 9, 2), 5), ((9, 4, 2), 5)]:
        with pytest.raises(ValueError, match=r"min\(d_in, d_out\)"):
            MLP(sizes).add_lora(["fc1"], r=r, alpha=1)
        MLP(sizes).add_lora(["fc1"], r=4, alpha=1)  # r = min(d_in, d_out) itself is fine


# ----------------------------------------------------------------------------- placement by name


def twelve():
    """fc1 … fc11: names that are prefixes of one another (fc1, fc10, fc11)."""
    return MLP((4,) * 11 + (3,), seed=0)


def test_a_layer_name_selects_that_layer_not_the_ones_it_prefixes():
    m = twelve()
    add_lora(m, ["fc1"], r=1, alpha=1)
    assert list(lora_layers(m)) == ["fc1"]
    m2 = twelve()
    add_lora(m2, ["fc1*"], r=1, alpha=1)  # the glob does take them all
    assert list(lora_layers(m2)) == ["fc1", "fc10", "fc11"]
    g = tiny()
    add_lora(g, ["blocks.1.attn.q", "o"], r=1, alpha=1)
    assert list(lora_layers(g)) == ["blocks.0.attn.o", "blocks.1.attn.q", "blocks.1.attn.o"]


def test_targets_in_any_order_give_the_same_model():
    a = MLP((4, 5, 6, 3), seed=0).add_lora(["fc1", "fc3"], r=2, alpha=2, seed=9)
    b = MLP((4, 5, 6, 3), seed=0).add_lora(["fc3", "fc1"], r=2, alpha=2, seed=9)
    pa, pb = a.named_parameters(), b.named_parameters()
    assert list(pa) == list(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_a_second_adapter_by_pattern_lands_on_the_same_layers():
    m = MLP((4, 5, 3), seed=0).add_lora(r=1, alpha=1)
    m.add_lora(r=2, alpha=2, adapter="second")  # default targets "fc*" again
    assert linear_paths(m) == ["fc1", "fc2"]
    assert {p: sorted(l.adapters) for p, l in lora_layers(m).items()} == {
        "fc1": ["default", "second"], "fc2": ["default", "second"]}
    assert not any(isinstance(l.base, LoRALinear) for l in lora_layers(m).values())


# ----------------------------------------------------------------------------- adapter state


def test_backward_clears_the_gradients_of_the_adapter_not_running():
    m = MLP((4, 5, 3), seed=0, dtype="float64").add_lora(["fc1"], r=1, alpha=1, adapter="a")
    m.add_lora(["fc1"], r=1, alpha=1, adapter="b", activate=False)
    m.unfreeze("*.lora.*")  # both adapters train
    random_B(m)
    x, y = randn(6, 4), np.arange(6) % 3

    def backward():
        _, cache = softmax_cross_entropy_forward(m.forward(x), y)
        m.backward(softmax_cross_entropy_backward(1.0, cache)[0])

    m.fc1.set_active("a")
    backward()
    assert set(m.named_grads()) == {"fc1.lora.a.A", "fc1.lora.a.B"}
    m.fc1.set_active("b")
    backward()
    assert set(m.named_grads()) == {"fc1.lora.b.A", "fc1.lora.b.B"}


def test_an_unfrozen_base_trains_under_its_adapter():
    m = MLP((4, 5, 3), seed=0, dtype="float64").add_lora(["fc1"], r=2, alpha=3)
    random_B(m)
    m.unfreeze("fc1.base.W")
    x, y = randn(6, 4), np.arange(6) % 3
    results = {r.array: r for r in check_model(m, x, y, max_entries=None)}
    assert set(results) == {"fc1.base.W", "fc1.lora.default.A", "fc1.lora.default.B"}
    assert all(r.rel_error <= TOLERANCE for r in results.values()), results


def test_merging_twice_is_merging_once():
    m = MLP((4, 5, 3), seed=0, dtype="float64").add_lora(r=2, alpha=4)
    random_B(m)
    x = randn(3, 4)
    y = m.forward(x)
    m.merge()
    W1 = {p: l.base.W.copy() for p, l in lora_layers(m).items()}
    m.merge()
    for p, l in lora_layers(m).items():
        l.merge()
        np.testing.assert_array_equal(l.base.W, W1[p])
    np.testing.assert_allclose(m.forward(x), y, rtol=1e-12, atol=1e-12)


def test_deleting_the_active_adapter_leaves_the_base_running():
    m = MLP((4, 5, 3), seed=0, dtype="float64")
    x = randn(3, 4)
    base = m.forward(x)
    m.add_lora(r=2, alpha=4)
    random_B(m)
    for layer in lora_layers(m).values():
        layer.delete_adapter("default")
        assert layer.active is None and not layer.adapters
    np.testing.assert_array_equal(m.forward(x), base)


# ----------------------------------------------------------------------------- module state


def test_zero_grad_clears_every_descendant():
    m = MLP((4, 5, 3), seed=0, dtype="float64").add_lora(r=1, alpha=1)
    _, cache = softmax_cross_entropy_forward(m.forward(randn(2, 4)), np.array([0, 2]))
    m.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    assert m.named_grads()
    m.zero_grad()
    assert m.named_grads() == {}


def test_assigning_a_parameter_of_another_dtype_is_refused():
    m = MLP((4, 5, 3), seed=0)
    W = m.fc1.W
    with pytest.raises(ValueError, match=r"'W' is \(5, 4\) float32 on cpu; got \(5, 4\) float64"):
        m.fc1.W = W.astype(np.float64)
    assert m.fc1.W is W
    m.fc1.W = W * 2  # same shape, dtype and device: set
    np.testing.assert_array_equal(m.fc1.params["W"], W * 2)


def test_an_mlp_computes_its_input_gradient_only_when_asked():
    m = MLP((4, 5, 3), seed=0, dtype="float64")
    x, dout = randn(6, 4), randn(6, 3)
    m.forward(x)
    assert m.backward(dout) is None  # x is data
    m.need_dx = True
    m.forward(x)
    dx = m.backward(dout)
    num = numerical_gradient(lambda: np.sum(m.forward(x) * dout), x)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- GPT: plans from one array


def frozen_but(model, *patterns):
    model.freeze()
    for p in patterns:
        model.unfreeze(p)
    return model


@pytest.mark.parametrize("train", ["wpe.W", "wte.W", "blocks.0.ln1.gamma"])
def test_gpt_trains_a_single_low_array(train):
    m = frozen_but(tiny(), train)
    ids, y = G.integers(0, 11, (2, 5)), G.integers(0, 11, (2, 5))
    (r,) = check_model(m, ids, y, max_entries=None)
    assert r.array == train and r.rel_error <= TOLERANCE, r


def test_gpt_with_lora_on_fc1_only_gets_every_fc1_gradient():
    m = tiny()
    add_lora(m, ["fc1"], r=1, alpha=2)
    random_B(m)
    ids, y = G.integers(0, 11, (2, 5)), G.integers(0, 11, (2, 5))
    results = check_model(m, ids, y, max_entries=None)
    assert [r.array for r in results] == [f"blocks.{i}.mlp.fc1.lora.default.{k}" for i in (0, 1) for k in "AB"]
    assert all(r.rel_error <= TOLERANCE for r in results), results


def test_gpt_config_eps_reaches_every_layernorm():
    m = tiny(ln_eps=0.3)
    norms = {p: l for p, l in m.named_modules() if isinstance(l, LayerNorm)}
    assert len(norms) == 2 * 2 + 1  # ln1, ln2 per block, ln_f
    x = randn(3, 8)
    for p, layer in norms.items():
        assert layer.eps == 0.3, p
        y_ref, _ = F.layernorm_forward(x, layer.gamma, layer.beta, 0.3)
        np.testing.assert_allclose(layer.forward(x), y_ref, rtol=1e-12, atol=1e-12, err_msg=p)


def test_residual_projections_start_smaller_as_in_gpt2():
    # o and fc2 write into the residual stream: N(0, (std / √(2 n_layer))²), the others N(0, std²)
    m = GPT("tiny", vocab_size=11, n_layer=8, n_head=2, n_embd=64, init_std=0.02, dtype="float64")
    proj, plain = 0.02 / math.sqrt(2 * 8), 0.02
    linears = {k: v for k, v in m.named_parameters().items()
               if k.endswith(".W") and (".attn." in k or ".mlp." in k)}
    assert len(linears) == 8 * 6
    for k, v in linears.items():
        want = proj if (".attn.o." in k or ".fc2." in k) else plain
        assert abs(v.std() / want - 1) < 0.1, (k, v.std(), want)  # ≥ 4096 draws: ~1% noise


def test_a_sequence_of_exactly_n_ctx_ids_is_accepted():
    m = tiny()
    logits = m.forward(G.integers(0, 11, (2, 6)))  # T = n_ctx
    assert logits.shape == (2, 6, 11)


# ----------------------------------------------------------------------------- sampling


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def first_token_frequencies(m, prompt, n, **kw):
    ids = np.repeat(np.array([prompt]), n, axis=0)  # n copies of one prompt: n samples at once
    nxt = backend.to_numpy(m.generate(ids, 1, seed=3, **kw))[:, -1]
    return np.bincount(nxt, minlength=m.config.vocab_size) / n


@pytest.mark.parametrize("temperature, top_k", [(0.5, None), (2.5, None), (0.7, 3)])
def test_sampling_follows_the_exact_tempered_softmax(temperature, top_k):
    m = tiny()
    prompt = [1, 2, 3]
    z = m.forward(np.array([prompt]))[0, -1]
    want = softmax(z / temperature)
    if top_k is not None:
        keep = np.argsort(z)[-top_k:]
        want = np.zeros_like(want)
        want[keep] = softmax(z[keep] / temperature)
    untempered = softmax(z)
    assert 0.5 * np.abs(want - untempered).sum() > 0.1  # the temperature matters here
    n = 20000  # total-variation noise ≈ 0.01
    got = first_token_frequencies(m, prompt, n, temperature=temperature, top_k=top_k)
    assert 0.5 * np.abs(got - want).sum() < 0.03, (got, want)
    if top_k is not None:
        assert np.all(got[np.setdiff1d(np.arange(11), keep)] == 0)


def test_greedy_generation_reads_the_last_n_ctx_ids():
    m = tiny()
    prompt = G.integers(0, 11, (3, 4))
    out = backend.to_numpy(m.generate(prompt, 8, temperature=0))
    for t in range(4, 12):  # every step past the context length crops to the last n_ctx = 6 ids
        ctx = out[:, max(0, t - 6):t]
        np.testing.assert_array_equal(out[:, t], m.forward(ctx)[:, -1].argmax(-1), err_msg=f"step {t}")


# ----------------------------------------------------------------------------- stale caches


@pytest.mark.parametrize("what", ["B", "A", "W"])
def test_backward_refuses_a_cache_older_than_an_assigned_parameter(what):
    # adapter.B = ... clears the adapter's own cache, but the forward cache lives in the
    # LoRALinear: without the check, backward differentiated the old B (dA came out 0)
    import minilora as ml

    rng = np.random.default_rng(0)
    layer = ml.LoRALinear(ml.Linear(5, 4, seed=0))
    layer.add_adapter("default", r=2, alpha=4, seed=1)
    layer.set_active("default")
    layer.adapters["default"].B = rng.standard_normal((4, 2)).astype(np.float32)  # B != 0: dA != 0
    x = rng.standard_normal((3, 5)).astype(np.float32)
    dout = rng.standard_normal((3, 4)).astype(np.float32)
    layer.forward(x)
    owner = layer.base if what == "W" else layer.adapters["default"]
    setattr(owner, what, rng.standard_normal(owner.params[what].shape).astype(np.float32))
    with pytest.raises(RuntimeError, match=rf"{'base' if what == 'W' else 'default'}\.{what} was replaced after forward"):
        layer.backward(dout)
    layer.forward(x)  # a fresh forward: the backward runs on the new array
    layer.backward(dout)
    assert np.any(layer.adapters["default"].grads["A"] != 0) or what == "W"
