"""The report of ``minilora reproduce``: Markdown next to the paper's figures, SVG plots, JSON.

Every sentence that compares with the paper is computed from the numbers (``findings``): when the
miniature disagrees with the paper, the report says so, and says why it may.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import svg
from .adapt import BUDGET
from .paper import PAPER


def _atomic_write(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write(results: dict, out: Path) -> dict:
    """``out/results.json``, ``out/report.md`` and the plots; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results["findings"] = findings(results)
    plots = figures(results)
    for name, text in plots.items():
        _atomic_write(out / name, text)
    _atomic_write(out / "results.json", json.dumps(results, indent=1, sort_keys=True, default=float))
    _atomic_write(out / "report.md", markdown(results, sorted(plots)))
    return {"report": out / "report.md", "json": out / "results.json", "plots": [out / p for p in sorted(plots)]}


def _label(types) -> str:
    return ", ".join("W" + t for t in types)


def figures(res: dict) -> dict:
    sim, budget, ranks = res["similarity"], res["budget"], res["ranks"]
    out = {
        "phi_ranks.svg": svg.heatmap(sim["trained"], f"φ(A r={sim['r_small']}, A r={sim['r_large']}, i, j), "
                                     f"{sim['layer']}", f"j (r = {sim['r_large']})", f"i (r = {sim['r_small']})"),
        "phi_init.svg": svg.heatmap(sim["init"], "the same two runs at initialisation (control)",
                                    f"j (r = {sim['r_large']})", f"i (r = {sim['r_small']})"),
        "budget.svg": svg.bars([_label(r["types"]).replace("W", "") for r in budget],
                               [r["val_loss"]["mean"] for r in budget], [r["val_loss"]["sd"] for r in budget],
                               "fixed budget: validation loss (lower is better)", "nats / char",
                               reference=res["base_val_loss"], reference_label="base"),
    }
    if "seeds" in sim:
        out["phi_seeds.svg"] = svg.heatmap(sim["seeds"], f"φ between seeds {sim['seed_pair']} at r = {sim['r_large']}",
                                           "j", "i")
    for types in {tuple(r["types"]) for r in ranks}:
        rows = [r for r in ranks if tuple(r["types"]) == types]
        out[f"ranks_{''.join(types)}.svg"] = svg.bars(
            [f"r={r['r']}" for r in rows], [r["val_loss"]["mean"] for r in rows], [r["val_loss"]["sd"] for r in rows],
            f"LoRA on {_label(types)}: validation loss by rank", "nats / char",
            reference=res["base_val_loss"], reference_label="base")
    return out


def findings(res: dict) -> dict:
    """One honest sentence per item, from the numbers (also stored in results.json)."""
    f = {}
    p, g = res["parameters"], res["gpt3"]
    f["parameters"] = (
        f"Counted trainable parameters {p['trainable']:,} {'equal' if p['trainable'] == p['from_shapes'] else 'DIFFER FROM'} "
        f"r·(d_in + d_out) summed over the adapted shapes ({p['from_shapes']:,}). For GPT-3 the same formula gives "
        f"{g['lora_params_r1']:,} at r = 1 (the paper's 4.7M) and {g['lora_params_r4']:,} at r = 4, "
        f"{g['checkpoint_lora_bytes_fp16_r4'] / 1e6:.1f} MB in 16 bits (the paper rounds to 35 MB). "
        f"The paper's 10,000× is the checkpoint ratio 350 GB / 35 MB; the parameter ratio at r = 4 is "
        f"{g['param_ratio_r4']:,.0f}×.")
    m = res["memory"]
    b1 = m["batch1"]
    f["memory"] = (
        f"At batch {m['batch']}, LoRA's training step holds {100 * m['ratio']:.0f}% of full fine-tuning's bytes "
        f"({100 * (1 - m['ratio']):.0f}% less); at batch 1, {100 * b1['ratio']:.0f}% "
        f"({100 * (1 - b1['ratio']):.0f}% less). The paper: 350 GB / 1.2 TB = 29%, 71% less ('up to 2/3'). "
        f"LoRA removes the frozen weights' gradients and AdamW's m and v; it keeps the weights and the "
        f"activations. In a model this small the activations are {100 * m['lora']['activations'] / m['lora']['total']:.0f}% "
        f"of LoRA's total at batch {m['batch']}, so the reduction "
        f"{'is far smaller than' if m['ratio'] > 0.4 else 'approaches'} the paper's; the fewer the activations "
        f"(batch 1), the closer it comes, and at GPT-3's size the weights' lines dominate.")
    sp = res["speed"]
    f["speed"] = (
        f"LoRA's step is {100 * sp['time_saved']:.0f}% shorter ({100 * sp['throughput_gain']:.0f}% more "
        f"tokens/s); the paper: 43.1 vs 32.5 tokens/s per V100, 32.6% more throughput, 24.6% less time "
        f"('a 25% speedup'). LoRA skips each frozen layer's dW product and its AdamW update but keeps the "
        f"forward product and the dx product: two of every three products remain, so a third is the most "
        f"it can save.")
    lat = res["latency"]
    parts = [f"batch {b}: merged/base {v['merged_over_base']:.3f}, unmerged/base {v['unmerged_over_base']:.3f}"
             for b, v in lat.items() if isinstance(v, dict)]
    f["latency"] = (
        "Merged, the adapted model runs the base's exact operations: " + "; ".join(parts) +
        f" (medians of interleaved rounds; merged and unmerged outputs differ by at most "
        f"{lat['merged_max_abs_diff']:.1e}). The paper's Table 1: no added latency after merging; unmerged "
        "LoRA pays two small products per adapted layer.")
    budget = res["budget"]
    best = min(budget, key=lambda r: r["val_loss"]["mean"])
    qv = next(r for r in budget if r["types"] == ["q", "v"])
    sd = max(r["val_loss"]["sd"] for r in budget)
    gap = qv["val_loss"]["mean"] - best["val_loss"]["mean"]
    f["budget"] = (
        f"At the budget of r = {budget[0]['r']} on one type, the lowest loss is {_label(best['types'])} "
        f"({best['val_loss']['mean']:.4f}); {{Wq, Wv}} is {gap:.4f} above it, against a seed-to-seed "
        f"standard deviation up to {sd:.4f}. The paper finds {{Wq, Wv}} (and all four) best and Wq or Wk "
        f"alone worst. " + ("The miniature agrees on {Wq, Wv} being among the best (within the seeds' spread)."
                           if gap <= 2 * sd else "The miniature does not reproduce {Wq, Wv} as best: ") +
        ("" if gap <= 2 * sd else "a model trained from scratch on characters, adapted from prose to Python, "
         "is not GPT-3 on WikiSQL; which weights matter depends on the model and the shift."))
    ranks = res["ranks"]
    lines = []
    for types in sorted({tuple(r["types"]) for r in ranks}, key=len):
        rows = [r for r in ranks if tuple(r["types"]) == types]
        lo = min(rows, key=lambda r: r["val_loss"]["mean"])
        r1 = rows[0]
        spread = max(r["val_loss"]["sd"] for r in rows)
        lines.append(f"on {_label(types)} the best is r = {lo['r']} ({lo['val_loss']['mean']:.4f}); r = {r1['r']} is "
                     f"{r1['val_loss']['mean'] - lo['val_loss']['mean']:.4f} above it (seed sd up to {spread:.4f})")
    small_ok = all(_small_r_enough(ranks, types) for types in {tuple(r["types"]) for r in ranks})
    f["ranks"] = ("; ".join(lines) + ". The paper: " + PAPER["table6_claim"] + ". " +
                  ("The miniature agrees: the smallest r is within two seed standard deviations of the best."
                   if small_ok else
                   "The miniature does not reproduce it: here a larger r keeps helping. This base was trained "
                   "from scratch on prose, and Python is far from prose for it; the paper adapts a model whose "
                   "pretraining already holds most of what the task needs, so a low-rank change suffices."))
    sim = res["similarity"]
    t = sim["top"]
    f["similarity"] = (
        f"φ of the top direction (i = j = 1) between r = {sim['r_small']} and r = {sim['r_large']}: "
        f"{t['trained']:.3f} trained, {t['init']:.3f} at initialisation, {t['random']:.3f} for random subspaces"
        + (f", {t['seeds']:.3f} between two seeds at r = {sim['r_large']}" if "seeds" in t else "") +
        f". The paper: φ {PAPER['phi_top_direction']} for GPT-3 (d = 12,288). "
        + ("The miniature shows it: training put a shared top direction into A, far above both controls."
           if t["trained"] > 0.5 and t["trained"] > 3 * max(t["init"], t["random"]) else
           "The miniature does not show it clearly: A moves little from its random start in a short run "
           "(A's gradient is scaled by B, which starts at zero), so its top directions stay close to the "
           "random initial ones.")
        + (f" With d = {sim['d']} and r = {sim['r_large']}, the r = {sim['r_large']} adapter spans all of R^d: "
           f"φ(i, j = {sim['r_large']}) = 1 trivially." if sim["r_large"] >= sim["d"] else ""))
    amp = res["amplification"]["rows"]
    f["amplification"] = (
        "; ".join(f"r = {a['r']}: ‖ΔW‖ = {a['delta_norm']:.3g}, ‖UᵀWVᵀ‖ = {a['proj_delta']:.3g} (W's own "
                  f"top-r {a['proj_W']:.3g}, random {a['proj_random']:.3g}), factor {a['factor']:.3g}" for a in amp)
        + f". The paper (GPT-3, layer 48 of 96): factor ≈ {PAPER['amplification_r4']} at r = 4 and "
        f"≈ {PAPER['amplification_r64']} at r = 64 — ΔW amplifies directions W has but does not emphasise. "
        + ("Here too the factor falls with r." if len(amp) > 1 and amp[0]["factor"] > amp[-1]["factor"]
           else "Here the factor does not fall with r.")
        + (f" At r = {amp[-1]['r']} = d the top-r directions span everything: all three projections equal ‖W‖ "
           "and the factor is just ‖ΔW‖ / ‖W‖." if amp[-1]["r"] >= res["similarity"]["d"] else ""))
    return f


def _small_r_enough(ranks, types) -> bool:
    rows = [r for r in ranks if tuple(r["types"]) == tuple(types)]
    best = min(rows, key=lambda r: r["val_loss"]["mean"])
    first = rows[0]
    sd = max(max(r["val_loss"]["sd"] for r in rows), 1e-12)
    return first["val_loss"]["mean"] - best["val_loss"]["mean"] <= 2 * sd


def markdown(res: dict, plots) -> str:
    f = res["findings"]
    m, p, g = res["meta"], res["parameters"], res["gpt3"]
    cfg = res["model"]["config"]
    L = [f"# The LoRA paper, reproduced in miniature ({m['mode']} run)", "",
         f"Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models* (2021, arXiv 2106.09685), each headline "
         f"claim next to a measurement with minilora's own code. Command: `{m['command']}`; {m['date']}; "
         f"minilora {m['minilora']}, NumPy {m['numpy']}, Python {m['python']}; {m['machine']}; device {m['device']}; "
         f"seeds {m['settings']['seeds']} (ranks and subspaces: {m['settings']['rank_seeds']}); "
         f"{m.get('wall_seconds', 0):.0f} s"
         + (f" (1-minute load average {m['load_average']:.1f} at the start"
            + (": above the CPU count, other processes shared the cores and the timings)"
               if m["load_average"] > (os.cpu_count() or 1) else ")")
            if m.get("load_average") is not None else "")
         + f". Every number is in `results.json`; a rerun with the same command "
         "gives the same losses (timings vary).", "",
         f"Model: {res['model']['name']}, {cfg['n_layer']} blocks, C = {cfg['n_embd']}, {cfg['n_head']} heads, "
         f"n_ctx = {cfg['n_ctx']}, {res['model']['total_params']:,} parameters, pretrained on English prose and "
         f"adapted to Python source (validation loss: nats per character on held-out modules; the base scores "
         f"{res['base_val_loss']:.4f}). GPT-3 is 175 B parameters adapted to WikiSQL and MultiNLI: the miniature "
         "can show the *mechanisms*; where it differs, the text says so.", ""]
    L += ["## 1. Parameters and checkpoint size", "",
          "| | trainable | of all | checkpoint | ratio |", "|---|---:|---:|---:|---:|",
          f"| this GPT, LoRA r = {p['r']} on Wq, Wv | {p['trainable']:,} | {p['total']:,} | "
          f"{p['adapter_file_bytes']:,} B (adapter file) vs {p['full_file_bytes']:,} B | "
          f"{p['param_ratio']:.1f}× params, {p['file_ratio']:.1f}× files |",
          f"| GPT-3, r = 1 (computed) | {g['lora_params_r1']:,} | {g['total_params']:,} | | paper: 4.7M |",
          f"| GPT-3, r = 4 (computed) | {g['lora_params_r4']:,} | | {g['checkpoint_lora_bytes_fp16_r4'] / 1e6:.1f} MB "
          f"vs {g['checkpoint_full_bytes_fp16'] / 1e9:.0f} GB (16-bit) | {g['param_ratio_r4']:,.0f}× params; paper: "
          "350 GB / 35 MB = 10,000× checkpoints |", "", f["parameters"], ""]
    mem = res["memory"]
    L += ["## 2. Training memory", "",
          f"| bytes | LoRA (Wq, Wv, r = 4), batch {mem['batch']} | full fine-tuning, batch {mem['batch']} | "
          "LoRA, batch 1 | full, batch 1 |", "|---|---:|---:|---:|---:|"]
    for k in ("weights", "gradients", "optimizer", "activations", "total", "peak_traced_above_start"):
        name = "peak during a step (tracemalloc)" if k.startswith("peak") else k
        L.append(f"| {name} | {mem['lora'][k]:,} | {mem['full'][k]:,} | {mem['batch1']['lora'][k]:,} | "
                 f"{mem['batch1']['full'][k]:,} |")
    L += ["", "The ledger counts the arrays themselves (weights, gradients, AdamW's m and v, the caches the "
          "backward reads); the peak is measured by the process and also holds the step's temporaries.", "",
          f["memory"], ""]
    sp = res["speed"]
    L += ["## 3. Training speed", "",
          "| | step (ms) | tokens / s |", "|---|---:|---:|",
          f"| LoRA (Wq, Wv, r = 4) | {1e3 * sp['step_seconds']['lora']:.2f} | {sp['tokens_per_s']['lora']:,.0f} |",
          f"| full fine-tuning | {1e3 * sp['step_seconds']['full']:.2f} | {sp['tokens_per_s']['full']:,.0f} |",
          "", f["speed"], ""]
    L += ["## 4. Inference latency after merging", "", "| batch | base (ms) | LoRA unmerged | LoRA merged |",
          "|---:|---:|---:|---:|"]
    for b, v in res["latency"].items():
        if isinstance(v, dict):
            t = v["seconds"]
            L.append(f"| {b} | {1e3 * t['base']:.3f} | {1e3 * t['unmerged']:.3f} | {1e3 * t['merged']:.3f} |")
    L += ["", f["latency"], ""]
    L += ["## 5. Which weights to adapt under a fixed budget (Table 5)", "",
          "| weights | r | trainable | val loss (mean ± sd over seeds) | paper WikiSQL / MultiNLI |",
          "|---|---:|---:|---:|---:|"]
    for r in res["budget"]:
        pr = PAPER["table5"][tuple(r["types"])]
        L.append(f"| {_label(r['types'])} | {r['r']} | {r['trainable']:,} | {r['val_loss']['mean']:.4f} ± "
                 f"{r['val_loss']['sd']:.4f} | {pr[1]} / {pr[2]} (r = {pr[0]}) |")
    L += ["", "![budget](budget.svg)", "", f["budget"], ""]
    L += ["## 6. How small can r be (Table 6)", "", "| weights | r | trainable | val loss (mean ± sd) |",
          "|---|---:|---:|---:|"]
    for r in res["ranks"]:
        L.append(f"| {_label(r['types'])} | {r['r']} | {r['trainable']:,} | {r['val_loss']['mean']:.4f} ± "
                 f"{r['val_loss']['sd']:.4f} |")
    L += [""] + [f"![{p}]({p})" for p in plots if p.startswith("ranks_")] + ["", f["ranks"], ""]
    sim = res["similarity"]
    L += ["## 7. Subspace similarity (§7.2, Eq. 4)", "",
          f"φ(A₁, A₂, i, j) = ‖U_{{A₁}}^{{i⊤}} U_{{A₂}}^{{j}}‖²_F / min(i, j), U the top right-singular vectors of "
          f"A (A is r × d_in: its rows live in the input space, where ΔW = B A reads x). Layer {sim['layer']}, "
          f"LoRA on {_label(sim['types'])}, seed {sim['seed']}.", "",
          "| φ(i = 1, j = 1) | value |", "|---|---:|"]
    for k, v in sim["top"].items():
        L.append(f"| {dict(trained='trained, r = %d vs r = %d' % (sim['r_small'], sim['r_large']), init='the same runs at init', random='random subspaces (E φ = max(i, j)/d)', seeds='two seeds, r = %d' % sim['r_large'])[k]} | {v:.3f} |")
    L += ["", "![phi](phi_ranks.svg) ![phi at init](phi_init.svg)"
          + (" ![phi seeds](phi_seeds.svg)" if "seeds" in sim else ""), "", f["similarity"], ""]
    amp = res["amplification"]
    L += ["## 8. Amplification (§7.3, Table 7)", "",
          f"Layer {amp['layer']}, LoRA on {_label(amp['types'])}, seed {amp['seed']}; U, V the top-r singular "
          "directions of ΔW (or of W, or random).", "",
          "| r | ‖ΔW‖_F | ‖UᵀWVᵀ‖_F, ΔW's | W's own | random | ‖W‖_F | factor ‖ΔW‖ / ‖UᵀWVᵀ‖ |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    for a in amp["rows"]:
        L.append(f"| {a['r']} | {a['delta_norm']:.4g} | {a['proj_delta']:.4g} | {a['proj_W']:.4g} | "
                 f"{a['proj_random']:.4g} | {a['W_norm']:.4g} | {a['factor']:.4g} |")
    L += ["", f"Paper (GPT-3): r = 4: 6.91 / 0.32 ≈ {PAPER['amplification_r4']}; r = 64: 3.57 / 1.90 ≈ "
          f"{PAPER['amplification_r64']}.", "", f["amplification"], ""]
    if "pretrained" in res:
        from .pretrained import markdown_section
        L += markdown_section(res["pretrained"])
    return "\n".join(L) + "\n"
