"""benchmarks/bench.py runs end to end on tiny shapes and its numbers are internally consistent.

Speed is never asserted here (the benchmark measures it; docs/performance.md reports it). What is
checked: the files and fields exist, and the correctness invariants the benchmark relies on hold
(merged == unmerged outputs, PyTorch's first loss == minilora's, LoRA's trainable and optimizer
state are smaller than full fine-tuning's, the limit's product list matches the model).
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    bench = load_bench()
    out = tmp_path_factory.mktemp("bench")
    doc = out / "performance.md"
    doc.write_text("before\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nafter\n")
    bench.main(["--tiny", "--quick", "--rounds", "2", "--warmup", "1", "--out", str(out),
                "--update-docs", str(doc)])
    return bench, out, doc


def test_output_files_and_fields(run):
    bench, out, doc = run
    for name in ("results.md", "results.json", "results.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert {"machine", "args", "results", "targets"} <= set(data)
    m = data["machine"]
    for key in ("numpy", "threads", "threadpools", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "load_average"):
        assert key in m, key
    assert len(data["results"]) == len(bench.TINY)
    for r in data["results"]:
        for v, row in r["train"].items():
            for key in ("limit_ms", "minilora_ms", "ml_over_limit"):
                assert row[key] > 0 and math.isfinite(row[key]), (r["config"], v, key)
        for key in ("minilora_base_ms", "minilora_unmerged_ms", "minilora_merged_ms", "limit_base_ms",
                    "ml_merged_over_base", "ml_unmerged_over_base"):
            assert r["infer"][key] > 0, key
    text = (out / "results.md").read_text()
    for heading in ("Training step", "Inference", "Memory", "Targets"):
        assert heading in text
    d = doc.read_text()  # the docs block was replaced by the table, the text around it kept
    assert d.startswith("before\n<!-- bench:begin -->\n") and d.endswith("<!-- bench:end -->\nafter\n")
    assert "old" not in d and text in d


def test_correctness_invariants(run):
    _, out, _ = run
    data = json.loads((out / "results.json").read_text())
    for r in data["results"]:
        c = r["checks"]
        assert c["infer: merged vs unmerged max abs diff"] < 1e-4  # merge changes no output
        assert c["infer: unmerged minus base max abs (B != 0, so > 0)"] > 1e-6  # LoRA is on
        for k, v in c.items():
            if "first loss minilora vs pytorch" in k:
                assert v < 1e-4, k  # same weights, same data, same loss on both sides
            if "pytorch unmerged vs minilora" in k:
                assert v < 1e-4, k
        mem = r["memory"]
        for v in mem:
            if v != "full":
                assert mem[v]["trainable"] < mem["full"]["trainable"]
                assert mem[v]["opt_state_bytes"] < mem["full"]["opt_state_bytes"]
            assert mem[v]["opt_state_bytes"] == 2 * 4 * mem[v]["trainable"]  # m and v, float32
            if "pytorch_opt_state_bytes" in mem[v]:
                assert mem[v]["pytorch_opt_state_bytes"] == mem[v]["opt_state_bytes"]


def test_limit_products_match_the_models():
    """The limit's product list has the shapes the step uses: LoRA adds skinny products,
    removes every dW, and a frozen k with no dx costs only its forward product."""
    bench = load_bench()
    cfg = bench.CONFIGS[1]
    N, C = cfg.batch * cfg.T, cfg.C
    full, qv, al = (bench.products(cfg, v) for v in ("full", "lora_qv", "lora_all"))
    dW = [p for p in full if p[4] and p[1] != 8 and p[0] == ()]
    assert len(dW) == 6  # one dW per linear
    assert not [p for p in qv if p[0] == () and p[4] and p[1] == C and p[2] == N and p[3] == C]  # no dW
    assert bench.flops(qv) < bench.flops(al) < bench.flops(full)
    fwd = bench.products(cfg, "base", train=False)
    assert len(fwd) == 8 and bench.flops(fwd) == bench.flops(bench.products(cfg, "merged", train=False))
