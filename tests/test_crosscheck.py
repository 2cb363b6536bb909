"""minilora against PyTorch and PEFT (float64 for the math, float32 for the adapter files).

Skipped when PyTorch or PEFT is missing. Install the pinned CPU build first, then the extra:
``pip install torch==2.13.0`` and ``pip install 'minilora[crosscheck]'``.

Expected magnitudes: two float64 computations of the same forward/backward differ by ~1e-15
relative (tolerance 1e-10); after AdamW steps ~1e-15 (tolerance 1e-10); float32 adapter files give
outputs ~1e-7 apart (tolerance 1e-5). A wrong term gives ~1e-1.
"""
import numpy as np
import pytest

HINT = "install `pip install torch==2.13.0` (CPU build) first, then `pip install 'minilora[crosscheck]'`"
torch = pytest.importorskip("torch", reason=f"PyTorch is not installed: {HINT}")
peft = pytest.importorskip("peft", reason=f"PEFT is not installed: {HINT}")

from minilora import adapters, cases, cli, crosscheck, torch_twin
from minilora.crosscheck import compare_with_torch
from minilora.functional import lora
from minilora.gradcheck import format_table, rel_error
from minilora.nn.transformer import GPT, GPTConfig

from conftest import plant

pytestmark = pytest.mark.crosscheck
CASES = crosscheck.cases()
STEPS = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes; the machine is shared
    yield
    torch.set_num_threads(before)


def _passed(rows):
    assert rows and all(r.passed for r in rows), format_table([r for r in rows if not r.passed])


# ----------------------------------------------------------------------------- float64 math


@pytest.mark.parametrize("case", list(CASES))
def test_forward_grads_and_adamw_match_pytorch(case):
    model, x, y, loss = CASES[case]()
    rows = compare_with_torch(model, x, y, loss=loss, steps=STEPS, name=case)
    _passed(rows)
    arrays = [r.array for r in rows]
    trainable = list(model.named_parameters(trainable=True))
    assert arrays[:2] == ["output", "loss"]
    assert arrays[2:2 + len(trainable)] == trainable  # every trainable gradient, once
    assert arrays[2 + len(trainable):] == [f"adamw{STEPS} {k}" for k in trainable]
    assert {r.tolerance for r in rows[:2 + len(trainable)]} == {1e-10}
    if "lora" in case:
        assert all(".lora." in k for k in trainable)


def test_cases_cover_the_issue():
    assert {"mlp full", "mlp lora(all)", "mlp lora(all) mask", "gpt full", "gpt lora(q,v)",
            "gpt lora(q,v) mask", "gpt lora(all)", "gpt lora(all) mask"} <= set(CASES)
    model, *_ = CASES["gpt lora(all)"]()
    assert len(model.lora_layers()) == 2 * 6 + 1  # q, k, v, o, fc1, fc2 per block, and lm_head
    model, *_ = CASES["gpt lora(q,v)"]()
    assert sorted({p.rsplit(".", 1)[1] for p in model.lora_layers()}) == ["q", "v"]


def test_masks_are_real_and_replaying_them_matters(monkeypatch):
    model, x, y, loss = CASES["gpt lora(q,v) mask"]()
    rows = compare_with_torch(model, x, y, loss=loss, steps=0)
    _passed(rows)
    model.forward(x)  # the cases draw masks with p = 0.25: some inputs really are dropped
    masks = [layer.cache[1].mask for layer in model.lora_layers().values()]
    assert all(m is not None and (m == 0).any() and (m > 1).any() for m in masks)
    # Without the replay PEFT's dropout is the identity: the two models now differ.
    monkeypatch.setattr(torch_twin, "replay_masks", lambda *a: None)
    bad = {r.array: r for r in compare_with_torch(model, x, y, loss=loss, steps=0)}
    assert not bad["output"].passed and bad["output"].rel_error > 1e-3


def test_a_broken_backward_fails_against_pytorch(monkeypatch):
    real = lora.lora_backward

    def dB_without_scale(dout, cache, need=lora.ALL):
        dx, grads = real(dout, cache, need=need)
        return dx, {**grads, "B": grads["B"] / cache.scale}

    plant(monkeypatch, "lora", backward=dB_without_scale)
    model, x, y, loss = CASES["mlp lora(all)"]()
    rows = compare_with_torch(model, x, y, loss=loss, steps=2)
    by = {r.array: r for r in rows}
    assert by["output"].passed and by["loss"].passed  # the forward is still right
    assert not by["fc1.lora.default.B"].passed and by["fc1.lora.default.B"].rel_error > 1e-3
    assert by["fc1.lora.default.A"].passed


def test_key_bias_gradient_is_zero_in_both_frameworks():
    # Why the cases freeze blocks.*.attn.k.b: softmax(s + c) = softmax(s) for a constant c per
    # row, and the key bias adds exactly q·b_k to every score of a row. Its gradient is 0 up to
    # rounding on both sides, so a relative error between the two would compare noise with noise.
    from minilora.functional.losses import (
        softmax_cross_entropy_backward,
        softmax_cross_entropy_forward,
    )

    config = GPTConfig(vocab_size=11, n_ctx=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config, dtype="float64", init_std=0.5)
    gen = np.random.default_rng(0)
    ids, y = gen.integers(0, 11, (2, 5)), gen.integers(0, 11, (2, 5))
    _, cache = softmax_cross_entropy_forward(model.forward(ids), y)
    model.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    ours = model.named_grads()

    twin = torch_twin.torch_twin(model)
    torch_twin.torch_loss("cross_entropy", twin(torch_twin.to_torch(ids)), torch_twin.to_torch(y)).backward()
    theirs = dict(twin.named_parameters())
    qb = np.linalg.norm(ours["blocks.0.attn.q.b"])
    assert qb > 1e-3
    assert rel_error(ours["blocks.0.attn.q.b"], theirs["blocks.0.attn.q.bias"].grad.numpy()) < 1e-10
    assert np.linalg.norm(ours["blocks.0.attn.k.b"]) < 1e-13 * qb
    assert np.linalg.norm(theirs["blocks.0.attn.k.bias"].grad.numpy()) < 1e-13 * qb


def test_twin_module_paths_are_minilora_paths():
    model, *_ = CASES["gpt full"]()
    twin = crosscheck.torch_twin(model)  # crosscheck re-exports minilora.torch_twin's names
    assert crosscheck.torch_twin is torch_twin.torch_twin and crosscheck.perturb_lora_B is cases.perturb_lora_B
    assert set(dict(twin.named_parameters())) == {torch_twin.torch_name(k) for k in model.named_parameters()}
    assert isinstance(twin.get_submodule("blocks.1.attn.q"), torch.nn.Linear)
    assert isinstance(twin.get_submodule("blocks.0.mlp.fc2"), torch.nn.Linear)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        crosscheck.nonexistent  # noqa: B018


# ----------------------------------------------------------------------------- adapter files


def _effect(model, x, adapter="default"):
    """Relative change of the outputs that the adapter makes (so a pass cannot be vacuous)."""
    model.eval()
    with adapters.adapters_disabled(model):
        base = model.forward(x)
    return rel_error(model.forward(x), base)


@pytest.mark.parametrize("which", ["MLP", "GPT"])
def test_minilora_adapter_loads_in_peft_and_merges_alike(tmp_path, which):
    model, x, _, targets = crosscheck.interop_cases()[which]()
    if which == "MLP":  # two ranks and two alphas: rank_pattern and alpha_pattern in the file
        model.add_lora(targets, r={"fc1": 2, "fc2": 3}, alpha={"fc1": 4, "fc2": 3})
    else:
        model.add_lora(targets, r=2, alpha=4)
    crosscheck.perturb_lora_B(model)
    assert _effect(model, x) > 1e-2
    rows = crosscheck.interop_minilora_to_peft(model, x, tmp_path / "adapter")
    _passed(rows)
    assert {r.tolerance for r in rows} == {1e-5}
    merged = [r for r in rows if r.array.startswith("merged ")]
    assert len(merged) == len(model.lora_layers()) and all(r.passed for r in merged)
    for layer in model.lora_layers().values():  # ΔW is no rounding-sized speck next to W
        ratio = np.linalg.norm(layer.adapters["default"].delta()) / np.linalg.norm(layer.base.params["W"])
        assert ratio > 1e-2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    config = peft.PeftConfig.from_pretrained(str(tmp_path / "adapter"))
    assert config.peft_type == "LORA"
    if which == "MLP":
        assert set(config.rank_pattern.values()) | {config.r} == {2, 3}


@pytest.mark.parametrize("which", ["MLP", "GPT"])
def test_peft_trained_adapter_loads_in_minilora(tmp_path, which):
    model, x, y, targets = crosscheck.interop_cases()[which]()
    rows = crosscheck.interop_peft_to_minilora(model, x, y, tmp_path / "peft", targets)
    _passed(rows)
    assert _effect(model, x) > 1e-2  # the loaded adapter really changes the model
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    for path, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        assert np.array_equal(ad.params["A"], saved[f"base_model.model.{path}.lora_A.weight"])
        assert np.array_equal(ad.params["B"], saved[f"base_model.model.{path}.lora_B.weight"])


# ----------------------------------------------------------------------------- the command


def test_gradcheck_command_includes_pytorch_and_peft(capsys):
    status = cli.main(["gradcheck"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "Same models in PyTorch/PEFT" in out and "Adapter files between minilora and PEFT" in out
    assert "skipped" not in out


def test_lora_on_the_token_embedding_matches_peft():
    # the twin maps wte's adapter onto PEFT's lora_embedding_A/B (torch_name with embeddings=)
    import minilora as ml

    model = GPT(GPTConfig.preset("tiny", vocab_size=11), seed=0, dtype="float64")
    ml.add_lora(model, ["q", "v"], r=2, alpha=4, seed=1)
    ml.add_lora_embedding(model, "wte", r=2, alpha=4, seed=2)
    rng = np.random.default_rng(0)
    for p in model.named_parameters(trainable=True).values():
        p += 0.1 * rng.standard_normal(p.shape)  # every adapter off its init: no term hides
    x = rng.integers(0, 11, (2, 8))
    rows = compare_with_torch(model, x, np.roll(x, -1, 1))
    assert any("wte.lora" in r.array for r in rows)
    assert rows and all(r.passed for r in rows), format_table(rows)
