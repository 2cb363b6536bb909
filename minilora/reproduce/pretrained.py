"""``minilora reproduce --pretrained``: items 5–8 on SmolLM2-135M, a real pretrained model.

Adapting a pretrained model is the paper's own setting. The task is the SmolLM2 demo's
text-to-SQL (``minilora.data.sql``, WikiSQL in miniature); the validation loss is the
cross-entropy on the answer tokens of held-out examples (new tables, values and phrasings).
SmolLM2 uses grouped-query attention: Wk and Wv map 576 → 192, so at one r they hold fewer
parameters than Wq and Wo (the budget table shows the counts). Fewer seeds and steps than on the
tiny GPT: each run is a LoRA fine-tune of all 30 layers.
"""
from __future__ import annotations

import time

import numpy as np

from .. import backend
from ..data import sql
from ..experiments import smollm_demo
from ..functional.losses import LOSSES
from ..pretrained import smollm2, smollm2_tokenizer
from . import adapt, subspaces

SETTINGS = {
    "full": dict(n_layer=None, steps=24, batch=8, lr=2e-3, seeds=(0,), rank_seeds=(0, 1), r_one=8,
                 ranks=(1, 8), r_large=64, n_val=32, n_train=2000),
    "quick": dict(n_layer=2, steps=2, batch=2, lr=2e-3, seeds=(0,), rank_seeds=(0, 1), r_one=8,
                  ranks=(1, 8), r_large=16, n_val=4, n_train=64),
}


def val_loss_fn(tok, examples, batch: int = 8):
    """model -> mean cross-entropy per answer token over ``examples`` (eval mode)."""
    pairs = [smollm_demo.encode(tok, ex) for ex in examples]
    loss_forward, _ = LOSSES["masked_cross_entropy"]

    def val_loss(model) -> float:
        total, n = 0.0, 0
        with model.evaluating():
            stream = smollm_demo.batches(tok, examples, batch, seed=0)
            for _ in range(0, len(pairs), batch):
                x, y = next(stream)
                k = int((backend.to_numpy(y) != -100).sum())
                loss, _ = loss_forward(model.forward(x), y)
                total, n = total + float(loss) * k, n + k
            model.clear_cache()
        return total / n

    return val_loss


def setting(quick: bool) -> tuple:
    s = SETTINGS["quick" if quick else "full"]
    base = smollm2(n_layer=s["n_layer"])
    tok = smollm2_tokenizer()
    train, heldout = sql.task(s["n_train"], s["n_val"], 0)
    mid = base.config.n_layer // 2
    st = adapt.Setting(
        name="SmolLM2-135M", base=base,
        batches=lambda seed: smollm_demo.batches(tok, train, s["batch"], seed=seed),
        val_loss=val_loss_fn(tok, heldout), names={t: f"{t}_proj" for t in adapt.TYPES},
        layer=f"model.layers.{mid}.self_attn.q_proj", steps=s["steps"], lr=s["lr"],
        d_model=base.config.n_embd, loss="masked_cross_entropy")
    return st, s


def pretrained_items(quick: bool, _gpt_settings: dict, progress: bool) -> dict:
    """Items 5–8 on SmolLM2; the same tables and controls as on the tiny GPT."""
    t0 = time.perf_counter()
    st, s = setting(quick)
    runs = adapt.Runs(st, progress=progress)
    ranks = tuple(s["ranks"]) + (s["r_large"],)
    out = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
           "n_layer": st.base.config.n_layer, "base_val_loss": runs.base_loss(),
           "budget": adapt.budget_table(runs, s["r_one"], s["seeds"]),
           "ranks": adapt.rank_table(runs, ranks, s["seeds"], type_sets=(("q", "v"),))}
    types = ("q", "v")
    # the control of the one-seed tables: {Wq, Wv} at the budget's r over two seeds
    spread = [runs.get(types, adapt.budget_rank(types, s["r_one"]), k)["val_loss"] for k in s["rank_seeds"]]
    out["seed_spread"] = {"types": list(types), "r": adapt.budget_rank(types, s["r_one"]), **adapt.summary(spread)}
    out["similarity"] = subspaces.similarity(runs, types, s["r_one"], s["r_large"], s["rank_seeds"], st.layer)
    W = np.asarray(backend.to_numpy(st.base.get_module(st.layer).params["W"]))
    out["amplification"] = {"layer": st.layer, "types": list(types), "seed": s["rank_seeds"][0],
                            "rows": subspaces.amplification_rows(runs, types, (4, s["r_large"]),
                                                                 s["rank_seeds"][0], st.layer, W)}
    out["seconds"] = time.perf_counter() - t0
    return out


def markdown_section(p: dict) -> list:
    from .report import _label

    L = [f"## Items 5–8 on SmolLM2-135M (`--pretrained`, {p['n_layer']} layers, {p['seconds']:.0f} s)", "",
         f"Text-to-SQL (the SmolLM2 demo's task); validation loss per answer token on {p['settings']['n_val']} "
         f"held-out examples; {p['settings']['steps']} AdamW steps of {p['settings']['batch']} examples per run; "
         f"the base scores {p['base_val_loss']:.4f}.", "",
         "| weights | r | trainable | val loss |", "|---|---:|---:|---:|"]
    for r in p["budget"] + p["ranks"]:
        L.append(f"| {_label(r['types'])} | {r['r']} | {r['trainable']:,} | {r['val_loss']['mean']:.4f}"
                 + (f" ± {r['val_loss']['sd']:.4f}" if len(r['val_loss']['values']) > 1 else "") + " |")
    sp = p["seed_spread"]
    L += ["", f"Seed-to-seed control: {_label(sp['types'])} at r = {sp['r']} over seeds gives "
          f"{', '.join(f'{v:.4f}' for v in sp['values'])} (sd {sp['sd']:.4f}); differences in the table "
          "smaller than that are noise."]
    sim = p["similarity"]
    t = sim["top"]
    L += ["", f"φ(i = j = 1), {sim['layer']}, r = {sim['r_small']} vs r = {sim['r_large']} (d = {sim['d']}): "
          f"{t['trained']:.3f} trained, {t['init']:.3f} at init, {t['random']:.4f} random"
          + (f", {t['seeds']:.3f} between seeds at r = {sim['r_large']}" if "seeds" in t else "") + ".", ""]
    for a in p["amplification"]["rows"]:
        L.append(f"- amplification at r = {a['r']}: ‖ΔW‖ = {a['delta_norm']:.4g}, ‖UᵀWVᵀ‖ = {a['proj_delta']:.4g} "
                 f"(W's own {a['proj_W']:.4g}, random {a['proj_random']:.4g}), factor {a['factor']:.4g}")
    L.append("")
    return L
