"""The task-switch demo (quick mode): two adapters on one frozen base, saved, reloaded, swapped."""
import json
import subprocess
import sys

import pytest

from minilora.experiments import task_switch


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("task_switch")
    return out, task_switch.run(quick=True, progress=False, out_dir=out)


def test_each_adapter_fixes_its_own_domain(result):
    _, m = result
    acc = m["accuracy"]
    assert set(acc) == {"base", "rotated", "mirrored"}
    assert acc["base"]["upright"] > 0.8
    for task in ("rotated", "mirrored"):
        assert acc[task][task] > acc["base"][task] + 0.2, acc  # the adapter helps on its domain
        other = "mirrored" if task == "rotated" else "rotated"
        assert acc[task][task] > acc[other][task], acc  # and more than the other adapter does


def test_files_are_small_peft_directories_and_reload_bitwise(result):
    out, m = result
    assert m["reload_bitwise"] is True
    for task in ("rotated", "mirrored"):
        cfg = json.loads((out / task / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["fc1", "fc2", "fc3"]
        assert (out / task / "adapter_model.safetensors").stat().st_size == m["bytes"][task]
        assert m["bytes"][task] < m["bytes"]["full_model"] / 3
        assert m["params"][task] * 4 < m["bytes"][task]  # float32 payload plus header/metadata
    assert (out / "base_model.safetensors").stat().st_size == m["bytes"]["full_model"]


def test_report_has_timings_and_drift(result):
    _, m = result
    assert set(m["time"]) == {"switch", "load_adapter", "load_adapter_no_fingerprint", "load_full_model"}
    assert all(v > 0 for v in m["time"].values())
    assert set(m["drift"]) == {"float64", "float32", "float16"}


def test_command_line_entry_point():
    res = subprocess.run([sys.executable, "-m", "minilora", "demo", "adapters", "--quick", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for phrase in ("accuracy", "full model", "switch adapter in memory", "bitwise the same logits: True"):
        assert phrase in res.stdout, res.stdout


def test_load_model_weights_checks_names_shapes_and_dtypes_first(tmp_path):
    import numpy as np
    import pytest

    from minilora import MLP
    from minilora.experiments.task_switch import load_model_weights, save_model

    path = str(tmp_path / "base.safetensors")
    save_model(MLP((4, 5, 3), seed=0), path)
    target = MLP((4, 5, 3), seed=1).add_lora(r=1, alpha=1)
    before = {k: v.copy() for k, v in target.named_parameters().items()}
    with pytest.raises(ValueError, match="names differ"):
        load_model_weights(target, path)
    wide = MLP((4, 6, 3), seed=1)
    with pytest.raises(ValueError, match=r"fc1.W has shape \(5, 4\) and dtype float32, the model's has shape \(6, 4\)"):
        load_model_weights(wide, path)
    assert all(np.array_equal(v, before[k]) for k, v in target.named_parameters().items())
    plain = MLP((4, 5, 3), seed=1)
    load_model_weights(plain, path)
    assert np.array_equal(plain.fc1.W, MLP((4, 5, 3), seed=0).fc1.W)
