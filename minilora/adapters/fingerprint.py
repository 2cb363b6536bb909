"""The base fingerprint: which base model an adapter was trained on, stored in its file.

``base_fingerprint`` is a SHA-256 of the base weights (LoRA wrappers and adapters left out,
merged adapters taken out again); ``_sketch`` is a rounding-tolerant companion (norm and random
projections per array), so a base that went through merge + unmerge still matches while a
different base does not. ``_check_fingerprint`` compares a file's stored pair with a model.
"""
from __future__ import annotations

import hashlib
import json

from .. import backend
from ..nn.lora import LoRAAdapter, LoRALinear, adapter_layers
from ..nn.lora_embedding import LoRAEmbedding, LoRAEmbeddingAdapter
from ..nn.quantized import QuantLinear
from .errors import AdapterError

EPS = {  # machine epsilon per dtype: the sketch tolerance is 64 · eps · ‖W‖
    "float16": 2.0**-10, "float32": 2.0**-23, "float64": 2.0**-52,
    "uint8": 2.0**-52}  # a 4-bit weight's codes: never rounded, so held to float64's tolerance


def _base_arrays(model) -> dict:
    """``{canonical name: array}`` of every non-LoRA parameter, with merged adapters taken out.

    Canonical names drop the LoRA wrapper (``fc1.base.W`` → ``fc1.W``, ``wte.base.W`` → ``wte.W``
    for a LoRA embedding), so a wrapped and an unwrapped copy of one base agree. A merged layer
    contributes the W its ``unmerge`` would restore (``unmerged_weight``: W − ΔW, for DoRA
    W′ ⊙ n / m − ΔW, for an embedding E − ΔE). A 4-bit ``QuantLinear`` holds no parameters; its packed weight contributes its three
    arrays as ``{path}.W.q4_1.d``, ``.m`` and ``.nibbles`` (the file's bytes), so two 4-bit bases
    are compared by their codes. A float W and a 4-bit one have different names: they never match.
    """
    lora = adapter_layers(model)
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, (LoRAAdapter, LoRALinear, LoRAEmbeddingAdapter, LoRAEmbedding)):
            continue
        parent, _, last = path.rpartition(".")
        owner = lora.get(parent) if last == "base" else None
        canon = parent if owner is not None else path
        for k, v in m.params.items():
            if owner is not None and k == "W":
                v = owner.unmerged_weight()
            out[f"{canon}.{k}" if canon else k] = v
        if isinstance(m, QuantLinear):
            w = m.weight
            for k, v in (("d", w.d), ("m", w.m), ("nibbles", w.nibbles)):
                out[f"{canon}.W.q4_1.{k}"] = v
    return out


def _host_le(a):
    h = backend.to_numpy(a)
    return h.astype(h.dtype.newbyteorder("<"), copy=False)


def base_fingerprint(model) -> str:
    """SHA-256 over the sorted names, shapes, dtypes and little-endian bytes of the base weights."""
    h = hashlib.sha256()
    for name, a in sorted(_base_arrays(model).items()):
        h.update(f"{name}|{tuple(a.shape)}|{backend.dtype_name(a)}\n".encode())
        h.update(_host_le(a).tobytes())
    return h.hexdigest()


def _sketch(model) -> dict:
    """A rounding-tolerant fingerprint: per array, its norm and 4 seeded random projections.

    A merge followed by an unmerge leaves W off by a few ulps, which changes the SHA-256 but moves
    each projection by only about eps · ‖W‖; a different base moves it by about ‖W‖.
    """
    out = {}
    for name, a in sorted(_base_arrays(model).items()):
        h = backend.to_numpy(a).astype("float64")
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        gen = backend.rng(seed)
        proj = [float((gen.standard_normal(h.shape) * h).sum()) for _ in range(4)]
        out[name] = [list(a.shape), backend.dtype_name(a), float((h * h).sum() ** 0.5)] + proj
    return out


def _check_fingerprint(model, meta: dict, where: str) -> str:
    """Compare a file's stored fingerprint with ``model``'s base. Returns how it matched."""
    want = meta.get("minilora.base_sha256")
    if want is None:
        return "absent"
    if base_fingerprint(model) == want:
        return "exact"
    try:
        saved = json.loads(meta.get("minilora.base_sketch", ""))
    except ValueError:
        saved = None
    if not isinstance(saved, dict):
        raise AdapterError(f"{where}: key '__metadata__.minilora.base_sha256': fingerprint mismatch and no usable sketch")
    ours = _sketch(model)
    for name in sorted(set(saved) | set(ours)):
        if name not in ours or name not in saved:
            raise AdapterError(
                f"{where}: key '__metadata__.minilora.base_sha256': fingerprint mismatch — base array "
                f"{name!r} is {'missing from this model' if name not in ours else 'not in the saved base'}; "
                "this adapter was trained on a different base model (or on the same checkpoint held "
                "4-bit on one side and float on the other, whose weights the fingerprint cannot compare: "
                "then load with check_fingerprint=False)"
            )
        s, o = saved[name], ours[name]
        if s[:2] != o[:2]:
            raise AdapterError(
                f"{where}: key '__metadata__.minilora.base_sha256': fingerprint mismatch — base array "
                f"{name!r} was {s[0]} {s[1]}, this model has {o[0]} {o[1]}"
            )
        tol = 64 * EPS.get(o[1], 2.0**-23) * max(s[2], o[2], 1e-300)
        if any(abs(a - b) > tol for a, b in zip(s[2:], o[2:])):
            raise AdapterError(
                f"{where}: key '__metadata__.minilora.base_sha256': fingerprint mismatch — base array "
                f"{name!r} differs from the one this adapter was trained on (different base model?); "
                "pass check_fingerprint=False to load anyway"
            )
    return "rounding"  # equal up to merge/unmerge rounding
