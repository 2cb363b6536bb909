"""LoRA on a token embedding (issue 14, part 4): the pair h = E[ids] + scale · (Aᵀ[ids]) Bᵀ and its
backward through the gather, the ``LoRAEmbedding`` module, its placement on a model, and PEFT's
``lora.Embedding`` doing the same arithmetic."""

import numpy as np
import pytest

from conftest import arr
from minilora import GPT, Llama, LlamaConfig, add_lora_embedding, check_model, check_pair, rel_error, train_step
from minilora.functional import lora_embedding_backward, lora_embedding_delta, lora_embedding_forward
from minilora.gradcheck import TOLERANCE
from minilora.nn.lora_embedding import LoRAEmbedding, lora_embedding_layers
from minilora.optim import AdamW

V, C, r = 9, 6, 3
IDS = np.array([[1, 4, 4, 7], [4, 0, 1, 8]])  # 4 three times, 1 twice: the gather's backward must add


def _arrays(seed=0, dtype="float64"):
    g = np.random.default_rng(seed)
    E, A, B = g.standard_normal((V, C)), g.standard_normal((r, V)), g.standard_normal((C, r))  # B != 0
    return [a.astype(dtype) for a in (E, A, B)]


# ----------------------------------------------------------------------------- the pair


def test_forward_is_the_merged_table_looked_up():
    E, A, B = _arrays()
    h, _ = lora_embedding_forward(IDS, E, A, B, 0.5)
    merged = E + 0.5 * (B @ A).T  # E + ΔE, ΔE = scale (B A)ᵀ (V, C): the dense definition
    assert h.shape == (2, 4, C)
    np.testing.assert_allclose(h, merged[IDS], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lora_embedding_delta(A, B, 0.5), 0.5 * (B @ A).T, rtol=1e-12)


def test_pair_gradient_check_with_repeated_ids(xp):
    E, A, B = (arr(a, xp) for a in _arrays())
    ids = arr(IDS, xp)
    results = check_pair(lambda E, A, B: lora_embedding_forward(ids, E, A, B, 0.7),
                         lora_embedding_backward, {"E": E, "A": A, "B": B}, name="lora_embedding")
    assert {r.array for r in results} == {"E", "A", "B"}
    for res in results:  # a correct backward measures ~1e-10; a lost repeated id gives ~0.3
        assert res.rel_error <= TOLERANCE, res


def test_dA_is_a_scatter_add_over_repeated_ids():
    # The reference is np.add.at, column by column: dA[:, v] = Σ_{n: ids_n = v} scale · (dout_n B).
    E, A, B = _arrays()
    dout = np.random.default_rng(1).standard_normal((2, 4, C))
    _, cache = lora_embedding_forward(IDS, E, A, B, 0.7)
    _, grads = lora_embedding_backward(dout, cache)
    du = 0.7 * dout.reshape(-1, C) @ B  # (N, r)
    dA, dE = np.zeros((r, V)), np.zeros((V, C))
    np.add.at(dA.T, IDS.reshape(-1), du)
    np.add.at(dE, IDS.reshape(-1), dout.reshape(-1, C))
    np.testing.assert_allclose(grads["A"], dA, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["E"], dE, rtol=1e-12, atol=1e-12)
    assert not np.any(grads["A"][:, [2, 3, 5, 6]])  # ids never looked up get nothing


def test_backward_computes_only_what_is_needed():
    E, A, B = _arrays()
    _, cache = lora_embedding_forward(IDS, E, A, B, 1.0)
    dout = np.ones((2, 4, C))
    dx, grads = lora_embedding_backward(dout, cache, need={"x", "A", "B"})  # "x" ignored: ids
    assert dx is None and set(grads) == {"A", "B"}  # no dE for a frozen table
    assert set(lora_embedding_backward(dout, cache, need={"B"})[1]) == {"B"}


@pytest.mark.parametrize("bad, match", [
    (dict(A=np.zeros((r, V + 1))), r"A must be \(r, V\)"),
    (dict(B=np.zeros((C + 1, r))), r"B \(C, r\)"),
    (dict(B=np.zeros((C, r + 1))), r"one r"),
    (dict(ids=np.array([0, V])), r"must lie in \[0, 9\)"),
    (dict(ids=np.array([0.0, 1.0])), "integer array"),
    (dict(A=np.zeros((r, V), "float32")), "one dtype"),
])
def test_bad_inputs_name_the_argument(bad, match):
    E, A, B = _arrays()
    args = {**dict(ids=IDS, E=E, A=A, B=B), **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        lora_embedding_forward(args["ids"], args["E"], args["A"], args["B"], 1.0, layer="wte")


# ----------------------------------------------------------------------------- the module


def _base(dtype="float64"):
    # std 0.5, not GPT-2's 0.02: at 0.02 the q gradients fall into finite-difference roundoff
    # (minilora.cases.gpt_for_checks says the same)
    return GPT("tiny", vocab_size=V, seed=0, dtype=dtype, init_std=0.5)


def _gpt(dtype="float64", init="peft"):
    return add_lora_embedding(_base(dtype), "wte", r=r, alpha=2 * r, init=init)


C_GPT = 16  # the tiny GPT's width


@pytest.mark.parametrize("init", ["peft", "gaussian"])
def test_module_equals_the_base_at_init(init):
    base = _base()
    model = _gpt(init=init)
    ad = model.wte.adapters["default"]
    zero, nonzero = ("A", "B") if init == "peft" else ("B", "A")  # PEFT: A = 0, B ~ N(0, 1)
    assert not np.any(ad.params[zero]) and np.any(ad.params[nonzero])
    np.testing.assert_array_equal(model.forward(IDS), base.forward(IDS))
    assert [k for k in model.named_parameters(trainable=True)] == ["wte.lora.default.A", "wte.lora.default.B"]


def test_merged_equals_unmerged_and_unmerge_restores_the_table():
    model = _gpt()
    layer = model.wte
    layer.adapters["default"].params["A"][...] = np.random.default_rng(2).standard_normal((r, V))
    E0 = layer.base.params["W"].copy()
    unmerged = model.forward(IDS)
    assert rel_error(unmerged, _base().forward(IDS)) > 1e-3
    delta = layer.delta()
    assert delta.shape == (V, C_GPT) and np.linalg.matrix_rank(delta) <= r
    model.wte.merge()
    assert layer.merged == "default"
    np.testing.assert_allclose(model.forward(IDS), unmerged, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="merged"):
        model.backward(np.ones((2, 4, V)))
    layer.unmerge()
    np.testing.assert_allclose(layer.base.params["W"], E0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.forward(IDS), unmerged, rtol=1e-12, atol=1e-12)


def test_inactive_adapter_is_the_base_and_adapters_switch():
    model = _gpt()
    layer = model.wte
    layer.add_adapter("other", r=2, alpha=2, init="gaussian", seed=3)
    # B random, not constant: a shift equal in every channel is invisible after a LayerNorm
    layer.adapters["other"].params["B"][...] = np.random.default_rng(5).standard_normal((C_GPT, 2))
    base = _base().forward(IDS)
    layer.set_active(None)
    np.testing.assert_array_equal(model.forward(IDS), base)
    layer.set_active("other")
    assert rel_error(model.forward(IDS), base) > 1e-3
    with pytest.raises(KeyError, match="no adapter 'nope'"):
        layer.set_active("nope")


def test_gpt_with_embedding_lora_passes_check_model_and_trains():
    model = _base().add_lora(["q", "v"], r=2, alpha=4)
    add_lora_embedding(model, "wte", r=r, alpha=2 * r)  # after add_lora: q, v's adapters keep training
    g = np.random.default_rng(0)
    for k, p in model.named_parameters(trainable=True).items():
        p[...] = 0.5 * g.standard_normal(p.shape)  # A and B both off zero, so no term hides
    assert sum(".lora." in k for k in model.named_parameters(trainable=True)) == 2 + 4 * 2
    x = g.integers(0, V, (2, 8))
    x[:, :3] = 5  # repeated ids inside the model's batch
    y = g.integers(0, V, (2, 8))
    results = check_model(model, x, y, max_entries=None)
    assert {r.array for r in results} >= {"wte.lora.default.A", "wte.lora.default.B"}
    for res in results:
        assert res.passed, res
    A0 = model.wte.adapters["default"].params["A"].copy()
    opt = AdamW(model, lr=1e-2)
    losses = [train_step(model, opt, x, y) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    assert not np.array_equal(A0, model.wte.adapters["default"].params["A"])


def test_embedding_grads_reach_the_model_with_the_table_frozen():
    model = _gpt()
    model.forward(IDS)
    model.backward(np.ones((2, 4, V)))
    grads = model.named_grads()
    assert set(grads) == {"wte.lora.default.A", "wte.lora.default.B"}  # no dE: the table is frozen
    assert np.any(grads["wte.lora.default.A"])  # A = 0 at init, so only A moves first (B's grad is 0)
    assert not np.any(grads["wte.lora.default.B"])


def test_training_the_table_too_adds_dE():
    model = _gpt()
    model.unfreeze("wte.base.W")
    x, y = IDS, np.zeros_like(IDS)
    results = check_model(model, x, y, max_entries=None)
    assert "wte.base.W" in {r.array for r in results}
    assert all(res.passed for res in results), results


# ----------------------------------------------------------------------------- placement


def test_a_tied_embedding_is_refused_and_the_model_left_unchanged():
    model = Llama(LlamaConfig(vocab_size=V, n_ctx=8, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, hidden=16))
    before = {k: np.array(v) for k, v in model.named_parameters().items()}
    trainable = set(model.named_parameters(trainable=True))
    with pytest.raises(ValueError, match="model.embed_tokens is tied to the LM head"):
        add_lora_embedding(model, "embed_tokens", r=2, alpha=4)
    after = model.named_parameters()
    assert set(after) == set(before) and set(model.named_parameters(trainable=True)) == trainable
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets="nope"), "unknown embedding target 'nope'; token embeddings are \\['wte'\\]"),
    (dict(targets="wpe"), "unknown embedding target"),  # positions are not token ids
    (dict(targets="wte", r=V + 1), "r = 10 must satisfy"),
    (dict(targets="wte", alpha=0), "alpha must be a positive"),
    (dict(targets="wte", init="kaiming"), "init must be one of"),
    (dict(targets="wte", dropout=0.1), "PEFT applies no dropout"),
])
def test_bad_placement_raises_and_changes_nothing(kwargs, match):
    model = GPT("tiny", vocab_size=V, seed=0)
    names = set(model.named_parameters(trainable=True))
    with pytest.raises(ValueError, match=match):
        add_lora_embedding(model, **{"r": 2, "alpha": 4, **kwargs})
    assert type(model.wte).__name__ == "Embedding" and set(model.named_parameters(trainable=True)) == names


def test_a_second_adapter_on_the_same_layer_and_the_layer_list():
    model = _gpt()
    add_lora_embedding(model, "wte", r=2, alpha=2, adapter="second")
    assert isinstance(model.wte, LoRAEmbedding) and list(lora_embedding_layers(model)) == ["wte"]
    assert set(model.wte.adapters) == {"default", "second"} and model.wte.active == "second"
    assert set(model.named_parameters(trainable=True)) == {"wte.lora.second.A", "wte.lora.second.B"}
    with pytest.raises(ValueError, match="already exists"):
        add_lora_embedding(model, "wte", r=2, alpha=2, adapter="second")


def test_a_replaced_array_after_forward_is_refused():
    model = _gpt()
    model.forward(IDS)
    model.wte.adapters["default"].params["B"] = model.wte.adapters["default"].params["B"] + 1.0
    with pytest.raises(RuntimeError, match="replaced after forward"):
        model.backward(np.ones((2, 4, V)))


# ----------------------------------------------------------------------------- PEFT's lora.Embedding


@pytest.mark.crosscheck
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float64", 1e-13)])
def test_same_forward_and_backward_as_peft_embedding(dtype, tolerance):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")

    class Table(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(V, C, dtype=getattr(torch, dtype))

        def forward(self, ids):
            return self.wte(ids)

    E, A, B = _arrays(3, dtype)
    scale = 8 / r
    # lora_dropout = 0.5 in training mode: PEFT applies none on the embedding path, nor does minilora
    pm = peft.get_peft_model(Table(), peft.LoraConfig(r=r, lora_alpha=8, target_modules=["wte"], lora_dropout=0.5))
    pm.train()
    layer = pm.base_model.model.wte
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.from_numpy(E))
        layer.lora_embedding_A["default"].copy_(torch.from_numpy(A))
        layer.lora_embedding_B["default"].copy_(torch.from_numpy(B))
    dout = np.random.default_rng(4).standard_normal((2, 4, C)).astype(dtype)
    out = pm(torch.from_numpy(IDS))
    out.backward(torch.from_numpy(dout))

    h, cache = lora_embedding_forward(IDS, E, A, B, scale)
    _, grads = lora_embedding_backward(dout, cache, need={"A", "B"})
    assert rel_error(h, out.detach().numpy()) <= tolerance
    assert rel_error(grads["A"], layer.lora_embedding_A["default"].grad.numpy()) <= tolerance
    assert rel_error(grads["B"], layer.lora_embedding_B["default"].grad.numpy()) <= tolerance
    assert layer.base_layer.weight.grad is None  # PEFT freezes E, as minilora does
    layer.merge()  # PEFT's merged table: E + scale · (B A)ᵀ, minilora's delta
    merged = E + lora_embedding_delta(A, B, scale)
    assert rel_error(merged, layer.base_layer.weight.detach().numpy()) <= tolerance


def test_list_and_delete_adapters_cover_the_embedding():
    import minilora as ml
    from minilora import adapters
    from minilora.nn.transformer import GPT

    model = GPT("tiny", seed=0)
    ml.add_lora(model, ["q"], r=2, alpha=4)
    ml.add_lora_embedding(model, "wte", r=3, alpha=6)
    info = adapters.list_adapters(model)["default"]
    assert "wte" in info.targets and info.r["wte"] == 3 and info.r["blocks.0.attn.q"] == 2
    model.get_module("wte").merge()
    with pytest.raises(ValueError, match="wte: adapter 'default' is merged into E"):
        adapters.delete_adapter(model, "default")
    assert "default" in model.get_module("blocks.0.attn.q").adapters  # refused before any change
    model.get_module("wte").unmerge()
    adapters.delete_adapter(model, "default")
    assert not model.get_module("wte").adapters and not model.get_module("blocks.0.attn.q").adapters
    with pytest.raises(KeyError, match="GPT: no adapter 'default'"):
        adapters.delete_adapter(model, "default")
