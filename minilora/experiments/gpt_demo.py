"""The GPT demo: a tiny character-level GPT reads English, then LoRA teaches it Python.

1. Pretrain a base GPT on English prose (``pydoc_data``'s help topics) with ``train.fit`` and
   AdamW; the weights are cached on disk under a key of config, seed and data.
2. Adapt a fresh copy of the base to Python source (standard-library modules) four ways and
   compare the validation loss on held-out Python modules:
   base (no training) · LoRA on q, v · LoRA on all six linears · full fine-tuning,
   with trainable parameters, median step time, and the prose loss (what each one forgets).
3. Print samples from the same prompt and seed before and after adaptation.

    minilora demo gpt            # a few minutes on 2 CPU cores (the base is cached after one run)
    minilora demo gpt --quick    # seconds: the "tiny" config and a handful of steps
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import backend
from ..data import text
from ..functional.losses import softmax_cross_entropy_forward
from ..nn.lora import add_lora
from ..nn.transformer import GPT, GPTConfig
from ..optim import AdamW
from ..train import fit

SIX = ("q", "k", "v", "o", "fc1", "fc2")

SETTINGS = {
    # preset, batch size, pretraining steps and lr, adaptation steps, LoRA r/alpha, lrs, eval, sample
    "full": dict(preset="small", batch=32, pretrain_steps=1500, pretrain_lr=3e-3, adapt_steps=300,
                 r=8, alpha=16, lora_lr=3e-3, full_lr=1e-3, eval_windows=256, sample_len=240),
    "quick": dict(preset="tiny", batch=16, pretrain_steps=60, pretrain_lr=3e-3, adapt_steps=30,
                  r=4, alpha=8, lora_lr=3e-3, full_lr=1e-3, eval_windows=16, sample_len=60),
}
PROMPT = "def "
CACHE_VERSION = 1  # bump when the training recipe changes in a way the key does not capture


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, x, y, batch: int = 64) -> float:
    """Mean next-character cross-entropy (nats) of ``model`` over the windows ``x``, ``y`` (N, T)."""
    was_training = model.training
    model.eval()
    total, n = 0.0, x.shape[0]
    try:
        for i in range(0, n, batch):
            loss, _ = softmax_cross_entropy_forward(model.forward(x[i:i + batch]), y[i:i + batch])
            total += float(loss) * min(batch, n - i)
    finally:
        model.train(was_training)
    return total / n


def sample(model, prompt: str, n: int, seed: int, device) -> str:
    ids = backend.from_numpy(text.encode(prompt)[None, :], device)
    out = model.generate(ids, n, temperature=0.8, seed=seed)
    return text.decode(out)


# ----------------------------------------------------------------------------- the cached base


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/minilora`` or ``~/.cache/minilora``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "minilora"


def cache_key(config: GPTConfig, seed: int, s: dict, train_ids) -> str:
    """A hash of everything that determines the base weights: config, seed, recipe and data."""
    recipe = {k: s[k] for k in ("batch", "pretrain_steps", "pretrain_lr")}
    data = hashlib.sha256(np.ascontiguousarray(train_ids).tobytes()).hexdigest()[:16]
    blob = json.dumps([CACHE_VERSION, dataclasses.asdict(config), seed, recipe, data], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_state(path: Path, model) -> None:
    """Write the model's parameters to ``path`` (.npz) atomically: a temp file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: backend.to_numpy(v) for k, v in model.named_parameters().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except BaseException:
        os.unlink(tmp)
        raise


def load_state(model, arrays: dict, device) -> None:
    """Copy ``{qualified name: NumPy array}`` (cast to the model's dtype) into ``model``'s
    parameters, on ``device``; names and shapes must match (``Module.load_state_dict``)."""
    dtype = model.dtype
    model.load_state_dict({k: np.asarray(a, dtype=dtype) for k, a in arrays.items()})


def pretrained_base(config, seed, s, train_ids, device, progress, cache=True):
    """``(arrays, info)``: the base weights as NumPy arrays, loaded from the cache or trained now."""
    path = cache_dir() / f"gpt_base_{cache_key(config, seed, s, train_ids)}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}, {"from_cache": True, "path": str(path)}
        except (OSError, ValueError):  # a damaged file: train again and overwrite it
            pass
    model = GPT(config, seed=seed, device=device)
    batches = text.batches(train_ids, s["batch"], config.n_ctx, seed=seed, device=device)
    t0 = time.perf_counter()
    hist = fit(model, AdamW(model, lr=s["pretrain_lr"]), batches, s["pretrain_steps"],
               progress=progress, desc="pretrain base on prose")
    info = {"from_cache": False, "path": str(path) if cache else None,
            "pretrain_seconds": time.perf_counter() - t0, "pretrain_step_time": hist["step_time"],
            "pretrain_final_loss": float(np.mean(hist["losses"][-20:]))}
    if cache:
        save_state(path, model)
    return {k: backend.to_numpy(v) for k, v in model.named_parameters().items()}, info


# ----------------------------------------------------------------------------- the story


def run(quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True,
        cache: bool = True) -> dict:
    """Pretrain on prose (or load the cached base), adapt to Python four ways, print the report."""
    t_start = time.perf_counter()
    s = SETTINGS["quick" if quick else "full"]
    config = GPTConfig.preset(s["preset"], vocab_size=len(text.VOCAB))
    T = config.n_ctx
    prose_train, prose_val = text.load_corpus("prose")
    py_train, py_val = text.load_corpus("python")
    py_eval = text.windows(py_val, T, s["eval_windows"], device)
    prose_eval = text.windows(prose_val, T, s["eval_windows"], device)

    arrays, base_info = pretrained_base(config, seed, s, prose_train, device, progress, cache)

    def fresh_base():
        m = GPT(config, seed=seed, device=device)
        load_state(m, arrays, device)
        return m

    base = fresh_base()
    total = base.num_parameters()
    rows = [dict(method="base (prose only)", trainable=0, val_loss=evaluate(base, *py_eval),
                 prose_loss=evaluate(base, *prose_eval), step_time=None)]
    samples = {"base (before)": sample(base, PROMPT, s["sample_len"], seed, device)}

    methods = [("LoRA (q, v)", ["q", "v"]), ("LoRA (all six linears)", list(SIX)), ("full fine-tuning", None)]
    for name, targets in methods:
        model = fresh_base()
        if targets is not None:
            add_lora(model, targets, r=s["r"], alpha=s["alpha"], seed=seed)
        lr = s["lora_lr"] if targets is not None else s["full_lr"]
        batches = text.batches(py_train, s["batch"], T, seed=seed + 1, device=device)  # same stream for all
        hist = fit(model, AdamW(model, lr=lr), batches, s["adapt_steps"], progress=progress,
                   desc=f"adapt: {name}")
        rows.append(dict(method=name, trainable=model.num_parameters(trainable=True),
                         val_loss=evaluate(model, *py_eval), prose_loss=evaluate(model, *prose_eval),
                         step_time=hist["step_time"]))
        samples[f"{name} (after)"] = sample(model, PROMPT, s["sample_len"], seed, device)

    result = {"rows": rows, "total_params": total, "base": base_info, "samples": samples,
              "config": dataclasses.asdict(config), "settings": dict(s), "device": device,
              "quick": quick, "seed": seed}
    result["wall_time"] = time.perf_counter() - t_start
    result["report"] = format_report(result)
    print(result["report"])
    return result


def format_report(res: dict) -> str:
    c, s, b = res["config"], res["settings"], res["base"]
    lines = [
        f"GPT demo: English prose -> Python source ({'quick' if res['quick'] else 'full'} run, "
        f"seed {res['seed']}, device {res['device']})",
        f"model: {c['n_layer']} blocks, C = {c['n_embd']}, {c['n_head']} heads, n_ctx = {c['n_ctx']}, "
        f"V = {c['vocab_size']} characters; {res['total_params']:,} parameters",
    ]
    if b["from_cache"]:
        lines.append(f"base: loaded from cache {b['path']}")
    else:
        where = f"; cached at {b['path']}" if b["path"] else " (cache off)"
        lines.append(
            f"base: trained now, {s['pretrain_steps']} steps on prose in {b['pretrain_seconds']:.1f} s "
            f"(train loss {b['pretrain_final_loss']:.3f}){where}")
    lines.append(f"adaptation: {s['adapt_steps']} AdamW steps of {s['batch']}×{c['n_ctx']} characters "
                 f"of Python; LoRA r = {s['r']}, alpha = {s['alpha']}, lr {s['lora_lr']:g}; "
                 f"full fine-tuning lr {s['full_lr']:g}")
    lines.append("")
    hdr = f"{'method':<24} {'trainable':>10} {'% of all':>8} {'Python val loss':>16} {'prose val loss':>15} {'step (ms)':>10}"
    lines += [hdr, "-" * len(hdr)]
    for r in res["rows"]:
        step = "-" if r["step_time"] is None else f"{1000 * r['step_time']:.1f}"
        pct = 100.0 * r["trainable"] / res["total_params"]
        lines.append(f"{r['method']:<24} {r['trainable']:>10,} {pct:>7.2f}% {r['val_loss']:>16.3f} "
                     f"{r['prose_loss']:>15.3f} {step:>10}")
    lines.append("(losses: nats per character on held-out text; step: median milliseconds per training step)")
    lines.append("")
    for name, txt in res["samples"].items():
        lines.append(f"--- sample, {name}, prompt {PROMPT!r}, temperature 0.8:")
        lines.append(txt)
    lines.append("")
    lines.append(f"wall time {res['wall_time']:.1f} s")
    return "\n".join(lines)
