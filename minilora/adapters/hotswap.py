"""Hot-swapping: another adapter's weights into a loaded adapter's arrays, in place.

    prepare_for_hotswap(model, target_rank=16)          # once: pad the loaded adapter to rank 16
    hotswap_adapter(model, "runs/mirrored")             # then, any adapter of rank <= 16, any alpha

PEFT's idea (``peft/utils/hotswap.py``): a compiled graph or preallocated buffers hold the
adapter's arrays by identity and shape, so a new adapter is *written into* them instead of
installed beside them. Two things would otherwise change, and both are absorbed:

- **the rank.** ``prepare_for_hotswap`` zero-pads every layer's A (r, d_in) to (R, d_in) and
  B (d_out, r) to (d_out, R). The extra rows of A meet the extra zero columns of B, so
  B_pad A_pad = B A exactly (every added product is 0 · a). An adapter of rank r' ≤ R is written
  into the first r' rows / columns, the rest zeroed.
- **the scale.** The layer keeps its own scale s (alpha / r, or alpha / √r with rsLoRA); a new
  adapter with scale s' is written with B ← (s' / s) B', so that s · B A' = s' · B' A': the
  layer's forward computes the new adapter's ΔW with the old scale.

The adapter's hyper-parameters after padding: r = R and alpha = s·R (s·√R with rsLoRA), so its
scale stays s (to one float64 ulp, which float32 arithmetic does not see: ``_alpha_for_scale``). So
``save_adapter`` of a padded or hot-swapped adapter writes a valid file (r = R, zero-padded
tensors) with the same ΔW. Both functions check every layer before changing any; a refusal
raises ``AdapterError`` and leaves the model as it was.
"""
from __future__ import annotations

import math
import os

from .. import backend
from ..checks import check_lora, is_int
from ..functional.lora import lora_scale
from ..nn.lora import LoRALinear, layers_with
from .errors import AdapterError
from .files import read_adapter

PLAIN_INITS = ("gaussian", "kaiming_uniform")  # inits that leave the base W as it is


def _alpha_for_scale(scale: float, r: int, rslora: bool) -> float:
    """alpha = scale · r (scale · √r with rsLoRA), so that ``lora_scale(r, alpha) ≈ scale``.

    Two roundings (the product, then the quotient alpha / r) put the new scale within one float64
    ulp of the old one; it is the same float in about 94% of cases (measured over a grid of r,
    alpha, R), and no other alpha does better: neighbouring alphas move the quotient by
    ulp(alpha) / r, which can exceed ulp(scale). One float64 ulp is far below float32's
    resolution: the forward multiplies the float32 code by float32(scale), the same number.
    """
    return scale * (math.sqrt(r) if rslora else r)


def _slot(model, adapter_name: str) -> dict:
    """``{path: (layer, adapter)}`` of the adapter to pad or swap into; refused if it cannot be."""
    try:
        layers = layers_with(model, adapter_name)
    except KeyError as e:
        raise AdapterError(str(e.args[0])) from None
    out = {}
    for p, layer in layers.items():
        ad = layer.adapters[adapter_name]
        if layer.merged == adapter_name:
            raise AdapterError(f"{p}: adapter {adapter_name!r} is merged into W; unmerge() before hot-swapping "
                               "(the merged W would keep the old adapter)")
        if set(ad.params) != {"A", "B"}:
            raise AdapterError(f"{p}: adapter {adapter_name!r} has parameters {sorted(ad.params)}; hot-swapping "
                               "handles plain LoRA (A, B) only")
        if ad.init not in PLAIN_INITS:
            raise AdapterError(f"{p}: adapter {adapter_name!r} was initialised with {ad.init!r}, which rewrote the "
                               "base W; another adapter would run on that rewritten base")
        out[p] = (layer, ad)
    return out


def _check_target_rank(slot: dict, target_rank, adapter_name: str, who: str) -> None:
    """An int R with r ≤ R ≤ min(d_in, d_out) on every layer of the slot, else ``AdapterError``."""
    if not is_int(target_rank):
        raise AdapterError(f"{who}: target_rank must be an int, got {target_rank!r}")
    for p, (layer, ad) in slot.items():
        r = int(ad.params["A"].shape[0])
        if target_rank < r:
            raise AdapterError(f"{p}: adapter {adapter_name!r} has rank {r}; target_rank = {target_rank} cannot "
                               "hold it (padding only grows the rank)")
        try:
            check_lora(p, layer.base.d_in, layer.base.d_out, target_rank, 1.0)
        except (TypeError, ValueError) as e:
            raise AdapterError(f"{who}: target_rank: {e}") from None


def _pad(ad, R: int) -> None:
    """A (r, d_in) -> (R, d_in), B (d_out, r) -> (d_out, R), zeros appended; r ← R, alpha so that
    scale stays the same float. New arrays (the shapes change), in the adapter's namespace."""
    A, B = ad.params["A"], ad.params["B"]
    r, d_in, d_out = int(A.shape[0]), int(A.shape[1]), int(B.shape[0])
    if R == r:
        return
    scale = ad.scale
    xp, dtype = backend.namespace(A), backend.dtype_name(A)
    A_pad = backend.zeros((R, d_in), dtype, xp)  # (R, d_in)
    B_pad = backend.zeros((d_out, R), dtype, xp)  # (d_out, R)
    A_pad[:r, :] = A
    B_pad[:, :r] = B
    ad.params["A"], ad.params["B"] = A_pad, B_pad
    ad.r, ad.alpha = R, _alpha_for_scale(scale, R, ad.rslora)


def prepare_for_hotswap(model, target_rank: int, adapter_name: str = "default"):
    """Zero-pad adapter ``adapter_name`` to rank ``target_rank`` on every layer, ΔW unchanged.

        A_pad = [A; 0]  (R, d_in),   B_pad = [B, 0]  (d_out, R),   B_pad A_pad = B A

    Call it once, after loading the first adapter and before anything captures its arrays;
    later ``hotswap_adapter`` calls keep these arrays (same objects, same shapes). The adapter's
    ``r`` becomes ``target_rank`` and ``alpha`` becomes scale · target_rank (· √ with rsLoRA), so
    the scale stays the same (to one float64 ulp: ``_alpha_for_scale``).
    Refused (model unchanged) if ``target_rank`` is below a layer's rank or above
    min(d_in, d_out), or the adapter is merged. Returns ``{path: (old r, new r)}``.
    """
    slot = _slot(model, adapter_name)
    _check_target_rank(slot, target_rank, adapter_name, "prepare_for_hotswap")
    before = {p: int(ad.params["A"].shape[0]) for p, (_, ad) in slot.items()}
    for p, (layer, ad) in slot.items():
        _pad(ad, target_rank)
        layer.clear_cache()
    return {p: (before[p], target_rank) for p in slot}


def _free_name(model) -> str:
    taken = {n for _, m in model.named_modules() if isinstance(m, LoRALinear) for n in m.adapters}
    i = 0
    while f"hotswap{i}" in taken:
        i += 1
    return f"hotswap{i}"


def hotswap_adapter(model, directory, adapter_name: str = "default", target_rank: int | None = None,
                    check_fingerprint: bool = True) -> dict:
    """Write the adapter in ``directory`` into the arrays of loaded adapter ``adapter_name``.

    Per layer, with the slot's rank R and scale s, and the file's A' (r', d_in), B' (d_out, r')
    and scale s' (its own r', alpha', rsLoRA):

        A[:r'] = A',  A[r':] = 0,   B[:, :r'] = (s' / s) B',  B[:, r':] = 0
        so  s · B A = s' · B' A'  (the new adapter's ΔW; the layer's scale s unchanged)

    A layer of the slot that the file does not have gets A = 0, B = 0 (ΔW = 0, as PEFT does).
    The arrays are written in place: the same objects, the same shapes. ``target_rank`` pads
    the slot first (``prepare_for_hotswap``). The file is validated as ``load_adapter`` does
    (config, keys, shapes, dtype, finiteness, fingerprint); refused, with the model unchanged,
    if it targets a layer the slot lacks, its rank on a layer exceeds the slot's R, or the slot
    is merged. The adapter's dropout becomes the file's. Returns ``{"layers": swapped paths,
    "zeroed": slot paths the file lacks, "rank": {path: (r', R)}, "fingerprint": ...}``.
    """
    slot = _slot(model, adapter_name)
    directory = os.fspath(directory)
    plans, cfg, how = read_adapter(model, directory, adapter_name=_free_name(model),
                                   check_fingerprint=check_fingerprint, activate=False)
    if any(getattr(pl, "m", None) is not None for pl in plans):
        raise AdapterError(f"{directory}: a DoRA adapter (use_dora: true); hot-swapping handles plain LoRA "
                           "(A, B) only: load_adapter() instead")
    if cfg.get("init", "gaussian") not in PLAIN_INITS:
        raise AdapterError(f"{directory}: init_lora_weights {cfg['init']!r} trains against a rewritten base W; "
                           "hot-swapping writes A and B only: load_adapter() instead")
    extra = [pl.path for pl in plans if pl.path not in slot]
    if extra:
        raise AdapterError(f"{directory}: adapter targets {extra}, which adapter {adapter_name!r} does not have "
                           f"(it is on {sorted(slot)}); hot-swapping cannot add layers: load_adapter() instead")
    if target_rank is not None:
        _check_target_rank(slot, target_rank, adapter_name, "hotswap_adapter")
    R = {p: target_rank or int(ad.params["A"].shape[0]) for p, (_, ad) in slot.items()}
    for pl in plans:
        if pl.r > R[pl.path]:
            raise AdapterError(
                f"{directory}: layer {pl.path!r} has rank {pl.r} but adapter {adapter_name!r} holds rank "
                f"{R[pl.path]} there; pad it first: prepare_for_hotswap(model, target_rank={max(p.r for p in plans)})"
            )
    # --- every check passed: change the model
    if target_rank is not None:
        prepare_for_hotswap(model, target_rank, adapter_name)
    by_path = {pl.path: pl for pl in plans}
    for p, (layer, ad) in slot.items():
        A, B = ad.params["A"], ad.params["B"]  # (R, d_in), (d_out, R): written in place, never replaced
        xp = backend.namespace(A)
        pl = by_path.get(p)
        if pl is None:
            A[...] = 0
            B[...] = 0
        else:
            r_new = pl.r
            ratio = lora_scale(r_new, pl.alpha, cfg["rslora"]) / ad.scale  # s' / s
            B_new = (pl.B.astype("float64") * ratio).astype(backend.dtype_name(B))  # one rounding
            A[:r_new, :] = backend.move(pl.A, xp)
            A[r_new:, :] = 0
            B[:, :r_new] = backend.move(B_new, xp)
            B[:, r_new:] = 0
        ad.dropout = cfg["dropout"]
        layer.clear_cache()
    return {"layers": [pl.path for pl in plans], "zeroed": [p for p in slot if p not in by_path],
            "rank": {pl.path: (pl.r, R[pl.path]) for pl in plans}, "fingerprint": how}
