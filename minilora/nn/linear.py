"""Linear and LoRALinear modules, built from ``functional.linear`` and ``functional.lora``."""
from __future__ import annotations

import math

from .. import backend
from ..functional.linear import LinearCache, linear_backward, linear_forward
from ..functional.lora import check_lora, lora_backward, lora_delta, lora_forward, lora_scale
from .module import Module


class Linear(Module):
    """y = x Wᵀ + b with W (d_out, d_in), b (d_out,).

    Initialised like PyTorch's ``nn.Linear``: W, b ~ U(−1/√d_in, 1/√d_in), drawn on the CPU by a
    seeded NumPy generator and then moved to ``device``.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        for name, v in (("d_in", d_in), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {v!r}")
        gen = backend.rng(seed)
        bound = 1.0 / math.sqrt(d_in)
        self.params["W"] = backend.uniform(gen, (d_out, d_in), bound, dtype, device)
        if bias:
            self.params["b"] = backend.uniform(gen, (d_out,), bound, dtype, device)

    @property
    def d_in(self) -> int:
        return self.params["W"].shape[1]

    @property
    def d_out(self) -> int:
        return self.params["W"].shape[0]

    def forward(self, x):
        y, self.cache = linear_forward(x, self.params["W"], self.params.get("b"), layer=self.label)
        return y

    def backward(self, dout, need_dx: bool = True):
        frozen = set(self.params) <= self.frozen  # dW, db skipped only when both are frozen
        dx, grads = linear_backward(dout, self.cache, frozen=frozen, need_dx=need_dx)
        # keep trainable ones only: no bias, or a frozen W or b (e.g. BitFit: W frozen, b trained)
        self.grads = {k: v for k, v in grads.items() if k in self.params and k not in self.frozen}
        return dx


def check_adapter_options(layer: str, dropout=0.0, init="gaussian", name="default") -> None:
    """Raise ``ValueError`` naming ``layer`` for a bad dropout, init or adapter name."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{layer}: dropout must lie in [0, 1), got {dropout!r}")
    if init not in LoRAAdapter.INITS:
        raise ValueError(f"{layer}: init must be one of {LoRAAdapter.INITS}, got {init!r}")
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"{layer}: adapter name must be a non-empty string without dots, got {name!r}")


class LoRAAdapter(Module):
    """One adapter's trainable pair: A (r, d_in), B (d_out, r), and its hyper-parameters.

    A starts random (``init="gaussian"``: N(0, 1/r²) as PEFT's "gaussian" option; the paper says
    Gaussian; ``"kaiming_uniform"``: U(−1/√d_in, 1/√d_in), PEFT's default), B starts at zero,
    so ΔW = B A = 0 and the adapted model equals the base at step 0.
    """

    INITS = ("gaussian", "kaiming_uniform")

    def __init__(self, d_in, d_out, r, alpha, rslora=False, dropout=0.0, init="gaussian",
                 seed=0, dtype="float32", device="cpu", layer="LoRALinear"):
        super().__init__()
        check_lora(layer, d_in, d_out, r, alpha)
        check_adapter_options(layer, dropout=dropout, init=init)
        self.r, self.alpha, self.rslora, self.dropout, self.init = r, float(alpha), bool(rslora), float(dropout), init
        self.rng = backend.rng(seed)  # also draws the dropout masks
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
        return {"r": self.r, "alpha": self.alpha, "rslora": self.rslora, "dropout": self.dropout, "init": self.init}


class LoRALinear(Module):
    """h = x Wᵀ + b + scale · (dropout(x) Aᵀ) Bᵀ around a frozen ``Linear``.

    Holds any number of named adapters (children of ``self.lora``); one is ``active`` (or none:
    the base alone). ``merge()`` folds the active adapter into W for zero-latency inference and
    ``unmerge()`` takes it out again; ``merged`` names the adapter inside W, if any. Training
    while merged is refused.

    Parameter names: ``base.W``, ``base.b``, ``lora.<adapter>.A``, ``lora.<adapter>.B``.
    """

    def __init__(self, base: Linear):
        super().__init__()
        self.add_child("base", base)
        self.add_child("lora", Module())
        base.freeze()
        self.active: str | None = None
        self.merged: str | None = None

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> dict:
        return self.children["lora"].children

    def add_adapter(self, name="default", r=8, alpha=16, rslora=False, dropout=0.0, init="gaussian", seed=0):
        if name in self.adapters:
            raise ValueError(f"{self.label}: adapter {name!r} already exists")
        check_adapter_options(self.label, name=name)
        W = self.base.params["W"]
        adapter = LoRAAdapter(self.base.d_in, self.base.d_out, r, alpha, rslora, dropout, init, seed,
                              backend.dtype_name(W), backend.namespace(W), layer=self.label)
        adapter.path = f"{self.label}.lora.{name}"
        adapter.training = self.training
        self.children["lora"].add_child(name, adapter)
        return adapter

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if self.merged == name:
            raise ValueError(f"{self.label}: adapter {name!r} is merged into W; unmerge() first")
        del self.adapters[name]
        if self.active == name:
            self.active = None

    def set_active(self, name: str | None) -> None:
        if name is not None:
            self._require(name)
        if self.merged is not None and name != self.merged:
            raise ValueError(
                f"{self.label}: adapter {self.merged!r} is merged into W; unmerge() before "
                f"activating {name!r}"
            )
        self.active = name
        self.clear_cache()

    def _require(self, name):
        if name not in self.adapters:
            raise KeyError(f"{self.label}: no adapter {name!r}; adapters: {sorted(self.adapters)}")

    # ------------------------------------------------------------------ merge
    def merge(self, adapter: str | None = None) -> None:
        """W ← W + scale · B A for the active adapter (or ``adapter``); refuses non-finite W."""
        name = adapter if adapter is not None else self.active
        if name is None or self.merged == name:
            return
        self.set_merged(name, self.merged_weight(name))

    def merged_weight(self, name: str):
        """W + scale · B A for adapter ``name``, checked finite; changes nothing (the first half
        of ``merge``, so a model can check every layer before changing any)."""
        if self.merged is not None:
            raise ValueError(f"{self.label}: adapter {self.merged!r} is already merged; unmerge() first")
        self._require(name)
        W_new = self.base.params["W"] + self.adapters[name].delta()
        if not backend.is_finite(W_new):
            raise FloatingPointError(
                f"{self.label}: merging adapter {name!r} gives non-finite weights; model left unchanged"
            )
        return W_new

    def set_merged(self, name: str, W_new) -> None:
        """Install ``W_new`` from ``merged_weight(name)`` as W; ``name`` becomes merged and active."""
        self.base.params["W"] = W_new
        self.merged = name
        self.active = name
        self.clear_cache()

    def unmerge(self) -> None:
        """W ← W − scale · B A, restoring the base weights up to rounding."""
        if self.merged is None:
            return
        self.base.params["W"] = self.base.params["W"] - self.adapters[self.merged].delta()
        self.merged = None
        self.clear_cache()

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        base = self.base
        W, b = base.params["W"], base.params.get("b")
        if self.active is None or self.merged is not None:
            y, cache = linear_forward(x, W, b, layer=self.label)
            self.cache = ("base", cache)
            return y
        ad = self.adapters[self.active]
        mask = None
        if self.training and ad.dropout > 0:
            mask = backend.dropout_mask(ad.rng, tuple(x.shape), ad.dropout, backend.dtype_name(x), backend.namespace(x))
        y, cache = lora_forward(x, W, b, ad.params["A"], ad.params["B"], ad.scale, mask, layer=self.label)
        self.cache = ("lora", cache)
        return y

    def backward(self, dout, need_dx: bool = True):
        if self.merged is not None:
            raise RuntimeError(
                f"{self.label}: cannot train while adapter {self.merged!r} is merged into W; "
                "call unmerge() first"
            )
        kind, cache = self.cache
        for m in self.children["lora"].children.values():
            m.grads = {}
        base_trainable = [k for k in self.base.params if k not in self.base.frozen]
        if kind == "base":
            dx, grads = linear_backward(dout, cache, frozen=not base_trainable, need_dx=need_dx)
        else:
            dx, grads = lora_backward(dout, cache, need_dx=need_dx)
            ad = self.adapters[self.active]
            ad.grads = {k: v for k, v in grads.items() if k not in ad.frozen}
            grads = {}
            if base_trainable:  # unusual: LoRA on top of a base the user unfroze
                _, grads = linear_backward(dout, LinearCache(cache.x, cache.W), need_dx=False)
        self.base.grads = {k: v for k, v in grads.items() if k in base_trainable}
        return dx
