"""Task switching: one frozen base, two small adapters, saved as PEFT files and swapped.

1. Pretrain a base MLP on upright 8×8 digits.
2. Train adapter "rotated" (digits turned 90°) and adapter "mirrored" (flipped left–right) on the
   same frozen base: each is a pair A, B per layer, a few percent of the base.
3. Save each adapter as a PEFT directory, and the base as one safetensors file.
4. Reload: a fresh base from its file, both adapters from theirs — logits bitwise as before.
5. Report every adapter's accuracy on every domain, adapter bytes vs full-model bytes, and the
   median time to switch adapters (in memory, or from disk) vs to load a full model's weights.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time

from .. import adapters, backend
from ..checkpoint import load_weights, save_weights
from ..nn import MLP
from ..optim import AdamW
from ..fast.runtime import auto_blas_threads
from ..train import accuracy, fit

DOMAINS = ("upright", "rotated", "mirrored")
TASKS = ("rotated", "mirrored")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# The whole-model file is minilora.checkpoint's (atomic save, fully checked load); the notebook
# 04_adapters imports it from here under these names.
save_model = save_weights
load_model_weights = load_weights


def run(quick: bool = False, seed: int = 0, device: str = "cpu", progress: bool = True,
        out_dir=None, r: int = 4, alpha: float = 8.0) -> dict:
    hidden = 64 if quick else 256
    # the whole demo on the BLAS threads its size calls for (as mlp_demo.run)
    with auto_blas_threads(64 * max(64, hidden) * hidden):
        return _run(quick, seed, device, progress, out_dir, r, alpha, hidden)


def _run(quick, seed, device, progress, out_dir, r, alpha, hidden) -> dict:
    from ..data.digits import batches, load_digits

    base_steps, adapt_steps, repeats = (200, 200, 5) if quick else (1500, 1000, 25)
    data = {d: [backend.from_numpy(a, device) for a in load_digits(d, seed=seed)] for d in DOMAINS}
    sizes = (64, hidden, hidden, 10)

    # 1. the base
    base = MLP(sizes, activation="relu", seed=seed, device=device)
    xtr, ytr, _, _ = data["upright"]
    fit(base, AdamW(base, lr=1e-3, weight_decay=1e-4), batches(xtr, ytr, 64, seed), base_steps,
        progress=progress, desc="pretrain base (upright)")

    # 2. two adapters on one copy of it; adding one freezes everything already there
    model = copy.deepcopy(base)
    for i, task in enumerate(TASKS):
        adapters.add_adapter(model, task, targets=["fc*"], r=r, alpha=alpha, seed=seed + 1 + i, activate=True)
        xtr, ytr, _, _ = data[task]
        fit(model, AdamW(model, lr=3e-3), batches(xtr, ytr, 64, seed + 1 + i), adapt_steps,
            progress=progress, desc=f"adapter {task!r} r={r}")

    acc = {}
    for task in (None,) + TASKS:
        adapters.set_active(model, task)
        acc[task or "base"] = {d: accuracy(model, data[d][2], data[d][3]) for d in DOMAINS}

    # 3.-5. files, reload, timings
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="minilora-task-switch-")
        out_dir = tmp.name
    try:
        paths = {task: os.path.join(out_dir, task) for task in TASKS}
        sizes_bytes = {task: adapters.save_adapter(model, paths[task], adapter=task,
                                                   base_model_name_or_path="minilora-digits-base")["bytes"]
                       for task in TASKS}
        full_path = os.path.join(out_dir, "base_model.safetensors")
        sizes_bytes["full_model"] = save_weights(base, full_path)

        fresh = MLP(sizes, activation="relu", seed=seed + 100, device=device)  # wrong weights...
        load_weights(fresh, full_path)  # ...until the base file is read
        for task in TASKS:
            adapters.load_adapter(fresh, paths[task], adapter_name=task, activate=False)
        x_any = data["upright"][2]
        bitwise = True
        for task in TASKS:
            adapters.set_active(model, task), adapters.set_active(fresh, task)
            same = backend.to_numpy(model.forward(x_any)).tobytes() == backend.to_numpy(fresh.forward(x_any)).tobytes()
            bitwise = bitwise and same

        flip = iter(range(10**9))
        t_switch = median_time(lambda: adapters.set_active(fresh, TASKS[next(flip) % 2]), repeats * 20)

        def reload(check):
            adapters.delete_adapter(fresh, "rotated")
            adapters.load_adapter(fresh, paths["rotated"], adapter_name="rotated", check_fingerprint=check)

        t_load = median_time(lambda: reload(True), repeats)
        t_load_nofp = median_time(lambda: reload(False), repeats)
        plain = MLP(sizes, activation="relu", seed=seed + 100, device=device)  # a base without adapters
        t_full = median_time(lambda: load_weights(plain, full_path), repeats)
    finally:
        if tmp is not None:
            tmp.cleanup()

    report = {
        "accuracy": acc,
        "bytes": sizes_bytes,
        "params": {"base": base.num_parameters(),
                   **{t: sum(adapters.list_adapters(model)[t].r[p] * (L.base.d_in + L.base.d_out)
                             for p, L in model.lora_layers().items()) for t in TASKS}},
        "time": {"switch": t_switch, "load_adapter": t_load, "load_adapter_no_fingerprint": t_load_nofp,
                 "load_full_model": t_full},
        "reload_bitwise": bitwise,
        "drift": adapters.merge_drift(model, "rotated"),
        "device": device,
        "r": r,
        "alpha": alpha,
    }
    print(format_report(report))
    return report


def format_report(m: dict) -> str:
    acc, b, t = m["accuracy"], m["bytes"], m["time"]
    out = [f"minilora demo adapters — one frozen base, two LoRA adapters (r={m['r']}, alpha={m['alpha']:g}, "
           f"device: {m['device']})", "", "accuracy (rows: active adapter, columns: test domain)"]
    out.append(f"{'':<12}" + "".join(f"{d:>11}" for d in DOMAINS))
    for name, row in acc.items():
        out.append(f"{name:<12}" + "".join(f"{row[d]:>11.1%}" for d in DOMAINS))
    out += ["", "files"]
    for task in TASKS:
        out.append(f"  adapter {task!r:<11} {b[task]:>9,} bytes  ({m['params'][task]:,} parameters, "
                   f"{b['full_model'] / b[task]:.1f}x smaller than the model)")
    out.append(f"  full model          {b['full_model']:>9,} bytes  ({m['params']['base']:,} parameters)")
    out += ["", "median times",
            f"  switch adapter in memory (set_active)    {t['switch'] * 1e6:>10.1f} µs",
            f"  load adapter from disk (validated)       {t['load_adapter'] * 1e3:>10.3f} ms",
            f"    ... without the base fingerprint       {t['load_adapter_no_fingerprint'] * 1e3:>10.3f} ms",
            f"  load full model weights from disk        {t['load_full_model'] * 1e3:>10.3f} ms",
            "",
            f"fresh base + adapters reloaded from disk give bitwise the same logits: {m['reload_bitwise']}"]
    d = m["drift"]
    out.append("unmerge(merge(W)) drift, max |ΔW| / max |W|: " +
               ", ".join(f"{k} {v['max_rel']:.1e}" for k, v in d.items()))
    return "\n".join(out)
