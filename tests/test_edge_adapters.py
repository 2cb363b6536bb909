"""Adapter files and combinations at their edges: every dtype round-tripped, near-miss layer names
(fc1 / fc10 / fc11) in target_modules and rank_pattern, both tensors of a pair validated, config
fields the math depends on, a base with the same norms but different weights, rounding on a
large base, an SVD rank above the layer's size, trainable loads.

Written against the survivors of ``python mutation/run.py`` (docs/mutation.md). Every refused
load is followed by a check that the model is bitwise what it was.
"""
import json

import numpy as np
import pytest

from minilora import MLP, backend
from minilora import adapters as ad
from minilora import safetensors as st


def mlp(dtype="float32", sizes=(6, 5, 4), seed=0):
    return MLP(sizes, seed=seed, dtype=dtype)


def randomize(model, name, seed=1, scale=0.5):
    g = np.random.default_rng(seed)
    for layer in model.lora_layers().values():
        if name in layer.adapters:
            a = layer.adapters[name]
            for k in ("A", "B"):
                a.params[k] = (scale * g.standard_normal(a.params[k].shape)).astype(a.params[k].dtype)
    return model


def snapshot(model):
    params = {k: (backend.dtype_name(v), tuple(v.shape), backend.to_numpy(v).tobytes())
              for k, v in model.named_parameters().items()}
    return ({p: type(m).__name__ for p, m in model.named_modules()}, params,
            {p: sorted(m.frozen) for p, m in model.named_modules()},
            {p: (m.active, m.merged) for p, m in model.lora_layers().items()})


def refused(directory, model, *fragments, **kw):
    before = snapshot(model)
    with pytest.raises(ad.AdapterError) as e:
        ad.load_adapter(model, directory, adapter_name="new", **kw)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    assert snapshot(model) == before


def saved_task(tmp_path, dtype="float32"):
    m = mlp(dtype)
    ad.add_adapter(m, "task", targets=["fc1", "fc2"], r={"fc1": 3, "fc2": 2}, alpha=4, activate=True)
    randomize(m, "task", seed=7)
    ad.save_adapter(m, tmp_path, adapter="task")
    return m


def rewrite(directory, edit):
    t, meta = st.load_file(directory / "adapter_model.safetensors")
    edit(t, meta)
    st.save_file(t, directory / "adapter_model.safetensors", meta)


def edit_config(directory, **fields):
    cfg = json.loads((directory / "adapter_config.json").read_text())
    cfg.update(fields)
    (directory / "adapter_config.json").write_text(json.dumps(cfg))


A1 = "base_model.model.fc1.lora_A.weight"
B1 = "base_model.model.fc1.lora_B.weight"


# ----------------------------------------------------------------------------- every dtype


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_round_trip_is_bitwise_in_every_dtype(tmp_path, dtype):
    m = saved_task(tmp_path, dtype)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(dtype)
    fresh = mlp(dtype)
    assert ad.load_adapter(fresh, tmp_path, adapter_name="task")["fingerprint"] == "exact"
    for p in ("fc1", "fc2"):
        for k in ("A", "B"):
            a, b = m.get_module(p).adapters["task"].params[k], fresh.get_module(p).adapters["task"].params[k]
            assert b.dtype == np.dtype(dtype) and a.tobytes() == b.tobytes()
    assert fresh(x).tobytes() == m(x).tobytes()


def test_a_file_of_another_dtype_is_refused_either_way(tmp_path):
    saved_task(tmp_path, "float16")
    refused(tmp_path, mlp("float32"), "wrong dtype F16", "float16")


# ----------------------------------------------------------------------------- near-miss layer names


def eleven():
    """fc1 … fc11: fc1 is a prefix of fc10 and fc11, and "fc1" a substring of both."""
    return MLP((4,) * 11 + (3,), seed=0, dtype="float64")


def test_target_modules_match_whole_names_not_substrings(tmp_path):
    m = eleven()
    ad.add_adapter(m, "one", targets=["fc1"], r=2, alpha=2, activate=True)
    randomize(m, "one")
    ad.save_adapter(m, tmp_path, adapter="one")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["fc1"]
    fresh = eleven()
    assert ad.load_adapter(fresh, tmp_path, adapter_name="one")["layers"] == ["fc1"]
    x = np.random.default_rng(0).standard_normal((2, 4))
    assert fresh(x).tobytes() == m(x).tobytes()


def test_rank_pattern_keys_match_whole_names_not_prefixes(tmp_path):
    m = eleven()
    ad.add_adapter(m, "mix", targets=["fc1", "fc10", "fc11"], r={"fc1": 3, "fc10": 2, "fc11": 2}, alpha=4)
    randomize(m, "mix")
    ad.save_adapter(m, tmp_path, adapter="mix")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["rank_pattern"] == {"fc1": 3}
    fresh = eleven()
    ad.load_adapter(fresh, tmp_path, adapter_name="mix")
    assert ad.list_adapters(fresh)["mix"].r == {"fc1": 3, "fc10": 2, "fc11": 2}


# ----------------------------------------------------------------------------- both tensors, every field


def test_lora_A_of_the_wrong_width_is_refused(tmp_path):
    saved_task(tmp_path)

    def wider(t, meta):
        t[A1] = np.ones((3, 7), np.float32)  # fc1 has d_in = 6; the rank (3) still matches B

    rewrite(tmp_path, wider)
    refused(tmp_path, mlp(), A1, "wrong shape", "(r, 6)")


@pytest.mark.parametrize("key", [A1, B1])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused_in_A_and_in_B(tmp_path, key, bad):
    saved_task(tmp_path)

    def poison(t, meta):
        t[key][0, 0] = bad

    rewrite(tmp_path, poison)
    refused(tmp_path, mlp(), key, "NaN or Inf")


@pytest.mark.parametrize("dropout", [1.0, 1.5, -0.1])
def test_lora_dropout_outside_zero_to_one_is_refused(tmp_path, dropout):
    saved_task(tmp_path)
    edit_config(tmp_path, lora_dropout=dropout)
    refused(tmp_path, mlp(), "adapter_config.json", "lora_dropout")


def test_a_config_edited_in_use_rslora_is_detected(tmp_path):
    saved_task(tmp_path)
    edit_config(tmp_path, use_rslora=True)  # changes the scale alpha / r -> alpha / √r
    refused(tmp_path, mlp(), "config_sha256")


def test_use_rslora_and_alpha_pattern_from_a_config_are_applied(tmp_path):
    m = mlp("float64")
    ad.add_adapter(m, "rs", targets=["fc1", "fc2"], r=2, alpha={"fc1": 3, "fc2": 5}, rslora=True, activate=True)
    randomize(m, "rs")
    ad.save_adapter(m, tmp_path, adapter="rs")
    fresh = mlp("float64")
    ad.load_adapter(fresh, tmp_path, adapter_name="rs")
    for p, alpha in (("fc1", 3), ("fc2", 5)):
        assert fresh.get_module(p).adapters["rs"].scale == alpha / np.sqrt(2)
    x = np.random.default_rng(0).standard_normal((2, 6))
    np.testing.assert_array_equal(fresh(x), m(x))


@pytest.mark.parametrize("alpha", [2.5, {"fc1": 0.75, "fc2": 6.0}])
def test_fractional_alpha_round_trips(tmp_path, alpha):
    m = mlp("float64")
    ad.add_adapter(m, "frac", targets=["fc1", "fc2"], r=2, alpha=alpha, activate=True)
    randomize(m, "frac")
    ad.save_adapter(m, tmp_path, adapter="frac")
    fresh = mlp("float64")
    ad.load_adapter(fresh, tmp_path, adapter_name="frac")
    assert ad.list_adapters(fresh)["frac"].alpha == ad.list_adapters(m)["frac"].alpha
    x = np.random.default_rng(0).standard_normal((2, 6))
    np.testing.assert_array_equal(fresh(x), m(x))


def test_trainable_loads_train_and_default_loads_do_not(tmp_path):
    saved_task(tmp_path)
    frozen, training = mlp(), mlp()
    ad.load_adapter(frozen, tmp_path, adapter_name="task")
    ad.load_adapter(training, tmp_path, adapter_name="task", trainable=True)
    assert frozen.named_parameters(trainable=True) == {}
    assert sorted(training.named_parameters(trainable=True)) == [
        "fc1.lora.task.A", "fc1.lora.task.B", "fc2.lora.task.A", "fc2.lora.task.B"]


# ----------------------------------------------------------------------------- the fingerprint


def test_a_base_with_the_same_norms_but_other_weights_is_refused(tmp_path):
    saved_task(tmp_path)
    other = mlp()
    other.fc1.params["W"] = other.fc1.W[::-1].copy()  # rows swapped: every norm the same
    refused(tmp_path, other, "fingerprint mismatch", "fc1.W")
    np.testing.assert_allclose(np.linalg.norm(other.fc1.W), np.linalg.norm(mlp().fc1.W), rtol=1e-6)


def test_merge_rounding_on_a_large_base_still_matches(tmp_path):
    # W of size ~1e3: merge + unmerge moves it by ~ε·1e3, far above 64 ε absolute, far below
    # the tolerance 64 ε ‖W‖ that the sketch allows
    m = mlp()
    for layer in ("fc1", "fc2"):
        m.get_module(layer).params["W"] = m.get_module(layer).W * np.float32(3000.0)
    base = {k: v.copy() for k, v in m.named_parameters().items()}
    ad.add_adapter(m, "task", targets=["fc1", "fc2"], r=2, alpha=4, activate=True)
    randomize(m, "task", scale=40.0)
    m.merge("task")
    m.unmerge()
    assert any(not np.array_equal(m.get_module(p).base.W, base[f"{p}.W"]) for p in ("fc1", "fc2"))
    ad.save_adapter(m, tmp_path, adapter="task")  # fingerprint of the rounded base
    fresh = mlp()
    fresh.load_state_dict(base)
    assert ad.load_adapter(fresh, tmp_path, adapter_name="task")["fingerprint"] == "rounding"


# ----------------------------------------------------------------------------- combination


def test_svd_rank_above_a_layers_size_is_clipped_to_it():
    m = mlp("float64", sizes=(8, 7, 6))
    ad.add_adapter(m, "a", targets=["fc1", "fc2"], r=2, alpha=4, seed=1)
    ad.add_adapter(m, "b", targets=["fc1", "fc2"], r=3, alpha=2, seed=2)
    randomize(m, "a", 1), randomize(m, "b", 2)
    out = ad.combine_adapters(m, ["a", "b"], "s", how="svd", rank=50)
    assert {p: r["rank"] for p, r in out["layers"].items()} == {"fc1": 7, "fc2": 6}  # min(d_in, d_out)
    for p in ("fc1", "fc2"):
        ads = m.get_module(p).adapters
        want = ads["a"].delta() + ads["b"].delta()
        np.testing.assert_allclose(ads["s"].delta(), want, rtol=1e-10, atol=1e-12)
        assert out["layers"][p]["discarded_energy"] == 0.0
