"""``minilora gradcheck``: every hand-written backward against finite differences, and the whole
models against PyTorch/PEFT when they are installed.

    minilora gradcheck [--full] [--no-torch]

Four tables, each row ``component | array | relative error | tolerance | pass/fail``:

1. layer pairs: each ``*_backward`` against central differences of ``Σ forward(...) ⊙ dout``;
2. whole models (MLP, GPT; full fine-tuning and LoRA): every trainable gradient of the loss;
3. PyTorch/PEFT: forward, loss, gradients and AdamW steps of the same model rebuilt in PyTorch;
4. adapter files: minilora → ``PeftModel.from_pretrained``, PEFT ``save_pretrained`` → minilora,
   and merged weights vs ``merge_and_unload``.

The exit status is 1 if any row fails. Default shapes take seconds; ``--full`` uses larger ones and
checks every entry of every array.

The functions are looked up on their modules at call time (``lora.lora_backward``, not a copy
taken at import), so a test that monkeypatches one term of a backward sees this report fail.
"""
from __future__ import annotations

import tempfile
import time

import numpy as np

from .. import backend, gradcheck
from ..crosscheck import ALL_LINEARS, gpt_for_checks, perturb_lora_B
from ..functional import (
    activations,
    attention,
    embedding,
    layernorm,
    linear,
    lora,
    losses,
)
from ..gradcheck import CheckResult

TOLERANCE = gradcheck.TOLERANCE  # float64 finite differences, h = 1e-6


def _normal(gen, *shape):
    return gen.standard_normal(shape)  # float64 NumPy: finite differences need float64


# ----------------------------------------------------------------------------- layer pairs


def pair_checks(full: bool = False, seed: int = 0) -> list:
    """Finite-difference check of every forward/backward pair in ``minilora.functional``."""
    gen = backend.rng(seed)
    N, d_in, d_out, r = (16, 32, 24, 4) if full else (4, 5, 3, 2)
    B, H, T, hd, V = (2, 4, 8, 8, 20) if full else (2, 2, 4, 3, 7)
    rows = []

    def check(name, forward, backward, inputs, wrt=None):
        # forward/backward are lambdas that look the function up on its module when called, so a
        # monkeypatched backward is the one checked
        rows.extend(gradcheck.check_pair(forward, backward, inputs, wrt=wrt, seed=seed, name=name))

    x = _normal(gen, N, d_in)
    W, b = _normal(gen, d_out, d_in), _normal(gen, d_out)
    A, Bm = _normal(gen, r, d_in), _normal(gen, d_out, r)  # B ≠ 0, or dA would be 0 and trivially right
    mask = backend.dropout_mask(gen, (N, d_in), 0.25, "float64")

    check("linear", lambda x, W, b: linear.linear_forward(x, W, b),
          lambda d, c: linear.linear_backward(d, c), {"x": x, "W": W, "b": b})
    for label, m in (("lora", None), ("lora+mask", mask)):
        check(label, lambda x, A, B, m=m: lora.lora_forward(x, W, b, A, B, 1.5, m),
              lambda d, c: lora.lora_backward(d, c), {"x": x.copy(), "A": A.copy(), "B": Bm.copy()})

    z = _normal(gen, N, d_out)
    z += np.where(z >= 0, 0.1, -0.1)  # keep ReLU's kink out of reach of ±h
    check("relu", lambda x: activations.relu_forward(x), lambda d, c: activations.relu_backward(d, c),
          {"x": z})
    check("gelu", lambda x: activations.gelu_forward(x), lambda d, c: activations.gelu_backward(d, c),
          {"x": 2.0 * _normal(gen, N, d_out)})
    y = gen.integers(0, d_out, N)
    check("cross_entropy", lambda x: losses.softmax_cross_entropy_forward(x, y),
          lambda d, c: losses.softmax_cross_entropy_backward(d, c), {"x": _normal(gen, N, d_out)})
    target = _normal(gen, N, d_out)
    check("mse", lambda x: losses.mse_forward(x, target), lambda d, c: losses.mse_backward(d, c),
          {"x": _normal(gen, N, d_out)})

    check("layernorm", lambda x, gamma, beta: layernorm.layernorm_forward(x, gamma, beta),
          lambda d, c: layernorm.layernorm_backward(d, c),
          {"x": _normal(gen, B, T, d_in), "gamma": 1.0 + 0.1 * _normal(gen, d_in), "beta": _normal(gen, d_in)})
    check("attention", lambda q, k, v: attention.attention_forward(q, k, v),
          lambda d, c: attention.attention_backward(d, c),
          {"q": _normal(gen, B, H, T, hd), "k": _normal(gen, B, H, T, hd), "v": _normal(gen, B, H, T, hd)},
          wrt=["q", "k", "v"])
    ids = gen.integers(0, V, (B, T))
    ids[0, :2] = 1  # a repeated id: its gradients must add up
    check("embedding", lambda W: embedding.embedding_forward(ids, W),
          lambda d, c: embedding.embedding_backward(d, c), {"W": _normal(gen, V, hd)}, wrt=["W"])
    check("position", lambda P: embedding.position_forward(P, T),
          lambda d, c: embedding.position_backward(d, c), {"P": _normal(gen, T + 2, hd)}, wrt=["P"])
    return rows


# ----------------------------------------------------------------------------- whole models


def model_checks(full: bool = False, seed: int = 0) -> list:
    """Finite-difference check of every trainable gradient of whole models on one batch."""
    from ..nn import MLP

    gen = backend.rng(seed)
    entries = None if full else 40
    sizes, N = ((32, 48, 24, 10), 16) if full else ((6, 8, 4), 5)
    x, y = _normal(gen, N, sizes[0]), gen.integers(0, sizes[-1], N)
    rows = []

    def check(name, model, x, y, loss="cross_entropy"):
        rows.extend(gradcheck.check_model(model, x, y, loss=loss, max_entries=entries, seed=seed, name=name))

    check("MLP full", MLP(sizes, "gelu", seed=seed, dtype="float64"), x, y)
    m = MLP(sizes, "relu", seed=seed, dtype="float64").add_lora(r=2, alpha=4)
    check("MLP lora(fc*)", perturb_lora_B(m, seed), x, y)
    m = MLP(sizes, "gelu", seed=seed, dtype="float64").add_lora(r=2, alpha=4, rslora=True)
    check("MLP lora(fc*) mse", perturb_lora_B(m, seed), x, _normal(gen, N, sizes[-1]), loss="mse")

    entries = 100 if full else 10  # random entries per array; all 25k of a GPT would take minutes
    gpt, (B, T) = gpt_for_checks(full, seed)  # float64, std 0.5, key bias frozen (see there)
    V = gpt.config.vocab_size
    ids, y = gen.integers(0, V, (B, T)), gen.integers(0, V, (B, T))
    check("GPT full", gpt, ids, y)
    gpt = gpt_for_checks(full, seed)[0].add_lora(["q", "v"], r=2, alpha=4)
    check("GPT lora(q,v)", perturb_lora_B(gpt, seed), ids, y)
    gpt = gpt_for_checks(full, seed)[0].add_lora(ALL_LINEARS, r=2, alpha=4, rslora=True)
    check("GPT lora(all)", perturb_lora_B(gpt, seed), ids, y)
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


def main(full: bool = False, torch: bool = True) -> int:
    """Run every check, print the tables; 0 if all pass, 1 otherwise."""
    print("minilora gradcheck" + (" --full" if full else "")
          + ": relative error ‖a − n‖ / max(‖a‖, ‖n‖) in float64")
    all_rows = []
    t = time.perf_counter()
    rows = pair_checks(full)
    print(_section("Layer pairs vs central differences (h = 1e-6)", rows, time.perf_counter() - t))
    all_rows += rows

    t = time.perf_counter()
    rows = model_checks(full)
    print(_section("Whole models vs central differences (loss of one batch)", rows, time.perf_counter() - t))
    all_rows += rows

    if not torch:
        print("\nPyTorch/PEFT comparison skipped: --no-torch")
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
