"""Adapters as tasks and as files: named adapters, merge, PEFT-format save/load, combination.

One frozen base, many small adapters. Each LoRA layer (``LoRALinear``) holds named adapters; this
module acts on all layers of a model at once:

    add_adapter(model, "rotated", targets=["fc1", "fc2"], r=4, alpha=8)
    set_active(model, "rotated")            # layers without it run the base alone
    with adapters_disabled(model): ...      # base only, previous state restored on exit
    merge_adapter(model, "rotated")         # W ← W + ΔW on every layer, or on none
    save_adapter(model, "runs/rotated", adapter="rotated")
    load_adapter(model, "runs/rotated", adapter_name="rotated")
    combine_adapters(model, {"a": 1, "b": 1}, "a+b", how="concat")

Files are HuggingFace PEFT's: a directory with ``adapter_model.safetensors`` and
``adapter_config.json``. A minilora module path *is* the attribute path of the same layer in the
equivalent PyTorch model (``fc1``, ``blocks.0.attn.q``), so minilora's ``<path>.lora.<name>.A``
(r, d_in) and ``.B`` (d_out, r) are saved as PEFT's ``base_model.model.<path>.lora_A.weight`` and
``base_model.model.<path>.lora_B.weight`` — same orientation, no transpose (see docs/adapters.md).

``numpy`` is not imported here: arrays cross to the host through ``backend.to_numpy`` for hashing
and file I/O, and come back through ``backend.from_numpy``; all math uses the model's namespace.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

from . import backend
from . import safetensors as st
from .checks import check_lora
from .functional.lora import lora_delta
from .checks import check_adapter_options
from .nn.lora import LoRAAdapter, LoRALinear
from .nn.lora import add_lora, layers_with, linear_paths, lora_layers, wrap_with_lora
from .nn.lora import merge as nn_merge

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."
# base_model.model.<path>.lora_A.weight, tolerating PEFT's in-memory form lora_A.<adapter>.weight
KEY_RE = re.compile(r"base_model\.model\.(?P<path>.+?)\.lora_(?P<AB>[AB])(?:\.(?P<name>[^.]+))?\.weight")
INIT_TO_PEFT = {"gaussian": "gaussian", "kaiming_uniform": True}
FLOAT_TAGS = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "float32"}
EPS = {"float16": 2.0**-10, "float32": 2.0**-23, "float64": 2.0**-52}


class AdapterError(ValueError):
    """A bad adapter file, config or request; the message names the file and the key."""


# ============================================================================ named adapters


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


def list_adapters(model) -> dict:
    """``{name: AdapterInfo}`` for every adapter in ``model``, in the order they were added."""
    names = []
    for layer in lora_layers(model).values():
        names += [n for n in layer.adapters if n not in names]
    out = {}
    for name in names:
        layers = layers_with(model, name)
        ads = {p: m.adapters[name] for p, m in layers.items()}
        first = next(iter(ads.values()))
        out[name] = AdapterInfo(
            name, tuple(layers), {p: a.r for p, a in ads.items()}, {p: a.alpha for p, a in ads.items()},
            first.rslora, first.dropout, first.init,
            all(m.active == name for m in layers.values()), all(m.merged == name for m in layers.values()),
        )
    return out


def add_adapter(model, name: str, targets=None, r=8, alpha=16, rslora=False, dropout=0.0,
                init="gaussian", seed=0, activate=False):
    """Add adapter ``name`` on ``targets`` (``nn.lora.add_lora`` with ``adapter=name``).

    ``r`` and ``alpha`` may be per-target dicts. Like ``add_lora``, every parameter already in the
    model is frozen; only the new A, B train. ``activate=True`` makes it the model's active adapter.
    """
    add_lora(model, targets, r=r, alpha=alpha, rslora=rslora, dropout=dropout, init=init, seed=seed,
             adapter=name, activate=False)
    if activate:
        set_active(model, name)
    return model


def active_adapters(model) -> dict:
    """``{path: active adapter name or None}`` for every LoRA layer: the state to restore later."""
    return {p: m.active for p, m in lora_layers(model).items()}


def set_active(model, name: str | None):
    """Activate ``name`` on every layer carrying it; every other LoRA layer runs its base alone.

    ``None`` disables all adapters. Refused (model unchanged) if a layer has a different adapter
    merged into W, or no layer carries ``name``.
    """
    layers = lora_layers(model)
    if name is not None:
        layers_with(model, name)
    state = {p: (name if name in m.adapters else None) for p, m in layers.items()}
    return restore_active(model, state)


def restore_active(model, state: dict):
    """Set each layer's active adapter from ``state`` (as returned by ``active_adapters``)."""
    layers = lora_layers(model)
    for p, want in state.items():  # check every layer before changing any
        m = layers.get(p)
        if m is None:
            raise KeyError(f"{p}: not a LoRA layer of this model")
        if want is not None and want not in m.adapters:
            raise KeyError(f"{p}: no adapter {want!r}")
        if m.merged is not None and want != m.merged:
            raise ValueError(f"{p}: adapter {m.merged!r} is merged into W; unmerge_adapter() first")
    for p, want in state.items():
        layers[p].set_active(want)
    return model


def disable_adapters(model) -> dict:
    """Run the base model alone; returns the previous state for ``restore_active``."""
    before = active_adapters(model)
    set_active(model, None)
    return before


@contextlib.contextmanager
def adapters_disabled(model):
    """``with adapters_disabled(model):`` base model only; the previous active state comes back."""
    before = disable_adapters(model)
    try:
        yield model
    finally:
        restore_active(model, before)


def delete_adapter(model, name: str):
    """Remove adapter ``name`` from every layer (refused, model unchanged, if it is merged)."""
    layers = layers_with(model, name)
    for p, m in layers.items():
        if m.merged == name:
            raise ValueError(f"{p}: adapter {name!r} is merged into W; unmerge_adapter() first")
    for m in layers.values():
        m.delete_adapter(name)
    return model


# ============================================================================ merge


def merge_adapter(model, name: str):
    """W ← W + scale · B A on every layer carrying ``name`` — all layers or none.

    Every merged W is computed and checked finite before any layer changes; a non-finite result
    (or another adapter already merged) raises and leaves the model bitwise unchanged.
    """
    return nn_merge(model, name)


def unmerge_adapter(model, name: str | None = None):
    """W ← W − scale · B A on every layer where ``name`` (or any adapter, if None) is merged."""
    for m in lora_layers(model).values():
        if m.merged is not None and (name is None or m.merged == name):
            m.unmerge()
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
                raise ValueError(f"{p}: adapter {m.merged!r} is merged; unmerge_adapter() before measuring")
            ad = m.adapters[adapter]
            W, A, B = m.base.params["W"], ad.params["A"], ad.params["B"]
            xp = backend.namespace(W)
            if not hasattr(xp, dt):  # e.g. array-api-strict has no float16: measure on the host
                xp = backend.resolve_device("cpu")
                W, A, B = (backend.move(a, xp) for a in (W, A, B))
            to = getattr(xp, dt)
            W0, A, B = xp.astype(W, to), xp.astype(A, to), xp.astype(B, to)
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


# ============================================================================ base fingerprint


def _base_arrays(model) -> dict:
    """``{canonical name: array}`` of every non-LoRA parameter, with merged adapters taken out.

    Canonical names drop the LoRA wrapper (``fc1.base.W`` → ``fc1.W``), so a wrapped and an
    unwrapped copy of one base agree. A merged layer contributes W − ΔW, computed as ``unmerge``
    would.
    """
    lora = lora_layers(model)
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, LoRAAdapter) or isinstance(m, LoRALinear):
            continue
        parent, _, last = path.rpartition(".")
        owner = lora.get(parent) if last == "base" else None
        canon = parent if owner is not None else path
        for k, v in m.params.items():
            if owner is not None and k == "W" and owner.merged is not None:
                v = v - owner.adapters[owner.merged].delta()
            out[f"{canon}.{k}" if canon else k] = v
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
                "this adapter was trained on a different base model"
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


# ============================================================================ PEFT config


def _is_target(path: str, targets, exclude=None) -> bool:
    """PEFT's rule: a string is a regex the whole path must match; a list entry must equal the
    path or be its dotted suffix. ``exclude_modules`` follows the same rule."""
    if exclude and _is_target(path, exclude):
        return False
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith("." + t) for t in targets)


def _pattern_value(patterns: dict, path: str, default):
    """PEFT's rank_pattern/alpha_pattern rule: the first key ``k`` with ``(.*\\.)?(k)$`` matching."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _pattern_key(path: str, candidates) -> str:
    """A rank/alpha pattern key selecting exactly ``path`` among ``candidates`` (PEFT's regex rule)."""
    if all(q == path or not re.match(rf"(.*\.)?({path})$", q) for q in candidates):
        return path
    return "^" + re.escape(path)  # anchored: cannot match as a suffix of a longer path


def _target_modules(chosen: list, available: list) -> list:
    """Short layer names (``["q", "v"]``) if they select exactly ``chosen``; else full paths."""
    short = sorted({p.rsplit(".", 1)[-1] for p in chosen})
    if [p for p in available if _is_target(p, short)] == chosen:
        return short
    return sorted(chosen)


def _tensor_fields_sha(cfg: dict) -> str:
    """Hash of the config fields the tensors must agree with (stored in the weights' metadata)."""
    keys = ("peft_type", "r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules",
            "exclude_modules", "use_rslora")
    text = json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _build_config(model, name, base_model_name_or_path, task_type) -> dict:
    ads = [m.adapters[name] for m in layers_with(model, name).values()]  # KeyError if none
    info = list_adapters(model)[name]
    for field in ("rslora", "dropout"):
        if len({getattr(a, field) for a in ads}) > 1:
            raise AdapterError(f"adapter {name!r}: layers disagree on {field}; PEFT stores one value")
    r = Counter(info.r.values()).most_common(1)[0][0]
    alpha = Counter(info.alpha.values()).most_common(1)[0][0]
    available = linear_paths(model)
    chosen = list(info.targets)
    return {
        "alpha_pattern": {_pattern_key(p, available): _number(a) for p, a in info.alpha.items() if a != alpha},
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": INIT_TO_PEFT.get(info.init, True),
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": _number(alpha),
        "lora_dropout": info.dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {_pattern_key(p, available): rr for p, rr in info.r.items() if rr != r},
        "revision": None,
        "target_modules": _target_modules(chosen, available),
        "task_type": task_type,
        "use_dora": False,
        "use_rslora": info.rslora,
    }


# Fields that would change the math; minilora refuses anything but their neutral value.
UNSUPPORTED = {
    "bias": ("none",), "fan_in_fan_out": (False,), "use_dora": (False, None), "lora_bias": (False, None),
    "modules_to_save": (None, []), "layers_to_transform": (None, []), "layer_replication": (None,),
    "target_parameters": (None, []), "use_qalora": (False, None), "trainable_token_indices": (None,),
}


def _parse_config(cfg, where: str) -> dict:
    """Check a PEFT LoRA config and return the fields minilora uses."""
    if not isinstance(cfg, dict):
        raise AdapterError(f"{where}: must hold a JSON object")

    def bad(key, msg):
        return AdapterError(f"{where}: key {key!r}: {msg}")

    def positive(v, types) -> bool:  # a positive int (types=int) or number (types=(int, float))
        return not isinstance(v, bool) and isinstance(v, types) and v > 0

    if cfg.get("peft_type") != "LORA":
        raise bad("peft_type", f"expected 'LORA', got {cfg.get('peft_type')!r}")
    for key, ok in UNSUPPORTED.items():
        if key in cfg and cfg[key] not in ok:
            raise bad(key, f"{cfg[key]!r} is not supported by minilora (only {ok[0]!r})")
    r = cfg.get("r")
    if not positive(r, int):
        raise bad("r", f"must be a positive int, got {r!r}")
    alpha = cfg.get("lora_alpha")
    if not positive(alpha, (int, float)):
        raise bad("lora_alpha", f"must be a positive number, got {alpha!r}")
    targets = cfg.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets))):
        raise bad("target_modules", f"must be a string or a non-empty list of strings, got {targets!r}")
    exclude = cfg.get("exclude_modules")
    if exclude is not None and not isinstance(exclude, (str, list)):
        raise bad("exclude_modules", f"must be null, a string or a list, got {exclude!r}")
    patterns = {}
    for key in ("rank_pattern", "alpha_pattern"):
        p = cfg.get(key) or {}
        if not isinstance(p, dict):
            raise bad(key, f"must be an object, got {p!r}")
        for k, v in p.items():
            try:
                re.compile(k)
            except re.error as e:
                raise bad(key, f"pattern {k!r} is not a valid regex ({e})") from None
            if key == "rank_pattern" and not positive(v, int):
                raise bad(key, f"rank for {k!r} must be a positive int, got {v!r}")
            if key == "alpha_pattern" and not positive(v, (int, float)):
                raise bad(key, f"alpha for {k!r} must be a positive number, got {v!r}")
        patterns[key] = p
    dropout = cfg.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise bad("lora_dropout", f"must lie in [0, 1), got {dropout!r}")
    rslora = cfg.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise bad("use_rslora", f"must be true or false, got {rslora!r}")
    init = cfg.get("init_lora_weights", True)
    return {
        "r": r, "alpha": float(alpha), "targets": targets, "exclude": exclude,
        "rank_pattern": patterns["rank_pattern"], "alpha_pattern": patterns["alpha_pattern"],
        "dropout": float(dropout), "rslora": rslora, "init": "gaussian" if init == "gaussian" else "kaiming_uniform",
    }


# ============================================================================ save


def adapter_tensors(model, adapter: str = "default") -> dict:
    """``{PEFT key: NumPy array}`` of one adapter: A and B exactly as stored (no transpose, no copy
    of the math, only a move to the host)."""
    out = {}
    for path, m in layers_with(model, adapter).items():
        ad = m.adapters[adapter]
        out[f"{PREFIX}{path}.lora_A.weight"] = backend.to_numpy(ad.params["A"])  # (r, d_in)
        out[f"{PREFIX}{path}.lora_B.weight"] = backend.to_numpy(ad.params["B"])  # (d_out, r)
    return out


def save_adapter(model, directory, adapter: str = "default", base_model_name_or_path=None,
                 task_type=None) -> dict:
    """Save one adapter as a PEFT directory: ``adapter_model.safetensors`` + ``adapter_config.json``.

    Atomic per file, consistent as a pair: both files are fully written to temporary files in
    ``directory`` (flushed and fsynced) before either is renamed over its old version, so a
    failure while writing leaves the previous adapter untouched. The weights carry a hash of the
    config fields they depend on, so the one remaining window — a crash between the two renames —
    is detected at load time instead of giving a silently mixed pair.
    Returns ``{"weights": path, "config": path, "bytes": size of the weights file}``.
    """
    directory = os.fspath(directory)
    cfg = _build_config(model, adapter, base_model_name_or_path, task_type)
    tensors = adapter_tensors(model, adapter)
    metadata = {
        "format": "pt",
        "minilora.adapter": adapter,
        "minilora.base_sha256": base_fingerprint(model),
        "minilora.base_sketch": json.dumps(_sketch(model), separators=(",", ":")),
        "minilora.config_sha256": _tensor_fields_sha(cfg),
    }
    weights_bytes = st.serialize(tensors, metadata)
    config_bytes = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
    os.makedirs(directory, exist_ok=True)
    weights, config = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, CONFIG_NAME)
    staged = []
    try:
        staged.append(st.stage(weights, weights_bytes))
        staged.append(st.stage(config, config_bytes))
    except BaseException:
        for tmp in staged:
            os.unlink(tmp)
        raise
    os.replace(staged[0], weights)  # window: a crash here leaves new weights + old config,
    os.replace(staged[1], config)   # which load_adapter rejects (config hash in the metadata)
    st.fsync_dir(os.path.abspath(directory))
    return {"weights": weights, "config": config, "bytes": len(weights_bytes)}


# ============================================================================ load


@dataclass
class _Plan:
    path: str
    A: object  # (r, d_in): NumPy from a file, the model's namespace from combine_adapters
    B: object  # (d_out, r)
    r: int
    alpha: float


def read_adapter(model, directory, adapter_name="default", check_fingerprint=True, activate=True):
    """Read and validate an adapter directory against ``model`` without changing it.

    Returns ``(plans, config fields, how the fingerprint matched)``; raises ``AdapterError``
    naming the file and key on the first problem.
    """
    directory = os.fspath(directory)
    wfile, cfile = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, CONFIG_NAME)
    for f in (cfile, wfile):
        if not os.path.isfile(f):
            raise AdapterError(f"{f}: file not found")
    try:
        with open(cfile, "rb") as fh:
            cfg_raw = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise AdapterError(f"{cfile}: not valid JSON ({e})") from None
    cfg = _parse_config(cfg_raw, cfile)

    with open(wfile, "rb") as fh:
        data = fh.read()
    try:
        entries, _, _ = st.parse_header(data, wfile)
        tensors, meta = st.deserialize(data, wfile)
    except st.SafetensorsError as e:
        raise AdapterError(str(e)) from None

    if "minilora.config_sha256" in meta and meta["minilora.config_sha256"] != _tensor_fields_sha(cfg_raw):
        raise AdapterError(
            f"{wfile}: key '__metadata__.minilora.config_sha256': the weights were saved with a "
            f"different {CONFIG_NAME} (interrupted save, or the config was edited)"
        )

    # --- keys -> (path, A/B)
    available = linear_paths(model)
    model_layers = dict(model.named_modules())
    found = {}
    for key in tensors:
        m = KEY_RE.fullmatch(key)
        if m is None:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key (expected {PREFIX}<path>.lora_A.weight "
                               "or .lora_B.weight)")
        path, which = m["path"], m["AB"]
        if (path, which) in found:
            raise AdapterError(f"{wfile}: key {key!r}: duplicates {found[(path, which)]!r}")
        if path not in available:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — the model has no linear layer {path!r}")
        if not _is_target(path, cfg["targets"], cfg["exclude"]):
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — layer {path!r} is not in "
                               f"target_modules {cfg['targets']!r} of {cfile}")
        found[(path, which)] = key

    targeted = [p for p in available if _is_target(p, cfg["targets"], cfg["exclude"])]
    if cfg["targets"] == "all-linear":
        targeted = [p for p in available if (p, "A") in found or (p, "B") in found]
    if not targeted:
        raise AdapterError(f"{cfile}: key 'target_modules': {cfg['targets']!r} matches no layer of this model")
    for p in targeted:
        for which in "AB":
            if (p, which) not in found:
                raise AdapterError(f"{wfile}: missing key {PREFIX}{p}.lora_{which}.weight "
                                   f"(layer {p!r} is targeted by {cfile})")

    # --- dtypes, shapes, config agreement, values
    plans = []
    for p in targeted:
        layer = model_layers[p]
        W = (layer.base if isinstance(layer, LoRALinear) else layer).params["W"]
        d_out, d_in = (int(s) for s in W.shape)
        want_dtype = backend.dtype_name(W)
        kA, kB = found[(p, "A")], found[(p, "B")]
        for k in (kA, kB):
            tag = entries[k][0]
            if tag not in FLOAT_TAGS:
                raise AdapterError(f"{wfile}: key {k!r}: wrong dtype {tag}, expected a float dtype")
            if FLOAT_TAGS[tag] != want_dtype:
                raise AdapterError(f"{wfile}: key {k!r}: wrong dtype {tag} ({FLOAT_TAGS[tag]}) for a "
                                   f"{want_dtype} model; cast the model with .astype() first")
            if tensors[k].ndim != 2:
                raise AdapterError(f"{wfile}: key {k!r}: wrong shape {tensors[k].shape}, expected 2-D")
        A, B = tensors[kA], tensors[kB]
        if A.shape[1] != d_in:
            raise AdapterError(f"{wfile}: key {kA!r}: wrong shape {A.shape}, expected (r, d_in) = (r, {d_in})")
        if B.shape[0] != d_out:
            raise AdapterError(f"{wfile}: key {kB!r}: wrong shape {B.shape}, expected (d_out, r) = ({d_out}, r)")
        if A.shape[0] != B.shape[1]:
            raise AdapterError(f"{wfile}: key {kB!r}: wrong shape {B.shape}: rank {B.shape[1]} differs from "
                               f"{kA!r} rank {A.shape[0]}")
        r = _pattern_value(cfg["rank_pattern"], p, cfg["r"])
        alpha = float(_pattern_value(cfg["alpha_pattern"], p, cfg["alpha"]))
        if A.shape[0] != r:
            raise AdapterError(f"{wfile}: key {kA!r}: shape {A.shape} has rank {A.shape[0]} but {cfile} says "
                               f"r = {r} for layer {p!r} (config disagrees with tensors)")
        try:
            check_lora(p, d_in, d_out, r, alpha)
        except (TypeError, ValueError) as e:
            raise AdapterError(f"{cfile}: key 'r': {e}") from None
        for k, a in ((kA, A), (kB, B)):
            if not backend.is_finite(a):
                raise AdapterError(f"{wfile}: key {k!r}: contains NaN or Inf")
        plans.append(_Plan(p, A, B, r, alpha))

    # --- the model side
    try:
        check_adapter_options(wfile, name=adapter_name)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    for p in targeted:
        layer = model_layers[p]
        if isinstance(layer, LoRALinear) and adapter_name in layer.adapters:
            raise AdapterError(f"{p}: adapter {adapter_name!r} already exists; delete_adapter() or pick another name")
    if activate:
        for p, m in lora_layers(model).items():
            if m.merged is not None:
                raise AdapterError(f"{p}: adapter {m.merged!r} is merged into W; unmerge before activating "
                                   f"{adapter_name!r}")
    how = _check_fingerprint(model, meta, wfile) if check_fingerprint else "skipped"
    return plans, cfg, how


def _install(model, name, plans, rslora=False, dropout=0.0, init="gaussian", trainable=True):
    """Add adapter ``name`` with the given arrays (validated by the caller) to ``model``."""
    model.freeze()  # as add_lora: the base (and older adapters) stay frozen
    for plan in plans:
        layer = wrap_with_lora(model, plan.path)
        ad = layer.add_adapter(name, plan.r, plan.alpha, rslora, dropout, init, seed=0)
        xp = backend.namespace(layer.base.params["W"])
        for k, a in (("A", plan.A), ("B", plan.B)):
            ad.params[k] = backend.move(a, xp)
        if not trainable:
            ad.freeze()
    model.set_paths()
    return model


def load_adapter(model, directory, adapter_name: str = "default", activate: bool = True,
                 trainable: bool = False, check_fingerprint: bool = True) -> dict:
    """Load a PEFT LoRA adapter directory onto ``model`` as adapter ``adapter_name``.

    Everything is validated first — config fields, every key, shape, dtype (must equal the
    model's; bf16 files load onto float32 models, exactly), finiteness, config-vs-tensor ranks,
    and the base fingerprint when the file has one (files saved by PEFT have none). Any problem
    raises ``AdapterError`` naming the file and key, and the model is left bitwise unchanged.
    Returns ``{"layers": [...], "fingerprint": "exact" | "rounding" | "absent" | "skipped"}``.
    """
    plans, cfg, how = read_adapter(model, directory, adapter_name, check_fingerprint, activate)
    _install(model, adapter_name, plans, cfg["rslora"], cfg["dropout"], cfg["init"], trainable)
    if activate:
        set_active(model, adapter_name)
    return {"layers": [p.path for p in plans], "fingerprint": how}


# ============================================================================ combination


def _weights(adapters) -> dict:
    if isinstance(adapters, dict):
        return {k: float(v) for k, v in adapters.items()}
    return {k: 1.0 for k in adapters}


# Each ``how`` on one layer: ``here`` is [(name_i, LoRAAdapter)] of the adapters it carries, ``w``
# the weights, ``W`` the layer's base weight (d_out, d_in). Returns (A, B, report) at scale 1.


def _concat(path, here, w, W, rank):
    xp = backend.namespace(W)
    A = xp.concat([ad.params["A"] for _, ad in here], axis=0)  # (Σr, d_in)
    B = xp.concat([(w[a] * ad.scale) * ad.params["B"] for a, ad in here], axis=1)  # (d_out, Σr)
    return A, B, {"rank": int(A.shape[0])}


def _linear(path, here, w, W, rank):
    if len(here) != len(w) or len({ad.r for _, ad in here}) != 1:
        raise ValueError(f"{path}: how='linear' needs every adapter on every layer with equal ranks, "
                         f"got {[(a, ad.r) for a, ad in here]} (use 'concat' or 'svd')")
    total = sum(w.values())
    if total == 0:
        raise ValueError("how='linear': the weights sum to 0 (A is their weighted mean); use 'concat'")
    B = sum((w[a] * ad.scale) * ad.params["B"] for a, ad in here)  # (d_out, r)
    A = sum((w[a] / total) * ad.params["A"] for a, ad in here)  # (r, d_in)
    return A, B, {"rank": int(A.shape[0])}


def _svd(path, here, w, W, rank):
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"how='svd' needs rank, a positive int, got {rank!r}")
    xp = backend.namespace(W)
    d_out, d_in = (int(s) for s in W.shape)
    dW = sum(w[a] * lora_delta(xp.astype(ad.params["A"], xp.float64),
                               xp.astype(ad.params["B"], xp.float64), ad.scale) for a, ad in here)
    U, S, Vh = xp.linalg.svd(dW, full_matrices=False)  # dW = U diag(S) Vh
    r = min(rank, d_in, d_out)
    root = xp.sqrt(S[:r])  # (r,)
    B = xp.astype(U[:, :r] * xp.reshape(root, (1, r)), W.dtype)  # (d_out, r)
    A = xp.astype(xp.reshape(root, (r, 1)) * Vh[:r, :], W.dtype)  # (r, d_in)
    total = float(xp.sum(S * S))
    discarded = float(xp.sum(S[r:] * S[r:]))
    return A, B, {"rank": r, "discarded_energy": discarded,
                  "discarded_fraction": discarded / total if total > 0 else 0.0,
                  "fro_error": math.sqrt(discarded)}


COMBINE = {"concat": _concat, "svd": _svd, "linear": _linear}


def combine_adapters(model, adapters, name: str, how: str = "concat", rank: int | None = None,
                     activate: bool = True) -> dict:
    """A new adapter ``name`` from weighted adapters ``{name_i: w_i}`` (or a list: all w_i = 1).

    With ΔW_i = s_i B_i A_i on a layer (s_i = adapter i's scale), the new adapter has scale 1 and:

    ``how="concat"``  A = [A_1; A_2; …] (rows), B = [w_1 s_1 B_1, w_2 s_2 B_2, …] (columns), rank
                      Σ r_i:  ΔW = Σ w_i ΔW_i exactly (up to rounding). Layers may differ.
    ``how="svd"``     ΔW = Σ w_i ΔW_i in float64, then its best rank-``rank`` approximation
                      U_k S_k V_kᵀ (B = U_k √S_k, A = √S_k V_kᵀ); exact when ``rank`` ≥ rank(ΔW);
                      otherwise its Frobenius error is √(Σ_{j>k} σ_j²), the smallest any rank-k
                      matrix can reach (Eckart–Young). Reported per layer as the discarded energy.
    ``how="linear"``  equal ranks, same layers: B = Σ w_i s_i B_i and A = Σ (w_i / Σw) A_i, so
                      ΔW = (Σ_i w_i s_i B_i)(Σ_j (w_j/Σw) A_j). This is Σ w_i ΔW_i *only* when the
                      adapters share A on a layer (for example trained from one seed with A
                      frozen); otherwise the cross terms B_i A_j remain: a heuristic mix.
    Returns ``{"layers": {path: {...}}}`` (for svd: rank kept, discarded energy, relative, error).
    """
    w = _weights(adapters)
    if not w:
        raise ValueError("combine_adapters: no adapters given")
    if how not in ("concat", "svd", "linear"):
        raise ValueError(f"combine_adapters: how must be 'concat', 'svd' or 'linear', got {how!r}")
    per = {a: layers_with(model, a) for a in w}
    layers = lora_layers(model)
    if any(name in m.adapters for m in layers.values()):
        raise ValueError(f"adapter {name!r} already exists")
    plans, report = [], {}
    for p, m in layers.items():
        if not any(p in per[a] for a in w):
            continue
        here = [(a, m.adapters[a]) for a in w if a in m.adapters]
        if any(m.merged == a for a, _ in here):
            raise ValueError(f"{p}: adapter {m.merged!r} is merged; unmerge_adapter() first")
        W = m.base.params["W"]
        A, B, report[p] = COMBINE[how](p, here, w, W, rank)
        r = report[p]["rank"]
        check_lora(p, int(W.shape[1]), int(W.shape[0]), r, float(r))
        plans.append(_Plan(p, A, B, r, float(r)))  # alpha = r (rsLoRA off): scale 1
    _install(model, name, plans)
    if activate:
        set_active(model, name)
    return {"layers": report}
