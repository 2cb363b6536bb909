"""The Llama module (nn/llama.py): whole-model gradient checks in float64, for every trainable
array, with the base trained and with LoRA; the tied head's shared gradient; and parity with
Hugging Face's LlamaForCausalLM (+ PEFT) under autograd on a truncated random configuration.
The pretrained SmolLM2 checkpoint has its own tests (tests/test_smollm2.py)."""
import numpy as np
import pytest

import minilora as ml
from conftest import randomized
from minilora.gradcheck import check_model
from minilora.nn.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=23, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, hidden=24, n_ctx=8)


def batch(c=TINY, B=2, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, c.vocab_size, (B, T)), rng.integers(0, c.vocab_size, (B, T))


def test_every_gradient_of_the_full_model_in_float64():
    model = randomized(Llama(TINY, seed=0).astype("float64"))
    x, y = batch()
    results = check_model(model, x, y, max_entries=12)
    assert len(results) == len(model.named_parameters(trainable=True))
    bad = [r for r in results if not r.passed]
    assert not bad, bad


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"],
                                     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]])
def test_every_lora_gradient_in_float64(targets):
    model = Llama(TINY, seed=0).astype("float64")
    ml.add_lora(model, targets, r=2, alpha=4, seed=3)
    randomized(model)
    x, y = batch(seed=2)
    results = check_model(model, x, y, max_entries=None)
    assert {r.array.rsplit(".", 1)[-1] for r in results} == {"A", "B"}
    assert len(results) == 2 * TINY.n_layer * len(targets)
    bad = [r for r in results if not r.passed]
    assert not bad, bad


def test_the_tied_head_adds_both_uses_of_the_embedding():
    # E is read twice (the gather at the bottom, the head at the top): its gradient is the sum.
    # Freezing everything else leaves exactly those two terms, checked by finite differences.
    model = randomized(Llama(TINY, seed=0).astype("float64"))
    model.freeze("*").unfreeze("model.embed_tokens.W")
    x, y = batch(seed=4)
    (r,) = check_model(model, x, y, max_entries=40)
    assert r.array == "model.embed_tokens.W" and r.passed, r


def test_lora_model_equals_the_base_at_step_zero_and_never_computes_the_embedding_gradient():
    base = Llama(TINY, seed=0)
    x, y = batch()
    want = base.forward(x)
    ml.add_lora(base, ["q_proj", "v_proj"], r=2, alpha=4)
    assert np.array_equal(base.forward(x), want)  # B = 0
    loss, cache = ml.functional.losses.softmax_cross_entropy_forward(base.forward(x), y)
    base.backward(ml.functional.losses.softmax_cross_entropy_backward(1.0, cache)[0])
    assert set(base.named_grads()) == set(base.named_parameters(trainable=True))
    assert not base.children["model"].children["embed_tokens"].need_dx


def test_bad_config_and_ids_are_refused():
    with pytest.raises(ValueError, match="n_kv_head = 3 must divide n_head = 4"):
        LlamaConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="even head size"):
        LlamaConfig(n_embd=12, n_head=4, n_kv_head=2)
    model = Llama(TINY)
    with pytest.raises(TypeError, match="'ids' must be an integer array"):
        model.forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="T = 9 positions but the context length is n_ctx = 8"):
        model.forward(np.zeros((1, 9), np.int64))


# ----------------------------------------------------------------------------- PyTorch autograd


def _hf_twin(model, torch):
    """transformers' LlamaForCausalLM with the same sizes and weights (float64)."""
    transformers = pytest.importorskip("transformers")
    c = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
        rms_norm_eps=c.rms_eps, rope_theta=c.rope_base, max_position_embeddings=c.n_ctx,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False, attn_implementation="eager"))
    hf = hf.to(torch.float64)
    hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.hf_state_dict().items()},
                       strict=False)
    hf.tie_weights()
    return hf.eval()


@pytest.mark.crosscheck
def test_logits_and_lora_gradients_equal_transformers_and_peft_under_autograd():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    model = randomized(Llama(TINY, seed=0).astype("float64"))
    hf = _hf_twin(model, torch)
    x, y = batch(seed=5)
    logits = model.forward(x)
    with torch.no_grad():
        want = hf(torch.from_numpy(x)).logits.numpy()
    # transformers keeps RoPE's angles and RMSNorm's statistics in float32 even in a float64
    # model, so the two agree to ~1e-7, not 1e-15; a convention wrong anywhere (RoPE pairing,
    # head grouping, the tied head, eps) gives O(1). minilora's exactness is the float64
    # finite-difference checks above.
    assert np.max(np.abs(logits - want)) <= 1e-5 * np.max(np.abs(want))

    ml.add_lora(model, ["q_proj", "v_proj", "down_proj"], r=2, alpha=4, seed=7)
    rng = np.random.default_rng(8)
    for layer in model.lora_layers().values():  # B != 0, so the adapters act (the base stays the twin's)
        ad = layer.adapters["default"]
        ad.B = rng.standard_normal(ad.params["B"].shape)
    conf = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    pm = peft.get_peft_model(hf, conf).to(torch.float64)
    sd = {}
    for path, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        sd[f"base_model.model.{path}.lora_A.default.weight"] = torch.from_numpy(ad.params["A"])
        sd[f"base_model.model.{path}.lora_B.default.weight"] = torch.from_numpy(ad.params["B"])
        sd[f"base_model.model.{path}.base_layer.weight"] = torch.from_numpy(layer.base.params["W"])
    missing = pm.load_state_dict(sd, strict=False)
    assert not missing.unexpected_keys
    loss_f, loss_b = ml.functional.losses.LOSSES["cross_entropy"]
    value, cache = loss_f(model.forward(x), y)
    model.backward(loss_b(1.0, cache)[0])
    out = pm(torch.from_numpy(x)).logits
    ref = torch.nn.functional.cross_entropy(out.reshape(-1, TINY.vocab_size), torch.from_numpy(y).reshape(-1))
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-6 * abs(ref.item())
    grads = model.named_grads()
    n = 0
    for name, p in pm.named_parameters():
        if p.requires_grad:
            path = name.removeprefix("base_model.model.").replace(".default.weight", "")
            path, which = path.rsplit(".", 1)
            mine = grads[f"{path}.lora.default.{'A' if which == 'lora_A' else 'B'}"]
            want = p.grad.numpy()
            assert np.max(np.abs(mine - want)) <= 1e-5 * np.max(np.abs(want)), name
            n += 1
    assert n == 2 * TINY.n_layer * 3
