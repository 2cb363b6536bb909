"""Place LoRA on a model by name: ``add_lora(model, targets=["q", "v"], r=8, alpha=16)``.

Targets are matched against the paths of ``Linear`` layers (``fc1``, ``blocks.0.attn.q``): a
pattern matches a path if it equals the path or its last component, or matches either as a glob
(``blocks.*.attn.q``, ``fc*``). ``r`` and ``alpha`` may be dicts from pattern to value for
per-target settings. Like PEFT, adding LoRA freezes every base parameter.
"""
from __future__ import annotations

import fnmatch

from .. import backend
from ..functional.lora import check_lora
from .linear import Linear, LoRALinear, check_adapter_options


def _matches(path: str, pattern: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(last, pattern)


def lora_layers(model) -> dict:
    """``{path: LoRALinear}`` for every LoRA layer in ``model``."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def layers_with(model, name: str) -> dict:
    """``{path: LoRALinear}`` for the layers carrying adapter ``name`` (KeyError if none do)."""
    every = lora_layers(model)
    layers = {p: m for p, m in every.items() if name in m.adapters}
    if not layers:
        names = sorted({n for m in every.values() for n in m.adapters})
        raise KeyError(f"{type(model).__name__}: no adapter {name!r}; adapters: {names}")
    return layers


def linear_paths(model) -> list:
    """Paths of every layer LoRA can be placed on (plain ``Linear`` or existing ``LoRALinear``)."""
    return [p for p, m in model.named_modules() if isinstance(m, (Linear, LoRALinear))
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
             seed=0, adapter="default", activate=True):
    """Wrap each target ``Linear`` in a ``LoRALinear`` (or add an adapter to an existing one).

    Freezes every parameter already in the model; only the new A and B are trainable.
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
        if isinstance(layer, LoRALinear) and adapter in layer.adapters:
            raise ValueError(f"{path}: adapter {adapter!r} already exists")
        plan.append((path, layer, rr, aa))
    model.freeze()
    for path, layer, rr, aa in plan:
        layer = wrap_with_lora(model, path)
        layer.add_adapter(adapter, rr, aa, rslora, dropout, init, seed=gen.integers(2**63))
        if activate and layer.merged is None:
            layer.set_active(adapter)
    model.set_paths()
    return model


def merge(model, adapter: str | None = None):
    """W ← W + scale · B A on every LoRA layer — all layers or none.

    ``adapter=None`` merges each layer's active adapter; a name merges that adapter on the layers
    that carry it (``KeyError`` if none do). Every new W is computed and checked finite before any
    layer changes, so a non-finite result raises and leaves the model bitwise unchanged.
    """
    layers = lora_layers(model) if adapter is None else layers_with(model, adapter)
    plan = []
    for layer in layers.values():
        name = adapter if adapter is not None else layer.active
        if name is not None and layer.merged != name:
            plan.append((layer, name, layer.merged_weight(name)))  # raises before any change
    for layer, name, W_new in plan:
        layer.set_merged(name, W_new)
    return model
