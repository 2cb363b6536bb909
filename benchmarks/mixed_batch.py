"""Mixed-adapter batches: what it costs when the rows of one batch use K different adapters.

    python benchmarks/mixed_batch.py                  # d = 256, 16 rows x 64 tokens, r = 8
    python benchmarks/mixed_batch.py --d 576 --rounds 30

For K = 1, 2, 4, 8, 16 distinct adapters (the rows dealt out round-robin), times forward +
backward of one layer h = x Wᵀ + (mixed low-rank term), with the low-rank term computed by

    loop     functional/mixed_lora.py: one sub-batch per adapter (PEFT's ``adapter_names`` loop)
    gather   fast/mixed_lora.py: one batched product over the stacked, zero-padded adapters

against the same layer with one adapter for the whole batch (``lora_forward``/``lora_backward``).
Rounds alternate between the three, so a busy machine slows all alike; medians are printed with
the ratio to the single adapter. ``--quick`` runs a tiny size once (the tests use it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from minilora.fast import mixed_lora as gather
from minilora.fast.runtime import blas_threads
from minilora.functional import mixed_lora as loop
from minilora.functional.linear import linear_backward, linear_forward
from minilora.functional.lora import lora_backward, lora_forward


def layer_step(x, W, adapters, rows, impl) -> None:
    """Forward and backward of h = x Wᵀ + mixed low-rank term (the base path included)."""
    h, base_cache = linear_forward(x, W, None)
    h_lr, cache = impl.mixed_lowrank_forward(x, adapters, rows)
    dout = h + h_lr  # stands for the gradient from above (same shape)
    dx_lr, _ = impl.mixed_lowrank_backward(dout, cache)
    dx, _ = linear_backward(dout, base_cache, need={"x"})
    dx + dx_lr


def single_step(x, W, adapter) -> None:
    A, B, s = adapter
    h, cache = lora_forward(x, W, None, A, B, s)
    lora_backward(h, cache)


def measure(d: int, n_rows: int, T: int, r: int, Ks, rounds: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    x = rng.standard_normal((n_rows, T, d)).astype(np.float32)
    out = []
    for K in Ks:
        ads = [((rng.standard_normal((r, d)) / np.sqrt(d)).astype(np.float32),
                (0.01 * rng.standard_normal((d, r))).astype(np.float32), 2.0) for _ in range(K)]
        rows = tuple(n % K for n in range(n_rows))
        t = {"single": [], "loop": [], "gather": []}
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for name in t:
                t0 = time.perf_counter()
                if name == "single":
                    single_step(x, W, ads[0])
                else:
                    layer_step(x, W, ads, rows, loop if name == "loop" else gather)
                t[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v[1:]) for k, v in t.items()}
        out.append({"K": K, **med, "loop/single": med["loop"] / med["single"],
                    "gather/single": med["gather"] / med["single"]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: steadier on shared cores)")
    p.add_argument("--quick", action="store_true", help="d = 32, 4 rows x 4 tokens, 1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.d, a.rows, a.T, a.rounds = 32, 4, 4, 1
    Ks = [k for k in (1, 2, 4, 8, 16) if k <= a.rows]
    with blas_threads(a.threads):
        rows = measure(a.d, a.rows, a.T, a.r, Ks, a.rounds)
    print(f"layer d = {a.d}, {a.rows} rows x {a.T} tokens, r = {a.r}: forward + backward, median of {a.rounds}, "
          f"{a.threads} BLAS thread(s)")
    print(f"{'K':>3} {'single (ms)':>12} {'loop (ms)':>10} {'gather (ms)':>12} {'loop/single':>12} {'gather/single':>14}")
    for r in rows:
        print(f"{r['K']:>3} {1e3 * r['single']:>12.3f} {1e3 * r['loop']:>10.3f} {1e3 * r['gather']:>12.3f} "
              f"{r['loop/single']:>12.2f} {r['gather/single']:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
