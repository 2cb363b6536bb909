"""``minilora gradcheck``: every hand-written backward against finite differences, and the whole
models against PyTorch/PEFT when they are installed.

    minilora gradcheck [--full] [--no-torch] [--device cpu|cuda]

Four tables, each row ``component | array | relative error | tolerance | pass/fail``:

1. layer pairs: each ``*_backward`` against central differences of ``Σ forward(...) ⊙ dout``,
   the reference pair and its fast twin (rows ``gelu`` and ``gelu (fast)``);
2. whole models (MLP, GPT; full fine-tuning and LoRA): every trainable gradient of the loss, on
   the default path and on the reference pairs (rows ``<case> (reference)``);
3. PyTorch/PEFT: forward, loss, gradients and AdamW steps of the same model rebuilt in PyTorch;
4. adapter files: minilora → ``PeftModel.from_pretrained``, PEFT ``save_pretrained`` → minilora,
   and merged weights vs ``merge_and_unload``.

The exit status is 1 if any row fails. Default shapes take seconds; ``--full`` uses larger ones and
checks every entry of every array. ``--device cuda`` runs tables 1 and 2 in float64 on CuPy: the
inputs and models are drawn on the host exactly as on the CPU, then moved, and every finite
difference perturbs the arrays where they live (tables 3 and 4 compare CPU models with PyTorch on
the CPU, so they are skipped there: run them without ``--device``).

The pairs are looked up at call time, not copied at import: in ``minilora.fast.PAIRS`` for the
layers with a fast twin, on their ``minilora.functional`` module for the others. So a test that
plants one wrong term in a backward sees this report fail. The models come from
``minilora.cases``; nothing here imports torch unless the PyTorch section runs.
"""
from __future__ import annotations

import contextlib
import tempfile
import time

import numpy as np

from .. import backend, cases, fast, gradcheck
from ..functional import embedding, losses
from ..gradcheck import CheckResult
from ..nn import GPT

TOLERANCE = gradcheck.TOLERANCE  # float64 finite differences, h = 1e-6


def _normal(gen, *shape):
    return gen.standard_normal(shape)  # float64 NumPy: finite differences need float64


def _moved(arrays: dict, device) -> dict:
    """The same arrays on ``device`` (a copy there; the arrays themselves where they already are)."""
    return {k: backend.move(v, device) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- layer pairs


def pair_checks(full: bool = False, seed: int = 0, device="cpu") -> list:
    """Finite-difference check of every forward/backward pair.

    A layer with a fast twin is checked in both columns of ``minilora.fast.PAIRS``: the
    reference (rows ``gelu``) and the fast pair (rows ``gelu (fast)``), on the same inputs. The
    pairs without a twin (losses, embeddings) are checked once, from ``minilora.functional``.
    Every input is drawn on the host (float64) and moved to ``device`` ("cpu", "cuda" or a
    namespace) before its check, so every device sees the same numbers.
    """
    gen = backend.rng(seed)
    N, d_in, d_out, r = (16, 32, 24, 4) if full else (4, 5, 3, 2)
    B, H, T, hd, V = (2, 4, 8, 8, 20) if full else (2, 2, 4, 3, 7)
    rows = []

    def check(name, forward, backward, inputs, wrt=None):
        # forward/backward are lambdas that look the function up when called (on its module, for
        # the pairs without a twin), so a monkeypatched backward is the one checked
        rows.extend(gradcheck.check_pair(forward, backward, _moved(inputs, device), wrt=wrt, seed=seed,
                                         name=name))

    def check_both(name, pair, forward, inputs, wrt=None):
        # forward(f, **inputs) calls the pair's forward f with this case's fixed arguments; each
        # column is read from fast.PAIRS when called, so a planted pair is the one checked
        for column, label in ((0, name), (1, f"{name} (fast)")):
            check(label, lambda c=column, **kw: forward(fast.PAIRS[pair][c][0], **kw),
                  lambda d, cache, c=column: fast.PAIRS[pair][c][1](d, cache), inputs, wrt)

    x = _normal(gen, N, d_in)
    W, b = _normal(gen, d_out, d_in), _normal(gen, d_out)
    A, Bm = _normal(gen, r, d_in), _normal(gen, d_out, r)  # B ≠ 0, or dA would be 0 and trivially right
    mask = backend.dropout_mask(gen, (N, d_in), 0.25, "float64", device)
    W, b = backend.from_numpy(W, device), backend.from_numpy(b, device)  # fixed inputs of the lora rows

    check_both("linear", "linear", lambda f, x, W, b: f(x, W, b), {"x": x, "W": W, "b": b})
    for label, m in (("lora", None), ("lora+mask", mask)):
        check_both(label, "lora", lambda f, x, A, B, m=m: f(x, W, b, A, B, 1.5, m),
                   {"x": x.copy(), "A": A.copy(), "B": Bm.copy()})

    # a mixed-adapter batch: rows 0, 3 through adapter 0, rows 1, 2 through adapter 1 (another
    # rank and scale); the gradients come back one dict per adapter, flattened to A0, B0, A1, B1
    A1, B1 = _normal(gen, r + 1, d_in), _normal(gen, d_out, r + 1)
    for column, label in ((0, "mixed_lora"), (1, "mixed_lora (fast)")):
        def mixed_forward(x, A0, B0, A1, B1, c=column):
            return fast.PAIRS["mixed_lora"][c][0](x, [(A0, B0, 1.5), (A1, B1, 0.5)], (0, 1, 1, 0))

        def mixed_backward(d, cache, c=column):
            dx, grads = fast.PAIRS["mixed_lora"][c][1](d, cache)
            return dx, {f"{k}{i}": g for i, gk in enumerate(grads) for k, g in gk.items()}

        check(label, mixed_forward, mixed_backward,
              {"x": x.copy(), "A0": A.copy(), "B0": Bm.copy(), "A1": A1.copy(), "B1": B1.copy()})

    z = _normal(gen, N, d_out)
    z += np.where(z >= 0, 0.1, -0.1)  # keep ReLU's kink out of reach of ±h
    check_both("relu", "relu", lambda f, x: f(x), {"x": z})
    check_both("gelu", "gelu", lambda f, x: f(x), {"x": 2.0 * _normal(gen, N, d_out)})
    y = backend.from_numpy(gen.integers(0, d_out, N), device)
    check("cross_entropy", lambda x: losses.softmax_cross_entropy_forward(x, y),
          lambda d, c: losses.softmax_cross_entropy_backward(d, c), {"x": _normal(gen, N, d_out)})
    target = backend.from_numpy(_normal(gen, N, d_out), device)
    check("mse", lambda x: losses.mse_forward(x, target), lambda d, c: losses.mse_backward(d, c),
          {"x": _normal(gen, N, d_out)})

    check_both("layernorm", "layernorm", lambda f, x, gamma, beta: f(x, gamma, beta),
               {"x": _normal(gen, B, T, d_in), "gamma": 1.0 + 0.1 * _normal(gen, d_in), "beta": _normal(gen, d_in)})
    check_both("attention", "attention", lambda f, q, k, v: f(q, k, v),
               {"q": _normal(gen, B, H, T, hd), "k": _normal(gen, B, H, T, hd), "v": _normal(gen, B, H, T, hd)},
               wrt=["q", "k", "v"])
    ids = gen.integers(0, V, (B, T))
    ids[0, :2] = 1  # a repeated id: its gradients must add up
    ids = backend.from_numpy(ids, device)
    check("embedding", lambda W: embedding.embedding_forward(ids, W),
          lambda d, c: embedding.embedding_backward(d, c), {"W": _normal(gen, V, hd)}, wrt=["W"])
    check("position", lambda P: embedding.position_forward(P, T),
          lambda d, c: embedding.position_backward(d, c), {"P": _normal(gen, T + 2, hd)}, wrt=["P"])
    return rows


# ----------------------------------------------------------------------------- whole models


def model_checks(full: bool = False, seed: int = 0, device="cpu") -> list:
    """Finite-difference check of every trainable gradient of whole models on one batch.

    Every case of ``minilora.cases.cases`` (dropout masks aside: the check runs in eval mode),
    first on the default path (``minilora.fast.USE_FAST``: the fast pairs), then once more on the
    reference pairs (``with minilora.fast.reference():``, rows ``<case> (reference)``). Each
    case is built on the host and moved to ``device`` with its batch.
    """
    rows = []
    for suffix, pairs in (("", contextlib.nullcontext), (" (reference)", fast.reference)):
        for name, build in cases.cases(full, seed, masks=False).items():
            model, x, y, loss = build()
            model.to(device)
            x, y = backend.from_numpy(x, device), backend.from_numpy(y, device)
            # random entries per array; all 25k of a GPT would take minutes
            entries = (100 if full else 10) if isinstance(model, GPT) else (None if full else 40)
            with pairs():
                rows.extend(gradcheck.check_model(model, x, y, loss=loss, max_entries=entries, seed=seed,
                                                  name=name + suffix))
    return rows


# ----------------------------------------------------------------------------- report


def condense_adamw(rows: list) -> list:
    """One row per case for the AdamW tracking: its worst array, or its first failing one (the
    per-array rows are in ``crosscheck.compare_with_torch``'s output)."""
    order, groups = [], {}
    for r in rows:
        if r.array.startswith("adamw"):
            key = (r.component, r.array.split(" ", 1)[0])  # ("gpt full", "adamw3")
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(r)
        else:
            order.append(r)
    out = []
    for item in order:
        if isinstance(item, CheckResult):
            out.append(item)
            continue
        group = groups[item]
        failing = [r for r in group if not r.passed]
        worst = failing[0] if failing else max(group, key=lambda r: r.rel_error)
        name = worst.array.split(" ", 1)[1]
        out.append(worst._replace(array=f"{item[1]} ({len(group)} arrays, worst: {name})"))
    return out


def _section(title: str, rows: list, seconds: float) -> str:
    bad = sum(not r.passed for r in rows)
    return (f"\n{title}  ({len(rows)} checks, {bad} failed, {seconds:.1f} s)\n"
            + gradcheck.format_table(rows))


def main(full: bool = False, torch: bool = True, device="cpu") -> int:
    """Run every check, print the tables; 0 if all pass, 1 otherwise. ``device``: where the
    finite-difference tables run ("cpu", "cuda" or an array namespace)."""
    xp = backend.resolve_device(device)  # a clear error (what to install) before any work
    on_host = xp is np
    print("minilora gradcheck" + (" --full" if full else "") + ("" if on_host else f" --device {device}")
          + ": relative error ‖a − n‖ / max(‖a‖, ‖n‖) in float64"
          + ("" if on_host else f", on {xp.__name__}"))
    all_rows = []
    t = time.perf_counter()
    rows = pair_checks(full, device=xp)
    print(_section("Layer pairs vs central differences (h = 1e-6)", rows, time.perf_counter() - t))
    all_rows += rows

    t = time.perf_counter()
    rows = model_checks(full, device=xp)
    print(_section("Whole models vs central differences (loss of one batch)", rows, time.perf_counter() - t))
    all_rows += rows

    if not torch:
        print("\nPyTorch/PEFT comparison skipped: --no-torch")
    elif not on_host:
        print(f"\nPyTorch/PEFT comparison skipped: it compares CPU models (run it without --device {device})")
    else:
        from .. import crosscheck

        ok, why = crosscheck.available()
        if not ok:
            print(f"\nPyTorch/PEFT comparison skipped: {why}")
        else:
            t = time.perf_counter()
            rows = crosscheck.suite(full)
            print(_section("Same models in PyTorch/PEFT (float64; AdamW rows: worst array per case)",
                           condense_adamw(rows), time.perf_counter() - t))
            all_rows += rows
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as directory:
                rows = crosscheck.interop_suite(directory)
            print(_section("Adapter files between minilora and PEFT (float32)", rows, time.perf_counter() - t))
            all_rows += rows

    bad = [r for r in all_rows if not r.passed]
    print(f"\n{len(all_rows)} checks, {len(bad)} failed" + (":" if bad else "; all pass"))
    for r in bad:
        print(f"  FAIL {r.component} {r.array}: {r.rel_error:.2e} > {r.tolerance:.0e}")
    return 1 if bad else 0
