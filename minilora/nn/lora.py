"""LoRA as modules: ``LoRALinear`` (a frozen Linear plus named adapters), ``LoRAAdapter`` (one
adapter's A, B and hyper-parameters), and their placement on a model by name.

    h = x Wᵀ + b + scale · (dropout(x) Aᵀ) Bᵀ            (the pair: ``functional/lora.py``)

Placement: ``add_lora(model, targets=["q", "v"], r=8, alpha=16)``. Targets are matched against the
paths of ``Linear`` layers (``fc1``, ``blocks.0.attn.q``): a pattern matches a path if it equals
the path or its last component, or matches either as a glob (``blocks.*.attn.q``, ``fc*``).
``r`` and ``alpha`` may be dicts from pattern to value for per-target settings. Like PEFT, adding
LoRA freezes every base parameter.
"""
from __future__ import annotations

import fnmatch
import math

from .. import backend, checks, fast
from ..checks import check_adapter_options, check_lora
from ..functional.linear import LinearCache
from ..functional.dora import dora_backward, dora_forward, dora_weight, row_norm
from ..functional.mixed_lora import unsort_rows
from ..functional.lora import (lora_delta, lora_fa_backward, lora_fa_forward, lora_scale, lowrank_backward,
                               lowrank_forward, olora_init, pissa_init)
from .linear import Linear
from .adapter_host import AdapterHost
from .module import Module
from .quantized import QuantLinear


class LoRAAdapter(Module):
    """One adapter's trainable pair: A (r, d_in), B (d_out, r), and its hyper-parameters.

    A starts random (``init="gaussian"``: N(0, 1/r²) as PEFT's "gaussian" option; the paper says
    Gaussian; ``"kaiming_uniform"``: U(−1/√d_in, 1/√d_in), PEFT's default), B starts at zero,
    so ΔW = B A = 0 and the adapted model equals the base at step 0.

    ``init="pissa"`` / ``"olora"`` start A, B from the base weight ``W`` (its top-r SVD, its QR);
    the layer then rewrites its base to W − scale · B A (``LoRALinear.add_adapter``), and
    ``initial`` keeps A₀, B₀ on the host for ``save_adapter(..., convert_to_lora=True)``.

    ``dora=True`` adds the magnitude ``m`` (d_out,) of DoRA (``functional/dora.py``), set by the
    layer to ‖W + scale · B A‖ per row; ``dora_exact`` picks the exact backward (True) or PEFT's,
    which treats the norm as a constant (False).
    """

    INITS = checks.ADAPTER_INITS
    WEIGHT_INITS = {"pissa": pissa_init, "olora": olora_init}  # inits that read (and rewrite) W

    def __init__(self, d_in, d_out, r, alpha, rslora=False, dropout=0.0, init="gaussian",
                 seed=0, dtype="float32", device="cpu", layer="LoRALinear", W=None, dora=False,
                 dora_exact=True):
        super().__init__()
        check_lora(layer, d_in, d_out, r, alpha)
        check_adapter_options(layer, dropout=dropout, init=init)
        self.r, self.alpha, self.rslora, self.dropout, self.init = int(r), float(alpha), bool(rslora), float(dropout), init
        self.dora, self.dora_exact = bool(dora), bool(dora_exact)
        self.initial = None  # {"A": A₀, "B": B₀} (NumPy) for an init from W
        self.rng = backend.rng(seed)  # also draws the dropout masks
        if init in self.WEIGHT_INITS:
            A, B, self.W_res = self.WEIGHT_INITS[init](W, self.r, self.scale)
            self.params["A"], self.params["B"] = A, B
            self.initial = {"A": backend.to_numpy(A).copy(), "B": backend.to_numpy(B).copy()}
            return
        if init == "gaussian":
            self.params["A"] = backend.normal(self.rng, (r, d_in), 1.0 / r, dtype, device)
        else:
            self.params["A"] = backend.uniform(self.rng, (r, d_in), 1.0 / math.sqrt(d_in), dtype, device)
        self.params["B"] = backend.zeros((d_out, r), dtype, device)

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.rslora)

    def delta(self):
        """ΔW = scale · B A  (d_out, d_in)."""
        return lora_delta(self.params["A"], self.params["B"], self.scale)

    def config(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "rslora": self.rslora, "dropout": self.dropout, "init": self.init,
                "dora": self.dora, "dora_exact": self.dora_exact}


class LoRALinear(AdapterHost):
    """h = x Wᵀ + b + scale · (dropout(x) Aᵀ) Bᵀ around a frozen ``Linear``.

    Holds any number of named adapters (children of ``self.lora``); one is ``active`` (or none:
    the base alone). ``merge()`` folds the active adapter into W for zero-latency inference and
    ``unmerge()`` takes it out again; ``merged`` names the adapter inside W, if any. Training
    while merged is refused.

    Parameter names: ``base.W``, ``base.b``, ``lora.<adapter>.A``, ``lora.<adapter>.B`` (and
    ``lora.<adapter>.m`` for a DoRA adapter: y = x W′ᵀ + b, W′ = m ⊙ V / ‖V‖_rows,
    V = W + scale · B A; ``functional/dora.py``).

    LoRA-FA: while the active adapter's A is frozen and the base has nothing trainable, the forward
    runs ``lora_fa_forward``, whose cache keeps u = x̃ Aᵀ instead of x (docs/lora.md §10).

    Over a 4-bit ``QuantLinear`` base (QLoRA): h = base(x) + scale · (x̃ Aᵀ) Bᵀ and
    dx = baseᵀ(dout) + the low-rank path's dx (``lowrank_forward`` / ``lowrank_backward``); the
    base has no parameters, and ``merge`` / ``unmerge`` are refused (docs/qlora.md).
    """

    def __init__(self, base: Linear | QuantLinear):
        super().__init__()
        self.quantized = isinstance(base, QuantLinear)
        self.add_child("base", base)
        self.add_child("lora", Module())
        base.freeze()
        self.active: str | None = None
        self.merged: str | None = None
        self.merged_norm = None  # DoRA: ‖V‖ per row at merge time, what unmerge divides back out
        self.rows: tuple | None = None  # a mixed batch: each row's adapter name (None: the base)

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name="default", r=8, alpha=16, rslora=False, dropout=0.0, init="gaussian", seed=0,
                    dora=False, dora_exact=True):
        self.check_new_adapter(name, init, dora)
        W = None if self.quantized else self.base.params["W"]
        if self.quantized:  # no float W to follow: a 4-bit base's adapter is float32 on the host
            dtype, device = "float32", "cpu"
        else:
            dtype, device = backend.dtype_name(W), backend.namespace(W)
        adapter = LoRAAdapter(self.base.d_in, self.base.d_out, r, alpha, rslora, dropout, init, seed,
                              dtype, device, layer=self.label, W=W, dora=dora, dora_exact=dora_exact)
        if init in LoRAAdapter.WEIGHT_INITS:  # PiSSA / OLoRA: the base becomes W − scale · B A
            W = self.base.params["W"] = adapter.W_res
            del adapter.W_res
            self.base.clear_cache()
        if dora:  # m = ‖W + scale · B A‖ per row (PEFT's init), so the layer starts as the base
            adapter.params["m"] = row_norm(W + adapter.delta())
        adapter.path = f"{self.label}.lora.{name}"
        adapter.training = self.training
        self.children["lora"].add_child(name, adapter)
        return adapter

    def check_new_adapter(self, name, init="gaussian", dora=False) -> None:
        """Raise unless adapter ``name`` with this init and DoRA choice can be added (nothing changes)."""
        check_new_adapter(self.label, self.quantized, self.adapters, self.merged, name, init, dora)

    # ------------------------------------------------------------------ merge
    def merge(self, adapter: str | None = None) -> None:
        """W ← W + scale · B A for the active adapter (or ``adapter``); refuses non-finite W."""
        self._refuse_if_quantized("merge")
        name = adapter if adapter is not None else self.active
        if name is None or self.merged == name:
            return
        self.set_merged(name, self.merged_weight(name))

    def merged_weight(self, name: str):
        """W + scale · B A for adapter ``name``, checked finite; changes nothing (the first half
        of ``merge``, so a model can check every layer before changing any)."""
        self._refuse_if_quantized("merge")
        if self.merged is not None:
            raise ValueError(f"{self.label}: adapter {self.merged!r} is already merged; unmerge() first")
        self._require(name)
        ad = self.adapters[name]
        if ad.dora:  # W′ = (m / n) ⊙ V; unmerge divides by m / n again, so no m may be 0
            xp = backend.namespace(ad.params["m"])
            if not bool(xp.all(ad.params["m"] != 0)):
                raise ValueError(f"{self.label}: DoRA adapter {name!r} has zero entries in its magnitude m; "
                                 "merging would zero those rows of W and unmerge could not restore them")
            W_new, _ = dora_weight(self.base.params["W"], ad.params["A"], ad.params["B"], ad.params["m"], ad.scale)
        else:
            W_new = self.base.params["W"] + ad.delta()
        if not backend.is_finite(W_new):
            raise FloatingPointError(
                f"{self.label}: merging adapter {name!r} gives non-finite weights; model left unchanged"
            )
        return W_new

    def set_merged(self, name: str, W_new) -> None:
        """Install ``W_new`` from ``merged_weight(name)`` as W; ``name`` becomes merged and active."""
        ad = self.adapters[name]
        if ad.dora:  # keep ‖V‖ per row: unmerge needs it, and W′ alone no longer tells it
            self.merged_norm = row_norm(self.base.params["W"] + ad.delta())
        self.base.params["W"] = W_new
        self.merged = name
        self.active = name
        self.clear_cache()

    def unmerge(self) -> None:
        """W ← W − scale · B A (DoRA: W ← W′ ⊙ n / m − scale · B A), restoring the base weights up
        to rounding."""
        if self.merged is None:
            return  # nothing is merged (a 4-bit base never is): nothing to undo
        self._refuse_if_quantized("unmerge")
        self.base.params["W"] = self.unmerged_weight()
        self.merged = None
        self.merged_norm = None
        self.clear_cache()

    def unmerged_weight(self):
        """The base W that ``unmerge`` would restore (W itself when nothing is merged)."""
        W = self.base.params["W"]
        if self.merged is None:
            return W
        ad = self.adapters[self.merged]
        if ad.dora:
            return W * (self.merged_norm / ad.params["m"])[:, None] - ad.delta()
        return W - ad.delta()

    def _refuse_if_quantized(self, what: str) -> None:
        if self.quantized:
            raise ValueError(
                f"{self.label}: cannot {what} an adapter into a 4-bit (Q4_1) base: W + scale · B A is "
                "not 4-bit, so merging would re-quantise it and lose the adapter to rounding. Keep "
                "the adapter unmerged, or load the float32 model (smollm2(quantized=False)) to merge"
            )

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        if self.rows is not None:
            return self._forward_mixed(x)
        if self.quantized:
            return self._forward_quantized(x)
        base = self.base
        W, b = base.params["W"], base.params.get("b")
        if self.active is None or self.merged is not None:
            linear_forward, _ = fast.pair("linear")
            y, cache = linear_forward(x, W, b, layer=self.label)
            self.cache = ("base", cache)
            return y
        ad = self.adapters[self.active]
        mask = self._dropout_mask(ad, x)
        A, B = ad.params["A"], ad.params["B"]
        if ad.dora:
            y, cache = dora_forward(x, W, b, A, B, ad.params["m"], ad.scale, mask, layer=self.label)
            self.cache = ("dora", cache)
        elif self._fa(ad):  # LoRA-FA: A and the base frozen, so the cache need not keep x
            y, cache = lora_fa_forward(x, W, b, A, B, ad.scale, mask, layer=self.label)
            self.cache = ("lora_fa", cache)
        else:
            lora_forward, _ = fast.pair("lora")
            y, cache = lora_forward(x, W, b, A, B, ad.scale, mask, layer=self.label)
            self.cache = ("lora", cache)
        return y

    def _fa(self, ad) -> bool:
        """LoRA-FA's case: A frozen and nothing in the base trains, so no gradient needs x."""
        return "A" in ad.frozen and not self.base.trainable_names()

    def backward(self, dout):
        """dx through W and B A; dA, dB for the active adapter; dW, db only if the base trains."""
        if self.merged is not None:
            raise RuntimeError(
                f"{self.label}: cannot train while adapter {self.merged!r} is merged into W; "
                "call unmerge() first"
            )
        if self.skips(dout):
            return None
        for m in self.adapters.values():
            m.grads = {}
        if self.cache[0] == "mixed":
            return self._backward_mixed(dout)
        if self.quantized:
            return self._backward_quantized(dout)
        kind, cache = self.cache
        x_wanted = {"x"} if self.need_dx else set()
        base_wanted = self.base.trainable_names()  # usually none: LoRA freezes the base
        _, linear_backward = fast.pair("linear")
        self._check_cache_is_current(kind, cache)
        if kind == "base":
            dx, self.base.grads = linear_backward(dout, cache, need=base_wanted | x_wanted)
            return dx
        ad = self.adapters[self.active]
        if kind == "dora":  # W is inside V = W + scale · B A: its gradient comes from the DoRA pair too
            dx, grads = dora_backward(dout, cache, need=ad.trainable_names() | x_wanted | base_wanted,
                                      exact=ad.dora_exact)
            ad.grads = {k: grads[k] for k in ad.trainable_names()}
            self.base.grads = {k: grads[k] for k in base_wanted}
            return dx
        if kind == "lora_fa":
            if not self._fa(ad):
                raise RuntimeError(f"{self.label}: A or the base was unfrozen after a LoRA-FA forward, whose "
                                   "cache holds no x for their gradients; run forward again before backward")
            dx, ad.grads = lora_fa_backward(dout, cache, need=ad.trainable_names() | x_wanted)
            self.base.grads = {}
            return dx
        _, lora_backward = fast.pair("lora")
        dx, ad.grads = lora_backward(dout, cache, need=ad.trainable_names() | x_wanted)
        _, self.base.grads = linear_backward(dout, LinearCache(cache.x, cache.W), need=base_wanted)
        return dx

    def _dropout_mask(self, ad, x):
        """The adapter's inverted-dropout mask for ``x`` while training, else None."""
        if self.training and ad.dropout > 0:
            return backend.dropout_mask(ad.rng, tuple(x.shape), ad.dropout, backend.dtype_name(x), backend.namespace(x))
        return None

    def _forward_quantized(self, x):
        """h = base(x) + scale · (x̃ Aᵀ) Bᵀ, the base a QuantLinear (x W̃ᵀ, 4-bit W̃)."""
        h = self.base.forward(x)  # (..., d_out)  the frozen 4-bit path
        if self.active is None:
            self.cache = ("base", None)
            return h
        ad = self.adapters[self.active]
        mask = self._dropout_mask(ad, x)
        h_lr, cache = lowrank_forward(x, ad.params["A"], ad.params["B"], ad.scale, mask, layer=self.label)
        self.cache = ("lora", cache)
        return h + h_lr

    def _backward_quantized(self, dout):
        """dx = dout W̃ + (du A) ⊙ mask; dA, dB for the active adapter; the base has no dW."""
        kind, cache = self.cache
        if kind == "lora" and (cache.A is not self.adapters[self.active].params["A"]
                               or cache.B is not self.adapters[self.active].params["B"]):
            raise RuntimeError(f"{self.label}: A or B was replaced after forward; run forward again before backward")
        self.base.flow(self.need_dx)
        dx = self.base.backward(dout)  # dout W̃, or None when dx is not needed
        if kind == "base":
            return dx
        ad = self.adapters[self.active]
        dx_lr, ad.grads = lowrank_backward(dout, cache, need=ad.trainable_names() | ({"x"} if self.need_dx else set()))
        return dx if dx_lr is None else dx + dx_lr

    # ------------------------------------------------------------------ mixed-adapter batches
    def set_rows(self, names) -> None:
        """Row n of the next batches uses adapter ``names[n]`` (None or "__base__": the base alone);
        ``names=None`` returns to the active adapter. Names this layer lacks mean the base here
        (as in PEFT: a layer that an adapter does not target runs the base for its rows).
        ``minilora.adapters.mixed_batch`` sets every layer of a model at once."""
        if names is None:
            self.rows = None
        else:
            if self.merged is not None:
                raise ValueError(f"{self.label}: adapter {self.merged!r} is merged into W; a mixed batch "
                                 "needs every adapter unmerged (unmerge() first)")
            dora = sorted({n for n in names if n in self.adapters and self.adapters[n].dora})
            if dora:
                raise ValueError(f"{self.label}: DoRA adapters {dora} cannot share a batch with others: "
                                 "DoRA rescales the whole weight, it is not a term added per row")
            self.rows = tuple(None if n == "__base__" else n for n in names)
        self.clear_cache()

    def _mixed_plan(self, x):
        """The adapters the rows use, in the layer's order, and each row of ``x`` its index among
        them. A model may hand the layer its batch flattened, (B·T, C) for a (B, T, C) batch:
        then each of the B names covers T consecutive rows."""
        used = [n for n in self.adapters if n in self.rows]
        index = {n: k for k, n in enumerate(used)}
        rows = tuple(index.get(n, -1) for n in self.rows)
        N = x.shape[0] if x.ndim else 0
        if rows and N != len(rows) and N % len(rows) == 0:
            rows = tuple(a for a in rows for _ in range(N // len(rows)))  # batch-major flattening
        return used, rows

    def _forward_mixed(self, x):
        """h_n = base(x_n) + scale_{a_n} · (x̃_n A_{a_n}ᵀ) B_{a_n}ᵀ (functional/mixed_lora.py)."""
        used, rows = self._mixed_plan(x)
        if self.quantized:
            h, base_cache = self.base.forward(x), None
        else:
            linear_forward, _ = fast.pair("linear")
            h, base_cache = linear_forward(x, self.base.params["W"], self.base.params.get("b"), layer=self.label)
        if not used:  # no row of this layer has an adapter
            self.cache = ("mixed", (base_cache, None, used))
            return h
        ads = [self.adapters[n] for n in used]
        mask = self._mixed_mask(ads, rows, x)
        mixed_forward, _ = fast.pair("mixed_lora")
        h_lr, cache = mixed_forward(x, [(a.params["A"], a.params["B"], a.scale) for a in ads], rows, mask,
                                    layer=self.label)
        self.cache = ("mixed", (base_cache, cache, used))
        return h + h_lr

    def _mixed_mask(self, ads, rows, x):
        """Each row's inverted-dropout mask from its own adapter's dropout and generator (training
        only); None when no adapter in the batch drops anything."""
        if not self.training or not any(a.dropout > 0 for a in ads):
            return None
        xp = backend.namespace(x)
        parts = []
        for k, a in enumerate(ads):
            n_k = sum(1 for i in rows if i == k)
            if n_k:
                shape = (n_k, *x.shape[1:])
                parts.append(backend.dropout_mask(a.rng, shape, a.dropout, backend.dtype_name(x), xp)
                             if a.dropout > 0 else xp.ones(shape, dtype=x.dtype))
        n_none = sum(1 for i in rows if i < 0)
        if n_none:
            parts.append(xp.ones((n_none, *x.shape[1:]), dtype=x.dtype))
        return unsort_rows(xp, parts, rows, x)

    def _backward_mixed(self, dout):
        """dx = dout W + the mixed low-rank dx; each adapter's dA, dB from its own rows only."""
        base_cache, cache, used = self.cache[1]
        x_wanted = {"x"} if self.need_dx else set()
        if self.quantized:
            self.base.flow(self.need_dx)
            dx = self.base.backward(dout)
        else:
            _, linear_backward = fast.pair("linear")
            dx, self.base.grads = linear_backward(dout, base_cache, need=self.base.trainable_names() | x_wanted)
        if cache is None:
            return dx
        ads = [self.adapters[n] for n in used]
        for a, (A, B, _) in zip(ads, cache.adapters):
            if a.params["A"] is not A or a.params["B"] is not B:
                raise RuntimeError(f"{self.label}: adapter {a.path}'s A or B was replaced after forward; "
                                   "run forward again before backward")
        _, mixed_backward = fast.pair("mixed_lora")
        want = x_wanted | ({"adapters"} if any(a.trainable_names() for a in ads) else set())
        dx_lr, grads = mixed_backward(dout, cache, need=want)
        for a, g in zip(ads, grads):
            a.grads = {k: v for k, v in g.items() if k in a.trainable_names()}
        if dx is None or dx_lr is None:
            return dx if dx_lr is None else dx_lr
        return dx + dx_lr

    def _check_cache_is_current(self, kind, cache):
        """The cache holds the arrays the forward used; a parameter assigned since then (``layer.base.W
        = ...``, ``adapter.B = ...`` clear only their own module's cache) would make the backward
        differentiate the old weights. Refused instead."""
        used = {"base.W": cache.W}
        ad = self.adapters.get(self.active) if kind != "base" else None
        names = ("A", "B", "m") if kind == "dora" else ("A", "B")
        if kind != "base":
            used.update({f"{self.active}.{k}": getattr(cache, k) for k in names})
        now = {"base.W": self.base.params["W"]}
        if kind != "base":
            now.update({f"{self.active}.{k}": ad.params.get(k) if ad else None for k in names})
        changed = [name for name in used if used[name] is not now[name]]
        if changed:
            raise RuntimeError(f"{self.label}: {', '.join(changed)} was replaced after forward; run forward "
                               "again before backward (the cache holds the old array)")


# ----------------------------------------------------------------------------- placement


def check_new_adapter(label, quantized, adapters, merged, name, init="gaussian", dora=False) -> None:
    """Raise ``ValueError`` unless a layer (4-bit or not, with ``adapters`` and ``merged``) can take
    adapter ``name`` with this init and DoRA choice."""
    if name in adapters:
        raise ValueError(f"{label}: adapter {name!r} already exists")
    check_adapter_options(label, name=name, init=init)
    if quantized and (dora or init in LoRAAdapter.WEIGHT_INITS):
        what = "DoRA (it needs the row norms of W + scale · B A)" if dora else f"init={init!r} (it rewrites W)"
        raise ValueError(f"{label}: {what} is not supported on a 4-bit (Q4_1) base; use plain LoRA "
                         "(QLoRA) here, or load the float32 model (smollm2(quantized=False))")
    if init in LoRAAdapter.WEIGHT_INITS and (adapters or merged is not None):
        raise ValueError(f"{label}: init={init!r} rewrites the base W, but the layer already has "
                         f"adapters {sorted(adapters)} made for the current W; add it to a fresh layer")


def _matches(path: str, pattern: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(last, pattern)


def lora_layers(model) -> dict:
    """``{path: LoRALinear}`` for every LoRA layer in ``model``."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_layers(model) -> dict:
    """``{path: LoRALinear | LoRAEmbedding}``, model order: every layer holding named adapters,
    linear or token embedding. Both kinds share the doors ``merge`` and ``unmerge`` use
    (``merged_weight``, ``set_merged``, ``unmerge``, ``unmerged_weight``, ``active``, ``merged``)."""
    from .lora_embedding import LoRAEmbedding  # imported here: lora_embedding builds on the models

    return {p: m for p, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAEmbedding))}


def layers_with(model, name: str, embeddings: bool = False) -> dict:
    """``{path: LoRALinear}`` for the layers carrying adapter ``name``, model order (KeyError if
    none do); ``embeddings=True`` includes the ``LoRAEmbedding`` layers too (``adapter_layers``)."""
    every = adapter_layers(model) if embeddings else lora_layers(model)
    layers = {p: m for p, m in every.items() if name in m.adapters}
    if not layers:
        names = sorted({n for m in every.values() for n in m.adapters})
        raise KeyError(f"{type(model).__name__}: no adapter {name!r}; adapters: {names}")
    return layers


def linear_paths(model) -> list:
    """Paths of every layer LoRA can be placed on (``Linear``, ``QuantLinear`` or an existing
    ``LoRALinear``)."""
    return [p for p, m in model.named_modules() if isinstance(m, (Linear, QuantLinear, LoRALinear))
            and not p.endswith(".base")]


def resolve_targets(model, targets) -> list:
    """Expand target names/patterns into layer paths; unknown names raise ``ValueError``."""
    if targets is None:
        targets = getattr(model, "default_lora_targets", None)
        if targets is None:
            raise ValueError(f"{type(model).__name__}: add_lora needs targets (layer names)")
    if isinstance(targets, str):
        targets = [targets]
    available = linear_paths(model)
    chosen = []
    for pattern in targets:
        hits = [p for p in available if _matches(p, pattern)]
        if not hits:
            short = sorted({p.rsplit(".", 1)[-1] for p in available})
            raise ValueError(
                f"{type(model).__name__}: unknown LoRA target {pattern!r}; layers are "
                f"{available if len(available) <= 12 else short}"
            )
        chosen += [p for p in hits if p not in chosen]
    return [p for p in available if p in chosen]  # model order


def wrap_with_lora(model, path: str) -> LoRALinear:
    """Replace the ``Linear`` at ``path`` by a ``LoRALinear`` around it (no adapter yet) and return
    it; an existing ``LoRALinear`` is returned as it is. The one place layers get wrapped."""
    layer = model.get_module(path)
    if not isinstance(layer, LoRALinear):
        wrapped = LoRALinear(layer)
        wrapped.training = layer.training
        model.set_module(path, wrapped)
        layer = wrapped
    layer.path, layer.base.path = path, f"{path}.base"
    return layer


def _per_target(value, path, name):
    if not isinstance(value, dict):
        return value
    for pattern, v in value.items():
        if _matches(path, pattern):
            return v
    if "*" in value:
        return value["*"]
    raise ValueError(f"{path}: no {name} given for this layer in {value!r}")


def add_lora(model, targets=None, r=8, alpha=16, rslora=False, dropout=0.0, init="gaussian",
             seed=0, adapter="default", activate=True, use_dora=False, dora_exact=True, freeze_A=False):
    """Wrap each target ``Linear`` in a ``LoRALinear`` (or add an adapter to an existing one).

    Freezes every parameter already in the model; only the new A and B are trainable (and m with
    ``use_dora=True``: DoRA, its backward exact through the norm unless ``dora_exact=False``, which
    is PEFT's). ``freeze_A=True`` is LoRA-FA: A stays at its init, only B trains. ``init="pissa"`` or
    ``"olora"`` start A, B from W and rewrite the base to W − scale · B A.
    Returns the model. Raises ``ValueError`` for unknown targets, a bad r or alpha.
    """
    paths = resolve_targets(model, targets)
    gen = backend.rng(seed)
    # Validate everything before changing anything: a bad r on the third layer must not leave
    # the first two wrapped.
    plan = []
    for path in paths:
        layer = model.get_module(path)
        base = layer.base if isinstance(layer, LoRALinear) else layer
        rr, aa = _per_target(r, path, "r"), _per_target(alpha, path, "alpha")
        check_lora(path, base.d_in, base.d_out, rr, aa)
        check_adapter_options(path, dropout=dropout, init=init, name=adapter)
        if isinstance(layer, LoRALinear):
            layer.check_new_adapter(adapter, init, use_dora)
        else:
            check_new_adapter(path, isinstance(layer, QuantLinear), {}, None, adapter, init, use_dora)
        plan.append((path, layer, rr, aa))
    model.freeze()
    for path, layer, rr, aa in plan:
        layer = wrap_with_lora(model, path)
        ad = layer.add_adapter(adapter, rr, aa, rslora, dropout, init, seed=gen.integers(2**63),
                               dora=use_dora, dora_exact=dora_exact)
        if freeze_A:
            ad.freeze("A")
        if activate and layer.merged is None:
            layer.set_active(adapter)
    model.set_paths()
    return model


def merge(model, adapter: str | None = None):
    """W ← W + scale · B A on every LoRA layer — all layers or none.

    Token embeddings with LoRA (``LoRAEmbedding``) merge with them: E ← E + scale · (B A)ᵀ.
    ``adapter=None`` merges each layer's active adapter; a name merges that adapter on the layers
    that carry it (``KeyError`` if none do). Every new W is computed and checked finite before any
    layer changes, so a non-finite result raises and leaves the model bitwise unchanged.
    """
    layers = adapter_layers(model)
    if adapter is not None:
        layers = {p: m for p, m in layers.items() if adapter in m.adapters}
        if not layers:
            names = sorted({n for m in adapter_layers(model).values() for n in m.adapters})
            raise KeyError(f"{type(model).__name__}: no adapter {adapter!r}; adapters: {names}")
    plan = []
    for layer in layers.values():
        name = adapter if adapter is not None else layer.active
        if name is not None and layer.merged != name:
            plan.append((layer, name, layer.merged_weight(name)))  # raises before any change
    for layer, name, W_new in plan:
        layer.set_merged(name, W_new)
    return model


def unmerge(model):
    """W ← W − scale · B A (E ← E − scale · (B A)ᵀ) on every merged layer of either kind."""
    for layer in adapter_layers(model).values():
        layer.unmerge()
    return model
