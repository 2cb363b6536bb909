"""The main demo runs end to end (quick mode) and its report says what the README promises."""
import subprocess
import sys

from minilora.experiments import mlp_demo


def test_quick_demo_adapts_and_reports(capsys):
    m = mlp_demo.run(quick=True, progress=False)
    out = capsys.readouterr().out
    for phrase in ("base model", "LoRA r=4", "full fine-tuning", "merged == unmerged", "opt. state"):
        assert phrase in out
    assert m["base_upright"] > 0.8  # the base learned the upright digits
    assert m["base_rotated"] < m["base_upright"] - 0.3  # and collapses on rotated ones
    assert m["lora_rotated"] > m["base_rotated"] + 0.2  # LoRA recovers much of it
    assert m["lora_off_upright"] == m["base_upright"]  # adapter off: the frozen base, exactly
    assert m["lora_trainable"] == 4 * (64 + 256) + 4 * (256 + 256) + 4 * (256 + 10)
    assert m["lora_state_bytes"] < m["full_state_bytes"] / 10
    assert m["merge_rel_diff"] < 1e-5


def test_command_line_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "minilora", "demo", "mlp", "--quick", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "merged == unmerged" in res.stdout


def test_cuda_without_cupy_fails_cleanly_with_the_install_hint(monkeypatch, capsys):
    from minilora import backend, cli

    monkeypatch.setattr(backend, "cupy_or_none", lambda: None)
    assert cli.main(["demo", "mlp", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "minilora[cuda12]" in err and "Traceback" not in err
    assert cli.main(["demo", "mlp", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_version_flag(capsys):
    import pytest

    import minilora
    from minilora import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"minilora {minilora.__version__}"
