"""benchmarks/mixed_batch.py runs and reports every K with positive times (no speed asserted)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("mixed_batch", Path(__file__).parents[1] / "benchmarks" / "mixed_batch.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_the_benchmark_measures_every_k(capsys):
    rows = bench.measure(d=16, n_rows=4, T=2, r=2, Ks=(1, 2, 4), rounds=1)
    assert [r["K"] for r in rows] == [1, 2, 4]
    for r in rows:
        assert r["single"] > 0 and r["loop"] > 0 and r["gather"] > 0
        assert r["loop/single"] == r["loop"] / r["single"]
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "gather/single" in out and len(out.strip().splitlines()) == 2 + 3
