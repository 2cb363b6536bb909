"""Whole-model weights in one safetensors file, saved and loaded with the care adapters get.

    save_weights(model, "run/model.safetensors")    # every parameter, by qualified name
    load_weights(model, "run/model.safetensors")    # checked in full, then copied in

Saving is atomic (``safetensors.save_file``: a temporary file next to the target, fsynced, then
renamed), so a crash leaves the old file or the new one, never half of one. Loading checks
everything before the model changes: the file itself (empty, truncated, corrupt: the reader's
``SafetensorsError``), the names, every shape and dtype (they must equal the model's: no silent
cast: ``Module.load_state_dict``) and every value (NaN and ±inf are refused). Each problem is a
``ValueError`` naming the file and the key, and the model is left as it was.
"""
from __future__ import annotations

import os

from . import backend
from . import safetensors as st
from .nn.lora import lora_layers


def save_weights(model, path) -> int:
    """Write every parameter of ``model`` to the safetensors file ``path`` atomically (creating
    its directory); returns the file's size in bytes.

    A model with an adapter merged into W is refused: the file would hold W + ΔW *and* ΔW's A, B,
    and nothing in it could tell a later load not to add them again — ``unmerge()`` first.
    """
    merged = [p for p, layer in lora_layers(model).items() if layer.merged is not None]
    if merged:
        raise ValueError(
            f"save_weights: {path}: layers {merged[:6]} have an adapter merged into W; call "
            "model.unmerge() first (the file stores the base W and the adapter's A, B)"
        )
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return st.save_file({k: backend.to_numpy(v) for k, v in model.state_dict().items()}, path)


def load_weights(model, path):
    """Replace every parameter of ``model`` by the arrays in the safetensors file ``path``
    (moved to the model's device); returns the model.

    Raises ``ValueError`` naming ``path`` and the key — for a file that cannot be read or parsed,
    names that differ from the model's, a shape or dtype that differs, or a non-finite value —
    before anything changes.
    """
    path = os.fspath(path)
    tensors, _ = st.load_file(path)  # SafetensorsError (a ValueError) for empty/truncated/corrupt
    for name, a in tensors.items():
        if not backend.is_finite(a):
            raise ValueError(f"{path}: key {name!r}: holds NaN or infinite values (a diverged or damaged save)")
    try:
        return model.load_state_dict(tensors)  # names, shapes, dtypes: all checked before any change
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
