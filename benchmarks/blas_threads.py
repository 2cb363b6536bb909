"""How many BLAS threads should a training step use? One vs BLAS's own count, idle and busy.

    python benchmarks/blas_threads.py                 # step times, 1 vs all BLAS threads, idle
    python benchmarks/blas_threads.py --load 1        # ... with 1 busy process beside it
    python benchmarks/blas_threads.py --demos         # + `minilora demo` wall times, auto vs all
    python benchmarks/blas_threads.py --demos mlp,adapters --load 1 --no-steps

Part 1 times ``train_step`` of models from the demos and the benchmark, each on one BLAS thread
and on all of them, interleaved round by round (the ratio is taken inside a round), and prints
the largest product's multiply-adds next to the ratio: that column is what
``minilora.fast.runtime.BLAS_THREADED_MIN_MACS`` is chosen from. Part 2 (``--demos``) runs the
``minilora demo`` commands as subprocesses with ``--blas-threads auto`` (the default: ``fit``
chooses by size) and ``--blas-threads all`` (BLAS's own count: what minilora did before).
``--load N`` starts N processes that keep a core busy for the whole run (another user's job):
``--load-kind blas`` (default) NumPy products on BLAS's own threads, ``python`` pure Python.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def _spin(stop, kind):
    """Another user's job: pure Python arithmetic, or NumPy products on BLAS's own threads
    (another training run, a test suite: the load that hurts threaded BLAS most)."""
    if kind == "blas":
        a = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)
        while not stop.is_set():
            for _ in range(20):
                a @ a
        return
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x += 1


def models():
    """(name, model, x, y, loss) for the shapes the demos and benchmark train."""
    import minilora as ml
    from minilora.nn import Block

    rng = np.random.default_rng(0)
    out = []
    for name, sizes, n in [("MLP demo 64-256-256-10 b64", (64, 256, 256, 10), 64),
                           ("MLP 784-512-512-10 b256 (bench)", (784, 512, 512, 10), 256)]:
        m = ml.MLP(sizes, activation="relu", seed=0)
        x = rng.standard_normal((n, sizes[0])).astype(np.float32)
        out.append((name, m, x, rng.integers(0, 10, n), "cross_entropy"))
    for name, preset, b in [("GPT demo tiny (quick) b16", "tiny", 16), ("GPT demo small b32", "small", 32)]:
        c = ml.GPTConfig.preset(preset)
        m = ml.GPT(c, seed=0)
        x = rng.integers(0, c.vocab_size, (b, c.n_ctx))
        out.append((name, m, x, rng.integers(0, c.vocab_size, (b, c.n_ctx)), "cross_entropy"))
    for name, C, H, T, b in [("block d128 h4 T64 b8", 128, 4, 64, 8), ("block d256 h4 T128 b16 (bench)", 256, 4, 128, 16)]:
        c = ml.GPTConfig(vocab_size=2, n_ctx=T, n_layer=1, n_head=H, n_embd=C)
        m = Block(c, seed=0)
        m.set_paths()
        m.need_dx = False
        x = rng.standard_normal((b, T, C)).astype(np.float32)
        out.append((name, m, x, rng.standard_normal((b, T, C)).astype(np.float32), "mse"))
    return out


def step_table(rounds: int):
    import minilora as ml
    from minilora.train import largest_product

    print("| model | largest product (MACs) | 1 thread ms | all threads ms | 1 / all |")
    print("|---|---:|---:|---:|---:|")
    for name, model, x, y, loss in models():
        opt = ml.AdamW(model, lr=1e-4)
        step = lambda: ml.train_step(model, opt, x, y, loss)  # noqa: E731
        for _ in range(3):
            step()
        t1, tall = [], []
        for r in range(rounds):
            for which in ((1, None) if r % 2 == 0 else (None, 1)):
                with ml.blas_threads(which):
                    t0 = time.perf_counter()
                    step()
                    (t1 if which == 1 else tall).append(time.perf_counter() - t0)
        ratio = statistics.median(a / b for a, b in zip(t1, tall))
        print(f"| {name} | {largest_product(model, x):,} | {statistics.median(t1) * 1e3:.2f} | "
              f"{statistics.median(tall) * 1e3:.2f} | {ratio:.2f} |", flush=True)


DEMOS = {"mlp": ["demo", "--no-progress"], "adapters": ["demo", "adapters", "--no-progress"],
         "gpt": ["demo", "gpt", "--no-progress", "--no-cache"]}


def demo_table(which, quick: bool):
    print("| command | --blas-threads auto s | --blas-threads all s | all / auto |")
    print("|---|---:|---:|---:|")
    for name in which:
        args = DEMOS[name]
        args = args + (["--quick"] if quick else [])
        secs = {}
        for mode in ("auto", "all"):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "minilora", *args, "--blas-threads", mode],
                           check=True, stdout=subprocess.DEVNULL)
            secs[mode] = time.perf_counter() - t0
        print(f"| minilora {' '.join(args)} | {secs['auto']:.1f} | {secs['all']:.1f} | "
              f"{secs['all'] / secs['auto']:.2f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--load", type=int, default=0, help="busy processes running beside the measurement")
    p.add_argument("--load-kind", choices=("python", "blas"), default="blas",
                   help="what the busy processes run (default blas: NumPy products)")
    p.add_argument("--demos", nargs="?", const="mlp,adapters,gpt", default=None,
                   help="also time these demo commands (default mlp,adapters,gpt)")
    p.add_argument("--no-steps", action="store_true", help="skip the step-time table")
    p.add_argument("--quick-demos", action="store_true", help="the demos' --quick sizes")
    args = p.parse_args(argv)
    from minilora.fast import runtime
    from threadpoolctl import threadpool_info

    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"cores {len(os.sched_getaffinity(0))}, BLAS threads {blas}, busy processes beside: {args.load} ({args.load_kind}), "
          f"BLAS_THREADED_MIN_MACS {runtime.BLAS_THREADED_MIN_MACS:,}, "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}")
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop, args.load_kind), daemon=True) for _ in range(args.load)]
    for s in spinners:
        s.start()
    try:
        if not args.no_steps:
            step_table(args.rounds)
        if args.demos or args.quick_demos:
            demo_table((args.demos or "mlp,adapters,gpt").split(","), args.quick_demos)
    finally:
        stop.set()
        for s in spinners:
            s.join()


if __name__ == "__main__":
    main()
