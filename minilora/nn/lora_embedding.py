"""LoRA on a token embedding as modules: ``LoRAEmbedding`` (a frozen ``Embedding`` plus named
adapters), ``LoRAEmbeddingAdapter`` (one adapter's A, B) and their placement, ``add_lora_embedding``.

    h = E[ids] + scale · (Aᵀ[ids]) Bᵀ      E (V, C), A (r, V), B (C, r)   (``functional/lora_embedding.py``)

PEFT's layout (``lora_embedding_A`` is (r, V), ``lora_embedding_B`` is (C, r)) and PEFT's start:
A = 0, B ~ N(0, 1) (``init="peft"``, as loralib), so ΔE = 0 at step 0 with the roles of A and B
swapped from a linear layer's; ``init="gaussian"`` starts like ``LoRALinear``: A ~ N(0, 1/r²), B = 0.
No dropout: PEFT applies none on the embedding path.

A tied embedding (the Llama's ``model.embed_tokens``, whose table is also the LM head) is refused:
PEFT would adapt only the input lookup while the head keeps reading the base table, and merging
would then change the head too (merged ≠ unmerged). Untie the head first.
"""
from __future__ import annotations

import fnmatch

from .. import backend
from ..checks import check_adapter_options, check_lora
from ..functional.embedding import embedding_backward, embedding_forward
from ..functional.lora import lora_scale
from ..functional.lora_embedding import lora_embedding_backward, lora_embedding_delta, lora_embedding_forward
from .llama import Llama
from .adapter_host import AdapterHost
from .module import Module
from .transformer import Embedding

INITS = ("peft", "gaussian")


class LoRAEmbeddingAdapter(Module):
    """One embedding adapter: A (r, V), B (C, r), and its r, alpha, rsLoRA and init."""

    def __init__(self, V, C, r, alpha, rslora=False, init="peft", seed=0, dtype="float32", device="cpu",
                 layer="LoRAEmbedding"):
        super().__init__()
        check_lora(layer, V, C, r, alpha)
        if init not in INITS:
            raise ValueError(f"{layer}: init must be one of {INITS}, got {init!r}")
        self.r, self.alpha, self.rslora, self.init = int(r), float(alpha), bool(rslora), init
        gen = backend.rng(seed)
        if init == "peft":  # PEFT and loralib: A = 0, B ~ N(0, 1)
            self.params["A"] = backend.zeros((r, V), dtype, device)
            self.params["B"] = backend.normal(gen, (C, r), 1.0, dtype, device)
        else:  # LoRALinear's gaussian start: A ~ N(0, 1/r²), B = 0
            self.params["A"] = backend.normal(gen, (r, V), 1.0 / r, dtype, device)
            self.params["B"] = backend.zeros((C, r), dtype, device)

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.rslora)

    def delta(self):
        """ΔE = scale · (B A)ᵀ  (V, C)."""
        return lora_embedding_delta(self.params["A"], self.params["B"], self.scale)

    def config(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "rslora": self.rslora, "init": self.init}


class LoRAEmbedding(AdapterHost):
    """h = E[ids] + scale · (Aᵀ[ids]) Bᵀ around a frozen ``Embedding``.

    Named adapters (children of ``self.lora``), one ``active`` or none; ``merge()`` folds the active
    one into the table, E ← E + scale · (B A)ᵀ, ``unmerge()`` takes it out; training while merged is
    refused. Parameter names: ``base.W`` (E), ``lora.<adapter>.A``, ``lora.<adapter>.B``.
    """

    weight = "E"

    def __init__(self, base: Embedding):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"LoRAEmbedding: base must be an Embedding, got {type(base).__name__}")
        self.add_child("base", base)
        self.add_child("lora", Module())
        base.freeze()
        self.active: str | None = None
        self.merged: str | None = None

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name="default", r=8, alpha=16, rslora=False, init="peft", seed=0):
        if name in self.adapters:
            raise ValueError(f"{self.label}: adapter {name!r} already exists")
        check_adapter_options(self.label, name=name)
        E = self.base.params["W"]
        V, C = E.shape
        adapter = LoRAEmbeddingAdapter(V, C, r, alpha, rslora, init, seed, backend.dtype_name(E),
                                       backend.namespace(E), layer=self.label)
        adapter.path = f"{self.label}.lora.{name}"
        adapter.training = self.training
        self.children["lora"].add_child(name, adapter)
        return adapter

    def delta(self, name: str | None = None):
        """ΔE = scale · (B A)ᵀ (V, C) of adapter ``name`` (default: the active one)."""
        name = self.active if name is None else name
        if name is None:
            raise ValueError(f"{self.label}: no active adapter; name one")
        self._require(name)
        return self.adapters[name].delta()

    # ------------------------------------------------------------------ merge
    # The same four doors as ``LoRALinear``, so ``nn.lora.merge`` checks every layer of either kind
    # with ``merged_weight`` before it changes any with ``set_merged``.
    def merge(self, adapter: str | None = None) -> None:
        """E ← E + scale · (B A)ᵀ for the active adapter (or ``adapter``); refuses a non-finite E."""
        name = adapter if adapter is not None else self.active
        if name is None or self.merged == name:
            return
        self.set_merged(name, self.merged_weight(name))

    def merged_weight(self, name: str):
        """E + scale · (B A)ᵀ (V, C) for adapter ``name``, checked finite; changes nothing."""
        if self.merged is not None:
            raise ValueError(f"{self.label}: adapter {self.merged!r} is already merged; unmerge() first")
        self._require(name)
        E_new = self.base.params["W"] + self.adapters[name].delta()
        if not backend.is_finite(E_new):
            raise FloatingPointError(f"{self.label}: merging adapter {name!r} gives a non-finite table; "
                                     "model left unchanged")
        return E_new

    def set_merged(self, name: str, E_new) -> None:
        """Install ``E_new`` from ``merged_weight(name)`` as E; ``name`` becomes merged and active."""
        self.base.params["W"] = E_new
        self.merged, self.active = name, name
        self.clear_cache()

    def unmerge(self) -> None:
        """E ← E − scale · (B A)ᵀ, the base table again up to rounding."""
        if self.merged is None:
            return
        self.base.params["W"] = self.unmerged_weight()
        self.merged = None
        self.clear_cache()

    def unmerged_weight(self):
        """The table ``unmerge`` would restore, E − scale · (B A)ᵀ (E itself when nothing is merged)."""
        E = self.base.params["W"]
        return E if self.merged is None else E - self.adapters[self.merged].delta()

    # ------------------------------------------------------------------ forward / backward
    def forward(self, ids):
        E = self.base.params["W"]
        if self.active is None or self.merged is not None:
            out, cache = embedding_forward(ids, E)
            self.cache = ("base", cache)
            return out
        ad = self.adapters[self.active]
        h, cache = lora_embedding_forward(ids, E, ad.params["A"], ad.params["B"], ad.scale, layer=self.label)
        self.cache = ("lora", cache)
        return h

    def backward(self, dout):
        """dA, dB for the active adapter; dE only if the table trains; returns None (ids)."""
        if self.merged is not None:
            raise RuntimeError(f"{self.label}: cannot train while adapter {self.merged!r} is merged into E; "
                               "call unmerge() first")
        if self.skips(dout):
            return None
        for m in self.adapters.values():
            m.grads = {}
        kind, cache = self.cache
        trains_E = "W" in self.base.trainable_names()
        if kind == "base":
            self.base.grads = embedding_backward(dout, cache)[1] if trains_E else {}
            return None
        ad = self.adapters[self.active]
        if cache.A is not ad.params["A"] or cache.B is not ad.params["B"] or cache.E is not self.base.params["W"]:
            raise RuntimeError(f"{self.label}: E, A or B was replaced after forward; run forward again "
                               "before backward (the cache holds the old array)")
        _, grads = lora_embedding_backward(dout, cache, need=ad.trainable_names() | ({"E"} if trains_E else set()))
        self.base.grads = {"W": grads.pop("E")} if trains_E else {}
        ad.grads = grads
        return None


# ----------------------------------------------------------------------------- placement


def lora_embedding_layers(model) -> dict:
    """``{path: LoRAEmbedding}`` for every embedding LoRA layer in ``model``."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRAEmbedding)}


def embedding_paths(model) -> list:
    """Paths of every token embedding LoRA can be placed on (``Embedding`` or ``LoRAEmbedding``)."""
    return [p for p, m in model.named_modules() if isinstance(m, (Embedding, LoRAEmbedding))
            and not p.endswith(".base")]


def tied_embedding_paths(model) -> set:
    """Embeddings whose table is also read elsewhere (an LM head tied to it): the Llama's
    ``model.embed_tokens``, and any path a model lists in ``tied_embeddings``."""
    tied = set(getattr(model, "tied_embeddings", ()))
    if isinstance(model, Llama):
        tied.add("model.embed_tokens")
    return tied


def wrap_with_lora_embedding(model, path: str) -> LoRAEmbedding:
    """Replace the ``Embedding`` at ``path`` by a ``LoRAEmbedding`` around it (no adapter yet) and
    return it; an existing ``LoRAEmbedding`` is returned as it is (``wrap_with_lora``'s twin)."""
    layer = model.get_module(path)
    if not isinstance(layer, LoRAEmbedding):
        wrapped = LoRAEmbedding(layer)
        wrapped.training = layer.training
        model.set_module(path, wrapped)
        layer = wrapped
    layer.path, layer.base.path = path, f"{path}.base"
    return layer


def _matches(path: str, pattern: str) -> bool:
    """The same rule as ``add_lora``'s targets: the path or its last component, equal or a glob."""
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path.rsplit(".", 1)[-1], pattern)


def add_lora_embedding(model, targets, r=8, alpha=16, rslora=False, init="peft", dropout=0.0, seed=0,
                       adapter="default", activate=True):
    """Wrap each target ``Embedding`` (a path or pattern, ``"wte"``; or a list) in a ``LoRAEmbedding``
    (or add an adapter to an existing one). Like ``add_lora``, freezes every parameter already in
    the model, except the same-named adapter's A and B on other layers: ``add_lora(model, ["q", "v"])``
    then ``add_lora_embedding(model, "wte")`` trains all three (the other order does not: ``add_lora``
    freezes everything already there). Everything is checked before anything changes: an unknown
    target, a tied embedding, a bad r, alpha, init or dropout raises ``ValueError`` and leaves the
    model as it was.
    """
    owner = type(model).__name__
    if dropout:
        raise ValueError(f"{owner}: add_lora_embedding: dropout must be 0, got {dropout!r} (PEFT applies no "
                         "dropout on an embedding's LoRA path, so neither does minilora)")
    targets = [targets] if isinstance(targets, str) else list(targets)
    available = embedding_paths(model)
    paths = []
    for pattern in targets:
        hits = [p for p in available if _matches(p, pattern)]
        if not hits:
            raise ValueError(f"{owner}: unknown embedding target {pattern!r}; token embeddings are {available}")
        paths += [p for p in hits if p not in paths]
    tied = tied_embedding_paths(model)
    gen = backend.rng(seed)
    plan = []
    for path in paths:
        if path in tied:
            raise ValueError(
                f"{owner}: {path} is tied to the LM head (the head reads the same table), so LoRA on it "
                "would adapt the input lookup only while the head keeps the base table, and merging "
                "would change the head as well (merged != unmerged; PEFT warns about this, issue "
                "huggingface/peft#2777). Untie the head first, or put LoRA on the linear layers only"
            )
        layer = model.get_module(path)
        E = layer.base.params["W"] if isinstance(layer, LoRAEmbedding) else layer.params["W"]
        check_lora(path, E.shape[0], E.shape[1], r, alpha)
        check_adapter_options(path, name=adapter)
        if init not in INITS:
            raise ValueError(f"{path}: init must be one of {INITS}, got {init!r}")
        if isinstance(layer, LoRAEmbedding) and adapter in layer.adapters:
            raise ValueError(f"{path}: adapter {adapter!r} already exists")
        plan.append(path)
    same_adapter = f".lora.{adapter}."  # that adapter on other layers (add_lora's) keeps training
    for path, m in model.named_modules():
        for k in m.params:
            if same_adapter not in f".{path}.{k}":
                m.freeze(k)
    for path in plan:
        layer = wrap_with_lora_embedding(model, path)
        layer.add_adapter(adapter, r, alpha, rslora, init, seed=gen.integers(2**63))
        if activate and layer.merged is None:
            layer.set_active(adapter)
    model.set_paths()
    return model
