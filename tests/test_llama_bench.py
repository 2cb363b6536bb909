"""benchmarks/llama_bench.py runs end to end on a tiny random Llama and its numbers are consistent.

Speed is never asserted here (the benchmark measures it; docs/performance.md, issue 12, reports
it). What is checked: the files and fields exist; minilora and PyTorch + PEFT agree before any
timing (the first losses, the LoRA gradients, the trainable count); the profile's parts add up
to its step; the agreement check does fail when the two sides differ.
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]


def load_llama_bench():
    spec = importlib.util.spec_from_file_location("llama_bench", ROOT / "benchmarks" / "llama_bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["llama_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    lb = load_llama_bench()
    out = tmp_path_factory.mktemp("llama_bench")
    lb.main(["--tiny", "--layers", "1", "--batch", "2", "--seq", "8", "--rounds", "2", "--warmup", "0",
             "--profile-steps", "3", "--threads", "1", "--out", str(out)])
    return lb, out, json.loads((out / "results.json").read_text())


def test_output_files_and_fields(run):
    lb, out, data = run
    assert (out / "results.md").stat().st_size > 0
    assert {"machine", "args", "batch", "results"} <= set(data)
    for key in ("processor", "numpy", "torch", "transformers", "peft", "threadpools", "load_average",
                "load_average_end", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "date", "model"):
        assert key in data["machine"], key
    assert data["batch"] == [2, 8]
    assert [r["targets"] for r in data["results"]] == [lb.LABELS[k] for k in lb.TARGETS]
    for r in data["results"]:
        row = r["timing"]["1"]
        for key in ("minilora_ms", "pytorch_ms", "ml_over_torch", "minilora_tokens_per_s", "pytorch_tokens_per_s"):
            assert row[key] > 0 and math.isfinite(row[key]), (r["targets"], key)
        assert row["minilora_tokens_per_s"] == pytest.approx(2 * 8 / row["minilora_ms"] * 1e3)
        assert len(row["minilora_rounds_ms"]) == len(row["pytorch_rounds_ms"]) == 2
        assert r["minilora_step_peak_bytes"] > 0
        assert r["minilora_opt_state_bytes"] == 2 * 4 * r["trainable"]  # m and v, float32
    text = (out / "results.md").read_text()
    for heading in ("minilora / PyTorch", "Agreement before timing", "Memory", "Where minilora's step goes",
                    "Hottest functions"):
        assert heading in text, heading


def test_both_sides_agree_before_timing(run):
    _, _, data = run
    for r in data["results"]:
        assert r["trainable"] == r["pytorch_trainable"]  # the same LoRA parameters on both sides
        assert len(r["checks"]) == 2
        for c in r["checks"]:
            assert c["loss_rel_diff"] <= 1e-4, c  # same weights, A, B and batch: the same loss
            assert c["lora_grad_rel_err"] <= 1e-4, c  # and the same dA, dB (float32 rounding)
        assert r["checks"][1]["minilora_loss"] != r["checks"][0]["minilora_loss"]  # the first step trained


def test_all_seven_trains_more_than_q_v(run):
    _, _, data = run
    qv, all7 = data["results"]
    assert all7["trainable"] > qv["trainable"]
    assert qv["modules"] == ["q_proj", "v_proj"] and len(all7["modules"]) == 7


def test_the_profile_parts_add_up_to_the_step(run):
    _, _, data = run
    for r in data["results"]:
        prof = r["profile"]
        parts = prof["parts_ms"]
        assert sum(parts.values()) == pytest.approx(prof["total_ms"], rel=1e-9)
        assert all(v >= -1e-3 for v in parts.values()), parts  # exclusive times: none negative
        assert prof["hottest"] and all({"function", "own_ms", "calls"} <= set(h) for h in prof["hottest"])
        assert len(prof["totals_ms"]) == 3 and prof["total_ms"] == sorted(prof["totals_ms"])[1]  # the median step


def test_disagreeing_sides_fail_the_check():
    lb = load_llama_bench()

    class NoLoRA:  # a model with no adapters: the gradient comparison has nothing to compare
        def named_grads(self):
            return {}

        def lora_layers(self):
            return {}

    fns = {"minilora": lambda: 2.0, "pytorch": lambda: 2.1}
    with pytest.raises(AssertionError, match="first losses differ"):
        lb.check_agreement(fns, NoLoRA(), {}, 1)
    same = {"minilora": lambda: 2.0, "pytorch": lambda: 2.0}
    assert lb.check_agreement(same, NoLoRA(), {}, 1)[0]["loss_rel_diff"] == 0.0


def test_unknown_targets_are_refused(tmp_path):
    lb = load_llama_bench()
    with pytest.raises(SystemExit):
        lb.main(["--tiny", "--targets", "qv,nope", "--out", str(tmp_path)])


@pytest.mark.parametrize("side", ["minilora", "pytorch"])
def test_one_side_alone_times_only_that_side(tmp_path, side):
    lb = load_llama_bench()
    lb.main(["--tiny", "--layers", "1", "--batch", "2", "--seq", "8", "--rounds", "1", "--warmup", "0",
             "--threads", "1", "--targets", "qv", "--side", side, "--no-profile", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    (r,) = data["results"]
    assert r["sides"] == [side] and r["checks"] == []  # nothing to compare with
    row = r["timing"]["1"]
    other = "pytorch" if side == "minilora" else "minilora"
    assert row[f"{side}_ms"] > 0 and f"{other}_ms" not in row and "ml_over_torch" not in row
    assert ("minilora_step_peak_bytes" in r) == (side == "minilora")
    assert "alone" in data["machine"]["model"]
