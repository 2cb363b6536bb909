"""The driver of ``minilora reproduce``: build the setting, measure items 1–8, write the report."""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import __version__, backend
from ..adapters import save_adapter
from ..checkpoint import save_weights
from ..data import text
from ..experiments import gpt_demo
from ..fast.runtime import auto_blas_threads
from ..language import evaluate
from ..nn.lora import add_lora, lora_layers
from ..optim import AdamW
from . import adapt, measure, paper, report, subspaces

SETTINGS = {  # what each mode runs; every number of the report comes from one of these runs
    "quick": dict(gpt="quick", steps=30, lr=3e-3, seeds=(0, 1), rank_seeds=(0, 1), r_one=8,
                  ranks=(1, 2, 4, 8), r_large=16, eval_windows=16, batch=16, rounds=5, latency_batch=8),
    "full": dict(gpt="full", steps=250, lr=3e-3, seeds=(0, 1, 2), rank_seeds=(0, 1), r_one=8,
                 ranks=(1, 2, 4, 8), r_large=64, eval_windows=128, batch=32, rounds=15, latency_batch=32),
}


def gpt_setting(quick: bool, device: str, progress: bool, cache: bool) -> adapt.Setting:
    """The tiny GPT: the demo's base pretrained on prose, adapted to Python source."""
    s = SETTINGS["quick" if quick else "full"]
    base = gpt_demo.pretrained_gpt(quick=quick, device=device, cache=cache, progress=progress)
    py_train, py_val = text.load_corpus("python")
    T = base.config.n_ctx
    val = text.windows(py_val, T, s["eval_windows"], device)
    return adapt.Setting(
        name="tiny GPT", base=base,
        batches=lambda seed: text.batches(py_train, s["batch"], T, seed=seed, device=device),
        val_loss=lambda model: evaluate(model, *val),
        names={t: t for t in adapt.TYPES}, layer=f"blocks.{base.config.n_layer // 2}.attn.q",
        steps=s["steps"], lr=s["lr"], d_model=base.config.n_embd)


def run(quick: bool = False, seed: int = 0, out="minilora-reproduce", device: str = "cpu",
        progress: bool = True, pretrained: bool = False, cache: bool = True) -> dict:
    """Measure items 1–8 (see the package docstring), write ``out/report.md`` and
    ``out/results.json``, print where they are; returns the results."""
    backend.resolve_device(device)
    t0 = time.perf_counter()
    s = dict(SETTINGS["quick" if quick else "full"])
    if seed:  # --seed N shifts every seed; the recorded seeds are the ones used
        s["seeds"] = tuple(seed + k for k in s["seeds"])
        s["rank_seeds"] = tuple(seed + k for k in s["rank_seeds"])
    setting = gpt_setting(quick, device, progress, cache)
    C = setting.base.config.n_embd
    with auto_blas_threads(s["batch"] * setting.base.config.n_ctx * 4 * C * C):
        results = {"meta": meta(quick, s, device), "gpt3": paper.gpt3_rows(),
                   "model": {"name": setting.name, "config": dataclasses.asdict(setting.base.config),
                             "total_params": setting.base.num_parameters()}}
        results.update(cost_items(setting, s, device))
        results.update(adaptation_items(setting, s, progress))
    if pretrained:
        from .pretrained import pretrained_items
        results["pretrained"] = pretrained_items(quick, s, progress)
    results["meta"]["wall_seconds"] = time.perf_counter() - t0
    paths = report.write(results, Path(out))
    print(f"minilora reproduce: report {paths['report']}, numbers {paths['json']} "
          f"({results['meta']['wall_seconds']:.0f} s)")
    return results


def meta(quick, s, device) -> dict:
    return {"mode": "quick" if quick else "full", "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in s.items()},
            "device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "minilora": __version__, "numpy": np.__version__, "python": sys.version.split()[0],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "command": "minilora reproduce" + (" --quick" if quick else ""),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def cost_items(setting, s, device) -> dict:
    """Items 1–4 on the tiny GPT: LoRA (Wq, Wv) at r = 4 against full fine-tuning."""
    base, r = setting.base, 4
    lora = add_lora(copy.deepcopy(base), ["q", "v"], r=r, alpha=setting.scale * r, seed=s["seeds"][0])
    full = copy.deepcopy(base)
    x, y = next(setting.batches(s["seeds"][0] + 1))

    # 1. parameters and checkpoint bytes: counted, computed from the shapes, and the files' sizes
    shapes = [tuple(m.base.params["W"].shape) for m in lora_layers(lora).values()]
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(lora, Path(tmp, "a"))
        adapter_bytes = os.path.getsize(Path(tmp, "a", "adapter_model.safetensors"))
        full_bytes = save_weights(base, Path(tmp, "base.safetensors"))
    params = {"r": r, "types": ["q", "v"], "trainable": lora.num_parameters(trainable=True),
              "from_shapes": paper.lora_params(shapes, r), "total": base.num_parameters(),
              "adapter_file_bytes": adapter_bytes, "full_file_bytes": full_bytes}
    params["param_ratio"] = params["total"] / params["trainable"]
    params["file_ratio"] = full_bytes / adapter_bytes

    # 2. memory: the ledger of one AdamW step, LoRA against full fine-tuning
    lora_m, full_m = copy.deepcopy(lora), copy.deepcopy(full)
    memory = {"lora": measure.memory_ledger(lora_m, AdamW(lora_m, lr=1e-3), x, y),
              "full": measure.memory_ledger(full_m, AdamW(full_m, lr=1e-3), x, y)}
    memory["ratio"] = memory["lora"]["total"] / memory["full"]["total"]
    # the same ledger at batch 1: activations shrink with the batch, the weights' lines do not,
    # so this shows the mechanism that dominates at GPT-3's size
    lora_1, full_1 = copy.deepcopy(lora), copy.deepcopy(full)
    memory["batch1"] = {"lora": measure.memory_ledger(lora_1, AdamW(lora_1, lr=1e-3), x[:1], y[:1]),
                        "full": measure.memory_ledger(full_1, AdamW(full_1, lr=1e-3), x[:1], y[:1])}
    memory["batch1"]["ratio"] = memory["batch1"]["lora"]["total"] / memory["batch1"]["full"]["total"]
    memory["batch"] = int(x.shape[0])

    # 3. speed: the two steps take turns on the same batch
    lora_s, full_s = copy.deepcopy(lora), copy.deepcopy(full)
    times = measure.step_times({"lora": (lora_s, AdamW(lora_s, lr=1e-3), x, y),
                                "full": (full_s, AdamW(full_s, lr=1e-3), x, y)}, s["rounds"])
    tokens = int(x.size)
    speed = {"step_seconds": times, "tokens_per_step": tokens,
             "tokens_per_s": {k: tokens / v for k, v in times.items()},
             "throughput_gain": times["full"] / times["lora"] - 1, "time_saved": 1 - times["lora"] / times["full"]}

    # 4. latency: base, LoRA unmerged, LoRA merged; an adapter with B ≠ 0 so merging changes W
    unmerged = copy.deepcopy(lora)
    gen = np.random.default_rng(s["seeds"][0])
    for layer in lora_layers(unmerged).values():
        ad = layer.adapters["default"]
        ad.params["B"] = backend.from_numpy((0.02 * gen.standard_normal(ad.params["B"].shape)).astype("float32"), device)
    merged = copy.deepcopy(unmerged).merge()
    latency = {}
    T = base.config.n_ctx
    for batch in (1, s["latency_batch"]):
        ids = x[:1].repeat(batch, 0) if batch > x.shape[0] else x[:batch]
        ids = ids[:, :T]
        t = measure.latencies({"base": base, "unmerged": unmerged, "merged": merged}, ids, 3 * s["rounds"])
        latency[str(batch)] = {"seconds": t, "merged_over_base": t["merged"] / t["base"],
                               "unmerged_over_base": t["unmerged"] / t["base"]}
    with unmerged.evaluating(), merged.evaluating():
        latency["merged_max_abs_diff"] = float(np.max(np.abs(backend.to_numpy(merged.forward(x)) -
                                                             backend.to_numpy(unmerged.forward(x)))))
    return {"parameters": params, "memory": memory, "speed": speed, "latency": latency}


def adaptation_items(setting, s, progress) -> dict:
    """Items 5–8: the trained runs, the budget and rank tables, φ and amplification."""
    runs = adapt.Runs(setting, progress=progress)
    ranks = tuple(s["ranks"]) + (s["r_large"],)
    out = {"base_val_loss": runs.base_loss(),
           "budget": adapt.budget_table(runs, s["r_one"], s["seeds"]),
           "ranks": adapt.rank_table(runs, ranks, s["rank_seeds"])}
    types = ("q", "v")
    out["similarity"] = subspaces.similarity(runs, types, s["r_one"], s["r_large"], s["rank_seeds"], setting.layer)
    W = backend.to_numpy(setting.base.get_module(setting.layer).params["W"])
    out["amplification"] = {"layer": setting.layer, "types": list(types), "seed": s["rank_seeds"][0],
                            "rows": subspaces.amplification_rows(runs, types, (4, s["r_large"]),
                                                                 s["rank_seeds"][0], setting.layer, W)}
    out["runs"] = [{"types": list(k[0]), "r": k[1], "seed": k[2], "val_loss": v["val_loss"],
                    "trainable": v["trainable"], "seconds": v["seconds"]} for k, v in runs.done.items()]
    return out
