"""SmolLM2-135M's LoRA training step: minilora (NumPy) vs PyTorch eager + PEFT, in one interleaved run.

    python benchmarks/llama_bench.py                                # 30 layers, 4 x 64 tokens, 1 and 2 threads
    python benchmarks/llama_bench.py --layers 2 --rounds 3          # a truncated model: a quick run
    python benchmarks/llama_bench.py --side minilora                # one side alone in its process (no ratio)
    python benchmarks/llama_bench.py --tiny --layers 1 --rounds 2   # a tiny random Llama (what the test runs)

What is timed (the same on both sides, float32, same thread count; docs/performance.md, issue 12):
one LoRA training step of SmolLM2-135M-Instruct — forward over B x T tokens of real text (the
``pydoc`` prose of ``minilora.data.text``, tokenized by ``minilora.smollm2_tokenizer()``), softmax
cross-entropy of every position against the next token, backward, AdamW (lr 1e-4, weight decay
0.01) on the LoRA parameters only. LoRA r = 8, alpha = 16, dropout 0 on ``q_proj, v_proj`` and on
all seven projections. minilora is ``minilora.smollm2(n_layer=N)`` + ``add_lora`` +
``minilora.train_step``; PyTorch is transformers' ``LlamaForCausalLM`` loaded from the same GGUF
file (``from_pretrained(dir, gguf_file=name, dtype=torch.float32)``, its layer list cut to N),
wrapped by ``peft.get_peft_model`` with minilora's A and B copied in.

Before timing, both sides run the same first steps and must agree: the losses to 1e-4 relative
(asserted) and the LoRA gradients (reported). Timing is benchmarks/bench.py's: every side once
per round in a rotating order, medians over rounds after warm-up, the ratio minilora / PyTorch
taken inside each round, then its median. The thread count is NumPy's BLAS
(``minilora.blas_threads``, threadpoolctl), minilora's elementwise threads
(``minilora.fast.runtime.THREADS``) and ``torch.set_num_threads``, all at once. Importing bench.py
sets ``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` before NumPy and torch load
(the same two options change them). Peak memory is NumPy's transient allocation during one step
(tracemalloc, as bench.py). The profile times minilora's step part by part on one thread.
"""
from __future__ import annotations

import argparse
import collections
import copy
import cProfile
import json
import os
import pstats
import sys
import time
import tracemalloc
from pathlib import Path

try:
    import resource  # POSIX only: page faults in the profile
except ImportError:
    resource = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench sets OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT (read from our argv too) before NumPy loads
from bench import _header, blas_kernels, machine_info, median, pair_ratio, time_interleaved  # noqa: E402

import numpy as np  # noqa: E402

import minilora as ml  # noqa: E402
from minilora.fast import runtime  # noqa: E402
from minilora.functional.losses import LOSSES  # noqa: E402

R, ALPHA, LR, WD = 8, 16, 1e-4, 0.01
TARGETS = {  # --targets names: the modules LoRA wraps (PEFT's target_modules)
    "qv": ("q_proj", "v_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
LABELS = {"qv": "q, v", "all": "all seven"}
# --tiny: a random Llama small enough for a test, on the character vocabulary of minilora.data.text
TINY = ml.LlamaConfig(vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, hidden=48, n_ctx=64)
GOAL = 1.2  # issue 12: minilora's step <= 1.2x PyTorch's
LOSS_RTOL = 1e-4  # the first losses of both sides agree to this (relative)


# ----------------------------------------------------------------------------- models and data


def load_models(args):
    """``(minilora Llama, transformers LlamaForCausalLM)`` with the same weights, ``args.layers``
    blocks; with ``--side`` one of them is None (not loaded: that side's process runs alone)."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    transformers.logging.disable_progress_bar()
    if args.tiny:
        c = TINY.replace(n_layer=args.layers or TINY.n_layer)
        model = ml.Llama(c, seed=0)
        if args.side == "minilora":
            return model, None
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden,
            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
            rms_norm_eps=c.rms_eps, rope_theta=c.rope_base, max_position_embeddings=c.n_ctx,
            tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
            attn_implementation=args.attn_implementation))
        hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model.hf_state_dict().items()},
                           strict=False)
        hf.tie_weights()
        return (None if args.side == "pytorch" else model), hf
    from minilora.io.gguf import smollm2_path  # noqa: PLC0415

    model = ml.smollm2(n_layer=args.layers) if args.side != "pytorch" else None
    if args.side == "minilora":
        return model, None
    path = Path(smollm2_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation=args.attn_implementation)
    n = args.layers or hf.config.num_hidden_layers
    hf.model.layers = hf.model.layers[:n]  # the same first n blocks; embedding, norm and head kept
    hf.config.num_hidden_layers = n
    return model, hf


def text_batch(args, vocab_size):
    """``x, y`` (B, T) int64: B consecutive windows of real text, y = x shifted by one token."""
    from minilora.data.text import encode, prose_text  # noqa: PLC0415

    need = args.batch * (args.seq + 1)
    text = prose_text()
    if args.tiny:
        ids = encode(text[:need])  # characters: V = 97, the tiny model's vocabulary
    else:
        tok, chars = ml.smollm2_tokenizer(), 8 * need
        while len(ids := tok.encode(text[:chars])) < need:
            chars *= 2
        ids = np.asarray(ids, dtype=np.int64)
    ids = ids[:need].reshape(args.batch, args.seq + 1)
    assert ids.max() < vocab_size
    return ids[:, :-1].copy(), ids[:, 1:].copy()


def minilora_side(base, targets):
    """A LoRA copy of ``base`` and its AdamW (LoRA parameters only: add_lora froze the rest)."""
    model = ml.add_lora(copy.deepcopy(base), list(targets), r=R, alpha=ALPHA, seed=0)
    return model, ml.AdamW(model, lr=LR, weight_decay=WD)


def peft_side(hf, model, targets):
    """PEFT LoRA on ``hf`` (in place) with ``model``'s A and B copied in (if given), and its AdamW."""
    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415

    conf = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(targets), lora_dropout=0.0, bias="none")
    pm = peft.get_peft_model(hf, conf)
    mods = dict(pm.base_model.model.named_modules())
    with torch.no_grad():  # minilora's module paths are HF's names
        for path, layer in (model.lora_layers() if model is not None else {}).items():
            ad = layer.adapters["default"]
            mods[path].lora_A["default"].weight.copy_(torch.from_numpy(np.asarray(ad.params["A"])))
            mods[path].lora_B["default"].weight.copy_(torch.from_numpy(np.asarray(ad.params["B"])))
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR, weight_decay=WD)
    return pm, opt, mods


def steps(model, opt, pm, topt, x, y, V):
    """The timed steps ``{"minilora": fn, "pytorch": fn}`` (the sides that exist), each returning the loss."""
    fns = {}
    if model is not None:
        fns["minilora"] = lambda: ml.train_step(model, opt, x, y, "cross_entropy")
    if pm is None:
        return fns
    import torch  # noqa: PLC0415

    F = torch.nn.functional
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def pytorch_step():
        topt.zero_grad(set_to_none=True)
        logits = pm(input_ids=tx, use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, V), ty.reshape(-1))
        loss.backward()
        topt.step()
        return loss.item()

    fns["pytorch"] = pytorch_step
    return fns


def lora_grad_error(model, mods):
    """max |dθ_minilora − dθ_PEFT| / max |dθ_PEFT| over every A and B of the last backward."""
    grads = model.named_grads()
    diff = scale = 0.0
    for path in model.lora_layers():
        for name, tmod in (("A", mods[path].lora_A["default"]), ("B", mods[path].lora_B["default"])):
            mine, theirs = np.asarray(grads[f"{path}.lora.default.{name}"]), tmod.weight.grad.numpy()
            diff, scale = max(diff, float(np.max(np.abs(mine - theirs)))), max(scale, float(np.max(np.abs(theirs))))
    return diff / scale if scale > 0 else float("nan")


def check_agreement(fns, model, mods, n_steps):
    """Run ``n_steps`` steps on both sides from the same state; the losses must agree."""
    rows = []
    for i in range(n_steps):
        l_ml, l_t = fns["minilora"](), fns["pytorch"]()
        rows.append({"step": i + 1, "minilora_loss": l_ml, "pytorch_loss": l_t,
                     "loss_rel_diff": abs(l_ml - l_t) / max(abs(l_t), 1e-12),
                     "lora_grad_rel_err": lora_grad_error(model, mods)})
    worst = max(r["loss_rel_diff"] for r in rows)
    assert worst <= LOSS_RTOL, f"first losses differ: {rows}"
    return rows


# ----------------------------------------------------------------------------- threads


class threads:
    """``with threads(n):`` NumPy's BLAS, minilora's elementwise pool and PyTorch all on n threads."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        import torch  # noqa: PLC0415

        self.saved = (runtime.THREADS, torch.get_num_threads())
        self.blas = ml.blas_threads(self.n).__enter__()
        runtime.THREADS = self.n
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch  # noqa: PLC0415

        runtime.THREADS, torch_threads = self.saved
        torch.set_num_threads(torch_threads)
        self.blas.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------- profile


def profile_step(model, opt, x, y, n_steps=3, top=12):
    """``n_steps`` minilora steps timed part by part; the step with the median total is reported
    (one step's parts add up to it), with its cProfile hottest functions. Run it on one thread."""
    runs = sorted((_profile_once(model, opt, x, y, top) for _ in range(n_steps)), key=lambda p: p["total_ms"])
    chosen = runs[len(runs) // 2]
    chosen["totals_ms"] = [p["total_ms"] for p in runs]
    return chosen


def _profile_once(model, opt, x, y, top):
    """One step: inclusive wall clock per module call, turned into exclusive parts."""
    clock = collections.defaultdict(float)
    wrapped = []

    def time_calls(module, key):
        for phase in ("forward", "backward"):
            method = getattr(module, phase)

            def timed(*a, method=method, key=key):
                t0 = time.perf_counter()
                out = method(*a)
                clock[key] += time.perf_counter() - t0
                return out
            module.__dict__[phase] = timed  # an instance attribute hides the class's method
            wrapped.append((module, phase))

    m = model.children["model"].children
    embed, blocks, norm = m["embed_tokens"], list(m["layers"].children.values()), m["norm"]
    time_calls(embed, "embed")
    time_calls(norm, "final_norm")
    for block in blocks:
        ch = block.children
        time_calls(block, "block")
        time_calls(ch["input_layernorm"], "norm")
        time_calls(ch["post_attention_layernorm"], "norm")
        time_calls(ch["self_attn"], "attn")
        time_calls(ch["mlp"], "mlp")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            time_calls(ch["self_attn"].children[name], "attn_proj")
        for name in ("gate_proj", "up_proj", "down_proj"):
            time_calls(ch["mlp"].children[name], "mlp_proj")
    loss_forward, loss_backward = LOSSES["cross_entropy"]
    prof = cProfile.Profile()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0
    try:
        prof.enable()
        t0 = time.perf_counter()
        logits = model.forward(x)
        t1 = time.perf_counter()
        _, cache = loss_forward(logits, y)
        dlogits, _ = loss_backward(1.0, cache)
        t2 = time.perf_counter()
        model.backward(dlogits)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        prof.disable()
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) if resource else None
    finally:
        for module, phase in wrapped:
            del module.__dict__[phase]
    c = clock  # inclusive times; each part below is exclusive
    model_time = (t1 - t0) + (t3 - t2)
    parts = {
        # what Llama.forward/backward do outside their children: the tied head's two products
        "LM head (tied E: x Eᵀ, dlogits E)": model_time - c["embed"] - c["block"] - c["final_norm"],
        "cross-entropy (log-softmax, one-hot, dlogits)": t2 - t1,
        "attention projections q,k,v,o (+ LoRA)": c["attn_proj"],
        "attention core (RoPE, GQA, softmax)": c["attn"] - c["attn_proj"],
        "MLP projections gate,up,down (+ LoRA)": c["mlp_proj"],
        "SwiGLU elementwise": c["mlp"] - c["mlp_proj"],
        "RMSNorm": c["norm"] + c["final_norm"],
        "residual adds": c["block"] - c["attn"] - c["mlp"] - c["norm"],
        "embedding": c["embed"],
        "AdamW (LoRA only)": t4 - t3,
    }
    total = t4 - t0
    stats = pstats.Stats(prof)
    hot = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # by own time
    hottest = [{"function": f"{Path(f).name}:{line}({name})", "own_ms": 1e3 * tt, "calls": nc}
               for (f, line, name), (_, nc, tt, _, _) in hot]
    return {"total_ms": 1e3 * total, "parts_ms": {k: 1e3 * v for k, v in parts.items()}, "hottest": hottest,
            "minor_page_faults": faults}


# ----------------------------------------------------------------------------- the run


def step_peak_bytes(fn):
    """NumPy's transient allocations during one call of ``fn`` (tracemalloc; as bench.py)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


def bench_targets(label, base, hf, x, y, args):
    """Everything measured for one target set; returns the result and the base transformers model."""
    targets = TARGETS[label]
    model, opt = minilora_side(base, targets) if base is not None else (None, None)
    pm, topt, mods = peft_side(hf, model, targets) if hf is not None else (None, None, None)
    V = (base.config if base is not None else hf.config).vocab_size
    fns = steps(model, opt, pm, topt, x, y, V)
    res = {"targets": LABELS[label], "modules": list(targets), "sides": list(fns), "timing": {}}
    if model is not None:
        res.update(trainable=model.num_parameters(trainable=True), total=model.num_parameters())
    if pm is not None:
        res["pytorch_trainable"] = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    res["checks"] = check_agreement(fns, model, mods, args.check_steps) if len(fns) == 2 else []
    tokens = x.size
    for n in args.threads:
        with threads(n):
            t = time_interleaved(fns, args.rounds, args.warmup)
        row = {"threads": n}
        for side, times in t.items():
            row[f"{side}_ms"] = 1e3 * median(times)
            row[f"{side}_tokens_per_s"] = tokens / median(times)
            row[f"{side}_rounds_ms"] = [1e3 * v for v in times]
        if len(fns) == 2:
            row["ml_over_torch"] = pair_ratio(t["minilora"], t["pytorch"])
        res["timing"][str(n)] = row
        print(f"  {LABELS[label]:9s} {n} thread(s): " + "  ".join(f"{side} {row[side + '_ms']:9.1f} ms" for side in t)
              + (f"  minilora/pytorch {row['ml_over_torch']:.2f}" if "ml_over_torch" in row else ""), flush=True)
    if model is not None:
        with threads(args.threads[-1]):
            res["minilora_step_peak_bytes"] = step_peak_bytes(fns["minilora"])
        res["minilora_opt_state_bytes"] = opt.state_bytes()
        if args.profile:
            with threads(1):
                fns["minilora"]()  # one step on one thread first: the profile is not a cold start
                res["profile"] = profile_step(model, opt, x, y, args.profile_steps)
    return res, (pm.unload() if pm is not None else None)  # the transformers model without LoRA, for the next set


def _ms(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _cell(row, key, fmt):
    return fmt(row[key]) if key in row else "—"  # a side not run (--side)


def _mib(b):
    return f"{b / (1 << 20):,.1f} MiB"


def markdown(results, info, args, x):
    L = [f"Measured {info['date']}: {info['processor']} ({info['cores']} cores), "
         f"{blas_kernels(info)}; NumPy {info['numpy']}, PyTorch {info.get('torch')}, transformers "
         f"{info.get('transformers')}, PEFT {info.get('peft')} (attention: {args.attn_implementation}); "
         f"load average {info['load_average'][0]:.2f} at start, {info['load_average_end'][0]:.2f} at end; "
         f"{info['model']}, batch {x.shape[0]} x {x.shape[1]} tokens; {args.rounds} rounds after "
         f"{args.warmup} warm-up, medians; OPENBLAS_THREAD_TIMEOUT={info.get('OPENBLAS_THREAD_TIMEOUT')}, "
         f"OMP_WAIT_POLICY={info.get('OMP_WAIT_POLICY')}.\n"]
    L += _header(["LoRA on", "threads"], ["minilora ms", "PyTorch ms", "minilora tok/s", "PyTorch tok/s",
                                          f"minilora / PyTorch (goal <= {GOAL})"])
    cell = _cell
    for r in results:
        for row in r["timing"].values():
            ratio = "—"
            if "ml_over_torch" in row:
                ratio = f"**{row['ml_over_torch']:.2f}**" + ("" if row["ml_over_torch"] <= GOAL else " (**no**)")
            L.append(f"| {r['targets']} | {row['threads']} | {cell(row, 'minilora_ms', _ms)} | "
                     f"{cell(row, 'pytorch_ms', _ms)} | {cell(row, 'minilora_tokens_per_s', '{:,.0f}'.format)} | "
                     f"{cell(row, 'pytorch_tokens_per_s', '{:,.0f}'.format)} | {ratio} |")
    if any(r["checks"] for r in results):
        L.append("\nAgreement before timing (same weights, A and B, batch; the first steps on both sides):\n")
        L += _header(["LoRA on"], ["trainable", "step", "minilora loss", "PyTorch loss", "rel. diff",
                                   "LoRA grad rel. err"])
        for r in results:
            for c in r["checks"]:
                L.append(f"| {r['targets']} | {r['trainable']:,} | {c['step']} | {c['minilora_loss']:.6f} | "
                         f"{c['pytorch_loss']:.6f} | {c['loss_rel_diff']:.1e} | {c['lora_grad_rel_err']:.1e} |")
    if any("minilora_step_peak_bytes" in r for r in results):
        L.append("\nMemory (minilora; step peak = NumPy's transient allocations in one step, by tracemalloc):\n")
        L += _header(["LoRA on"], ["optimizer state", "step peak"])
        for r in results:
            L.append(f"| {r['targets']} | {_mib(r['minilora_opt_state_bytes'])} | "
                     f"{_mib(r['minilora_step_peak_bytes'])} |")
    profiled = [r for r in results if "profile" in r]
    if profiled:
        n = len(profiled[0]["profile"]["totals_ms"])
        L.append(f"\nWhere minilora's step goes (one thread; of {n} profiled steps the one with the median "
                 "total; wall clock per part, each module's own time):\n")
        L += _header(["part"], [f"{r['targets']} ms" for r in profiled] + [f"{r['targets']} %" for r in profiled])
        for part in profiled[0]["profile"]["parts_ms"]:
            ms = [r["profile"]["parts_ms"][part] for r in profiled]
            pct = [100 * m / r["profile"]["total_ms"] for m, r in zip(ms, profiled)]
            L.append(f"| {part} | " + " | ".join(_ms(m) for m in ms) + " | "
                     + " | ".join(f"{p:.0f}%" for p in pct) + " |")
        L.append("| **step** | " + " | ".join(f"**{_ms(r['profile']['total_ms'])}**" for r in profiled)
                 + " | " + " | ".join("100%" for _ in profiled) + " |")
        L.append("| minor page faults in that step | " + " | ".join(
            f"{r['profile']['minor_page_faults']:,}" if r["profile"]["minor_page_faults"] is not None else "n/a"
            for r in profiled) + " |" + " |" * len(profiled))
        L.append(f"\nHottest functions by own time ({profiled[-1]['targets']}, cProfile):\n")
        L += _header(["function"], ["own ms", "calls"])
        for h in profiled[-1]["profile"]["hottest"]:
            L.append(f"| `{h['function']}` | {_ms(h['own_ms'])} | {h['calls']} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="keep the first N blocks on both sides (default: all 30)")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama and character ids (for tests)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and every core)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, among {list(TARGETS)}")
    p.add_argument("--check-steps", type=int, default=2, help="steps both sides run before timing, compared")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the one-thread profile")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled; the median one is reported")
    p.add_argument("--attn-implementation", default="sdpa", help="transformers' attention (sdpa or eager)")
    p.add_argument("--side", default="both", choices=("both", "minilora", "pytorch"),
                   help="time one side alone in this process (no agreement check, no ratio)")
    p.add_argument("--out", default="docs/benchmarks/llama", help="folder for results.md/.json")
    p.add_argument("--omp-wait-policy", default=None, help="as bench.py (read before import)")
    p.add_argument("--openblas-thread-timeout", default=None, help="as bench.py (read before import)")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.threads = ([int(n) for n in args.threads.split(",")] if args.threads
                    else sorted({1, cores}))
    labels = [t.strip() for t in args.targets.split(",")]
    unknown = [t for t in labels if t not in TARGETS]
    if unknown:
        p.error(f"unknown --targets {unknown}; choose among {list(TARGETS)}")

    import peft  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    info = machine_info(args.threads)
    info.update(date=time.strftime("%Y-%m-%d %H:%M"), transformers=transformers.__version__,
                peft=peft.__version__, torch=torch.__version__)
    t0 = time.perf_counter()
    base, hf = load_models(args)
    n_layer, vocab = ((base.config.n_layer, base.config.vocab_size) if base is not None
                      else (hf.config.num_hidden_layers, hf.config.vocab_size))
    info["model"] = (f"tiny random Llama ({n_layer} layers)" if args.tiny
                     else f"SmolLM2-135M-Instruct, {n_layer} of 30 layers")
    if args.side != "both":
        info["model"] += f", {args.side} alone in its process"
    x, y = text_batch(args, vocab)
    info["load_seconds"] = time.perf_counter() - t0
    print(f"--- {info['model']}, batch {x.shape}, threads {args.threads} (loaded in {info['load_seconds']:.0f} s)",
          flush=True)
    results = []
    for label in labels:
        r, hf = bench_targets(label, base, hf, x, y, args)
        results.append(r)
    info["seconds"] = time.perf_counter() - t0
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown(results, info, args, x)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"machine": info, "args": vars(args), "batch": list(x.shape),
                                                  "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
