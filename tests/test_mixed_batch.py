"""Mixed-adapter batches on models (``minilora.adapters.mixed_batch``, LoRALinear's mixed path).

- inference: each row's logits equal a run of that row alone with its adapter active (or the base);
- training: float64 gradient checks of every adapter's A and B inside a mixed batch, and each
  adapter's gradient comes from its own rows only; one step trains both adapters;
- the loop and the gather give the same model outputs and gradients;
- PEFT's ``adapter_names=`` gives the same outputs (crosscheck);
- refusals leave the model as it was: unknown names, a merged layer, a DoRA adapter.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest

import minilora as ml
from minilora import adapters, fast
from minilora.functional.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minilora.gradcheck import check_model, rel_error
from minilora.nn.transformer import GPT

NAMES = ["a", "b", None, "a", "__base__", "b"]


@contextlib.contextmanager
def gather_on():
    """The fast layer's gather for mixed batches (off by default: slower on NumPy)."""
    saved = fast.USE_FAST["mixed_lora"]
    fast.USE_FAST["mixed_lora"] = True
    try:
        yield
    finally:
        fast.USE_FAST["mixed_lora"] = saved


def two_adapter_gpt(dtype="float32", dropout=0.0):
    model = GPT("tiny", seed=0, dtype=dtype)
    ml.add_lora(model, ["q", "v", "fc1"], r=2, alpha=4, adapter="a", seed=1, dropout=dropout)
    ml.add_lora(model, ["q", "o"], r=3, alpha=3, adapter="b", seed=2, activate=False, dropout=dropout)
    model.unfreeze("*.lora.*")  # both adapters train (add_lora froze the first)
    rng = np.random.default_rng(3)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            ad.B = (0.1 * rng.standard_normal(ad.params["B"].shape)).astype(dtype)  # B ≠ 0: every path shows
    return model


def ids(N=len(NAMES), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 97, (N, 8))
    return x, rng.integers(0, 97, (N, 8))


def single_row_logits(model, x, name):
    m = copy.deepcopy(model)
    adapters.set_active(m, None if name in (None, "__base__") else name)
    with m.evaluating():
        return m.forward(x)


def test_every_row_equals_its_adapter_alone():
    model = two_adapter_gpt()
    x, _ = ids()
    with model.evaluating(), adapters.mixed_batch(model, NAMES):
        mixed = model.forward(x)
    for n, name in enumerate(NAMES):
        alone = single_row_logits(model, x[n:n + 1], name)
        assert rel_error(mixed[n:n + 1], alone) <= 1e-5, (n, name)
    a, b = single_row_logits(model, x[:1], "a"), single_row_logits(model, x[:1], "b")
    assert rel_error(a, b) > 1e-3  # the two adapters really differ


def test_the_layers_return_to_their_active_adapter_after_the_block():
    model = two_adapter_gpt()
    x, _ = ids()
    before = model.forward(x)
    with adapters.mixed_batch(model, NAMES):
        model.forward(x)
    assert all(layer.rows is None for layer in model.lora_layers().values())
    assert np.array_equal(model.forward(x), before)


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_every_adapter_gradient_in_a_mixed_batch_in_float64(path):
    model = two_adapter_gpt("float64")
    x, y = ids()
    ctx = fast.reference("mixed_lora") if path == "reference" else gather_on()
    with ctx, adapters.mixed_batch(model, NAMES):
        # h = 1e-4: the q layers' A gradients are ~1e-5, below what h = 1e-6's round-off
        # (~1e-16 · loss / h) can resolve to 1e-6; the central difference's h² error is ~1e-8
        results = check_model(model, x, y, max_entries=8, h=1e-4)
    names = {r.array for r in results}
    assert any(".lora.a." in n for n in names) and any(".lora.b." in n for n in names)
    assert len(results) == 2 * (3 + 2) * model.config.n_layer  # A, B of every adapter on every layer
    bad = [r for r in results if not r.passed]
    assert not bad, bad


def grads_of(model, x, y):
    with adapters.mixed_batch(model, NAMES):
        loss, cache = softmax_cross_entropy_forward(model.forward(x), y)
        model.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    return {k: v.copy() for k, v in model.named_grads().items()}


def test_each_adapter_learns_from_its_own_rows_only():
    model = two_adapter_gpt("float64")
    x, y = ids()
    g = grads_of(model, x, y)
    y2 = y.copy()
    b_rows = [n for n, name in enumerate(NAMES) if name == "b"]
    y2[b_rows] = (y2[b_rows] + 1) % 97  # other targets on adapter b's rows only
    g2 = grads_of(model, x, y2)
    for k in g:
        if ".lora.a." in k:
            assert np.array_equal(g[k], g2[k]), k  # a never saw b's rows
        else:
            assert not np.allclose(g[k], g2[k]), k


def test_one_step_trains_both_adapters_and_nothing_else():
    model = two_adapter_gpt()
    x, y = ids()
    before = {k: v.copy() for k, v in model.named_parameters().items()}
    opt = ml.AdamW(model, lr=1e-2)
    with adapters.mixed_batch(model, NAMES):
        ml.train_step(model, opt, x, y)
    moved = {k for k, v in model.named_parameters().items() if not np.array_equal(v, before[k])}
    assert moved == set(model.named_parameters(trainable=True))
    assert any(".lora.a." in k for k in moved) and any(".lora.b." in k for k in moved)


def test_dropout_in_a_mixed_batch_draws_each_rows_mask_from_its_adapter():
    model = two_adapter_gpt(dropout=0.25)
    x, y = ids()
    model.train()
    with adapters.mixed_batch(model, NAMES):
        model.forward(x)
        layer = model.lora_layers()["blocks.0.attn.q"]
        mask = np.reshape(layer.cache[1][1].mask, (len(NAMES), x.shape[1], -1))  # (N, T, C)
        none_rows = [n for n, name in enumerate(NAMES) if name in (None, "__base__")]
        assert np.all(mask[none_rows] == 1)  # rows of no adapter are never dropped
        kept = mask[[n for n in range(len(NAMES)) if n not in none_rows]]
        assert set(np.unique(kept)) == {0.0, np.float32(1 / 0.75)}  # inverted dropout at p = 0.25
        with model.evaluating():
            model.forward(x)
            assert layer.cache[1][1].mask is None  # eval: no dropout
        loss = ml.train_step(model, ml.AdamW(model, lr=1e-3), x, y)
    assert np.isfinite(loss)


def test_the_gather_and_the_loop_agree_on_a_model():
    model = two_adapter_gpt()
    x, y = ids()
    with fast.reference("mixed_lora"):
        g_loop = grads_of(model, x, y)
    with gather_on():
        g_gather = grads_of(model, x, y)
    assert set(g_loop) == set(g_gather)
    for k in g_loop:
        assert rel_error(g_gather[k], g_loop[k]) <= 1e-4, k


def test_unknown_names_are_refused_and_nothing_changes():
    model = two_adapter_gpt()
    with pytest.raises(ml.adapters.AdapterError, match=r"\['c'\]"):
        with adapters.mixed_batch(model, ["a", "c"]):
            pass
    assert all(layer.rows is None for layer in model.lora_layers().values())


def test_a_merged_layer_or_a_dora_adapter_is_refused():
    model = two_adapter_gpt()
    model.merge("a")
    with pytest.raises(ValueError, match="merged"):
        with adapters.mixed_batch(model, ["a", "b"]):
            pass
    assert all(layer.rows is None for layer in model.lora_layers().values())
    model.unmerge()
    ml.add_lora(model, ["fc2"], r=2, alpha=4, adapter="d", use_dora=True, activate=False)
    with pytest.raises(ValueError, match="DoRA"):
        with adapters.mixed_batch(model, ["a", "d"]):
            pass


def test_a_wrong_number_of_rows_names_the_layer():
    model = two_adapter_gpt()
    x, _ = ids(N=3)
    with adapters.mixed_batch(model, NAMES), pytest.raises(ValueError, match="3 rows, 6 adapter names"):
        model.forward(x)


@pytest.mark.crosscheck
def test_peft_adapter_names_give_the_same_outputs():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = ml.MLP((12, 16, 5), seed=0, dtype="float64")
    ml.add_lora(model, ["fc1", "fc2"], r=2, alpha=4, adapter="a", seed=1)
    ml.add_lora(model, ["fc1"], r=3, alpha=6, adapter="b", seed=2, activate=False)
    rng = np.random.default_rng(0)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            ad.B = rng.standard_normal(ad.params["B"].shape)
    pm = peft.get_peft_model(tt.torch_twin(model, "float64"), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"]),
                             adapter_name="a")
    pm.add_adapter("b", peft.LoraConfig(r=3, lora_alpha=6, target_modules=["fc1"]))
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for path, layer in model.lora_layers().items():
            for name, ad in layer.adapters.items():
                params[f"base_model.model.{path}.lora_A.{name}.weight"].copy_(tt.to_torch(ad.params["A"], "float64"))
                params[f"base_model.model.{path}.lora_B.{name}.weight"].copy_(tt.to_torch(ad.params["B"], "float64"))
    pm.eval()
    x = rng.standard_normal((5, 12))
    names = ["a", "b", "__base__", "b", "a"]
    with model.evaluating(), adapters.mixed_batch(model, names):
        ours = model.forward(x)
    theirs = pm(tt.to_torch(x, "float64"), adapter_names=names).detach().numpy()
    assert rel_error(ours, theirs) <= 1e-12
