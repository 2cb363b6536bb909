"""The SmolLM2 demo: LoRA teaches a pretrained 135M Llama text-to-SQL (WikiSQL in miniature).

1. Load SmolLM2-135M-Instruct from its GGUF file into minilora's own layers; answer one
   held-out question greedily (``Llama.generate_greedy``, a key/value cache).
2. Measure the base's execution accuracy on N held-out questions (``minilora.data.sql``: new
   tables, new values, some new phrasings; the predicted SQL is run with ``sqlite3``).
3. LoRA fine-tune a fresh copy twice — r = 8 on q_proj, v_proj (the paper's choice), then on
   all seven projections — with AdamW and ``fit``'s progress bar, the loss on the answer tokens
   only (``LOSSES["masked_cross_entropy"]``); measure again, answer the question again.
4. Save each adapter as a PEFT directory (``minilora.save_adapter``) and print the report:
   accuracies with the seed, trainable parameters, memory of weights and optimizer state,
   time per step and tokens per second.

    minilora demo smollm           # ~5½ minutes on 2 idle CPU cores (docs/smollm.md: measured runs)
    minilora demo smollm --quick   # seconds: the first 2 of 30 layers, a handful of steps (tests)

The adapters go to ``out_dir`` (default: a new ``minilora-smollm-*`` directory under the system's
temporary directory, kept and printed, so that PEFT can load them afterwards).
"""
from __future__ import annotations

import copy
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import backend
from ..adapters import save_adapter
from ..data import sql
from ..fast.runtime import auto_blas_threads
from ..functional.losses import IGNORE
from ..nn.lora import add_lora
from ..optim import AdamW
from ..pretrained import smollm2, smollm2_tokenizer
from ..train import fit

ALL_SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = (("LoRA (q, v)", "lora_qv", ("q_proj", "v_proj")), ("LoRA (all seven)", "lora_all", ALL_SEVEN))
EOS = "<|im_end|>"  # the end of the assistant's turn: decoding stops there
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

SETTINGS = {
    # n_layer (None: all 30), training steps, batch (examples), AdamW lr, LoRA r / alpha,
    # held-out questions scored, new tokens per answer, rows per decoding batch
    "full": dict(n_layer=None, steps=40, batch=8, lr=2e-3, r=8, alpha=16, n_heldout=48, n_new=48, decode_batch=16),
    "quick": dict(n_layer=2, steps=3, batch=2, lr=2e-3, r=8, alpha=16, n_heldout=3, n_new=6, decode_batch=4),
}


# ----------------------------------------------------------------------------- tokens


def encode(tok, ex) -> tuple:
    """(prompt ids, answer ids) of one example: the chat-template prompt and the SQL + <|im_end|>."""
    return tok.encode(sql.prompt(ex)), tok.encode(sql.answer(ex))


def batches(tok, examples, batch: int, seed: int, device: str = "cpu"):
    """Endless shuffled batches ``(x, y)`` for ``fit``: x (B, T) the prompt and answer ids, y the
    next token at each position, ``IGNORE`` on the prompt and the padding (loss on the answer only).
    Rows are padded on the right to the batch's longest (causal attention: padding after a row's
    last token changes nothing before it)."""
    pairs = [encode(tok, ex) for ex in examples]
    rng = random.Random(seed)
    order = []
    while True:
        if len(order) < batch:
            more = list(range(len(pairs)))
            rng.shuffle(more)
            order += more
        chosen, order = order[:batch], order[batch:]
        rows = [pairs[i] for i in chosen]
        T = max(len(p) + len(a) for p, a in rows) - 1
        x = np.zeros((batch, T), dtype=np.int64)  # pad id 0 (<|endoftext|>), never a target
        y = np.full((batch, T), IGNORE, dtype=np.int64)
        for b, (p, a) in enumerate(rows):
            ids = p + a
            x[b, :len(ids) - 1] = ids[:-1]
            y[b, len(p) - 1:len(ids) - 1] = a  # position t predicts token t + 1: the answer's tokens
        yield backend.from_numpy(x, device), backend.from_numpy(y, device)


def counted(stream, counts: dict):
    """``stream``'s batches, unchanged, adding their tokens and answer tokens to ``counts``."""
    for x, y in stream:
        counts["tokens"] += int(x.size)
        counts["answer_tokens"] += int((backend.to_numpy(y) != IGNORE).sum())
        yield x, y


# ----------------------------------------------------------------------------- answers


def generate(model, tok, examples, n_new: int, decode_batch: int, device: str = "cpu") -> list:
    """The model's greedy answer (text, up to <|im_end|>) to each example's prompt. Prompts of the
    same token length decode together, ``decode_batch`` at a time (``generate_greedy`` takes rows
    of one length), and the answers come back in the examples' order."""
    eos = tok.encode(EOS)[0]
    prompts = [tok.encode(sql.prompt(ex)) for ex in examples]
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    texts = [None] * len(examples)
    c = model.config  # a decoding step's products are (rows, C) x (C, hidden): small, one BLAS thread
    with auto_blas_threads(decode_batch * c.n_embd * c.hidden):
        for T, idx in sorted(by_length.items()):
            for s in range(0, len(idx), decode_batch):
                group = idx[s:s + decode_batch]
                ids = backend.from_numpy(np.array([prompts[i] for i in group], dtype=np.int64), device)
                out = backend.to_numpy(model.generate_greedy(ids, n_new, eos_id=eos))[:, T:]
                for i, row in zip(group, out):
                    row = row.tolist()
                    texts[i] = tok.decode(row[:row.index(eos)] if eos in row else row)
    return texts


def evaluate(model, tok, examples, n_new, decode_batch, device="cpu") -> dict:
    """Execution accuracy of the model's greedy answers, with the answers and the time it took."""
    t0 = time.perf_counter()
    texts = generate(model, tok, examples, n_new, decode_batch, device)
    queries = [sql.extract_sql(t) for t in texts]
    scores = [sql.score(q, ex) for q, ex in zip(queries, examples)]
    return {"accuracy": sum(scores) / len(scores), "texts": texts, "queries": queries, "scores": scores,
            "seconds": time.perf_counter() - t0}


def load_average() -> float | None:
    """The machine's 1-minute load average (other processes share the cores: timings depend on it)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes; 0 elsewhere)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


# ----------------------------------------------------------------------------- the story


def run(quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True, out_dir=None,
        n_train: int = 2000) -> dict:
    """Load SmolLM2, score the base, LoRA-train (q, v) and (all seven), score, save, report."""
    t_start, load_start = time.perf_counter(), load_average()
    s = SETTINGS["quick" if quick else "full"]
    train, heldout = sql.task(n_train, s["n_heldout"], seed)

    t0 = time.perf_counter()
    base = smollm2(n_layer=s["n_layer"], device=device)
    tok = smollm2_tokenizer()
    load_seconds = time.perf_counter() - t0
    sample = heldout[0]

    ev = evaluate(base, tok, heldout, s["n_new"], s["decode_batch"], device)
    rows = [dict(method="base (instruct, no training)", key="base", trainable=0, accuracy=ev["accuracy"],
                 step_time=None, eval_seconds=ev["seconds"])]
    answers = {"base": ev["texts"][0]}
    evals = {"base": ev}

    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="minilora-smollm-")
    out_dir = Path(out_dir)
    saved = {}
    for name, key, targets in METHODS:
        model = copy.deepcopy(base)  # a fresh copy of the base for each method
        add_lora(model, list(targets), r=s["r"], alpha=s["alpha"], seed=seed)
        opt = AdamW(model, lr=s["lr"])
        counts = {"tokens": 0, "answer_tokens": 0}
        stream = counted(batches(tok, train, s["batch"], seed=seed + 1, device=device), counts)  # one stream for both
        t0 = time.perf_counter()
        hist = fit(model, opt, stream, s["steps"], loss="masked_cross_entropy", progress=progress,
                   desc=f"{name}, r={s['r']}")
        train_seconds = time.perf_counter() - t0
        tokens, answer_tokens = counts["tokens"], counts["answer_tokens"]
        ev = evaluate(model, tok, heldout, s["n_new"], s["decode_batch"], device)
        evals[key], answers[key] = ev, ev["texts"][0]
        saved[key] = save_adapter(model, out_dir / f"smollm2_sql_{key}", base_model_name_or_path=BASE_NAME,
                                  task_type="CAUSAL_LM")
        rows.append(dict(method=name, key=key, trainable=model.num_parameters(trainable=True),
                         accuracy=ev["accuracy"], step_time=hist["step_time"], train_seconds=train_seconds,
                         tokens_per_step=tokens / max(s["steps"], 1),
                         answer_tokens_per_step=answer_tokens / max(s["steps"], 1),
                         loss_first=float(np.mean(hist["losses"][:3])) if hist["losses"] else None,
                         loss_last=float(np.mean(hist["losses"][-3:])) if hist["losses"] else None,
                         optimizer_bytes=opt.state_bytes(), adapter_bytes=saved[key]["bytes"],
                         eval_seconds=ev["seconds"]))
        del model, opt

    c = base.config
    result = {"rows": rows, "settings": dict(s), "seed": seed, "device": device, "quick": quick,
              "n_train": n_train, "n_layer": c.n_layer, "total_params": base.num_parameters(),
              "weight_bytes": sum(int(p.size) * p.dtype.itemsize for p in base.named_parameters().values()),
              "load_seconds": load_seconds, "sample": {"question": sample.question, "schema": sample.schema,
                                                       "gold": sample.sql, "answers": answers},
              "evals": evals, "out_dir": str(out_dir), "saved": saved, "peak_rss_bytes": peak_rss_bytes(),
              "load_average": (load_start, load_average()), "cpus": os.cpu_count()}
    result["wall_time"] = time.perf_counter() - t_start
    result["report"] = format_report(result)
    print(result["report"])
    return result


def format_report(res: dict) -> str:
    s = res["settings"]
    mib = 2.0 ** 20
    lines = [
        f"SmolLM2 demo: text-to-SQL by execution ({'quick' if res['quick'] else 'full'} run, seed {res['seed']}, "
        f"device {res['device']})",
        f"model: SmolLM2-135M-Instruct, {res['n_layer']} of 30 layers, {res['total_params']:,} parameters, "
        f"float32 weights {res['weight_bytes'] / mib:.0f} MiB (loaded in {res['load_seconds']:.1f} s)",
        f"task: {res['n_train']} generated training examples; {len(res['evals']['base']['scores'])} held-out "
        f"questions on new tables, values and phrasings; the answer's SQL run with sqlite3",
        f"training: {s['steps']} AdamW steps of {s['batch']} examples, lr {s['lr']:g}, LoRA r = {s['r']}, "
        f"alpha = {s['alpha']}, loss on the answer tokens only",
        "",
    ]
    hdr = (f"{'method':<30} {'trainable':>10} {'exec acc':>9} {'step (s)':>9} {'tokens/s':>9} "
           f"{'optimizer':>10} {'adapter':>9} {'loss':>15}")
    lines += [hdr, "-" * len(hdr)]
    for r in res["rows"]:
        if r["step_time"] is None:
            lines.append(f"{r['method']:<30} {r['trainable']:>10,} {100 * r['accuracy']:>8.1f}% {'-':>9} "
                         f"{'-':>9} {'-':>10} {'-':>9} {'-':>15}")
            continue
        loss = f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}"
        lines.append(f"{r['method']:<30} {r['trainable']:>10,} {100 * r['accuracy']:>8.1f}% "
                     f"{r['step_time']:>9.2f} {r['tokens_per_step'] / r['step_time']:>9.0f} "
                     f"{r['optimizer_bytes'] / mib:>8.2f}MiB {r['adapter_bytes'] / mib:>7.2f}MiB {loss:>15}")
    lines.append("(exec acc: held-out questions whose SQL returns the gold rows; step: median seconds per "
                 "training step; tokens/s: padded batch tokens per second of training; optimizer: AdamW's "
                 "m and v; loss: mean of the first and last 3 steps)")
    for r in res["rows"][1:]:
        lines.append(f"{r['method']}: {r['train_seconds']:.0f} s training ({r['tokens_per_step']:.0f} tokens/step, "
                     f"{r['answer_tokens_per_step']:.0f} of them answer tokens), {r['eval_seconds']:.0f} s scoring")
    lines.append(f"base: {res['rows'][0]['eval_seconds']:.0f} s scoring")
    lines.append("")
    smp = res["sample"]
    lines.append(f"--- one held-out question: {smp['schema']}")
    lines.append(f"    {smp['question']}")
    lines.append(f"    gold: {smp['gold']}")
    for key, text in smp["answers"].items():
        lines.append(f"    {key:>9}: {text.strip()[:160]!r}")
    lines.append("")
    for key, info in res["saved"].items():
        lines.append(f"adapter {key}: {info['weights']} ({info['bytes'] / 1024:.0f} KiB, PEFT format)")
    lines.append(f"peak memory (RSS) {res['peak_rss_bytes'] / mib:.0f} MiB; wall time {res['wall_time']:.1f} s")
    a, b = res["load_average"]
    if a is not None:
        lines.append(f"machine: {res['cpus']} CPUs, 1-minute load average {a:.1f} at the start, {b:.1f} at the end "
                     "(a load above the CPU count means other processes shared the cores)")
    return "\n".join(lines)
