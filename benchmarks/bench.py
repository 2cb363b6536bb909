"""minilora vs PyTorch eager vs the matrix-product limit, measured side by side in one run.

    python benchmarks/bench.py                       # the three issue-6 configurations
    python benchmarks/bench.py --quick               # same shapes, few repeats (well under a minute)
    python benchmarks/bench.py --tiny --quick        # tiny shapes: what tests/test_benchmarks.py runs
    python benchmarks/bench.py --out docs/benchmarks --update-docs docs/performance.md

What is timed (the same on both sides, float32, same thread count; docs/performance.md):

- **train step**: forward, loss, backward, AdamW update. The MLP (784-512-512-10, ReLU) uses
  softmax cross-entropy on integer labels through ``minilora.train_step``; a "block" model is one
  pre-LayerNorm ``Block`` (ln1, attention q k v o, ln2, fc1 GELU fc2) with a mean-squared-error
  loss on its output against a fixed random target. The block's input is data: no gradient is
  computed for it on either side. Variants: ``full`` (every parameter trains), ``lora_qv``
  (LoRA r=8 on q and v), ``lora_all`` (r=8 on all six linears; the MLP's analogue: all three
  layers, which is also its only LoRA variant).
- **inference**: forward only — ``base``, LoRA ``unmerged`` (q, v; all layers for the MLP) and
  the same LoRA ``merged`` into W.
- **limit**: the summed time of exactly the matrix products the step (or forward) needs, at their
  shapes and operand layouts, run back to back with NumPy on preallocated arrays. Every minilora
  and PyTorch time is also reported as a multiple of it.

Timing method: each round runs every implementation of a (configuration, phase, variant) once,
in an order that rotates from round to round; times are medians over rounds after warm-up, and
ratios are computed pair by pair inside a round, then their median is taken.
Peak memory is NumPy's transient allocation during one training step, measured with
``tracemalloc`` (NumPy reports its data buffers to it) in a separate untimed step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

# PyTorch's OpenMP threads busy-wait between parallel regions by default; on a small shared
# machine, and interleaved with NumPy's OpenBLAS threads, that spinning fights for the same cores
# and made PyTorch's step up to 10x slower here. Sleeping waiters (PASSIVE) are the fair setting;
# it must be set before torch is imported. ``--omp-wait-policy ACTIVE`` restores the default.
if "--omp-wait-policy" in sys.argv[:-1]:
    os.environ["OMP_WAIT_POLICY"] = sys.argv[sys.argv.index("--omp-wait-policy") + 1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# NumPy's OpenBLAS threads do the same: after each product they spin for 2^28 cycles (~0.1 s)
# before sleeping. That spinning ran into PyTorch's next timed step (its d256 step: 59 ms alone,
# 102 ms right after a NumPy product) and takes the second core from minilora's threaded
# elementwise work. OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles) is OpenBLAS's PASSIVE; it must be set
# before NumPy is imported. ``--openblas-thread-timeout default`` leaves OpenBLAS's own setting.
if "--openblas-thread-timeout" in sys.argv[:-1]:
    _timeout = sys.argv[sys.argv.index("--openblas-thread-timeout") + 1]
    if _timeout != "default":
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = _timeout
else:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import minilora as ml  # noqa: E402
from minilora.nn.module import Module  # noqa: E402
from minilora.nn.transformer import Block, GPTConfig  # noqa: E402

R, ALPHA = 8, 16  # LoRA rank and alpha in every variant
SIX = ["q", "k", "v", "o", "fc1", "fc2"]


# ----------------------------------------------------------------------------- configurations


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "mlp" or "block"
    batch: int
    sizes: tuple = ()  # MLP widths
    C: int = 0  # block width
    H: int = 0  # heads
    T: int = 0  # sequence length

    @property
    def variants(self):
        return ("full", "lora_all") if self.kind == "mlp" else ("full", "lora_qv", "lora_all")

    @property
    def infer_lora(self):  # the LoRA variant whose unmerged/merged inference is timed
        return "lora_all" if self.kind == "mlp" else "lora_qv"

    def targets(self, variant):
        if variant == "lora_qv":
            return ["q", "v"]
        return ["fc*"] if self.kind == "mlp" else SIX


CONFIGS = [
    Config("MLP 784-512-512-10 b256", "mlp", 256, sizes=(784, 512, 512, 10)),
    Config("block d256 h4 T128 b16", "block", 16, C=256, H=4, T=128),
    Config("block d768 h12 T256 b8", "block", 8, C=768, H=12, T=256),
]
TINY = [
    Config("MLP 32-24-24-10 b8 (tiny)", "mlp", 8, sizes=(32, 24, 24, 10)),
    Config("block d32 h2 T8 b2 (tiny)", "block", 2, C=32, H=2, T=8),
]


# ----------------------------------------------------------------------------- minilora side


class OneBlock(Module):
    """One pre-LN ``Block`` as a model: its input is data, so backward skips dx (as PyTorch does
    for an input that does not require grad)."""

    def __init__(self, cfg: Config, seed=0):
        super().__init__()
        c = GPTConfig(vocab_size=2, n_ctx=cfg.T, n_layer=1, n_head=cfg.H, n_embd=cfg.C)
        self.add_child("block", Block(c, seed=seed))
        self.set_paths()

    need_dx = False  # the input is data

    def forward(self, x):
        return self.children["block"].forward(x)

    def plan_backward(self):
        self.children["block"].flow(self.need_dx)

    def backward(self, dout):
        self.plan_backward()
        return self.children["block"].backward(dout)


def ml_model(cfg: Config, variant: str, seed=0):
    model = ml.MLP(cfg.sizes, activation="relu", seed=seed) if cfg.kind == "mlp" else OneBlock(cfg, seed)
    if variant != "full" and variant != "base":
        ml.add_lora(model, cfg.targets(variant), r=R, alpha=ALPHA, seed=seed)
    return model


def data(cfg: Config, seed=0):
    gen = np.random.default_rng(seed + 1)
    if cfg.kind == "mlp":
        x = gen.standard_normal((cfg.batch, cfg.sizes[0]), dtype=np.float32)
        y = gen.integers(0, cfg.sizes[-1], cfg.batch)
    else:
        x = gen.standard_normal((cfg.batch, cfg.T, cfg.C), dtype=np.float32)
        y = gen.standard_normal((cfg.batch, cfg.T, cfg.C), dtype=np.float32)
    return x, y


def loss_name(cfg):
    return "cross_entropy" if cfg.kind == "mlp" else "mse"


def perturb_B(model, seed=0):
    """Give every LoRA B nonzero values (B = 0 at init would make merged == base trivially)."""
    gen = np.random.default_rng(seed + 7)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            B[...] = gen.standard_normal(B.shape, dtype=np.float32) * 0.02


# ----------------------------------------------------------------------------- PyTorch side


def torch_modules():
    import torch  # noqa: PLC0415

    nn, F = torch.nn, torch.nn.functional

    class TorchMLP(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.names = [f"fc{i}" for i in range(1, len(sizes))]
            for name, a, b in zip(self.names, sizes[:-1], sizes[1:]):
                setattr(self, name, nn.Linear(a, b))

        def forward(self, x):
            for i, name in enumerate(self.names):
                x = getattr(self, name)(x)
                if i < len(self.names) - 1:
                    x = torch.relu(x)
            return x

    class Attn(nn.Module):
        def __init__(self, C, H):
            super().__init__()
            self.H = H
            for name in ("q", "k", "v", "o"):
                setattr(self, name, nn.Linear(C, C))

        def forward(self, x):
            B, T, C = x.shape

            def split(t):
                return t.view(B, T, self.H, C // self.H).transpose(1, 2)

            y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                               is_causal=True)
            return self.o(y.transpose(1, 2).reshape(B, T, C))

    class MLPPart(nn.Module):
        def __init__(self, C):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    class TorchBlock(nn.Module):
        def __init__(self, C, H):
            super().__init__()
            self.ln1, self.attn = nn.LayerNorm(C), Attn(C, H)
            self.ln2, self.mlp = nn.LayerNorm(C), MLPPart(C)

        def forward(self, x):
            h = x + self.attn(self.ln1(x))
            return h + self.mlp(self.ln2(h))

    return TorchMLP, TorchBlock


def torch_model(cfg: Config, variant: str, ml_base):
    """The PyTorch twin of ``ml_base`` (same weights), with PEFT LoRA for the LoRA variants."""
    import torch  # noqa: PLC0415

    TorchMLP, TorchBlock = torch_modules()
    model = TorchMLP(cfg.sizes) if cfg.kind == "mlp" else TorchBlock(cfg.C, cfg.H)
    rename = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
    state = {}
    for k, v in ml_base.named_parameters().items():
        if ".lora." in k:
            continue
        k = k.removeprefix("block.").replace(".base.", ".")
        head, _, leaf = k.rpartition(".")
        state[f"{head}.{rename[leaf]}"] = torch.from_numpy(np.array(v))
    model.load_state_dict(state, strict=True)
    if variant in ("full", "base"):
        return model, None
    import peft  # noqa: PLC0415

    targets = ["fc1", "fc2", "fc3"] if cfg.kind == "mlp" else cfg.targets(variant)
    conf = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, bias="none")
    pm = peft.get_peft_model(model, conf)
    with torch.no_grad():  # copy minilora's A and B so both sides compute the same numbers
        mods = dict(pm.base_model.model.named_modules())
        for path, layer in ml_base.lora_layers().items():
            tm = mods[path.removeprefix("block.")]
            ad = layer.adapters["default"]
            tm.lora_A["default"].weight.copy_(torch.from_numpy(np.array(ad.params["A"])))
            tm.lora_B["default"].weight.copy_(torch.from_numpy(np.array(ad.params["B"])))
    return pm, pm


def have_torch():
    try:
        import peft  # noqa: F401, PLC0415
        import torch  # noqa: F401, PLC0415
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- the limit


def linear_products(N, d_in, d_out, lora, train_W, need_dx, train=True):
    """Matrix products of one linear layer: (label, m, k, n, a_transposed, b_transposed)."""
    p = [("x Wᵀ", N, d_in, d_out, False, True)]
    if lora:
        p += [("x Aᵀ", N, d_in, R, False, True), ("u Bᵀ", N, R, d_out, False, True)]
    if not train:
        return p
    if train_W:
        p.append(("doutᵀ x", d_out, N, d_in, True, False))
    if lora:
        p += [("doutᵀ u", d_out, N, R, True, False), ("dout B", N, d_out, R, False, False),
              ("duᵀ x", R, N, d_in, True, False)]
    if need_dx:
        p.append(("dout W", N, d_out, d_in, False, False))
        if lora:
            p.append(("du A", N, R, d_in, False, False))
    return p


def products(cfg: Config, variant: str, train=True):
    """Every matrix product of one step as ``(batch, m, k, n, a_T, b_T)``; batch () for 2-D.

    ``variant`` "base"/"merged" (inference) means no LoRA product. The set is the minimal one an
    autograd engine computes: no dW for frozen W, no dx nobody needs, no attention gradient for
    an input (q, k or v) whose projection has nothing trainable below it.
    """
    full = variant == "full"
    lora_on = set() if variant in ("full", "base", "merged") else set(cfg.targets(variant))
    out = []
    if cfg.kind == "mlp":
        dims = list(zip(cfg.sizes[:-1], cfg.sizes[1:]))
        for i, (a, b) in enumerate(dims):
            lora = bool(lora_on)
            for lab, m, k, n, ta, tb in linear_products(cfg.batch, a, b, lora, full, i > 0, train):
                out.append(((), m, k, n, ta, tb))
        return out
    N, C, T, hd, BH = cfg.batch * cfg.T, cfg.C, cfg.T, cfg.C // cfg.H, (cfg.batch, cfg.H)
    # which q/k/v outputs need a gradient: trainable projection or trainable ln1 below (full)
    grad_in = {n: full or n in lora_on for n in ("q", "k", "v")}
    for name, d_in, d_out in (("q", C, C), ("k", C, C), ("v", C, C), ("o", C, C),
                              ("fc1", C, 4 * C), ("fc2", 4 * C, C)):
        # dx through q, k, v only when ln1 trains (full); o, fc1, fc2 always pass dx down
        need_dx = full if name in ("q", "k", "v") else True
        for _, m, k, n, ta, tb in linear_products(N, d_in, d_out, name in lora_on, full, need_dx, train):
            if train and name in ("q", "k", "v") and not grad_in[name] and (m, k, n) != (N, d_in, d_out):
                continue  # a frozen k with no dx: only its forward product
            out.append(((), m, k, n, ta, tb))
    out += [(BH, T, hd, T, False, True), (BH, T, T, hd, False, False)]  # S = q kᵀ, y = P v
    if train:
        out.append((BH, T, hd, T, False, True))  # dP = dy vᵀ
        out += [(BH, T, T, hd, True, False)] * grad_in["v"]  # dv = Pᵀ dy
        out += [(BH, T, T, hd, False, False)] * grad_in["q"]  # dq = dS k
        out += [(BH, T, T, hd, True, False)] * grad_in["k"]  # dk = dSᵀ q
    return out


def limit_runner(prods, seed=0):
    """A function running ``prods`` back to back on preallocated float32 operands."""
    gen = np.random.default_rng(seed)
    ops = []
    for batch, m, k, n, ta, tb in prods:
        a = gen.standard_normal(batch + ((k, m) if ta else (m, k)), dtype=np.float32)
        b = gen.standard_normal(batch + ((n, k) if tb else (k, n)), dtype=np.float32)
        ops.append((np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b))

    def run():
        for a, b in ops:
            a @ b
    return run


def flops(prods):
    return sum(2 * m * k * n * int(np.prod(batch or (1,))) for batch, m, k, n, _, _ in prods)


# ----------------------------------------------------------------------------- timing


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def time_interleaved(fns: dict, rounds: int, warmup: int, inner: int = 1):
    """Run every fn once per round (rotating order) after ``warmup`` rounds; seconds per call."""
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                fns[k]()
            dt = (time.perf_counter() - t0) / inner
            if r >= warmup:
                times[k].append(dt)
    return times


def pair_ratio(a, b):
    """Median over rounds of a[i] / b[i] (the two were measured in the same round)."""
    return median([x / y for x, y in zip(a, b)])


# ----------------------------------------------------------------------------- one configuration


def bench_config(cfg: Config, args, use_torch: bool):
    x, y = data(cfg)
    loss = loss_name(cfg)
    res = {"config": cfg.name, "train": {}, "infer": {}, "memory": {}, "checks": {}}
    if use_torch:
        import torch  # noqa: PLC0415
        F = torch.nn.functional
        tx = torch.from_numpy(x)
        ty = torch.from_numpy(y)

    # ---------------------------------------------------------------- training
    for variant in cfg.variants:
        fns = {}
        model = ml_model(cfg, variant)
        opt = ml.AdamW(model, lr=1e-4, weight_decay=0.01)
        fns["minilora"] = lambda model=model, opt=opt: ml.train_step(model, opt, x, y, loss)
        prods = products(cfg, variant)
        fns["limit"] = limit_runner(prods)
        if use_torch:
            tm, _ = torch_model(cfg, variant, ml_model(cfg, variant))
            topt = torch.optim.AdamW([p for p in tm.parameters() if p.requires_grad], lr=1e-4,
                                     weight_decay=0.01)
            tl = F.cross_entropy if cfg.kind == "mlp" else F.mse_loss

            def tstep(tm=tm, topt=topt, tl=tl):
                topt.zero_grad(set_to_none=True)
                tl(tm(tx), ty).backward()
                topt.step()
            fns["pytorch"] = tstep
            # check: the first step's loss agrees (same weights, same data)
            m0 = ml_model(cfg, variant)
            t0 = torch_model(cfg, variant, m0)[0]  # before the step changes m0
            l_ml = ml.train_step(m0, ml.AdamW(m0, lr=1e-4), x, y, loss)
            with torch.no_grad():
                l_t = float(tl(t0(tx), ty))
            res["checks"][f"train {variant}: first loss minilora vs pytorch"] = abs(l_ml - l_t) / max(abs(l_t), 1e-12)
        t = time_interleaved(fns, args.rounds, args.warmup, args.inner)
        row = {"limit_ms": 1e3 * median(t["limit"]), "minilora_ms": 1e3 * median(t["minilora"]),
               "ml_over_limit": pair_ratio(t["minilora"], t["limit"]),
               "limit_gflops": flops(prods) / median(t["limit"]) / 1e9,
               "minilora_rounds_ms": [1e3 * v for v in t["minilora"]]}
        if use_torch:
            row.update(pytorch_ms=1e3 * median(t["pytorch"]),
                       ml_over_torch=pair_ratio(t["minilora"], t["pytorch"]),
                       torch_over_limit=pair_ratio(t["pytorch"], t["limit"]),
                       pytorch_rounds_ms=[1e3 * v for v in t["pytorch"]])
        res["train"][variant] = row
        res["_rounds_" + variant] = t  # for LoRA-vs-full pair ratios below (dropped before JSON)

        # memory: trainable parameters, optimizer state, transient NumPy allocations of one step
        mem = {"trainable": model.num_parameters(trainable=True), "total": model.num_parameters(),
               "opt_state_bytes": opt.state_bytes()}
        if use_torch:
            mem["pytorch_opt_state_bytes"] = sum(
                v.numel() * v.element_size() for s in topt.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        ml.train_step(model, opt, x, y, loss)
        mem["step_peak_bytes"] = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        res["memory"][variant] = mem

    # LoRA vs full, pair by pair inside a round (different rounds: different time series, so the
    # ratio is of medians here, each side measured interleaved with its own PyTorch twin)
    for variant in cfg.variants[1:]:
        for impl in ("minilora", "pytorch") if use_torch else ("minilora",):
            a = median(res["_rounds_" + variant][impl])
            b = median(res["_rounds_full"][impl])
            res["train"][variant][f"{impl}_vs_full"] = a / b
    for variant in cfg.variants:
        res.pop("_rounds_" + variant)

    # ---------------------------------------------------------------- inference
    lv = cfg.infer_lora
    base = ml_model(cfg, "full").eval()
    unm = ml_model(cfg, lv).eval()
    perturb_B(unm)
    mer = ml_model(cfg, lv).eval()
    perturb_B(mer)
    mer.merge()
    y_base, y_unm, y_mer = base.forward(x), unm.forward(x), mer.forward(x)
    res["checks"]["infer: merged vs unmerged max abs diff"] = float(np.max(np.abs(y_mer - y_unm)))
    res["checks"]["infer: unmerged minus base max abs (B != 0, so > 0)"] = float(np.max(np.abs(y_unm - y_base)))
    fns = {"minilora base": lambda: base.forward(x), "minilora unmerged": lambda: unm.forward(x),
           "minilora merged": lambda: mer.forward(x),
           "limit base": limit_runner(products(cfg, "base", train=False)),
           "limit unmerged": limit_runner(products(cfg, lv, train=False))}
    if use_torch:
        tb, _ = torch_model(cfg, "full", base)
        tu, _ = torch_model(cfg, lv, unm)
        tmg, pm = torch_model(cfg, lv, mer.unmerge())
        mer.merge()
        pm.merge_adapter()
        for m in (tb, tu, tmg):
            m.eval()

        def tinf(m):
            def f():
                with torch.inference_mode():
                    m(tx)
            return f
        fns.update({"pytorch base": tinf(tb), "pytorch unmerged": tinf(tu), "pytorch merged": tinf(tmg)})
        with torch.inference_mode():
            res["checks"]["infer: pytorch unmerged vs minilora max abs diff"] = float(
                (tu(tx) - torch.from_numpy(y_unm)).abs().max())
    t = time_interleaved(fns, args.rounds, args.warmup, args.inner)
    inf = {k.replace(" ", "_") + "_ms": 1e3 * median(v) for k, v in t.items()}
    inf["ml_merged_over_base"] = pair_ratio(t["minilora merged"], t["minilora base"])
    inf["ml_unmerged_over_base"] = pair_ratio(t["minilora unmerged"], t["minilora base"])
    inf["ml_base_over_limit"] = pair_ratio(t["minilora base"], t["limit base"])
    if use_torch:
        inf["ml_over_torch_base"] = pair_ratio(t["minilora base"], t["pytorch base"])
        inf["torch_merged_over_base"] = pair_ratio(t["pytorch merged"], t["pytorch base"])
        inf["torch_unmerged_over_base"] = pair_ratio(t["pytorch unmerged"], t["pytorch base"])
    inf["lora_variant"] = lv
    res["infer"] = inf
    return res


# ----------------------------------------------------------------------------- reporting


def machine_info(threads):
    info = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "processor": _cpu_name(), "cores": os.cpu_count(), "threads": threads,
        "numpy": np.__version__, "minilora": ml.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "elementwise_threads": ml.fast.runtime.THREADS,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import threadpoolctl  # noqa: PLC0415
        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")}
            for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    try:
        import torch  # noqa: PLC0415
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        import peft  # noqa: PLC0415
        info["peft"] = peft.__version__
    except ImportError:
        pass
    return info


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def targets(results, use_torch):
    """Every issue-6 target with its measured value: (target, measured, met)."""
    rows = []
    for r in results:
        c, tr, inf = r["config"], r["train"], r["infer"]
        if use_torch:
            for v, row in tr.items():
                rows.append((f"{c}: {v} step <= 1.0x PyTorch", row["ml_over_torch"], row["ml_over_torch"] <= 1.0))
        if "d768" in c:
            for v, row in tr.items():
                rows.append((f"{c}: {v} step <= 1.25x limit", row["ml_over_limit"], row["ml_over_limit"] <= 1.25))
        if "lora_qv" in tr:
            q = tr["lora_qv"]["minilora_vs_full"]
            rows.append((f"{c}: LoRA(q,v) step <= 0.70x full", q, q <= 0.70))
        if "d256" in c:
            a = tr["lora_all"]["minilora_vs_full"]
            rows.append((f"{c}: LoRA(all six) step <= 0.85x full", a, a <= 0.85))
        if r.get("kind") == "mlp":
            a = tr["lora_all"]["minilora_vs_full"]
            rows.append((f"{c}: LoRA(all layers) step <= 0.70x full (the q,v target's analogue)", a, a <= 0.70))
        m = inf["ml_merged_over_base"]
        rows.append((f"{c}: merged inference <= 1.02x base", m, m <= 1.02))
        u = inf["ml_unmerged_over_base"]
        rows.append((f"{c}: unmerged {inf['lora_variant']} inference overhead <= 5%", u, u <= 1.05))
    return rows


def _kib(b):
    return f"{b / 1024:,.0f} KiB" if b < 1 << 20 else f"{b / (1 << 20):,.1f} MiB"


def _header(text_cols, number_cols):
    """A Markdown table's header and alignment rows: text left-aligned, numbers right-aligned."""
    return ["| " + " | ".join(text_cols + number_cols) + " |",
            "|" + "---|" * len(text_cols) + "---:|" * len(number_cols)]


def blas_kernels(info) -> str:
    """The BLAS libraries loaded, with their kernel: 'openblas 0.3.31 (Haswell kernel)'."""
    pools = info.get("threadpools")
    if not isinstance(pools, list):
        return "BLAS unknown (threadpoolctl not installed)"
    names = []
    for p in pools:
        if p.get("user_api") == "blas":
            name = f"{p.get('internal_api')} {p.get('version')}"
            if p.get("architecture"):
                name += f" ({p['architecture']} kernel)"
            if name not in names:
                names.append(name)
    return "BLAS " + (", ".join(names) if names else "none found")


def markdown(results, info, use_torch, args):
    L = []
    L.append(f"Measured {time.strftime('%Y-%m-%d %H:%M')}: {info['processor']}, {blas_kernels(info)}, "
             f"{info['threads']} threads "
             f"(NumPy {info['numpy']}" + (f", PyTorch {info['torch']}, PEFT {info.get('peft')}" if use_torch else "")
             + f"), load average at start {info['load_average'][0]:.2f}; "
             f"{args.rounds} rounds after {args.warmup} warm-up, medians; "
             f"OPENBLAS_THREAD_TIMEOUT={info.get('OPENBLAS_THREAD_TIMEOUT')}, "
             f"OMP_WAIT_POLICY={info.get('OMP_WAIT_POLICY')}, "
             f"elementwise threads {info.get('elementwise_threads')}.\n")
    L.append("### Training step (forward + backward + AdamW), ms\n")
    L += _header(["configuration", "variant"], ["limit", "minilora", "×limit"]
                 + (["PyTorch", "×limit", "minilora / PyTorch"] if use_torch else []) + ["minilora vs full"])
    for r in results:
        for v, row in r["train"].items():
            line = (f"| {r['config']} | {v} | {row['limit_ms']:.2f} | {row['minilora_ms']:.2f} | "
                    f"{row['ml_over_limit']:.2f} |")
            if use_torch:
                line += f" {row['pytorch_ms']:.2f} | {row['torch_over_limit']:.2f} | **{row['ml_over_torch']:.2f}** |"
            vs = row.get("minilora_vs_full")
            line += f" {vs:.2f} |" if vs is not None else " 1 |"
            L.append(line)
    L.append("\n### Inference (forward only), ms\n")
    L += _header(["configuration", "LoRA"], ["limit", "base", "unmerged", "merged", "merged/base", "unmerged/base"]
                 + (["PyTorch base", "unmerged", "merged", "minilora/PyTorch (base)"] if use_torch else []))
    for r in results:
        i = r["infer"]
        line = (f"| {r['config']} | {i['lora_variant']} | {i['limit_base_ms']:.2f} | {i['minilora_base_ms']:.2f} | "
                f"{i['minilora_unmerged_ms']:.2f} | {i['minilora_merged_ms']:.2f} | "
                f"{i['ml_merged_over_base']:.3f} | {i['ml_unmerged_over_base']:.3f} |")
        if use_torch:
            line += (f" {i['pytorch_base_ms']:.2f} | {i['pytorch_unmerged_ms']:.2f} | {i['pytorch_merged_ms']:.2f} | "
                     f"{i['ml_over_torch_base']:.2f} |")
        L.append(line)
    L.append("\n### Memory: LoRA vs full (minilora; step peak = NumPy's transient allocations in one "
             "training step, by tracemalloc)\n")
    L += _header(["configuration", "variant"], ["trainable", "of total", "optimizer state", "step peak"]
                 + (["PyTorch optimizer state"] if use_torch else []))
    for r in results:
        for v, m in r["memory"].items():
            line = (f"| {r['config']} | {v} | {m['trainable']:,} | {100 * m['trainable'] / m['total']:.2f}% | "
                    f"{_kib(m['opt_state_bytes'])} | {_kib(m['step_peak_bytes'])} |")
            if use_torch:
                line += f" {_kib(m['pytorch_opt_state_bytes'])} |"
            L.append(line)
    L.append("\n### Targets (issue 6)\n")
    L += ["| target | measured | met |", "|---|---:|:---:|"]
    for name, val, met in targets(results, use_torch):
        L.append(f"| {name} | {val:.2f}× | {'yes' if met else '**no**'} |")
    return "\n".join(L) + "\n"


def plot(results, use_torch, path):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        variants = list(r["train"])
        impls = [("limit", "limit_ms", "#999999"), ("minilora", "minilora_ms", "#1f77b4")]
        if use_torch:
            impls.append(("PyTorch", "pytorch_ms", "#ff7f0e"))
        w = 0.8 / len(impls)
        for j, (lab, key, col) in enumerate(impls):
            ax.bar([i + (j - (len(impls) - 1) / 2) * w for i in range(len(variants))],
                   [r["train"][v][key] for v in variants], w, label=lab, color=col)
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(r["config"], fontsize=9)
        ax.set_ylabel("training step, ms (median)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_docs(doc: Path, table: str):
    """Replace the text between the bench markers in ``doc`` with ``table``."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc}: no {begin} ... {end} markers to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{table}{end}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not a measurement")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (for tests)")
    p.add_argument("--out", default="docs/benchmarks", help="folder for results.md/.json/.png")
    p.add_argument("--threads", type=int, default=None, help="BLAS and PyTorch threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--inner", type=int, default=1, help="calls per timed sample")
    p.add_argument("--configs", default=None, help="comma-separated indices into the configuration list")
    p.add_argument("--no-torch", action="store_true", help="minilora and the limit only")
    p.add_argument("--update-docs", default=None, help="fill this Markdown file's bench markers")
    p.add_argument("--omp-wait-policy", default=None,
                   help="OMP_WAIT_POLICY for PyTorch's threads (default PASSIVE; read before import)")
    p.add_argument("--openblas-thread-timeout", default=None,
                   help="OPENBLAS_THREAD_TIMEOUT for NumPy's BLAS threads (default 4: sleep at once; "
                        "'default' leaves OpenBLAS's ~0.1 s spin; read before import)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    configs = TINY if args.tiny else CONFIGS
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    use_torch = not args.no_torch and have_torch()

    limiter = None
    try:
        import threadpoolctl  # noqa: PLC0415
        limiter = threadpoolctl.threadpool_limits(threads)  # NumPy's BLAS (and OpenMP) threads
    except ImportError:
        print("threadpoolctl not installed: BLAS threads not pinned", file=sys.stderr)
    if use_torch:
        import torch  # noqa: PLC0415
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    info = machine_info(threads)
    print(json.dumps(info, indent=1))
    results = []
    t0 = time.perf_counter()
    for cfg in configs:
        print(f"--- {cfg.name}", flush=True)
        r = bench_config(cfg, args, use_torch)
        r["kind"] = cfg.kind
        results.append(r)
        for v, row in r["train"].items():
            print(f"  train {v:9s} limit {row['limit_ms']:8.2f} ms  minilora {row['minilora_ms']:8.2f} ms "
                  f"({row['ml_over_limit']:.2f}x limit)" +
                  (f"  pytorch {row['pytorch_ms']:8.2f} ms  minilora/pytorch {row['ml_over_torch']:.2f}"
                   if use_torch else ""), flush=True)
    info["seconds"] = time.perf_counter() - t0
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown(results, info, use_torch, args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"machine": info, "args": vars(args), "results": results,
                                                  "targets": targets(results, use_torch)}, indent=1))
    try:
        plot(results, use_torch, out / "results.png")
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    if args.update_docs:
        update_docs(Path(args.update_docs), table)
    if limiter is not None:
        limiter.restore_original_limits()
    if use_torch:
        torch.set_num_threads(torch_threads)
    return results


if __name__ == "__main__":
    main()
