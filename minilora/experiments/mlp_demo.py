"""The main demo: a digits classifier meets a rotated world, and LoRA adapts it.

1. Pretrain a base MLP on upright 8×8 digits.
2. Show its accuracy collapse on the same digits rotated by 90°.
3. LoRA-adapt it on rotated digits with the base frozen (r=4 on every layer).
4. Fully fine-tune a copy of the base for comparison.
5. Report trainable vs total parameters, optimizer-state bytes, accuracy, step time, and check
   that the merged model (W + scale·BA) computes what the unmerged one does.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import backend
from ..nn import MLP
from ..optim import AdamW
from ..fast.runtime import auto_blas_threads
from ..train import accuracy, fit


def _moved(arrays, device):
    return [backend.from_numpy(a, device) for a in arrays]


def run(quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True,
        hidden: int = 256, r: int = 4, alpha: float = 8.0) -> dict:
    # the whole demo (training, merging, evaluation) on the BLAS threads its size calls for (one
    # for these 64-row products), so its printed numbers do not depend on the machine's cores
    with auto_blas_threads(64 * max(64, hidden) * hidden):
        return _run(quick, seed, device, progress, hidden, r, alpha)


def _run(quick, seed, device, progress, hidden, r, alpha) -> dict:
    from ..data.digits import batches, load_digits

    base_steps, adapt_steps = (150, 120) if quick else (1500, 1000)
    up = _moved(load_digits("upright", seed=seed), device)
    rot = _moved(load_digits("rotated", seed=seed), device)
    xtr, ytr, xte, yte = up
    rxtr, rytr, rxte, ryte = rot

    # 1. the base model
    base = MLP((64, hidden, hidden, 10), activation="relu", seed=seed, device=device)
    fit(base, AdamW(base, lr=1e-3, weight_decay=1e-4), batches(xtr, ytr, 64, seed), base_steps,
        progress=progress, desc="pretrain base (upright)")
    report = {
        "base_upright": accuracy(base, xte, yte),
        "base_rotated": accuracy(base, rxte, ryte),
    }

    # 3. LoRA: the base stays frozen, only A and B of each layer train
    lora = copy.deepcopy(base).add_lora(["fc1", "fc2", "fc3"], r=r, alpha=alpha, seed=seed)
    opt = AdamW(lora, lr=3e-3)
    hist = fit(lora, opt, batches(rxtr, rytr, 64, seed + 1), adapt_steps, progress=progress,
               desc=f"LoRA r={r} (rotated)")
    report.update(lora_rotated=accuracy(lora, rxte, ryte), lora_step_time=hist["step_time"],
                  lora_trainable=lora.num_parameters(True), total=lora.num_parameters(),
                  lora_state_bytes=opt.state_bytes())
    for layer in lora.lora_layers().values():  # adapter off: the base model, untouched
        layer.set_active(None)
    report["lora_off_upright"] = accuracy(lora, xte, yte)
    for layer in lora.lora_layers().values():
        layer.set_active("default")

    # 5. merged == unmerged
    lora.eval()
    unmerged = backend.to_numpy(lora.forward(rxte)).astype(np.float64)
    lora.merge()
    merged = backend.to_numpy(lora.forward(rxte)).astype(np.float64)
    report["merge_max_abs_diff"] = float(np.max(np.abs(merged - unmerged)))
    report["merge_rel_diff"] = float(np.linalg.norm(merged - unmerged) / np.linalg.norm(unmerged))
    report["lora_merged_rotated"] = accuracy(lora, rxte, ryte)
    lora.unmerge()

    # 4. full fine-tuning of a copy, same steps
    full = copy.deepcopy(base)
    opt_full = AdamW(full, lr=1e-3)
    hist_full = fit(full, opt_full, batches(rxtr, rytr, 64, seed + 1), adapt_steps, progress=progress,
                    desc="full fine-tune (rotated)")
    report.update(full_rotated=accuracy(full, rxte, ryte), full_upright=accuracy(full, xte, yte),
                  full_step_time=hist_full["step_time"], full_trainable=full.num_parameters(True),
                  full_state_bytes=opt_full.state_bytes())
    print(format_report(report, r=r, alpha=alpha, device=device))
    return report


def format_report(m: dict, r: int, alpha: float, device: str) -> str:
    n_base = m["full_trainable"]
    pct = 100.0 * m["lora_trainable"] / n_base
    rows = [
        ("base model", n_base, 0, m["base_upright"], m["base_rotated"], None),
        (f"LoRA r={r}, alpha={alpha:g}", m["lora_trainable"], m["lora_state_bytes"],
         m["lora_off_upright"], m["lora_rotated"], m["lora_step_time"]),
        ("full fine-tuning", m["full_trainable"], m["full_state_bytes"], m["full_upright"],
         m["full_rotated"], m["full_step_time"]),
    ]
    out = [f"minilora demo — digits, rotated 90° (device: {device})", ""]
    out.append(f"{'model':<22}{'trainable':>10}{'opt. state':>12}{'upright acc':>13}{'rotated acc':>13}{'step':>10}")
    for name, n, b, up, rot, t in rows:
        step = f"{t * 1e3:.2f} ms" if t is not None else "-"
        state = f"{b / 1024:.1f} KiB" if b else "-"
        out.append(f"{name:<22}{n:>10,}{state:>12}{up:>13.1%}{rot:>13.1%}{step:>10}")
    out += [
        "",
        f"LoRA trains {m['lora_trainable']:,} parameters ({pct:.1f}% of the base's {n_base:,}); its AdamW state is "
        f"{m['full_state_bytes'] / max(m['lora_state_bytes'], 1):.1f}x smaller than full fine-tuning's.",
        "LoRA's 'upright acc' is measured with the adapter switched off: the frozen base is intact, "
        "while full fine-tuning overwrote it.",
        f"merged == unmerged: max |Δlogit| = {m['merge_max_abs_diff']:.2e}, relative {m['merge_rel_diff']:.2e}"
        f" (float32); merged accuracy {m['lora_merged_rotated']:.1%}",
    ]
    return "\n".join(out)
