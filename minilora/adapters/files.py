"""The PEFT file format: an adapter as ``adapter_model.safetensors`` + ``adapter_config.json``.

A minilora module path *is* the attribute path of the same layer in the equivalent PyTorch
model (``fc1``, ``blocks.0.attn.q``), so minilora's ``<path>.lora.<name>.A`` (r, d_in) and ``.B``
(d_out, r) are saved as PEFT's ``base_model.model.<path>.lora_A.weight`` and
``base_model.model.<path>.lora_B.weight`` — same orientation, no transpose (docs/adapters.md).
A DoRA adapter adds its magnitude ``.m`` (d_out,) as ``base_model.model.<path>.lora_magnitude_vector``
(PEFT's key, no ``.weight``) and ``use_dora: true`` in the config (docs/dora.md).
A token embedding with LoRA (``LoRAEmbedding``, E (V, C)) is saved in the same file as PEFT saves
its ``lora.Embedding``: ``base_model.model.<path>.lora_embedding_A`` (r, V) and
``base_model.model.<path>.lora_embedding_B`` (C, r), no ``.weight``, its path in ``target_modules``
(docs/lora_family.md). It is validated as a linear layer with d_in = V, d_out = C.
This file builds and parses the config, saves a pair atomically, and reads and validates one
against a model before ``load_adapter`` changes anything.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import Counter

import numpy as np

from .. import backend
from .. import safetensors as st
from ..checks import check_adapter_options, check_lora
from ..functional.lora import lora_delta
from ..nn.lora import LoRALinear, adapter_layers, layers_with, linear_paths, lora_layers
from ..nn.lora_embedding import (LoRAEmbedding, embedding_paths, tied_embedding_paths,
                                 wrap_with_lora_embedding)
from .errors import AdapterError
from .fingerprint import _check_fingerprint, _sketch, base_fingerprint
from .named import _install, _Plan, set_active

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."
# base_model.model.<path>.lora_A.weight, tolerating PEFT's in-memory form lora_A.<adapter>.weight;
# DoRA's magnitude base_model.model.<path>.lora_magnitude_vector (in memory: ....<adapter>.weight);
# an embedding's base_model.model.<path>.lora_embedding_A (in memory: ....lora_embedding_A.<adapter>)
KEY_RE = re.compile(r"base_model\.model\.(?P<path>.+?)\.(?:lora_(?P<AB>[AB])(?:\.(?P<name>[^.]+))?\.weight"
                    r"|lora_magnitude_vector(?:\.(?P<mname>[^.]+)\.weight)?"
                    r"|lora_embedding_(?P<EAB>[AB])(?:\.(?P<ename>[^.]+))?)")
MAGNITUDE = "lora_magnitude_vector"
EMBEDDING_KEY = "lora_embedding_"  # + "A" (r, V) or "B" (C, r)
EMBEDDING_INIT = {"gaussian": "gaussian", "kaiming_uniform": "peft"}  # the config's init -> LoRAEmbedding's
INIT_TO_PEFT = {"gaussian": "gaussian", "kaiming_uniform": True, "pissa": "pissa", "olora": "olora"}
FLOAT_TAGS = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "float32"}


# ============================================================================ config


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


def _target_paths(model) -> list:
    """Paths of every layer an adapter file may name, model order: linears and token embeddings."""
    linear, emb = set(linear_paths(model)), set(embedding_paths(model))
    return [p for p, _ in model.named_modules() if p in linear or p in emb]


def _build_config(model, name, base_model_name_or_path, task_type, convert_to_lora=False) -> dict:
    layers = layers_with(model, name, embeddings=True)  # KeyError if none
    linear = [m.adapters[name] for m in layers.values() if isinstance(m, LoRALinear)]
    embedded = [p for p, m in layers.items() if isinstance(m, LoRAEmbedding)]
    ads = [m.adapters[name] for m in layers.values()]
    for field in ("dropout", "dora", "init"):  # the linear layers' own settings
        if len({getattr(a, field) for a in linear}) > 1:
            raise AdapterError(f"adapter {name!r}: layers disagree on {field}; PEFT stores one value")
    if len({a.rslora for a in ads}) > 1:
        raise AdapterError(f"adapter {name!r}: layers disagree on rslora; PEFT stores one value")
    first = linear[0] if linear else None
    dora = bool(first and first.dora)
    if dora and embedded:
        raise AdapterError(f"{embedded[0]}: adapter {name!r} is DoRA on its linear layers and plain LoRA on this "
                           "token embedding; PEFT's one use_dora would load the embedding as DoRA too")
    if first is not None:
        init = INIT_TO_PEFT.get(first.init, True)
    else:  # an embedding-only adapter: PEFT's True is its A = 0, B ~ N(0, 1)
        init = "gaussian" if ads[0].init == "gaussian" else True
    ranks = {p: m.adapters[name].r for p, m in layers.items()}
    alphas = {p: m.adapters[name].alpha for p, m in layers.items()}
    if convert_to_lora:  # [B, −B₀]·[A; A₀]: twice the rank, alpha such that the scale stays (PEFT's rule)
        grow = 2 ** 0.5 if ads[0].rslora else 2
        ranks = {p: 2 * v if p not in embedded else v for p, v in ranks.items()}
        alphas = {p: grow * v if p not in embedded else v for p, v in alphas.items()}
        init = True
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    available = _target_paths(model)
    chosen = list(layers)
    return {
        "alpha_pattern": {_pattern_key(p, available): _number(a) for p, a in alphas.items() if a != alpha},
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": init,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": _number(alpha),
        "lora_dropout": first.dropout if first else 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {_pattern_key(p, available): rr for p, rr in ranks.items() if rr != r},
        "revision": None,
        "target_modules": _target_modules(chosen, available),
        "task_type": task_type,
        "use_dora": dora,
        "use_rslora": ads[0].rslora,
    }


# Fields that would change the math; minilora refuses anything but their neutral value.
UNSUPPORTED = {
    "bias": ("none",), "fan_in_fan_out": (False,), "lora_bias": (False, None),
    "modules_to_save": (None, []), "layers_to_transform": (None, []), "layer_replication": (None,),
    "target_parameters": (None, []), "use_qalora": (False, None), "trainable_token_indices": (None,),
    # PEFT 0.21's variants that change the forward or the base (aLoRA, MonteCLoRA, Arrow, BD-LoRA,
    # KaSA, VeLoRA, LoRA-GA): refused rather than loaded as a plain LoRA with other numbers
    "alora_invocation_tokens": (None,), "monteclora_config": (None,), "arrow_config": (None,),
    "use_bdlora": (None, False), "kasa_config": (None,), "velora_config": (None,), "lora_ga_config": (None,),
}
# init_lora_weights values whose adapter is trained against a plain base: the init is only where
# A and B started. PiSSA, OLoRA, CorDA, LoftQ, EVA-style inits that rewrite W (W - s B A) are not:
# their adapter only gives the trained outputs on the rewritten base.
PLAIN_INITS = (True, False, "gaussian")
# Every other field PEFT 0.21's LoraConfig writes: metadata or settings that leave the math as is.
# A field outside both lists, with a value other than null/false/empty, is refused: a newer PEFT's
# option is taken to change the math until minilora knows it does not.
KNOWN_HARMLESS = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout",
    "use_rslora", "use_dora", "init_lora_weights", "layers_pattern", "rank_pattern", "alpha_pattern",
    "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config",
    "qalora_group_size", "runtime_config", "ensure_weight_tying",
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
    for key, value in cfg.items():
        if key not in UNSUPPORTED and key not in KNOWN_HARMLESS and value not in (None, False, {}, [], ""):
            raise bad(key, f"{value!r:.80}: a field minilora does not know, so it may change the math; "
                           "it is refused (remove it if it does not)")
    init = cfg.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise bad("init_lora_weights", f"{init!r} trains the adapter against a rewritten base (W - s B A); "
                  "minilora loads plain LoRA only: convert it in PEFT first (save_pretrained(..., "
                  "path_initial_model_for_weight_conversion=...)), which makes it apply to the original base")
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
    dora = cfg.get("use_dora", False)
    if dora is None:
        dora = False
    if not isinstance(dora, bool):
        raise bad("use_dora", f"must be true or false, got {dora!r}")
    return {
        "r": r, "alpha": float(alpha), "targets": targets, "exclude": exclude,
        "rank_pattern": patterns["rank_pattern"], "alpha_pattern": patterns["alpha_pattern"],
        "dropout": float(dropout), "rslora": rslora, "init": "gaussian" if init == "gaussian" else "kaiming_uniform",
        "dora": dora,
    }


# ============================================================================ save


def adapter_tensors(model, adapter: str = "default", convert_to_lora: bool = False) -> dict:
    """``{PEFT key: NumPy array}`` of one adapter: A and B exactly as stored (no transpose, no copy
    of the math, only a move to the host), DoRA's magnitude m, and a token embedding's A (r, V)
    and B (C, r) under PEFT's ``lora_embedding_A`` / ``lora_embedding_B``.

    ``convert_to_lora``: an adapter initialised from W (PiSSA, OLoRA) trained against the residual
    base W_res = W − s B₀ A₀; on the original W its update is ΔW = s B A − s B₀ A₀ =
    s · (B | −B₀) · (A over A₀) — B and −B₀ side by side, A stacked above A₀ — a plain LoRA
    adapter of rank 2r (PEFT's ``convert_pissa_to_lora``)."""
    out = {}
    for path, m in layers_with(model, adapter, embeddings=True).items():
        ad = m.adapters[adapter]
        A, B = backend.to_numpy(ad.params["A"]), backend.to_numpy(ad.params["B"])
        if isinstance(m, LoRAEmbedding):  # E is never rewritten: nothing to convert
            out[f"{PREFIX}{path}.{EMBEDDING_KEY}A"] = A  # (r, V)
            out[f"{PREFIX}{path}.{EMBEDDING_KEY}B"] = B  # (C, r)
            continue
        if convert_to_lora:
            if ad.initial is None:
                raise AdapterError(f"{path}: adapter {adapter!r} has init {ad.init!r}, which left the base as it "
                                   "was: there is nothing to convert (save it without convert_to_lora)")
            if ad.dora:
                raise AdapterError(f"{path}: adapter {adapter!r} is DoRA: W′ = m ⊙ V / ‖V‖ is not W plus a "
                                   "low-rank term, so it cannot be converted to plain LoRA")
            A = np.concatenate([A, ad.initial["A"]], axis=0)  # (2r, d_in)
            B = np.concatenate([B, -ad.initial["B"]], axis=1)  # (d_out, 2r)
        out[f"{PREFIX}{path}.lora_A.weight"] = A  # (r, d_in)
        out[f"{PREFIX}{path}.lora_B.weight"] = B  # (d_out, r)
        if ad.dora:
            out[f"{PREFIX}{path}.{MAGNITUDE}"] = backend.to_numpy(ad.params["m"])  # (d_out,)
    return out


@contextlib.contextmanager
def _original_base(model, adapter):
    """Inside the block every layer carrying ``adapter`` holds W_res + s B₀ A₀, its W before a
    PiSSA/OLoRA init (to rounding): the base a converted adapter belongs to. Restored on exit."""
    layers = {p: m for p, m in layers_with(model, adapter, embeddings=True).items() if isinstance(m, LoRALinear)}
    saved = {p: m.base.params["W"] for p, m in layers.items()}
    try:
        for m in layers.values():
            ad, W = m.adapters[adapter], m.base.params["W"]
            xp = backend.namespace(W)
            A0, B0 = (backend.move(ad.initial[k], xp) for k in ("A", "B"))
            m.base.params["W"] = W + lora_delta(A0, B0, ad.scale)
        yield model
    finally:
        for p, m in layers.items():
            m.base.params["W"] = saved[p]


def save_adapter(model, directory, adapter: str = "default", base_model_name_or_path=None,
                 task_type=None, convert_to_lora: bool = False) -> dict:
    """Save one adapter as a PEFT directory: ``adapter_model.safetensors`` + ``adapter_config.json``.

    Atomic per file, consistent as a pair: both files are fully written to temporary files in
    ``directory`` (flushed and fsynced) before either is renamed over its old version, so a
    failure while writing leaves the previous adapter untouched. The weights carry a hash of the
    config fields they depend on, so the one remaining window — a crash between the two renames —
    is detected at load time instead of giving a silently mixed pair.
    ``convert_to_lora=True`` (PiSSA/OLoRA adapters) writes the plain rank-2r adapter that gives the
    trained outputs on the *original* base (``adapter_tensors``), with that base's fingerprint.
    Without it such an adapter is saved as PEFT saves it unconverted (``init_lora_weights: "pissa"``):
    PEFT redoes the init on the original base when it loads it; minilora's loader refuses it.
    Returns ``{"weights": path, "config": path, "bytes": size of the weights file}``.
    """
    directory = os.fspath(directory)
    cfg = _build_config(model, adapter, base_model_name_or_path, task_type, convert_to_lora)
    tensors = adapter_tensors(model, adapter, convert_to_lora)
    merged_dora = [p for p, m in lora_layers(model).items() if m.merged is not None and m.adapters[m.merged].dora]
    if merged_dora:
        raise AdapterError(f"{merged_dora[0]}: a DoRA adapter is merged into W; unmerge() before saving (the base "
                           "fingerprint is taken from the unmerged W)")
    with _original_base(model, adapter) if convert_to_lora else contextlib.nullcontext(model):
        fingerprint, sketch = base_fingerprint(model), json.dumps(_sketch(model), separators=(",", ":"))
    ads = [m.adapters[adapter] for m in layers_with(model, adapter, embeddings=True).values() if isinstance(m, LoRALinear)]
    metadata = {
        "format": "pt",
        "minilora.adapter": adapter,
        "minilora.base_sha256": fingerprint,
        "minilora.base_sketch": sketch,
        "minilora.config_sha256": _tensor_fields_sha(cfg),
    }
    if cfg["use_dora"]:  # minilora's own choice of backward; PEFT ignores it (and detaches the norm)
        metadata["minilora.dora_exact"] = json.dumps(all(a.dora_exact for a in ads))
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


def adapter_files(directory) -> tuple:
    """``(config path, weights path)`` of an adapter directory; ``AdapterError`` if either is missing."""
    directory = os.fspath(directory)
    cfile, wfile = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    for f in (cfile, wfile):
        if not os.path.isfile(f):
            raise AdapterError(f"{f}: file not found (an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    return cfile, wfile


def read_config(cfile) -> dict:
    """The JSON object in ``cfile``; ``AdapterError`` naming the file if it is not one."""
    try:
        with open(cfile, "rb") as fh:
            cfg = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise AdapterError(f"{cfile}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfile}: must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def read_weights(wfile) -> tuple:
    """``(header entries {key: (tag, shape, start, end)}, {key: array}, metadata, file bytes)`` of
    the safetensors file ``wfile``; ``AdapterError`` naming the file if it is broken."""
    with open(wfile, "rb") as fh:
        data = fh.read()
    try:
        entries, _, _ = st.parse_header(data, wfile)
        tensors, meta = st.deserialize(data, wfile)
    except st.SafetensorsError as e:
        raise AdapterError(str(e)) from None
    return entries, tensors, meta, len(data)


def read_adapter(model, directory, adapter_name="default", check_fingerprint=True, activate=True):
    """Read and validate an adapter directory against ``model`` without changing it.

    Returns ``(plans, config fields, how the fingerprint matched)``; raises ``AdapterError``
    naming the file and key on the first problem.
    """
    cfile, wfile = adapter_files(directory)
    cfg_raw = read_config(cfile)
    cfg = _parse_config(cfg_raw, cfile)
    entries, tensors, meta, _ = read_weights(wfile)

    if "minilora.config_sha256" in meta and meta["minilora.config_sha256"] != _tensor_fields_sha(cfg_raw):
        raise AdapterError(
            f"{wfile}: key '__metadata__.minilora.config_sha256': the weights were saved with a "
            f"different {CONFIG_NAME} (interrupted save, or the config was edited)"
        )

    # --- keys -> (path, A/B/m); an embedding's lora_embedding_A/B are its (path, A/B)
    available = linear_paths(model)
    embeddings = embedding_paths(model)
    model_layers = dict(model.named_modules())
    found = {}
    for key in tensors:
        m = KEY_RE.fullmatch(key)
        if m is None:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key (expected {PREFIX}<path>.lora_A.weight "
                               f"or .lora_B.weight, or an embedding's .{EMBEDDING_KEY}A / .{EMBEDDING_KEY}B)")
        path, which = m["path"], m["AB"] or m["EAB"] or "m"
        if which == "m" and not cfg["dora"]:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — a DoRA magnitude, but {cfile} has "
                               "use_dora false")
        if (path, which) in found:
            raise AdapterError(f"{wfile}: key {key!r}: duplicates {found[(path, which)]!r}")
        if m["EAB"] is not None and path not in embeddings:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — an embedding's key, but the model has no "
                               f"token embedding {path!r}" + (" (it is a linear layer: lora_A.weight, "
                                                              "lora_B.weight)" if path in available else ""))
        if m["EAB"] is None and path not in available:
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — the model has no linear layer {path!r}"
                               + (f" ({path!r} is a token embedding: its keys are {EMBEDDING_KEY}A, "
                                  f"{EMBEDDING_KEY}B)" if path in embeddings else ""))
        if not _is_target(path, cfg["targets"], cfg["exclude"]):
            raise AdapterError(f"{wfile}: key {key!r}: unexpected key — layer {path!r} is not in "
                               f"target_modules {cfg['targets']!r} of {cfile}")
        found[(path, which)] = key

    targeted = [p for p in available if _is_target(p, cfg["targets"], cfg["exclude"])]
    if cfg["targets"] == "all-linear":
        targeted = [p for p in available if (p, "A") in found or (p, "B") in found]
    if cfg["targets"] != "all-linear":  # PEFT's all-linear leaves embeddings out
        targeted += [p for p in embeddings if _is_target(p, cfg["targets"], cfg["exclude"])]
        targeted = [p for p in model_layers if p in targeted]  # model order
    if not targeted:
        raise AdapterError(f"{cfile}: key 'target_modules': {cfg['targets']!r} matches no layer of this model")
    tied = tied_embedding_paths(model)
    for p in targeted:
        if p in embeddings and p in tied:
            raise AdapterError(f"{cfile}: key 'target_modules': token embedding {p!r} is tied to the LM head; "
                               "minilora refuses LoRA on a tied embedding (the head would keep the base table "
                               "unmerged and change when merged); untie the head first")
        if p in embeddings and cfg["dora"]:
            raise AdapterError(f"{cfile}: key 'use_dora': layer {p!r} is a token embedding; minilora runs DoRA "
                               "on linear layers only")
        for which in "ABm" if cfg["dora"] else "AB":
            if (p, which) not in found:
                if which == "m":
                    key = f"{PREFIX}{p}.{MAGNITUDE}"
                elif p in embeddings:
                    key = f"{PREFIX}{p}.{EMBEDDING_KEY}{which}"
                else:
                    key = f"{PREFIX}{p}.lora_{which}.weight"
                raise AdapterError(f"{wfile}: missing key {key} (layer {p!r} is targeted by {cfile}"
                                   f"{' with use_dora true' if which == 'm' else ''})")

    # --- dtypes, shapes, config agreement, values
    plans = []
    for p in targeted:
        layer = model_layers[p]
        base = layer.base if isinstance(layer, (LoRALinear, LoRAEmbedding)) else layer
        d_names = ("V", "C") if p in embeddings else ("d_in", "d_out")
        if p in embeddings:  # a lookup is a linear layer on one-hot ids: d_in = V, d_out = C
            d_in, d_out = (int(s) for s in base.params["W"].shape)  # E (V, C)
            want_dtype = backend.dtype_name(base.params["W"])
        elif "W" in base.params:
            W = base.params["W"]
            d_out, d_in = (int(s) for s in W.shape)
            want_dtype = backend.dtype_name(W)
        else:  # a 4-bit QuantLinear base: its adapters are float32 (nn/quantized.py)
            d_out, d_in, want_dtype = base.d_out, base.d_in, "float32"
        if cfg["dora"] and "W" not in base.params:
            raise AdapterError(f"{cfile}: key 'use_dora': layer {p!r} has a 4-bit (Q4_1) base; minilora does not "
                               "run DoRA on it (load the float32 model)")
        kA, kB, km = found[(p, "A")], found[(p, "B")], found.get((p, "m"))
        for k in (kA, kB, km) if km else (kA, kB):
            tag = entries[k][0]
            if tag not in FLOAT_TAGS:
                raise AdapterError(f"{wfile}: key {k!r}: wrong dtype {tag}, expected a float dtype")
            if FLOAT_TAGS[tag] != want_dtype:
                raise AdapterError(f"{wfile}: key {k!r}: wrong dtype {tag} ({FLOAT_TAGS[tag]}) for a "
                                   f"{want_dtype} model; cast the model with .astype() first")
            if k != km and tensors[k].ndim != 2:
                raise AdapterError(f"{wfile}: key {k!r}: wrong shape {tensors[k].shape}, expected 2-D")
        A, B, mag = tensors[kA], tensors[kB], tensors[km] if km else None
        if mag is not None and tuple(mag.shape) != (d_out,):
            raise AdapterError(f"{wfile}: key {km!r}: wrong shape {mag.shape}, expected (d_out,) = ({d_out},)")
        if A.shape[1] != d_in:
            raise AdapterError(f"{wfile}: key {kA!r}: wrong shape {A.shape}, expected (r, {d_names[0]}) = (r, {d_in})")
        if B.shape[0] != d_out:
            raise AdapterError(f"{wfile}: key {kB!r}: wrong shape {B.shape}, expected ({d_names[1]}, r) = ({d_out}, r)")
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
        for k, a in ((kA, A), (kB, B), (km, mag)):
            if a is not None and not backend.is_finite(a):
                raise AdapterError(f"{wfile}: key {k!r}: contains NaN or Inf")
        plans.append(_Plan(p, A, B, r, alpha, mag))

    # --- the model side
    try:
        check_adapter_options(wfile, name=adapter_name)
    except ValueError as e:
        raise AdapterError(str(e)) from None
    for p in targeted:
        layer = model_layers[p]
        if isinstance(layer, (LoRALinear, LoRAEmbedding)) and adapter_name in layer.adapters:
            raise AdapterError(f"{p}: adapter {adapter_name!r} already exists; delete_adapter() or pick another name")
    if activate:
        for p, m in adapter_layers(model).items():
            if m.merged is not None:
                raise AdapterError(f"{p}: adapter {m.merged!r} is merged into W; unmerge before activating "
                                   f"{adapter_name!r}")
    how = _check_fingerprint(model, meta, wfile) if check_fingerprint else "skipped"
    # DoRA's backward: minilora's files record the choice; PEFT's files were trained with the norm detached
    cfg["dora_exact"] = not cfg["dora"] or meta.get("minilora.dora_exact", "false") == "true"
    return plans, cfg, how


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
    embeddings = set(embedding_paths(model))
    _install(model, adapter_name, [p for p in plans if p.path not in embeddings], cfg["rslora"], cfg["dropout"],
             cfg["init"], trainable, dora=cfg["dora"], dora_exact=cfg["dora_exact"])
    _install_embeddings(model, adapter_name, [p for p in plans if p.path in embeddings], cfg["rslora"],
                        EMBEDDING_INIT[cfg["init"]], trainable)
    if activate:
        set_active(model, adapter_name)
    return {"layers": [p.path for p in plans], "fingerprint": how}


def _install_embeddings(model, name, plans, rslora, init, trainable):
    """Add adapter ``name`` to each planned token embedding from its checked A (r, V), B (C, r)."""
    for plan in plans:
        layer = wrap_with_lora_embedding(model, plan.path)
        ad = layer.add_adapter(name, plan.r, plan.alpha, rslora, init, seed=0)
        xp = backend.namespace(ad.params["A"])  # the adapter lives where its table does
        ad.params["A"], ad.params["B"] = backend.move(plan.A, xp), backend.move(plan.B, xp)
        if not trainable:
            ad.freeze()
    model.set_paths()
    return model
