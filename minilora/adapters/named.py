"""Named adapters across a model's layers: add, list, switch, delete, measure merge drift.

Each LoRA layer (``LoRALinear``) holds named adapters; the functions here act on all layers of a
model at once and check every layer before changing any. Merging itself is the model's own door,
``model.merge(name)`` / ``model.unmerge()`` (``nn/lora.py``); ``merge_drift`` measures what that
round trip costs in each dtype without changing the model. ``_install`` adds an adapter from
arrays already checked (by ``files.read_adapter`` or ``combine.combine_adapters``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from .. import backend
from ..functional.dora import dora_weight
from ..functional.lora import lora_delta
from ..nn.lora import adapter_layers, add_lora, layers_with, wrap_with_lora


@dataclass(frozen=True)
class AdapterInfo:
    """What one named adapter is, across the model's layers."""

    name: str
    targets: tuple  # layer paths carrying it, in model order
    r: dict  # {path: rank}
    alpha: dict  # {path: alpha}
    rslora: bool
    dropout: float
    init: str
    active: bool  # active on every layer that carries it
    merged: bool  # merged into W on every layer that carries it
    dora: bool = False  # DoRA (a magnitude m per output row)
    dora_exact: bool = True  # DoRA's backward: exact through the norm, or PEFT's (norm detached)


def list_adapters(model) -> dict:
    """``{name: AdapterInfo}`` for every adapter in ``model``, in the order they were added."""
    every = adapter_layers(model)  # linear layers and token embeddings
    names = []
    for layer in every.values():
        names += [n for n in layer.adapters if n not in names]
    out = {}
    for name in names:
        layers = layers_with(model, name, embeddings=True)
        ads = {p: m.adapters[name] for p, m in layers.items()}
        first = next(iter(ads.values()))
        out[name] = AdapterInfo(
            name, tuple(layers), {p: a.r for p, a in ads.items()}, {p: a.alpha for p, a in ads.items()},
            first.rslora, getattr(first, "dropout", 0.0), first.init,  # an embedding adapter has no dropout
            all(m.active == name for m in layers.values()), all(m.merged == name for m in layers.values()),
            getattr(first, "dora", False), getattr(first, "dora_exact", True),
        )
    return out


def add_adapter(model, name: str, targets=None, r=8, alpha=16, rslora=False, dropout=0.0,
                init="gaussian", seed=0, activate=False, use_dora=False, dora_exact=True, freeze_A=False):
    """Add adapter ``name`` on ``targets`` (``nn.lora.add_lora`` with ``adapter=name``).

    ``r`` and ``alpha`` may be per-target dicts. Like ``add_lora``, every parameter already in the
    model is frozen; only the new A, B train. ``activate=True`` makes it the model's active adapter.
    """
    add_lora(model, targets, r=r, alpha=alpha, rslora=rslora, dropout=dropout, init=init, seed=seed,
             adapter=name, activate=False, use_dora=use_dora, dora_exact=dora_exact, freeze_A=freeze_A)
    if activate:
        set_active(model, name)
    return model


def active_adapters(model) -> dict:
    """``{path: active adapter name or None}`` for every LoRA layer (token embeddings included):
    the state to restore later."""
    return {p: m.active for p, m in adapter_layers(model).items()}


def set_active(model, name: str | None):
    """Activate ``name`` on every layer carrying it; every other LoRA layer runs its base alone.

    ``None`` disables all adapters. Refused (model unchanged) if a layer has a different adapter
    merged into W, or no layer carries ``name``. LoRA token embeddings switch with the linears.
    """
    layers = adapter_layers(model)
    if name is not None and not any(name in m.adapters for m in layers.values()):
        names = sorted({n for m in layers.values() for n in m.adapters})
        raise KeyError(f"{type(model).__name__}: no adapter {name!r}; adapters: {names}")
    state = {p: (name if name in m.adapters else None) for p, m in layers.items()}
    return restore_active(model, state)


def restore_active(model, state: dict):
    """Set each layer's active adapter from ``state`` (as returned by ``active_adapters``)."""
    layers = adapter_layers(model)
    for p, want in state.items():  # check every layer before changing any
        m = layers.get(p)
        if m is None:
            raise KeyError(f"{p}: not a LoRA layer of this model")
        if want is not None and want not in m.adapters:
            raise KeyError(f"{p}: no adapter {want!r}")
        if m.merged is not None and want != m.merged:
            raise ValueError(f"{p}: adapter {m.merged!r} is merged into W; unmerge() first")
    for p, want in state.items():
        layers[p].set_active(want)
    return model


@contextlib.contextmanager
def adapters_disabled(model):
    """``with adapters_disabled(model):`` base model only; the previous active state comes back."""
    before = active_adapters(model)
    set_active(model, None)
    try:
        yield model
    finally:
        restore_active(model, before)


def delete_adapter(model, name: str):
    """Remove adapter ``name`` from every layer, linear and embedding (refused, model unchanged,
    if it is merged anywhere)."""
    layers = layers_with(model, name, embeddings=True)
    for p, m in layers.items():
        if m.merged == name:
            raise ValueError(f"{p}: adapter {name!r} is merged into {m.weight}; unmerge() first")
    for m in layers.values():
        m.delete_adapter(name)
    return model


def merge_drift(model, adapter: str, dtypes=("float64", "float32", "float16")) -> dict:
    """How far unmerge(merge(W)) lands from W, per dtype, without changing the model.

    For each dtype, every layer's W, A, B are cast to it and the layer's own arithmetic is
    replayed: W₁ = W + ΔW, W₂ = W₁ − ΔW. Returns ``{dtype: {"max_abs": max|W₂ − W|,
    "max_rel": max|W₂ − W| / max|W|, "fro_rel": ‖W₂ − W‖ / ‖W‖, "per_layer": {path: max_abs}}}``
    (maxima over layers; differences taken in float64). The adapter must not be merged. A dtype
    the model's namespace lacks (array-api-strict has no float16) is measured with NumPy.
    """
    layers = layers_with(model, adapter)
    out = {}
    for dt in dtypes:
        max_abs = max_rel = 0.0
        num = den = 0.0
        per_layer = {}
        for p, m in layers.items():
            if m.merged is not None:
                raise ValueError(f"{p}: adapter {m.merged!r} is merged; unmerge() before measuring")
            ad = m.adapters[adapter]
            W, A, B = m.base.params["W"], ad.params["A"], ad.params["B"]
            xp = backend.namespace(W)
            if not hasattr(xp, dt):  # e.g. array-api-strict has no float16: measure on the host
                xp = backend.resolve_device("cpu")
                W, A, B = (backend.move(a, xp) for a in (W, A, B))
            to = getattr(xp, dt)
            W0, A, B = xp.astype(W, to), xp.astype(A, to), xp.astype(B, to)
            if ad.dora:  # merge W′ = (m / n) ⊙ V, unmerge W′ ⊙ n / m − ΔW, as LoRALinear does
                m_ = xp.astype(backend.move(ad.params["m"], xp), to)
                W1, n = dora_weight(W0, A, B, m_, ad.scale)
                W2 = W1 * (n / m_)[:, None] - lora_delta(A, B, ad.scale)
            else:
                W2 = (W0 + lora_delta(A, B, ad.scale)) - lora_delta(A, B, ad.scale)
            w64 = xp.astype(W0, xp.float64)
            d = xp.astype(W2, xp.float64) - w64
            err = float(xp.max(xp.abs(d)))
            per_layer[p] = err
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(float(xp.max(xp.abs(w64))), 1e-300))
            num += float(xp.sum(d * d))
            den += float(xp.sum(w64 * w64))
        out[dt] = {"max_abs": max_abs, "max_rel": max_rel, "fro_rel": math.sqrt(num / max(den, 1e-300)),
                   "per_layer": per_layer}
    return out


# ============================================================================ from given arrays


@dataclass
class _Plan:
    """One layer's arrays for a new adapter, checked by the caller (a file read, a combination)."""

    path: str
    A: object  # (r, d_in): NumPy from a file, the model's namespace from combine_adapters
    B: object  # (d_out, r)
    r: int
    alpha: float
    m: object = None  # (d_out,) DoRA's magnitude, or None for plain LoRA


def _install(model, name, plans, rslora=False, dropout=0.0, init="gaussian", trainable=True, dora=False,
             dora_exact=True):
    """Add adapter ``name`` with the given arrays (validated by the caller) to ``model``."""
    model.freeze()  # as add_lora: the base (and older adapters) stay frozen
    for plan in plans:
        layer = wrap_with_lora(model, plan.path)
        ad = layer.add_adapter(name, plan.r, plan.alpha, rslora, dropout, init, seed=0, dora=dora,
                               dora_exact=dora_exact)
        xp = backend.namespace(ad.params["A"])  # the adapter lives where its layer does
        for k, a in (("A", plan.A), ("B", plan.B), ("m", plan.m)):
            if a is not None:
                ad.params[k] = backend.move(a, xp)
        if not trainable:
            ad.freeze()
    model.set_paths()
    return model
