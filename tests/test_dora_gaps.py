"""DoRA gaps found in review (issue 14 follow-up): the base fingerprint of a merged DoRA layer,
``combine_adapters`` on DoRA adapters, and the PyTorch/PEFT twin of a DoRA model."""

import numpy as np
import pytest

from minilora import MLP, GPT
from minilora.adapters import (AdapterError, base_fingerprint, combine_adapters, list_adapters, load_adapter,
                               save_adapter)

X = np.random.default_rng(0).standard_normal((5, 6))
Y = np.random.default_rng(1).integers(0, 4, (5,))


def _dora_mlp(dtype="float64", exact=True, dropout=0.0, seed=2):
    """An MLP with a DoRA adapter on fc1, fc2, every array moved off its init (B ≠ 0, m ≠ ‖W‖)."""
    model = MLP((6, 8, 4), "relu", seed=0, dtype=dtype).add_lora(["fc1", "fc2"], r=2, alpha=4, use_dora=True,
                                                                  dora_exact=exact, dropout=dropout)
    g = np.random.default_rng(seed)
    for p in model.named_parameters(trainable=True).values():
        p[...] = p + 0.3 * g.standard_normal(p.shape)
    return model


def _state(model) -> dict:
    return {k: np.array(v) for k, v in model.named_parameters().items()}


# ----------------------------------------------------------------------------- (a) the fingerprint


def test_a_merged_dora_layer_fingerprints_as_its_unmerged_base(tmp_path):
    model = _dora_mlp()
    save_adapter(model, tmp_path)
    model.merge()
    assert model.fc1.merged == "default"
    # W′ − ΔW (what a plain LoRA layer subtracts) is not the base for DoRA; W′ ⊙ n / m − ΔW is
    info = load_adapter(model, tmp_path, adapter_name="again", activate=False)
    assert info["fingerprint"] in ("exact", "rounding")
    assert list_adapters(model)["again"].dora


def test_merged_dora_sketch_is_within_rounding_of_the_base():
    from minilora.adapters.fingerprint import _base_arrays

    model = _dora_mlp()
    W0 = np.array(model.fc1.base.params["W"])
    model.merge()
    assert np.abs(model.fc1.base.params["W"] - W0).max() > 1e-2  # W′ is far from W ...
    np.testing.assert_allclose(_base_arrays(model)["fc1.W"], W0, rtol=1e-12, atol=1e-13)  # ... its base is not
    assert base_fingerprint(model) != base_fingerprint(MLP((6, 8, 4), "relu", seed=1, dtype="float64"))


# ----------------------------------------------------------------------------- (b) combine


@pytest.mark.parametrize("how", ["concat", "svd", "linear"])
def test_combining_a_dora_adapter_is_refused_and_the_model_left_unchanged(how):
    model = _dora_mlp()
    model.add_lora(["fc1", "fc2"], r=2, alpha=4, adapter="plain", activate=False)
    before, names = _state(model), set(list_adapters(model))
    with pytest.raises(ValueError, match="fc1: adapter 'default' is DoRA: .* plain LoRA adapters only"):
        combine_adapters(model, {"plain": 1.0, "default": 0.5}, "mix", how=how, rank=2)
    after = model.named_parameters()
    assert set(list_adapters(model)) == names and set(after) == set(before)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_combining_plain_adapters_still_works():
    model = MLP((6, 8, 4), "relu", seed=0, dtype="float64").add_lora(["fc1"], r=2, alpha=4)
    model.fc1.adapters["default"].params["B"][...] = 1.0
    combine_adapters(model, {"default": 2.0}, "twice")
    np.testing.assert_allclose(model.fc1.adapters["twice"].delta(), 2 * model.fc1.adapters["default"].delta(),
                               rtol=1e-12)


# ----------------------------------------------------------------------------- (c) the PEFT twin


@pytest.mark.crosscheck
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "peft-detached"])
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "dropout"])
def test_compare_with_torch_on_a_dora_mlp(exact, dropout):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from minilora import crosscheck

    model = _dora_mlp(exact=exact, dropout=dropout)
    if dropout:
        model.train()
    rows = crosscheck.compare_with_torch(model, X, Y, steps=2)
    names = {r.array for r in rows}
    assert {"fc1.lora.default.m", "fc2.lora.default.m", "adamw2 fc1.lora.default.m"} <= names
    for row in rows:  # measured ≤ 1e-15 (float64 on both sides)
        assert row.rel_error <= 1e-10, row


@pytest.mark.crosscheck
def test_compare_with_torch_on_a_dora_gpt():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from minilora import crosscheck

    model = GPT("tiny", vocab_size=7, seed=0, dtype="float64", init_std=0.5).add_lora(["q", "v"], r=2, alpha=4,
                                                                                    use_dora=True)
    g = np.random.default_rng(3)
    for p in model.named_parameters(trainable=True).values():
        p[...] = p + 0.3 * g.standard_normal(p.shape)
    ids = g.integers(0, 7, (2, 5))
    rows = crosscheck.compare_with_torch(model, ids, ids, steps=1)
    for row in rows:
        assert row.rel_error <= 1e-10, row


@pytest.mark.crosscheck
def test_the_twin_s_dora_is_real_peft_and_the_exact_term_differs_from_peft_s():
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = _dora_mlp(exact=True)
    config, _ = tt.lora_config(model)
    assert config.use_dora
    pm, adapter = tt.peft_twin(model)
    layer = pm.base_model.model.fc1
    assert isinstance(layer.lora_magnitude_vector[adapter], tt.ExactDora)
    np.testing.assert_array_equal(layer.lora_magnitude_vector[adapter].weight.detach().numpy(),
                                  model.fc1.adapters["default"].params["m"])
    detached, _ = tt.peft_twin(_dora_mlp(exact=False))
    assert type(detached.base_model.model.fc1.lora_magnitude_vector[adapter]).__name__ == "DoraLinearLayer"
    grads = []
    for pm_ in (pm, detached):  # the same forward, different gradients: the choice matters
        out = pm_(torch.from_numpy(X))
        out.pow(2).sum().backward()
        grads.append((out.detach().numpy(), pm_.base_model.model.fc1.lora_B[adapter].weight.grad.numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-13)
    assert np.abs(grads[0][1] - grads[1][1]).max() > 1e-3 * np.abs(grads[1][1]).max()


@pytest.mark.crosscheck
def test_lora_config_refuses_dora_mixed_with_plain_lora():
    pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = MLP((6, 8, 4), "relu", seed=0).add_lora(["fc1"], r=2, alpha=4, use_dora=True)
    model.add_lora(["fc2"], r=2, alpha=4)  # plain LoRA "default" on fc2
    with pytest.raises(ValueError, match=r"DoRA on \['fc1'\] but plain LoRA on \['fc2'\]"):
        tt.lora_config(model)


def test_a_merged_dora_save_is_still_refused(tmp_path):
    model = _dora_mlp()
    model.merge()
    with pytest.raises(AdapterError, match="DoRA adapter is merged"):
        save_adapter(model, tmp_path)
