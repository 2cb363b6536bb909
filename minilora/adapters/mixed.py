"""Mixed-adapter batches on a whole model: row n of the batch through adapter ``names[n]``.

    with ml.adapters.mixed_batch(model, ["sql", "chat", None, "sql"]):
        logits = model.forward(ids)              # ids (4, T): each row with its own adapter
        ml.train_step(model, opt, ids, targets)  # and each adapter learns from its rows only

This is PEFT's ``model(..., adapter_names=[...])`` (inference only there; PEFT refuses it while
training). ``None`` or ``"__base__"`` runs a row on the base model. A layer that an adapter does
not target runs the base for that adapter's rows, as in PEFT. The math is
``functional/mixed_lora.py`` (docs/lora_family.md: the equations, the loop and the gather).
"""
from __future__ import annotations

import contextlib

from ..nn.lora import lora_layers
from .errors import AdapterError

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


@contextlib.contextmanager
def mixed_batch(model, names):
    """Within the block, row n of every batch goes through adapter ``names[n]`` on every LoRA
    layer. Every name must be an adapter of the model (or None / "__base__"); merged layers and
    DoRA adapters are refused before anything changes. The layers' previous state comes back
    when the block ends, even on an error."""
    names = list(names)
    layers = lora_layers(model)
    if not layers:
        raise AdapterError(f"mixed_batch: {type(model).__name__} has no LoRA layers")
    known = {n for layer in layers.values() for n in layer.adapters}
    unknown = sorted({str(n) for n in names if n is not None and n != BASE and n not in known})
    if unknown:
        raise AdapterError(f"mixed_batch: names {unknown} are not adapters of this model; adapters: "
                           f"{sorted(known)} (None or {BASE!r} for the base)")
    saved = {path: layer.rows for path, layer in layers.items()}
    forward = model.forward

    def checked_forward(x, *args, **kwargs):
        # a layer may see the batch flattened to (N·T, C) and cannot tell N from T: the model's
        # own input is where the number of rows is checked
        if x.shape[0] != len(names):
            raise ValueError(f"mixed_batch: the batch has {x.shape[0]} rows, {len(names)} adapter names "
                             f"were given (one per row); x is {tuple(x.shape)}")
        return forward(x, *args, **kwargs)

    try:
        for layer in layers.values():  # raises (merged, DoRA) before the batch runs
            layer.set_rows(names)
        model.forward = checked_forward
        yield model
    finally:
        model.__dict__.pop("forward", None)  # the class's forward again
        for path, layer in layers.items():
            layer.set_rows(saved[path])
