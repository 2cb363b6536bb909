"""minilora.adapters: named adapters, safe merge, drift, PEFT-format files, combination.

Every failed load is followed by a check that the model is *bitwise* what it was: same module
types, same parameter names, dtypes and bytes, same frozen sets, same active/merged adapters.
"""
import json
import os

import numpy as np
import pytest

from minilora import MLP, backend
from minilora import adapters as ad
from minilora import safetensors as st
from minilora.nn.lora import LoRALinear

from conftest import arr


# ----------------------------------------------------------------------------- helpers


def mlp(xp=np, seed=0, dtype="float32", sizes=(6, 5, 4)):
    return MLP(sizes, seed=seed, dtype=dtype, device=xp)


def randomize(model, name, seed=1, scale=0.5):
    """Give adapter ``name`` random A and B (B starts at zero, which would hide most bugs)."""
    g = np.random.default_rng(seed)
    for layer in model.lora_layers().values():
        if name in layer.adapters:
            a = layer.adapters[name]
            xp = backend.namespace(a.params["A"])
            for k in ("A", "B"):
                host = (scale * g.standard_normal(tuple(a.params[k].shape))).astype(backend.dtype_name(a.params[k]))
                a.params[k] = backend.from_numpy(host, xp)
    return model


def trained(xp=np, dtype="float32", seed=0):
    """A base MLP with one adapter 'task' (per-layer r) holding non-trivial A and B."""
    m = mlp(xp, seed, dtype)
    ad.add_adapter(m, "task", targets=["fc1", "fc2"], r={"fc1": 3, "fc2": 2}, alpha=4, activate=True, seed=5)
    return randomize(m, "task", seed=7)


def snapshot(model):
    mods = {p: type(m).__name__ for p, m in model.named_modules()}
    params = {k: (backend.dtype_name(v), tuple(v.shape), backend.to_numpy(v).tobytes())
              for k, v in model.named_parameters().items()}
    frozen = {p: sorted(m.frozen) for p, m in model.named_modules()}
    state = {p: (m.active, m.merged) for p, m in model.lora_layers().items()}
    return mods, params, frozen, state


def x_in(xp, d=6, dtype="float32"):
    return arr(np.random.default_rng(11).standard_normal((7, d)), xp, dtype)


def host(a):
    return np.asarray(backend.to_numpy(a))


def delta(model, name, path):
    a = model.get_module(path).adapters[name]
    return host(a.params["B"]).astype(np.float64) @ host(a.params["A"]).astype(np.float64) * a.scale


# ============================================================================ named adapters


def test_add_list_and_configs(xp):
    m = mlp(xp)
    ad.add_adapter(m, "a", targets=["fc1", "fc2"], r=2, alpha=4)
    ad.add_adapter(m, "b", targets=["fc2"], r=3, alpha=3, rslora=True, dropout=0.1)
    info = ad.list_adapters(m)
    assert list(info) == ["a", "b"]
    assert info["a"].targets == ("fc1", "fc2") and info["a"].r == {"fc1": 2, "fc2": 2}
    assert info["b"].targets == ("fc2",) and info["b"].r == {"fc2": 3} and info["b"].alpha == {"fc2": 3.0}
    assert info["b"].rslora and info["b"].dropout == 0.1
    assert not info["a"].active and not info["b"].active  # add_adapter does not activate by default


def test_set_active_switches_and_others_run_base(xp):
    m = mlp(xp)
    x = x_in(xp)
    base = host(m(x))
    ad.add_adapter(m, "a", targets=["fc1", "fc2"], r=2, alpha=4)
    ad.add_adapter(m, "b", targets=["fc2"], r=2, alpha=4)
    randomize(m, "a", 1), randomize(m, "b", 2)
    ad.set_active(m, "b")
    assert ad.active_adapters(m) == {"fc1": None, "fc2": "b"}
    yb = host(m(x))
    ad.set_active(m, "a")
    assert ad.active_adapters(m) == {"fc1": "a", "fc2": "a"}
    ya = host(m(x))
    assert not np.allclose(ya, base) and not np.allclose(yb, base) and not np.allclose(ya, yb)
    ad.set_active(m, None)
    assert np.array_equal(host(m(x)), base)
    with pytest.raises(KeyError, match="nope"):
        ad.set_active(m, "nope")


def test_adapters_disabled_context_restores_state(xp):
    m = trained(xp)
    x = x_in(xp)
    y = host(m(x))
    with ad.adapters_disabled(m):
        assert ad.active_adapters(m) == {"fc1": None, "fc2": None}
        yb = host(m(x))
    assert ad.active_adapters(m) == {"fc1": "task", "fc2": "task"}
    assert np.array_equal(host(m(x)), y) and not np.allclose(yb, y)
    assert np.array_equal(yb, host(mlp(xp)(x)))  # base alone is the original base
    with pytest.raises(RuntimeError):
        with ad.adapters_disabled(m):
            raise RuntimeError("boom")
    assert ad.active_adapters(m) == {"fc1": "task", "fc2": "task"}


def test_delete_adapter_and_refusal_when_merged(xp):
    m = trained(xp)
    ad.add_adapter(m, "other", targets=["fc1"], r=1, alpha=1)
    ad.delete_adapter(m, "other")
    assert list(ad.list_adapters(m)) == ["task"]
    m.merge("task")
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"merged into W; unmerge\(\) first"):  # names the surviving door
        ad.delete_adapter(m, "task")
    assert snapshot(m) == before
    with pytest.raises(KeyError):
        ad.delete_adapter(m, "missing")


# ============================================================================ merge


def test_merge_matches_unmerged_forward_and_unmerge_restores(xp):
    m = trained(xp, "float64")
    x = x_in(xp, dtype="float64")
    y = host(m(x))
    W0 = host(m.fc1.base.W).copy()
    m.merge("task")
    assert {p: l.merged for p, l in m.lora_layers().items()} == {"fc1": "task", "fc2": "task"}
    np.testing.assert_allclose(host(m(x)), y, rtol=1e-12, atol=1e-12)
    m.unmerge()
    np.testing.assert_allclose(host(m.fc1.base.W), W0, rtol=0, atol=1e-14)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_safe_merge_checks_all_layers_before_changing_any(xp):
    m = trained(xp)
    fc2 = m.get_module("fc2").adapters["task"]
    fc2.params["B"] = fc2.params["B"] * 0 + 3e38  # fc2's merge overflows; fc1's alone would be fine
    before = snapshot(m)
    with pytest.raises(FloatingPointError, match="fc2"):
        m.merge("task")
    assert snapshot(m) == before  # fc1 (merged first in a naive loop) is untouched too


def test_merge_drift_reports_each_dtype_and_matches_a_real_merge(xp):
    m = trained(xp, "float32")
    drift = ad.merge_drift(m, "task")
    assert set(drift) == {"float64", "float32", "float16"}
    for dt, tiny in (("float64", 1e-13), ("float32", 1e-5), ("float16", 5e-2)):
        assert 0 <= drift[dt]["max_rel"] < tiny, (dt, drift[dt])
    assert drift["float64"]["max_abs"] <= drift["float32"]["max_abs"] <= drift["float16"]["max_abs"]
    assert drift["float16"]["max_abs"] > 0  # rounding in half precision is visible
    # The function replays exactly what merge/unmerge do: the model's own float32 round trip lands
    # on the same W, so the measured error is identical.
    W0 = {p: host(l.base.params["W"]).astype(np.float64) for p, l in m.lora_layers().items()}
    m.merge("task"), m.unmerge()
    real = {p: float(np.max(np.abs(host(l.base.params["W"]).astype(np.float64) - W0[p])))
            for p, l in m.lora_layers().items()}
    assert real == drift["float32"]["per_layer"]


# ============================================================================ files


def test_round_trip_is_bitwise(xp, tmp_path):
    m = trained(xp)
    x = x_in(xp)
    y = host(m(x))
    info = ad.save_adapter(m, tmp_path / "task", adapter="task")
    assert os.path.getsize(info["weights"]) == info["bytes"]
    fresh = mlp(xp)
    out = ad.load_adapter(fresh, tmp_path / "task", adapter_name="task")
    assert out == {"layers": ["fc1", "fc2"], "fingerprint": "exact"}
    for p in ("fc1", "fc2"):
        for k in ("A", "B"):
            a, b = m.get_module(p).adapters["task"].params[k], fresh.get_module(p).adapters["task"].params[k]
            assert backend.namespace(b) is xp and backend.dtype_name(a) == backend.dtype_name(b)
            assert host(a).tobytes() == host(b).tobytes()
    assert host(fresh(x)).tobytes() == y.tobytes()
    assert ad.list_adapters(fresh)["task"] == ad.list_adapters(m)["task"]


def test_file_is_a_peft_adapter(tmp_path):
    m = trained()
    ad.save_adapter(m, tmp_path, adapter="task", base_model_name_or_path="my-base", task_type="CAUSAL_LM")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["bias"] == "none" and cfg["fan_in_fan_out"] is False
    assert cfg["r"] in (2, 3) and cfg["lora_alpha"] == 4 and cfg["use_rslora"] is False
    assert cfg["target_modules"] == ["fc1", "fc2"] and cfg["lora_dropout"] == 0.0
    other = {"fc1": 3, "fc2": 2}
    assert cfg["rank_pattern"] == {k: v for k, v in other.items() if v != cfg["r"]}
    assert cfg["alpha_pattern"] == {} and cfg["init_lora_weights"] == "gaussian"
    assert cfg["base_model_name_or_path"] == "my-base" and cfg["task_type"] == "CAUSAL_LM"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "np") as f:
        shapes = {k: f.get_tensor(k).shape for k in f.keys()}
        meta = f.metadata()
    assert shapes == {
        "base_model.model.fc1.lora_A.weight": (3, 6), "base_model.model.fc1.lora_B.weight": (5, 3),
        "base_model.model.fc2.lora_A.weight": (2, 5), "base_model.model.fc2.lora_B.weight": (4, 2),
    }
    assert meta["minilora.base_sha256"] == ad.base_fingerprint(m) and meta["format"] == "pt"


def test_fingerprint_ignores_lora_and_wrapping_but_not_the_base():
    plain = mlp()
    fp = ad.base_fingerprint(plain)
    assert ad.base_fingerprint(trained()) == fp  # wrapped, with an adapter: same base
    assert ad.base_fingerprint(mlp(seed=1)) != fp
    assert ad.base_fingerprint(mlp(dtype="float64")) != fp


def test_save_while_merged_then_load_on_fresh_base(tmp_path):
    m = trained()
    m.merge("task")
    ad.save_adapter(m, tmp_path, adapter="task")
    out = ad.load_adapter(mlp(), tmp_path, adapter_name="task")
    assert out["fingerprint"] in ("exact", "rounding")  # W − ΔW is the base up to rounding


def test_peft_style_keys_with_adapter_name_load(tmp_path):
    m = trained()
    ad.save_adapter(m, tmp_path, adapter="task")
    t, meta = st.load_file(tmp_path / "adapter_model.safetensors")
    t = {k.replace(".weight", ".default.weight"): v for k, v in t.items()}
    st.save_file(t, tmp_path / "adapter_model.safetensors", meta)
    fresh = mlp()
    ad.load_adapter(fresh, tmp_path, adapter_name="task")
    assert host(fresh.fc2.adapters["task"].B).tobytes() == host(m.fc2.adapters["task"].B).tobytes()


# ----------------------------------------------------------------------------- failed loads


@pytest.fixture
def saved(tmp_path):
    """A good adapter directory, and a model (with an adapter of its own) to load it onto."""
    ad.save_adapter(trained(), tmp_path, adapter="task")
    target = mlp()
    ad.add_adapter(target, "mine", targets=["fc1"], r=2, alpha=2, activate=True)
    randomize(target, "mine", seed=3)
    return tmp_path, target


def rewrite(directory, edit):
    """Load the weights file, let ``edit(tensors, metadata)`` change them, write it back."""
    t, meta = st.load_file(directory / "adapter_model.safetensors")
    edit(t, meta)
    st.save_file(t, directory / "adapter_model.safetensors", meta)


def fails(directory, model, *fragments, **kw):
    before = snapshot(model)
    with pytest.raises(ad.AdapterError) as e:
        ad.load_adapter(model, directory, adapter_name="new", **kw)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    assert snapshot(model) == before
    return msg


A1 = "base_model.model.fc1.lora_A.weight"
B2 = "base_model.model.fc2.lora_B.weight"


def test_load_missing_key(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.pop(B2))
    fails(d, m, "adapter_model.safetensors", "missing key", B2)


def test_load_extra_key(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.update({"base_model.model.fc1.lora_magnitude_vector": np.ones(5, np.float32)}))
    fails(d, m, "adapter_model.safetensors", "unexpected key", "lora_magnitude_vector")


def test_load_key_for_a_layer_the_model_lacks(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.update({"base_model.model.fc9.lora_A.weight": np.ones((2, 5), np.float32)}))
    fails(d, m, "fc9", "no linear layer")


def test_load_wrong_shape(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.update({B2: np.ones((3, 2), np.float32)}))
    fails(d, m, "adapter_model.safetensors", B2, "wrong shape")


def test_load_truncated_file(saved):
    d, m = saved
    f = d / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-5])
    fails(d, m, "adapter_model.safetensors", "truncated")


def test_load_corrupted_header(saved):
    d, m = saved
    f = d / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"\xff\xfe@@"
    f.write_bytes(bytes(data))
    fails(d, m, "adapter_model.safetensors", "header")


def test_load_wrong_dtype(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.update({A1: t[A1].astype(np.float64)}))
    fails(d, m, A1, "wrong dtype", "F64")


def test_load_integer_dtype(saved):
    d, m = saved
    rewrite(d, lambda t, meta: t.update({A1: t[A1].astype(np.int32)}))
    fails(d, m, A1, "wrong dtype", "I32")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_non_finite(saved, bad):
    d, m = saved

    def edit(t, meta):
        t[B2][1, 0] = bad

    rewrite(d, edit)
    fails(d, m, B2, "NaN or Inf")


def test_load_fingerprint_mismatch(tmp_path):
    ad.save_adapter(trained(seed=0), tmp_path, adapter="task")
    other = mlp(seed=1)
    fails(tmp_path, other, "fingerprint mismatch", "fc1.W")
    ad.load_adapter(other, tmp_path, adapter_name="forced", check_fingerprint=False)  # opt out works


def test_load_config_rank_disagrees_with_tensors(saved):
    d, m = saved

    def edit(t, meta):  # both fc1 tensors rank 2, config still says 3
        t[A1] = t[A1][:2]
        t["base_model.model.fc1.lora_B.weight"] = t["base_model.model.fc1.lora_B.weight"][:, :2]

    rewrite(d, edit)
    fails(d, m, A1, "config disagrees", "r = 3")


def test_load_edited_config_without_minilora_metadata(saved):
    """A PEFT-written file has no config hash; the rank check still catches a wrong config."""
    d, m = saved
    rewrite(d, lambda t, meta: meta.pop("minilora.config_sha256"))
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {}
    cfg["r"] = 3 if cfg["r"] == 2 else 2
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    fails(d, m, "adapter_config.json", "config disagrees")


def test_load_config_from_another_save(saved):
    d, m = saved
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 8
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    fails(d, m, "config_sha256", "different adapter_config.json")


def test_load_use_dora_without_magnitudes(saved):
    # DoRA loads now (tests/test_dora.py); a config saying use_dora over a plain file is refused
    d, m = saved
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    fails(d, m, "missing key base_model.model.fc1.lora_magnitude_vector", "with use_dora true")


@pytest.mark.parametrize("field, value", [("bias", "all"), ("use_dora", "yes"), ("fan_in_fan_out", True),
                                          ("peft_type", "IA3"), ("alora_invocation_tokens", [1, 2]),
                                          ("monteclora_config", {"n": 4}), ("arrow_config", {"top_k": 2}),
                                          ("use_bdlora", True), ("kasa_config", {"a": 1}),
                                          ("velora_config", {"v": 1}), ("lora_ga_config", {"g": 1}),
                                          ("init_lora_weights", "pissa"), ("init_lora_weights", "olora"),
                                          ("init_lora_weights", "loftq"), ("a_future_peft_option", True)])
def test_load_unsupported_config(saved, field, value):
    d, m = saved
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg[field] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    fails(d, m, "adapter_config.json", field)


@pytest.mark.parametrize("field, value", [("init_lora_weights", "gaussian"), ("init_lora_weights", False),
                                          ("a_future_peft_option", None), ("eva_config", None),
                                          ("qalora_group_size", 16), ("ensure_weight_tying", False)])
def test_load_accepts_fields_that_leave_the_math_alone(saved, field, value):
    d, m = saved
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg[field] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    ad.load_adapter(m, d, adapter_name="new")
    want = trained()
    for path, layer in m.lora_layers().items():
        assert np.array_equal(layer.adapters["new"].params["B"], want.get_module(path).adapters["task"].params["B"])


def test_load_missing_file(saved):
    d, m = saved
    os.remove(d / "adapter_config.json")
    fails(d, m, "adapter_config.json", "not found")


def test_load_existing_name_refused(saved):
    d, m = saved
    before = snapshot(m)
    with pytest.raises(ad.AdapterError, match="already exists"):
        ad.load_adapter(m, d, adapter_name="mine")
    assert snapshot(m) == before


def test_interrupted_save_keeps_previous_adapter(tmp_path, monkeypatch):
    good = trained()
    ad.save_adapter(good, tmp_path, adapter="task")
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    newer = trained()
    randomize(newer, "task", seed=99)
    real = st.write_bytes

    def crash_on_config(f, data):  # weights temp fully written, config temp dies halfway
        if data.lstrip().startswith(b"{"):
            f.write(data[: len(data) // 2])
            raise OSError("power cut (simulated)")
        real(f, data)

    monkeypatch.setattr(st, "write_bytes", crash_on_config)
    with pytest.raises(OSError, match="simulated"):
        ad.save_adapter(newer, tmp_path, adapter="task")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # same files, no temps
    fresh = mlp()
    ad.load_adapter(fresh, tmp_path, adapter_name="task")
    assert host(fresh.fc1.adapters["task"].A).tobytes() == host(good.fc1.adapters["task"].A).tobytes()


def test_crash_between_the_two_renames_is_detected(tmp_path, monkeypatch):
    """The documented window: new weights renamed, old config still there. Loading refuses."""
    ad.save_adapter(trained(), tmp_path, adapter="task")
    newer = mlp()
    ad.add_adapter(newer, "task", targets=["fc1"], r=1, alpha=1)
    real, calls = os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("crash (simulated)")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError):
        ad.save_adapter(newer, tmp_path, adapter="task")
    monkeypatch.undo()
    for p in tmp_path.iterdir():  # the crashed process would leave its config temp behind
        if p.name.endswith(".tmp"):
            p.unlink()
    fails(tmp_path, mlp(), "config_sha256")


# ============================================================================ combination


def two(xp=np, dtype="float64"):
    m = mlp(xp, dtype=dtype, sizes=(8, 7, 6))
    ad.add_adapter(m, "a", targets=["fc1", "fc2"], r=2, alpha=4, seed=1)
    ad.add_adapter(m, "b", targets=["fc1"], r=3, alpha=2, rslora=True, seed=2)
    randomize(m, "a", 1), randomize(m, "b", 2)
    return m


def test_concat_delta_is_the_weighted_sum(xp):
    m = two(xp)
    w = {"a": 0.7, "b": -1.3}
    out = ad.combine_adapters(m, w, "ab", how="concat")
    assert out["layers"] == {"fc1": {"rank": 5}, "fc2": {"rank": 2}}
    for p in ("fc1", "fc2"):
        want = sum(wi * delta(m, n, p) for n, wi in w.items() if n in m.get_module(p).adapters and n != "ab")
        np.testing.assert_allclose(delta(m, "ab", p), want, rtol=1e-12, atol=1e-12)
    x = x_in(xp, 8, "float64")
    y = host(m(x))  # "ab" active: runs like a model holding ΔW_a·0.7 − 1.3·ΔW_b
    m.merge("ab")
    np.testing.assert_allclose(host(m(x)), y, rtol=1e-10, atol=1e-12)


def test_svd_exact_when_rank_suffices(xp):
    m = two(xp)
    out = ad.combine_adapters(m, ["a", "b"], "s", how="svd", rank=5)
    want = delta(m, "a", "fc1") + delta(m, "b", "fc1")
    np.testing.assert_allclose(delta(m, "s", "fc1"), want, rtol=1e-10, atol=1e-12)
    assert out["layers"]["fc1"]["discarded_fraction"] < 1e-20  # rank(ΔW) = 5: nothing discarded


def test_svd_truncation_is_eckart_young_optimal(xp):
    m = two(xp)
    k = 2
    out = ad.combine_adapters(m, ["a", "b"], "s2", how="svd", rank=k)
    target = delta(m, "a", "fc1") + delta(m, "b", "fc1")
    sigma = np.linalg.svd(target, compute_uv=False)
    err = np.linalg.norm(target - delta(m, "s2", "fc1"))
    assert np.isclose(err, np.sqrt(np.sum(sigma[k:] ** 2)), rtol=1e-9)  # error = discarded σ
    assert np.isclose(out["layers"]["fc1"]["fro_error"], err, rtol=1e-9)
    assert np.isclose(out["layers"]["fc1"]["discarded_energy"], np.sum(sigma[k:] ** 2), rtol=1e-9)
    assert np.linalg.matrix_rank(delta(m, "s2", "fc1")) == k
    # no other rank-k matrix does better: for the column space of adapter a's ΔW (rank 2) and of
    # random rank-k matrices, the best matrix in that space, Q Qᵀ target, leaves a larger error
    g = np.random.default_rng(0)
    spaces = [delta(m, "a", "fc1")] + [g.standard_normal((7, k)) @ g.standard_normal((k, 8)) for _ in range(20)]
    for cand in spaces:
        Q = np.linalg.svd(cand)[0][:, :k]
        assert np.linalg.norm(target - Q @ Q.T @ target) >= err * (1 - 1e-12)


def test_linear_mix_with_shared_A_is_the_weighted_sum_of_deltas(xp):
    m = mlp(xp, dtype="float64", sizes=(8, 7, 6))
    ad.add_adapter(m, "a", targets=["fc1", "fc2"], r=2, alpha=4, seed=1)
    ad.add_adapter(m, "b", targets=["fc1", "fc2"], r=2, alpha=2, rslora=True, seed=1)  # same seed: same A
    randomize(m, "a", 1)
    for p in ("fc1", "fc2"):  # share A, different B
        la = m.get_module(p).adapters
        la["b"].params["A"] = la["a"].params["A"]
        la["b"].params["B"] = la["a"].params["B"] * 0 + backend.from_numpy(
            np.random.default_rng(5).standard_normal(tuple(la["a"].params["B"].shape)), xp)
    w = {"a": 0.25, "b": 1.5}
    ad.combine_adapters(m, w, "mix", how="linear")
    for p in ("fc1", "fc2"):
        want = w["a"] * delta(m, "a", p) + w["b"] * delta(m, "b", p)
        np.testing.assert_allclose(delta(m, "mix", p), want, rtol=1e-12, atol=1e-12)


def test_linear_mix_with_different_A_is_the_stated_product_not_the_sum():
    m = mlp(dtype="float64", sizes=(8, 7, 6))
    ad.add_adapter(m, "a", targets=["fc1"], r=2, alpha=4, seed=1)
    ad.add_adapter(m, "b", targets=["fc1"], r=2, alpha=2, seed=2)
    randomize(m, "a", 1), randomize(m, "b", 2)
    w = {"a": 0.25, "b": 1.5}
    ad.combine_adapters(m, w, "mix", how="linear")
    la = m.fc1.adapters
    Bm = sum(w[n] * la[n].scale * host(la[n].B) for n in w)
    Am = sum(w[n] / sum(w.values()) * host(la[n].A) for n in w)
    np.testing.assert_allclose(delta(m, "mix", "fc1"), Bm @ Am, rtol=1e-12, atol=1e-12)
    summed = w["a"] * delta(m, "a", "fc1") + w["b"] * delta(m, "b", "fc1")
    assert np.linalg.norm(delta(m, "mix", "fc1") - summed) > 1e-3 * np.linalg.norm(summed)


def test_linear_mix_refuses_unequal_ranks():
    m = two()
    before = snapshot(m)
    with pytest.raises(ValueError, match="equal ranks"):
        ad.combine_adapters(m, ["a", "b"], "mix", how="linear")
    assert snapshot(m) == before


def test_combined_adapter_saves_and_loads(tmp_path):
    m = two()
    ad.combine_adapters(m, {"a": 1.0, "b": 1.0}, "ab", how="concat")
    ad.save_adapter(m, tmp_path, adapter="ab")
    fresh = mlp(dtype="float64", sizes=(8, 7, 6))
    ad.load_adapter(fresh, tmp_path, adapter_name="ab")
    x = x_in(np, 8, "float64")
    assert host(fresh(x)).tobytes() == host(m(x)).tobytes()


# ============================================================================ PEFT cross-checks


def _torch_twin(model):
    torch = pytest.importorskip("torch")

    bases = {p: (l.base if isinstance(l, LoRALinear) else l) for p in ("fc1", "fc2") for l in [model.get_module(p)]}

    class Twin(torch.nn.Module):  # same attribute names as minilora's paths: fc1, fc2
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(bases["fc1"].d_in, bases["fc1"].d_out)
            self.fc2 = torch.nn.Linear(bases["fc2"].d_in, bases["fc2"].d_out)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    twin = Twin().double()
    with torch.no_grad():
        for p, base in bases.items():
            getattr(twin, p).weight.copy_(torch.from_numpy(host(base.W)))  # (d_out, d_in) both
            getattr(twin, p).bias.copy_(torch.from_numpy(host(base.b)))
    return torch, twin


@pytest.mark.crosscheck
def test_peft_loads_what_minilora_saves(tmp_path):
    m = trained(dtype="float64")
    ad.save_adapter(m, tmp_path, adapter="task")
    torch, twin = _torch_twin(mlp(dtype="float64"))
    peft = pytest.importorskip("peft")
    pm = peft.PeftModel.from_pretrained(twin, str(tmp_path))
    x = x_in(np, 6, "float64")
    with torch.no_grad():
        y = pm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, host(m(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.crosscheck
def test_minilora_loads_what_peft_saves(tmp_path):
    base = mlp(dtype="float64")
    torch, twin = _torch_twin(base)
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["fc1", "fc2"], rank_pattern={"fc2": 2},
                          alpha_pattern={"fc2": 3}, use_rslora=True)
    pm = peft.get_peft_model(twin, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    pm.save_pretrained(str(tmp_path))
    out = ad.load_adapter(base, tmp_path, adapter_name="peft")
    assert out["fingerprint"] == "absent"
    assert ad.list_adapters(base)["peft"].r == {"fc1": 3, "fc2": 2}
    x = x_in(np, 6, "float64")
    with torch.no_grad():
        y = pm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(host(base(x)), y, rtol=1e-12, atol=1e-12)


# ============================================================================ GPT


def test_gpt_round_trip_and_paths(tmp_path):
    from minilora.nn.transformer import GPT

    g = GPT("tiny", vocab_size=11, seed=0)
    ad.add_adapter(g, "qv", targets=["q", "v"], r=2, alpha=4, activate=True)
    randomize(g, "qv", 3, scale=0.1)
    ad.save_adapter(g, tmp_path, adapter="qv")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["q", "v"]
    keys = set(st.load_file(tmp_path / "adapter_model.safetensors")[0])
    assert "base_model.model.blocks.1.attn.v.lora_B.weight" in keys and len(keys) == 2 * 2 * 2
    fresh = GPT("tiny", vocab_size=11, seed=0)
    ad.load_adapter(fresh, tmp_path, adapter_name="qv")
    ids = np.random.default_rng(0).integers(0, 11, size=(2, 9))
    assert host(fresh(ids)).tobytes() == host(g(ids)).tobytes()
    other = GPT("tiny", vocab_size=11, seed=1)
    fails(tmp_path, other, "fingerprint mismatch")


def test_gpt_single_layer_target_uses_full_paths(tmp_path):
    from minilora.nn.transformer import GPT

    g = GPT("tiny", vocab_size=11, seed=0)
    ad.add_adapter(g, "one", targets=["blocks.0.attn.q", "lm_head"], r={"blocks.0.attn.q": 2, "lm_head": 1}, alpha=2)
    ad.save_adapter(g, tmp_path, adapter="one")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["blocks.0.attn.q", "lm_head"]
    fresh = GPT("tiny", vocab_size=11, seed=0)
    ad.load_adapter(fresh, tmp_path, adapter_name="one")
    assert ad.list_adapters(fresh)["one"].r == {"blocks.0.attn.q": 2, "lm_head": 1}
