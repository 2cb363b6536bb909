"""The GPT module: path contract, whole-model gradient checks (full fine-tuning and LoRA),
LoRA placement by name, merge/unmerge, causality, frozen arrays, bad input and sampling."""
import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import arr, tol
from minilora import backend
from minilora.gradcheck import TOLERANCE, check_model, numerical_gradient
from minilora.nn.lora import add_lora, lora_layers
from minilora.nn.transformer import GPT, GPTConfig
from minilora.optim import AdamW
from minilora.train import train_step

FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIX = ["q", "k", "v", "o", "fc1", "fc2"]
V = 11


def tiny(xp=np, dtype="float64", **kw):
    """Two blocks, C = 8, 2 heads, n_ctx = 6: every path of the real model, milliseconds per forward."""
    return GPT("tiny", vocab_size=V, n_ctx=6, n_embd=8, seed=kw.pop("seed", 0), dtype=dtype, device=xp, **kw)


def batch(xp, B=2, T=5, seed=0):
    g = np.random.default_rng(seed)
    return arr(g.integers(0, V, (B, T)), xp, "int64"), arr(g.integers(0, V, (B, T)), xp, "int64")


def randomise_lora_B(model, seed=1):
    """B = 0 at init makes dA = 0; a random B makes every LoRA gradient non-trivial."""
    g = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            ad.params["B"] = arr(g.standard_normal(tuple(B.shape)) * 0.5, backend.namespace(B), backend.dtype_name(B))


def host(a):
    return backend.to_numpy(a).copy()


# ----------------------------------------------------------------------------- the path contract


def test_module_paths_and_parameter_names_follow_the_contract():
    m = tiny()
    block = ["ln1.gamma", "ln1.beta", "attn.q.W", "attn.q.b", "attn.k.W", "attn.k.b", "attn.v.W",
             "attn.v.b", "attn.o.W", "attn.o.b", "ln2.gamma", "ln2.beta", "mlp.fc1.W", "mlp.fc1.b",
             "mlp.fc2.W", "mlp.fc2.b"]
    expected = ["wte.W", "wpe.W", *(f"blocks.{i}.{n}" for i in range(2) for n in block),
                "ln_f.gamma", "ln_f.beta", "lm_head.W"]
    assert list(m.named_parameters()) == expected
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters().items()}
    assert shapes["wte.W"] == (V, 8) and shapes["wpe.W"] == (6, 8) and shapes["lm_head.W"] == (V, 8)
    assert shapes["blocks.1.mlp.fc1.W"] == (32, 8) and shapes["blocks.1.mlp.fc2.W"] == (8, 32)
    assert list(m.blocks.children) == ["0", "1"]


def test_config_presets_and_overrides():
    c = GPTConfig.preset("small", vocab_size=50)
    assert c.vocab_size == 50 and c.head_dim == c.n_embd // c.n_head
    assert GPT("tiny", vocab_size=5).config == GPTConfig.preset("tiny", vocab_size=5)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        GPTConfig.preset("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 3


# ----------------------------------------------------------------------------- gradient checks
# Weights N(0, 0.5²) rather than GPT-2's 0.02: with tiny weights attention is nearly uniform and
# the q/k gradients are ~1e-5, below what central differences resolve (noise ~1e-10 / 1e-5).


def test_gpt_gradcheck_full_finetuning(xp):
    m = tiny(xp, init_std=0.5)
    ids, y = batch(xp)
    results = check_model(m, ids, y, max_entries=4)
    assert len(results) == len(m.named_parameters())  # every array is trainable
    for r in results:
        if r.array.endswith("attn.k.b"):
            continue  # exactly zero gradient, checked below
        assert r.rel_error <= TOLERANCE, f"{r.array}: relative error {r.rel_error:.2e}"


def test_key_bias_gradient_is_zero(xp):
    """k's bias adds q_t · b_k to every score of row t; softmax ignores a shift of a whole row."""
    m = tiny(xp, init_std=0.5)
    ids, y = batch(xp)
    check_model(m, ids, y, max_entries=1)  # runs one backward
    g = backend.to_numpy(m.named_grads()["blocks.0.attn.k.b"])
    g_q = backend.to_numpy(m.named_grads()["blocks.0.attn.q.b"])
    assert np.max(np.abs(g)) <= 1e-12 * np.max(np.abs(g_q))

    from minilora.functional.losses import softmax_cross_entropy_forward

    kb = m.get_module("blocks.0.attn.k").params["b"]
    num = numerical_gradient(lambda: softmax_cross_entropy_forward(m.forward(ids), y)[0], kb)
    assert np.max(np.abs(num)) < 1e-8


@pytest.mark.parametrize("targets", [None, SIX], ids=["q,v", "all six"])
def test_gpt_gradcheck_with_lora(xp, targets):
    m = tiny(xp, init_std=0.5)
    add_lora(m, targets, r=2, alpha=4)
    randomise_lora_B(m)
    ids, y = batch(xp)
    results = check_model(m, ids, y, max_entries=6)
    n_layers = 2 * (2 if targets is None else 6)
    assert len(results) == 2 * n_layers  # A and B of each LoRA layer, nothing else
    assert all(".lora.default." in r.array for r in results)
    for r in results:
        assert r.rel_error <= TOLERANCE, f"{r.array}: relative error {r.rel_error:.2e}"


# ----------------------------------------------------------------------------- LoRA properties


def test_lora_with_B_zero_leaves_logits_bitwise_unchanged(xp):
    m = tiny(xp, dtype="float32")
    ids, _ = batch(xp)
    before = host(m.forward(ids))
    add_lora(m, SIX, r=2, alpha=8)
    np.testing.assert_array_equal(host(m.forward(ids)), before)


@FEW
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(["float32", "float64"]),
       targets=st.sampled_from([["q", "v"], SIX, ["blocks.*.attn.o", "fc2"]]))
def test_merged_logits_equal_unmerged(xp, seed, dtype, targets):
    m = tiny(xp, dtype=dtype, seed=seed, init_std=0.3)
    add_lora(m, targets, r=2, alpha=4, seed=seed)
    randomise_lora_B(m, seed)
    ids, _ = batch(xp, seed=seed)
    unmerged = host(m.forward(ids))
    W_before = {k: host(v) for k, v in m.named_parameters().items() if k.endswith("base.W")}
    m.merge()
    merged = host(m.forward(ids))
    scale = np.max(np.abs(unmerged))
    np.testing.assert_allclose(merged, unmerged, rtol=0, atol=50 * tol(dtype) * scale)
    first = next(iter(W_before))  # the merge really moved W (B is random, so B A != 0)
    assert not np.array_equal(host(m.named_parameters()[first]), W_before[first])
    m.unmerge()
    for k, v in W_before.items():
        np.testing.assert_allclose(host(m.named_parameters()[k]), v, rtol=0, atol=10 * tol(dtype))
    np.testing.assert_allclose(host(m.forward(ids)), unmerged, rtol=0, atol=50 * tol(dtype) * scale)


def test_lora_placement_by_name_pattern_and_per_target_rank():
    m = tiny()
    add_lora(m, ["blocks.*.attn.q", "blocks.1.mlp.fc1"], r={"q": 2, "fc1": 3}, alpha={"*": 4})
    layers = lora_layers(m)
    assert sorted(layers) == ["blocks.0.attn.q", "blocks.1.attn.q", "blocks.1.mlp.fc1"]
    assert layers["blocks.0.attn.q"].adapters["default"].r == 2
    assert layers["blocks.1.mlp.fc1"].adapters["default"].r == 3
    assert m.num_parameters(trainable=True) == 2 * (2 * 8 + 8 * 2) + (3 * 8 + 32 * 3)
    m2 = tiny()
    add_lora(m2)  # the default targets: q and v of every block, as in the paper
    assert sorted(lora_layers(m2)) == [f"blocks.{i}.attn.{n}" for i in range(2) for n in ("q", "v")]


def test_only_lora_arrays_change_during_lora_training(xp):
    m = tiny(xp, dtype="float32")
    ids, y = batch(xp)
    base_logits = host(m.forward(ids))
    add_lora(m, SIX, r=2, alpha=4)
    before = {k: host(v) for k, v in m.named_parameters().items()}
    opt = AdamW(m, lr=1e-2, weight_decay=0.1)  # decay must not touch frozen arrays either
    for _ in range(3):
        train_step(m, opt, ids, y)
    after = {k: host(v) for k, v in m.named_parameters().items()}
    trainable = set(m.named_parameters(trainable=True))
    assert trainable == {k for k in before if ".lora.default." in k}
    for k in before:
        if k in trainable:
            if k.endswith(".B"):
                assert not np.array_equal(after[k], before[k]), f"{k} did not move"
        else:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"frozen {k} changed")
    assert set(m.named_grads()) == trainable  # no gradient computed for any frozen array
    assert not np.array_equal(host(m.forward(ids)), base_logits)
    for layer in lora_layers(m).values():
        layer.set_active(None)  # adapters off: exactly the base model again
    np.testing.assert_array_equal(host(m.forward(ids)), base_logits)


def test_full_finetuning_fills_every_gradient_and_lowers_the_loss():
    m = tiny(dtype="float32", init_std=0.1)
    ids, y = batch(np, B=4, T=6, seed=3)
    opt = AdamW(m, lr=1e-2)
    losses = [train_step(m, opt, ids, y) for _ in range(40)]
    assert set(m.named_grads()) == set(m.named_parameters())
    assert losses[-1] < 0.5 * losses[0]  # memorises one batch


# ----------------------------------------------------------------------------- model properties


@FEW
@given(t=st.integers(0, 4), seed=st.integers(0, 2**16), data=st.data())
def test_causality_later_tokens_never_change_earlier_outputs(xp, t, seed, data):
    m = tiny(xp, seed=seed, init_std=0.3)
    add_lora(m, SIX, r=2, alpha=4)
    randomise_lora_B(m, seed)
    ids, _ = batch(xp, B=2, T=6, seed=seed)
    new = data.draw(st.lists(st.integers(0, V - 1), min_size=2 * (5 - t), max_size=2 * (5 - t)))
    changed = host(ids)
    changed[:, t + 1:] = np.array(new, dtype=np.int64).reshape(2, 5 - t)
    a = host(m.forward(ids))
    b = host(m.forward(arr(changed, xp)))
    np.testing.assert_allclose(b[:, : t + 1], a[:, : t + 1], rtol=0, atol=1e-12)


def test_float32_in_float32_out(xp):
    m = tiny(xp, dtype="float32")
    add_lora(m, ["q", "v"], r=2, alpha=4)
    ids, y = batch(xp)
    logits = m.forward(ids)
    assert backend.dtype_name(logits) == "float32" and tuple(logits.shape) == (2, 5, V)
    from minilora.functional.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    _, cache = softmax_cross_entropy_forward(logits, y)
    m.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    assert {backend.dtype_name(g) for g in m.named_grads().values()} == {"float32"}


def test_backward_returns_none_and_skips_frozen_embeddings():
    m = tiny()
    add_lora(m, ["blocks.1.attn.q"], r=2, alpha=4)  # nothing trainable in block 0 or below
    ids, _ = batch(np)
    m.forward(ids)
    assert m.backward(np.ones((2, 5, V))) is None
    assert set(m.named_grads()) == {"blocks.1.attn.q.lora.default.A", "blocks.1.attn.q.lora.default.B"}


# ----------------------------------------------------------------------------- bad input


def test_ids_outside_the_vocabulary_are_rejected(xp):
    m = tiny(xp)
    with pytest.raises(ValueError, match=r"ids.*\[0, 11\).*\[0, 11\]"):
        m.forward(arr([[0, 11]], xp, "int64"))
    with pytest.raises(ValueError, match=r"\[-3, 1\]"):
        m.forward(arr([[1, -3]], xp, "int64"))
    with pytest.raises(TypeError, match="'ids'.*integer.*float64"):
        m.forward(arr([[1.0, 2.0]], xp))
    with pytest.raises(ValueError, match=r"'ids'.*shape \(B, T\).*\(3,\)"):
        m.forward(arr([1, 2, 3], xp, "int64"))


def test_sequences_longer_than_the_context_are_rejected(xp):
    m = tiny(xp)
    with pytest.raises(ValueError, match=r"'ids' has T = 7.*n_ctx = 6"):
        m.forward(arr(np.zeros((1, 7)), xp, "int64"))


def test_head_count_must_divide_the_width():
    with pytest.raises(ValueError, match=r"n_head = 3 must divide n_embd = 8"):
        GPT("tiny", vocab_size=V, n_embd=8, n_head=3)
    with pytest.raises(ValueError, match=r"n_layer must be a positive int, got 0"):
        GPTConfig(n_layer=0)


def test_unknown_lora_target_names_are_rejected():
    m = tiny()
    with pytest.raises(ValueError, match=r"unknown LoRA target 'qkv'.*fc1"):
        add_lora(m, ["q", "qkv"])
    assert not lora_layers(m)  # nothing was wrapped


# ----------------------------------------------------------------------------- sampling


def test_generate_is_seeded_and_stays_in_the_vocabulary(xp):
    m = tiny(xp, dtype="float32", init_std=0.5)
    prompt = arr([[1, 2, 3]], xp, "int64")
    a = host(m.generate(prompt, 9, temperature=1.0, seed=5))  # 12 > n_ctx = 6: the context is cropped
    assert a.shape == (1, 12) and a.min() >= 0 and a.max() < V
    np.testing.assert_array_equal(a[:, :3], [[1, 2, 3]])
    np.testing.assert_array_equal(host(m.generate(prompt, 9, temperature=1.0, seed=5)), a)
    greedy = host(m.generate(prompt, 4, temperature=0))
    np.testing.assert_array_equal(host(m.generate(prompt, 4, temperature=1.0, top_k=1, seed=9)), greedy)
    nxt = np.argmax(host(m.forward(prompt))[0, -1])
    assert greedy[0, 3] == nxt
    assert m.training  # generate restores the mode


def test_generate_rejects_bad_arguments():
    m = tiny()
    with pytest.raises(ValueError, match="temperature"):
        m.generate(np.array([[1]]), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="n_new"):
        m.generate(np.array([[1]]), -2)
    with pytest.raises(ValueError, match=r"ids.*\[0, 11\)"):
        m.generate(np.array([[12]]), 2)
