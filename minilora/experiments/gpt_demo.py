"""The GPT demo: a tiny character-level GPT reads English, then LoRA teaches it Python.

1. Pretrain a base GPT on English prose (``pydoc_data``'s help topics) with ``train.fit`` and
   AdamW; the weights are cached on disk (safetensors, ``minilora.checkpoint``) under a key of
   config, seed and data. A cached file is checked in full before use; a damaged one (empty,
   truncated, corrupt, other names or shapes, NaN) is reported once, trained again and
   overwritten atomically.
2. Adapt a fresh copy of the base to Python source (standard-library modules) four ways and
   compare the validation loss on held-out Python modules:
   base (no training) · LoRA on q, v · LoRA on all six linears · full fine-tuning,
   with trainable parameters, median step time, and the prose loss (what each one forgets).
3. Print samples from the same prompt and seed before and after adaptation.

    minilora demo gpt            # a few minutes on 2 CPU cores (the base is cached after one run)
    minilora demo gpt --quick    # seconds: the "tiny" config and a handful of steps
    minilora demo gpt --no-cache # train the base now; neither read nor write the cache

``pretrained_gpt`` (this demo's base, exported from ``minilora``) is part of the everyday API for
"my own model, my own text" (docs/own_text.md), with ``text_loss`` and ``generate_text`` from
``minilora/language.py``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from .. import backend, checks
from ..checkpoint import load_weights, save_weights
from ..data import text
from ..nn.lora import add_lora
from ..nn.transformer import GPT, GPTConfig
from ..optim import AdamW
from ..fast.runtime import auto_blas_threads
from ..language import evaluate, generate_text, text_loss  # noqa: F401  (text_loss: for old imports)
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


def cache_path(config: GPTConfig, seed: int, s: dict, train_ids) -> Path:
    return cache_dir() / f"gpt_base_{cache_key(config, seed, s, train_ids)}.safetensors"


def pretrained_base(config, seed, s, train_ids, device, progress, cache=True):
    """``(model, info)``: the base GPT, loaded from the cache or trained now (and then cached).

    The cached file is checked in full before use (``load_weights``); if it fails — empty,
    truncated, corrupt, other names, shapes or dtypes, a non-finite value — one warning names it
    and the reason, and the base is trained again and written over it (atomically). A cache that
    cannot be written is a warning too, never an error. ``cache=False``: neither read nor write.
    """
    model = GPT(config, seed=seed, device=device)
    path = cache_path(config, seed, s, train_ids) if cache else None
    damaged = None
    if path is not None and path.exists():
        try:
            load_weights(model, path)  # all or nothing: on failure the model keeps its init
            return model, {"from_cache": True, "path": str(path)}
        except ValueError as e:
            damaged = str(e)
            warnings.warn(f"minilora: the cached GPT base is damaged, training it again and "
                          f"overwriting {path} ({damaged})", stacklevel=2)
    batches = text.batches(train_ids, s["batch"], config.n_ctx, seed=seed, device=device)
    t0 = time.perf_counter()
    hist = fit(model, AdamW(model, lr=s["pretrain_lr"]), batches, s["pretrain_steps"],
               progress=progress, desc="pretrain base on prose")
    info = {"from_cache": False, "path": None if path is None else str(path), "damaged": damaged,
            "pretrain_seconds": time.perf_counter() - t0, "pretrain_step_time": hist["step_time"],
            "pretrain_final_loss": float(np.mean(hist["losses"][-20:]))}
    if path is not None:
        try:
            save_weights(model, path)
        except OSError as e:
            info["path"], info["not_cached"] = None, f"cannot write {path}: {e}"
            warnings.warn(f"minilora: the GPT base is not cached ({info['not_cached']}); the next "
                          "run trains it again", stacklevel=2)
    return model, info


def settings(quick: bool) -> tuple:
    """``(settings, GPTConfig)`` of the quick or the full run."""
    s = SETTINGS["quick" if quick else "full"]
    return s, GPTConfig.preset(s["preset"], vocab_size=len(text.VOCAB))


def pretrained_gpt(quick: bool = False, seed: int = 0, device: str = "cpu", cache: bool = True,
                   progress: bool = False) -> GPT:
    """The demo's base GPT, pretrained on English prose (``pydoc_data``), ready for your own text.

    ``quick=False``: the "small" config (3 blocks, C = 64, n_ctx = 64, ~0.17 M parameters),
    1,500 AdamW steps — about 80 s on 2 CPU cores the first time, then read from the cache
    (``$XDG_CACHE_HOME/minilora``, the file ``minilora demo gpt`` uses). ``quick=True``: the
    "tiny" config and 60 steps, under a second (for tests). Characters are ``CharTokenizer``'s.
    A damaged cache file is reported, retrained and overwritten; ``cache=False`` neither reads
    nor writes it. The same ``seed`` gives the same weights, trained or cached.
    """
    if not checks.is_int(seed) or seed < 0:
        raise ValueError(f"pretrained_gpt: seed must be a non-negative int, got {seed!r}")
    backend.resolve_device(device)  # a clear error before any work
    s, config = settings(quick)
    model, _ = pretrained_base(config, seed, s, text.load_corpus("prose")[0], device, progress, cache)
    return model


# ----------------------------------------------------------------------------- the story


def run(quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True,
        cache: bool = True) -> dict:
    """Pretrain on prose (or load the cached base), adapt to Python four ways, print the report."""
    s, config = settings(quick)
    C = config.n_embd
    # the whole demo on the BLAS threads its size calls for: a batch's rows times the largest
    # weight (fc1's 4C x C, or the V x C embedding the LM head shares)
    with auto_blas_threads(s["batch"] * config.n_ctx * max(4 * C * C, config.vocab_size * C)):
        return _run(quick, seed, device, progress, cache)


def _run(quick, seed, device, progress, cache) -> dict:
    t_start = time.perf_counter()
    s, config = settings(quick)
    T = config.n_ctx
    prose_train, prose_val = text.load_corpus("prose")
    py_train, py_val = text.load_corpus("python")
    py_eval = text.windows(py_val, T, s["eval_windows"], device)
    prose_eval = text.windows(prose_val, T, s["eval_windows"], device)

    base, base_info = pretrained_base(config, seed, s, prose_train, device, progress, cache)
    total = base.num_parameters()
    rows = [dict(method="base (prose only)", trainable=0, val_loss=evaluate(base, *py_eval),
                 prose_loss=evaluate(base, *prose_eval), step_time=None)]
    samples = {"base (before)": generate_text(base, PROMPT, s["sample_len"], seed=seed)}

    methods = [("LoRA (q, v)", ["q", "v"]), ("LoRA (all six linears)", list(SIX)), ("full fine-tuning", None)]
    for name, targets in methods:
        model = copy.deepcopy(base)  # a fresh copy of the base for each method
        if targets is not None:
            add_lora(model, targets, r=s["r"], alpha=s["alpha"], seed=seed)
        lr = s["lora_lr"] if targets is not None else s["full_lr"]
        batches = text.batches(py_train, s["batch"], T, seed=seed + 1, device=device)  # same stream for all
        hist = fit(model, AdamW(model, lr=lr), batches, s["adapt_steps"], progress=progress,
                   desc=f"adapt: {name}")
        rows.append(dict(method=name, trainable=model.num_parameters(trainable=True),
                         val_loss=evaluate(model, *py_eval), prose_loss=evaluate(model, *prose_eval),
                         step_time=hist["step_time"]))
        samples[f"{name} (after)"] = generate_text(model, PROMPT, s["sample_len"], seed=seed)

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
        where = (f"; cached at {b['path']}" if b["path"] else
                 f" (not cached: {b['not_cached']})" if b.get("not_cached") else " (cache off)")
        if b.get("damaged"):
            where += ", replacing a damaged cache file"
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
