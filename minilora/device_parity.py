"""Host against device: the same seed, the same code, the same numbers (to float32 rounding).

    rows = parity("cuda")                  # one Row per (item, quantity); NumPy is the reference
    print(format_table(summary(rows)))     # one line per item: its worst error of each kind
    ok = all(r.passed for r in rows)

Every item is computed twice from the same host-drawn float32 inputs: with NumPy, and with the
same functions on ``device`` (the inputs moved there first). Four kinds of quantity, each with
its tolerance on ``max |device − numpy| / max |numpy|`` (the largest difference, relative to the
largest reference value, so near-zero entries do not blow it up):

==========  =========  =====================================================================
kind        tolerance  what is compared
==========  =========  =====================================================================
init        0          every parameter of a model built with ``seed=0`` on each: bit for bit
                       (weights are drawn on the host and moved: ``backend.normal``)
forward     1e-5       a pair's output, a model's logits and loss
gradient    1e-4       every array a backward returns (dx and each parameter's gradient)
adamw       1e-3       the displacement θ_after − θ_before of 3 AdamW steps (lr 1e-2, weight
                       decay 0.01), per trainable array, and an update's m and v
==========  =========  =====================================================================

The tolerances are float32's: cuBLAS and OpenBLAS sum the same products in other orders and a
GPU's ``tanh``/``exp`` may round the last bit differently (measured differences are a few ε ≈ 1e-7;
a wrong term gives ~1). The AdamW displacement is compared rather than θ, so that a lost weight
decay (1% of a step here) cannot hide under θ's size.

Items: every pair of ``minilora.fast.PAIRS`` in both columns (``gelu`` the reference, ``gelu
(fast)`` the fast layer, each looked up at call time so that a planted bug is seen), the pairs
without a twin (losses, embeddings, low-rank, RMSNorm, RoPE, SiLU, SwiGLU, GQA, repeat_kv), the
AdamW update in both columns, and whole models — MLP, GPT and a tiny Llama, each fully trained and
with LoRA (B given random values so that dA ≠ 0) — on the fast path and on the reference pairs;
on CuPy also the fused kernels of ``minilora/fast/cuda.py`` (items ``... (fused)``).

On a machine without a GPU, ``device`` can be any other namespace: ``array_api_strict`` checks the
same machinery (moves, comparisons, seeded init) and that no NumPy-only call hides in the math;
``numpy`` itself checks only the machinery (every error is then 0).
"""
from __future__ import annotations

import contextlib
import types
from typing import NamedTuple

import numpy as np

from . import backend, fast
from .fast import cuda
from .functional import embedding, gqa, losses, rmsnorm, rope, swiglu
from .functional import lora as ref_lora
from .nn import GPT, MLP, GPTConfig, Llama, LlamaConfig

TOLERANCE = {"init": 0.0, "forward": 1e-5, "gradient": 1e-4, "adamw": 1e-3}
LR, WEIGHT_DECAY, STEPS = 1e-2, 0.01, 3


class Row(NamedTuple):
    item: str  # "gelu (fast)", "gpt lora(q,v)"
    quantity: str  # "out", "dx", "dA", "init fc1.W", "grad fc1.W", "adamw fc1.W"
    kind: str  # a key of TOLERANCE
    max_rel_error: float  # max |device − numpy| / max |numpy|  (inf: NaN, shape or bit mismatch)
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error <= self.tolerance)


def max_rel_error(device_value, host_value) -> float:
    """max |a − b| / max |b| in float64 on the host; 0 if both are all 0, inf if shapes differ or
    either side is not finite (a NaN must never pass)."""
    a = np.asarray(backend.to_numpy(device_value), dtype=np.float64)
    b = np.asarray(backend.to_numpy(host_value), dtype=np.float64)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("inf")
    diff = float(np.max(np.abs(a - b), initial=0.0))
    scale = float(np.max(np.abs(b), initial=0.0))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def bitwise_error(device_value, host_value) -> float:
    """0 if the two arrays hold the same bits (same dtype and shape), else their max_rel_error
    (or inf when that is 0 but the bits still differ, e.g. −0 against +0)."""
    a, b = backend.to_numpy(device_value), backend.to_numpy(host_value)
    if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
        return 0.0
    return max_rel_error(a, b) or float("inf")


def _row(item, quantity, kind, device_value, host_value) -> Row:
    error = bitwise_error if kind == "init" else max_rel_error
    return Row(item, quantity, kind, error(device_value, host_value), TOLERANCE[kind])


def _moved(arrays: dict, xp) -> dict:
    return {k: v if isinstance(v, (int, float)) else backend.from_numpy(v, xp) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- pairs


def _flat(result):
    """A mixed-batch backward's ``(dx, [grads of adapter 0, ...])`` as ``(dx, {"A0": ..., "B0": ...})``."""
    dx, grads = result
    return dx, {f"{k}{i}": g for i, gk in enumerate(grads) for k, g in gk.items()}


def _pair_cases(seed: int) -> list:
    """``(name, forward(**inputs), backward(dout, cache), inputs, dout)``: float32 host inputs;
    ``dout`` an array like the output, or 1.0 for a loss."""
    g = backend.rng(seed)

    def normal(*shape, std=1.0):
        return (std * g.standard_normal(shape)).astype(np.float32)

    N, d_in, d_out, r = 6, 16, 12, 4
    B, H, Hkv, T, hd, V = 2, 4, 2, 8, 8, 11
    x, W, b = normal(N, d_in), normal(d_out, d_in, std=0.3), normal(d_out)
    A, Bm = normal(r, d_in, std=0.3), normal(d_out, r, std=0.3)
    mask = backend.dropout_mask(g, (N, d_in), 0.25, "float32")
    qkv = {"q": normal(B, H, T, hd), "k": normal(B, H, T, hd), "v": normal(B, H, T, hd)}
    cos, sin = rope.rope_tables(T, hd, 1e5, dtype="float32")
    targets = g.integers(0, d_out, N)
    ignored = targets.copy()
    ignored[:2] = losses.IGNORE  # two positions that must add nothing
    ids = g.integers(0, V, (B, T))
    ids[0, :2] = 1  # a repeated id: its gradients add up

    cases = []

    def add(name, forward, backward, inputs, loss=False):
        cases.append((name, forward, backward, inputs, None if loss else "like_out"))

    def both(name, pair, call, inputs):
        # each column looked up when called: a planted fast.PAIRS entry is the one compared
        for column, label in ((0, name), (1, f"{name} (fast)")):
            add(label, lambda c=column, **kw: call(fast.PAIRS[pair][c][0], **kw),
                lambda d, cache, c=column: fast.PAIRS[pair][c][1](d, cache), inputs)

    both("linear", "linear", lambda f, x, W, b: f(x, W, b), {"x": x, "W": W, "b": b})
    both("lora", "lora", lambda f, x, W, b, A, B: f(x, W, b, A, B, 1.5), {"x": x, "W": W, "b": b, "A": A, "B": Bm})
    both("lora+mask", "lora", lambda f, x, W, b, A, B, mask: f(x, W, b, A, B, 1.5, mask),
         {"x": x, "W": W, "b": b, "A": A, "B": Bm, "mask": mask})
    A1, B1 = normal(r + 1, d_in, std=0.3), normal(d_out, r + 1, std=0.3)
    for column, label in ((0, "mixed_lora"), (1, "mixed_lora (fast)")):
        # rows 0, 3, 5 through adapter 0, 1, 4 through adapter 1, row 2 through none; the
        # gradients come back one dict per adapter, flattened to A0, B0, A1, B1
        add(label, lambda x, A0, B0, A1, B1, c=column: fast.PAIRS["mixed_lora"][c][0](
                x, [(A0, B0, 1.5), (A1, B1, 0.5)], (0, 1, -1, 0, 1, 0)),
            lambda d, cache, c=column: _flat(fast.PAIRS["mixed_lora"][c][1](d, cache)),
            {"x": x, "A0": A, "B0": Bm, "A1": A1, "B1": B1})
    both("relu", "relu", lambda f, x: f(x), {"x": normal(N, d_out)})
    both("gelu", "gelu", lambda f, x: f(x), {"x": normal(N, d_out, std=2.0)})
    both("layernorm", "layernorm", lambda f, x, gamma, beta: f(x, gamma, beta),
         {"x": normal(B, T, d_in), "gamma": 1.0 + normal(d_in, std=0.1), "beta": normal(d_in)})
    both("attention", "attention", lambda f, q, k, v: f(q, k, v), dict(qkv))

    add("lowrank+mask", lambda x, A, B, mask: ref_lora.lowrank_forward(x, A, B, 1.5, mask),
        lambda d, c: ref_lora.lowrank_backward(d, c), {"x": x, "A": A, "B": Bm, "mask": mask})
    add("cross_entropy", lambda x, y: losses.softmax_cross_entropy_forward(x, y),
        lambda d, c: losses.softmax_cross_entropy_backward(d, c), {"x": normal(N, d_out), "y": targets}, loss=True)
    add("cross_entropy (ignore)", lambda x, y: losses.masked_cross_entropy_forward(x, y),
        lambda d, c: losses.softmax_cross_entropy_backward(d, c), {"x": normal(N, d_out), "y": ignored}, loss=True)
    add("mse", lambda x, t: losses.mse_forward(x, t), lambda d, c: losses.mse_backward(d, c),
        {"x": normal(N, d_out), "t": normal(N, d_out)}, loss=True)
    add("embedding", lambda ids, W: embedding.embedding_forward(ids, W),
        lambda d, c: embedding.embedding_backward(d, c), {"ids": ids, "W": normal(V, hd)})
    add("position", lambda P: embedding.position_forward(P, T), lambda d, c: embedding.position_backward(d, c),
        {"P": normal(T + 2, hd)})
    add("rmsnorm", lambda x, gamma: rmsnorm.rmsnorm_forward(x, gamma), lambda d, c: rmsnorm.rmsnorm_backward(d, c),
        {"x": normal(B, T, d_in), "gamma": 1.0 + normal(d_in, std=0.1)})
    add("rope", lambda x, cos, sin: rope.rope_forward(x, cos, sin), lambda d, c: rope.rope_backward(d, c),
        {"x": normal(B, H, T, hd), "cos": cos, "sin": sin})
    add("silu", lambda x: swiglu.silu_forward(x), lambda d, c: swiglu.silu_backward(d, c), {"x": normal(N, d_out, std=3.0)})
    add("swiglu", lambda gate, up: swiglu.swiglu_forward(gate, up), lambda d, c: swiglu.swiglu_backward(d, c),
        {"gate": normal(N, d_out, std=2.0), "up": normal(N, d_out)})
    add("gqa_attention", lambda q, k, v: gqa.gqa_attention_forward(q, k, v),
        lambda d, c: gqa.gqa_attention_backward(d, c),
        {"q": normal(B, H, T, hd), "k": normal(B, Hkv, T, hd), "v": normal(B, Hkv, T, hd)})
    add("repeat_kv", lambda k: gqa.repeat_kv_forward(k, H // Hkv), lambda d, c: gqa.repeat_kv_backward(d, c),
        {"k": normal(B, Hkv, T, hd)})
    return cases


def pair_rows(xp, seed: int = 0) -> list:
    """Every pair: output, dx and every gradient its backward returns, NumPy against ``xp``."""
    rows = []
    for name, forward, backward, inputs, dout in _pair_cases(seed):
        results = []
        for side in (np, xp):  # the host first: its dout is moved to the device
            out, cache = forward(**_moved(inputs, side))
            if dout is None:
                d = 1.0
            else:
                d = backend.from_numpy(backend.rng(seed + 1).standard_normal(tuple(out.shape)).astype(np.float32), side)
            dx, grads = backward(d, cache)
            results.append((out, dx, grads))
        (out_h, dx_h, grads_h), (out_d, dx_d, grads_d) = results
        rows.append(_row(name, "out", "forward", out_d, out_h))
        if dx_h is not None or dx_d is not None:
            rows.append(_row(name, "dx", "gradient", dx_d, dx_h) if dx_h is not None and dx_d is not None
                        else Row(name, "dx", "gradient", float("inf"), TOLERANCE["gradient"]))
        for k in sorted(set(grads_h) | set(grads_d)):  # a gradient missing on one side fails
            if k in grads_h and k in grads_d:
                rows.append(_row(name, f"d{k}", "gradient", grads_d[k], grads_h[k]))
            else:
                rows.append(Row(name, f"d{k}", "gradient", float("inf"), TOLERANCE["gradient"]))
    return rows


def update_rows(xp, seed: int = 0) -> list:
    """The AdamW update in both columns of ``fast.UPDATES``: θ's displacement, m and v after
    ``STEPS`` updates with the same gradients."""
    g = backend.rng(seed)
    p0 = g.standard_normal((16, 12)).astype(np.float32)
    gs = [g.standard_normal((16, 12)).astype(np.float32) for _ in range(STEPS)]
    rows = []
    for column, label in ((0, "adamw_update"), (1, "adamw_update (fast)")):
        results = []
        for side in (np, xp):
            p = backend.from_numpy(p0.copy(), side)
            m, v = backend.zeros(p0.shape, "float32", side), backend.zeros(p0.shape, "float32", side)
            for t, grad in enumerate(gs, start=1):
                fast.UPDATES["adamw"][column](p, backend.from_numpy(grad, side), m, v, LR, 0.9, 0.999, 1e-8,
                                              WEIGHT_DECAY, t)
            results.append((backend.to_numpy(p) - p0, m, v))
        (dp_h, m_h, v_h), (dp_d, m_d, v_d) = results
        rows += [_row(label, "θ − θ₀", "adamw", dp_d, dp_h), _row(label, "m", "adamw", m_d, m_h),
                 _row(label, "v", "adamw", v_d, v_h)]
    return rows


# ----------------------------------------------------------------------------- whole models


def _random_B(model, seed: int):
    """Every adapter's B drawn (on the host, seeded) instead of 0, so that dA ≠ 0."""
    g = backend.rng(seed)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            B[...] = backend.from_numpy((0.3 * g.standard_normal(tuple(B.shape))).astype(backend.dtype_name(B)),
                                        backend.namespace(B))
    return model


def model_cases() -> dict:
    """``{name: (build(device) -> model, batch(gen) -> (x, y), loss)}``: tiny float32 models."""
    gpt = GPTConfig(vocab_size=23, n_ctx=16, n_layer=2, n_head=2, n_embd=16)
    llama = LlamaConfig(vocab_size=29, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, hidden=24, n_ctx=16)

    def mlp(device):
        return MLP((16, 32, 32, 10), "gelu", seed=0, device=device)

    def gpt_full(device):  # the key bias's exact gradient is 0: Adam would step by rounding noise
        return GPT(gpt, seed=0, device=device).freeze("*.attn.k.b")

    def llama_full(device):
        return Llama(llama, seed=0, device=device)

    def lora(build, targets, dropout=0.0):
        return lambda device: _random_B(build(device).add_lora(targets, r=4, alpha=8, dropout=dropout, seed=1), 2)

    def features(gen):
        return gen.standard_normal((8, 16)).astype(np.float32), gen.integers(0, 10, 8)

    def tokens(V):
        return lambda gen: (gen.integers(0, V, (2, 8)), gen.integers(0, V, (2, 8)))

    return {
        "mlp full": (mlp, features, "cross_entropy"),
        "mlp lora(all)": (lora(mlp, None), features, "cross_entropy"),
        "mlp lora(all) dropout": (lora(mlp, None, dropout=0.2), features, "cross_entropy"),
        "gpt full": (gpt_full, tokens(23), "cross_entropy"),
        "gpt lora(q,v)": (lora(lambda d: GPT(gpt, seed=0, device=d), ["q", "v"]), tokens(23), "cross_entropy"),
        "llama full": (llama_full, tokens(29), "cross_entropy"),
        "llama lora(q_proj,v_proj)": (lora(llama_full, ["q_proj", "v_proj"]), tokens(29), "cross_entropy"),
    }


def _step(model, x, y, loss):
    """forward, loss, backward: ``(logits, loss value, {name: gradient})``."""
    loss_forward, loss_backward = losses.LOSSES[loss]
    logits = model.forward(x)
    value, cache = loss_forward(logits, y)
    model.backward(loss_backward(1.0, cache)[0])
    return logits, value, model.named_grads()


def model_rows(xp, seed: int = 0, names=None) -> list:
    """Whole models, NumPy against ``xp``: initial parameters (bitwise), logits, loss, every
    trainable gradient, and each trainable array's displacement after ``STEPS`` AdamW steps;
    on the fast path, then on the reference pairs (items ``<name> (reference)``)."""
    from .optim import AdamW  # noqa: PLC0415  (optim builds on fast; imported where used)
    from .train import train_step  # noqa: PLC0415

    rows = []
    for suffix, pairs in (("", contextlib.nullcontext), (" (reference)", fast.reference)):
        for name, (build, batch, loss) in model_cases().items():
            if names is not None and name not in names:
                continue
            item = name + suffix
            x, y = batch(backend.rng(seed))
            models = {}
            with pairs():
                for side in (np, xp):
                    model = build(side)
                    init = {k: backend.to_numpy(p).copy() for k, p in model.named_parameters().items()}
                    xs, ys = backend.from_numpy(x, side), backend.from_numpy(y, side)
                    logits, value, grads = _step(model, xs, ys, loss)
                    before = {k: backend.to_numpy(p).copy() for k, p in model.named_parameters(trainable=True).items()}
                    opt = AdamW(model, lr=LR, weight_decay=WEIGHT_DECAY)
                    opt.step()  # step 1 with the gradients above, then STEPS - 1 more
                    for _ in range(STEPS - 1):
                        train_step(model, opt, xs, ys, loss)
                    moved = {k: backend.to_numpy(p) - before[k] for k, p in model.named_parameters(trainable=True).items()}
                    models[side] = (init, logits, value, grads, moved)
            (init_h, logits_h, value_h, grads_h, moved_h), (init_d, logits_d, value_d, grads_d, moved_d) = (
                models[np], models[xp])
            rows += [_row(item, f"init {k}", "init", init_d[k], init_h[k]) for k in init_h]
            rows.append(_row(item, "logits", "forward", logits_d, logits_h))
            rows.append(_row(item, "loss", "forward", value_d, value_h))
            for k in sorted(set(grads_h) | set(grads_d)):
                rows.append(_row(item, f"grad {k}", "gradient", grads_d[k], grads_h[k]) if k in grads_h and k in grads_d
                            else Row(item, f"grad {k}", "gradient", float("inf"), TOLERANCE["gradient"]))
            rows += [_row(item, f"adamw {k}", "adamw", moved_d[k], moved_h[k]) for k in moved_h]
    return rows


# ----------------------------------------------------------------------------- report


def device_namespace(device):
    """The namespace a parity run compares NumPy with: "cuda" -> CuPy (or the install error),
    "cpu" -> array_api_strict where installed, else NumPy itself; a module is used as given."""
    if isinstance(device, types.ModuleType):
        return device
    if device == "cpu":
        try:
            import array_api_strict  # noqa: PLC0415
        except ImportError:
            return np
        return array_api_strict
    return backend.resolve_device(device)


def fused_rows(xp, seed: int = 0) -> list:
    """On CuPy only: the fused kernels of ``minilora/fast/cuda.py`` (switched on for this call)
    against NumPy — GELU's pair, the AdamW update and the full GPT — as items ``... (fused)``."""
    if not getattr(xp, "__name__", "").startswith("cupy"):
        return []
    saved, cuda.USE_FUSED = cuda.USE_FUSED, True
    try:
        rows = [r for r in pair_rows(xp, seed) + update_rows(xp, seed) if r.item in ("gelu (fast)", "adamw_update (fast)")]
        rows += [r for r in model_rows(xp, seed, ["gpt full"]) if not r.item.endswith("(reference)")]
    finally:
        cuda.USE_FUSED = saved
    return [r._replace(item=f"{r.item} (fused)") for r in rows]


def parity(device="cuda", seed: int = 0, models=None) -> list:
    """Every row: pairs, updates, whole models (``models``: a subset of ``model_cases()`` names),
    and on CuPy the fused kernels."""
    xp = device_namespace(device)
    return pair_rows(xp, seed) + update_rows(xp, seed) + model_rows(xp, seed, models) + fused_rows(xp, seed)


def summary(rows) -> list:
    """One ``Row`` per (item, kind): its worst quantity, or its first failing one."""
    worst = {}
    for r in rows:
        key = (r.item, r.kind)
        old = worst.get(key)
        if old is None or (old.passed and (not r.passed or r.max_rel_error > old.max_rel_error)):
            worst[key] = r
    return list(worst.values())


def format_table(rows) -> str:
    """item | quantity | kind | max rel. error | tolerance | pass/FAIL, a Markdown table."""
    lines = ["| item | quantity | kind | max rel. error | tolerance | result |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.item} | {r.quantity} | {r.kind} | {r.max_rel_error:.2e} | {r.tolerance:.0e} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def to_json(rows) -> list:
    """Rows as JSON-ready dicts (inf written as the string "inf": JSON has no infinity)."""
    return [{**r._asdict(), "max_rel_error": r.max_rel_error if np.isfinite(r.max_rel_error) else "inf",
             "passed": r.passed} for r in rows]


def main(argv=None) -> int:
    """``python -m minilora.device_parity [--device cuda|cpu] [--json FILE]``: the summary table
    (and every row as JSON); exit status 1 on any failure."""
    import argparse  # noqa: PLC0415
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m minilora.device_parity", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    p.add_argument("--json", default=None, help="write every row here")
    args = p.parse_args(argv)
    xp = device_namespace(args.device)
    rows = []
    sections = [lambda: pair_rows(xp), lambda: update_rows(xp)]
    sections += [lambda name=name: model_rows(xp, names=[name]) for name in model_cases()]
    sections.append(lambda: fused_rows(xp))
    for i, section in enumerate(sections, start=1):
        rows += section()
        if args.json:  # rewritten after every section: a run stopped early keeps what it compared
            with open(args.json + ".tmp", "w") as f:
                json.dump({"device": args.device, "namespace": xp.__name__, "tolerance": TOLERANCE,
                           "complete": i == len(sections), "rows": to_json(rows)}, f)
            os.replace(args.json + ".tmp", args.json)
    print(f"NumPy vs {xp.__name__}: {len(rows)} comparisons, {sum(not r.passed for r in rows)} failed")
    print(format_table(summary(rows)))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
