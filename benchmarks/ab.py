"""Two checkouts of minilora, one interleaved run: is B as fast as A, step for step?

    python benchmarks/ab.py --a /path/to/old/checkout --b .          # old vs this tree
    python benchmarks/ab.py --a . --b . --reference                  # + B on its reference pairs
    python benchmarks/ab.py --a . --b . --reference-names gelu       # + B with only GELU's reference

Each round times one training step (forward, loss, backward, AdamW) of every implementation of a
(configuration, variant), in an order that rotates from round to round; the machine's load
drifts, so ratios are taken inside a round and their median reported (docs/performance.md).
The configurations and variants are benchmarks/bench.py's. ``--reference`` adds a third column:
B with every pair and the AdamW update on the readable reference (``minilora.fast.reference()``).

Each checkout's ``minilora`` package is loaded under its own module name, so both live in one
process and share one BLAS; a checkout older than the fast layer (no ``minilora/fast``) is run
with the backward API it has.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as bench.py: sleeping BLAS threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS, R, ALPHA, TINY, _cpu_name, blas_kernels, data, loss_name  # noqa: E402


def load(checkout: str, name: str):
    """Import ``<checkout>/minilora`` as the top-level module ``name``."""
    root = Path(checkout).resolve() / "minilora"
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Side:
    """One checkout: builds the benchmark's models and runs their steps."""

    def __init__(self, pkg, label: str, reference=False):
        self.pkg, self.label, self.reference = pkg, label, reference  # True, or a list of names
        block_backward = inspect.signature(pkg.nn.Block.backward).parameters
        self.old_api = "need_dx" in block_backward  # before plan_backward: a need_dx argument

    def model(self, cfg, variant, seed=0):
        pkg = self.pkg
        if cfg.kind == "mlp":
            model = pkg.MLP(cfg.sizes, activation="relu", seed=seed)
        else:
            c = pkg.GPTConfig(vocab_size=2, n_ctx=cfg.T, n_layer=1, n_head=cfg.H, n_embd=cfg.C)
            model = pkg.nn.Block(c, seed=seed)
            model.set_paths()
            if not self.old_api:
                model.need_dx = False  # the block's input is data
        if variant != "full":
            pkg.add_lora(model, cfg.targets(variant), r=R, alpha=ALPHA, seed=seed)
        return model

    def step_fn(self, cfg, variant):
        pkg = self.pkg
        model = self.model(cfg, variant)
        opt = pkg.AdamW(model, lr=1e-3)
        x, y = data(cfg)
        loss_forward, loss_backward = pkg.functional.losses.LOSSES[loss_name(cfg)]
        old_block = self.old_api and cfg.kind == "block"
        names = self.reference if isinstance(self.reference, list) else []
        switch = (lambda: pkg.fast.reference(*names)) if self.reference else contextlib.nullcontext

        def step():
            with switch():
                value, cache = loss_forward(model.forward(x), y)
                dout, _ = loss_backward(1.0, cache)
                if old_block:
                    model.backward(dout, need_dx=False)
                else:
                    model.backward(dout)
                opt.step()
        return step


def measure(sides, cfg, variant, rounds, warmup):
    steps = [s.step_fn(cfg, variant) for s in sides]
    for _ in range(warmup):
        for f in steps:
            f()
    times = [[] for _ in sides]
    for r in range(rounds):
        order = list(range(len(sides)))
        order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
        for i in order:
            t0 = time.perf_counter()
            steps[i]()
            times[i].append(time.perf_counter() - t0)
    ms = [statistics.median(t) * 1e3 for t in times]
    ratios = [statistics.median(b / a for a, b in zip(times[0], times[1]))]  # B / A
    if len(times) > 2:
        ratios.append(statistics.median(r / b for b, r in zip(times[1], times[2])))  # ref / B
    return ms, ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="checkout A (the baseline)")
    p.add_argument("--b", default=".", help="checkout B (default: this tree)")
    p.add_argument("--reference", action="store_true", help="also time B on its reference pairs")
    p.add_argument("--reference-names", default=None,
                   help="comma-separated: the third column runs only these on the reference "
                        "(e.g. gelu; names from minilora.fast.USE_FAST); implies --reference")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke run)")
    p.add_argument("--configs", default=None, help="comma-separated indices into the list")
    args = p.parse_args(argv)
    sides = [Side(load(args.a, "minilora_a"), "A"), Side(load(args.b, "minilora_b"), "B")]
    if args.reference_names:
        args.reference = True
    if args.reference:
        names = args.reference_names.split(",") if args.reference_names else True
        sides.append(Side(sys.modules["minilora_b"], "B reference", reference=names))
    configs = TINY if args.tiny else CONFIGS
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    from threadpoolctl import threadpool_info

    print(f"CPU: {_cpu_name()}; {blas_kernels({'threadpools': threadpool_info()})}; "
          f"numpy {np.__version__}; A = {args.a}, B = {args.b}; "
          + (f"reference column: {args.reference_names}; " if args.reference_names else "") +
          f"{args.rounds} rounds, medians of per-round ratios")
    head = "| configuration | variant | A ms | B ms | B / A |"
    if args.reference:
        head += " B ref ms | ref / B |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for cfg in configs:
        for variant in cfg.variants:
            ms, ratios = measure(sides, cfg, variant, args.rounds, args.warmup)
            row = f"| {cfg.name} | {variant} | {ms[0]:.2f} | {ms[1]:.2f} | {ratios[0]:.3f} |"
            if args.reference:
                row += f" {ms[2]:.2f} | {ratios[1]:.3f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
