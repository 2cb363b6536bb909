"""Adapter combination: one new adapter from several weighted ones, ΔW = Σ w_i ΔW_i.

``combine_adapters`` builds, layer by layer, A and B at scale 1 in one of three ways — ``concat``
(exact, ranks add), ``svd`` (the best rank-k approximation, with its discarded energy reported)
or ``linear`` (a heuristic blend, exact only for a shared A) — and installs them as a named
adapter like any other (docs/adapters.md, "Combination").
"""
from __future__ import annotations

import math

from .. import backend
from ..checks import check_lora
from ..functional.lora import lora_delta
from ..nn.lora import adapter_layers, layers_with, lora_layers
from ..nn.lora_embedding import LoRAEmbedding
from .named import _install, _Plan, set_active


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
    Refused, model unchanged: a DoRA adapter (W′ = m ⊙ V / ‖V‖ is not W + ΔW, so Σ w_i ΔW_i
    means nothing for it) and an adapter on a token embedding (only linear layers are combined).
    """
    w = _weights(adapters)
    if not w:
        raise ValueError("combine_adapters: no adapters given")
    if how not in ("concat", "svd", "linear"):
        raise ValueError(f"combine_adapters: how must be 'concat', 'svd' or 'linear', got {how!r}")
    per = {a: layers_with(model, a) for a in w}
    for a in w:
        for p, m in per[a].items():
            if m.adapters[a].dora:
                raise ValueError(f"{p}: adapter {a!r} is DoRA: its layer is W′ = m ⊙ V / ‖V‖ with its own "
                                 "magnitude m, not W + ΔW, so a weighted sum of ΔW_i would drop m; "
                                 "combine_adapters takes plain LoRA adapters only")
        for p, m in adapter_layers(model).items():
            if isinstance(m, LoRAEmbedding) and a in m.adapters:
                raise ValueError(f"{p}: adapter {a!r} is also on this token embedding; combine_adapters "
                                 "combines linear layers only and would drop it")
    layers = lora_layers(model)
    if any(name in m.adapters for m in layers.values()):
        raise ValueError(f"adapter {name!r} already exists")
    plans, report = [], {}
    for p, m in layers.items():
        if not any(p in per[a] for a in w):
            continue
        here = [(a, m.adapters[a]) for a in w if a in m.adapters]
        if any(m.merged == a for a, _ in here):
            raise ValueError(f"{p}: adapter {m.merged!r} is merged; unmerge() first")
        W = m.base.params["W"]
        A, B, report[p] = COMBINE[how](p, here, w, W, rank)
        r = report[p]["rank"]
        check_lora(p, int(W.shape[1]), int(W.shape[0]), r, float(r))
        plans.append(_Plan(p, A, B, r, float(r)))  # alpha = r (rsLoRA off): scale 1
    _install(model, name, plans)
    if activate:
        set_active(model, name)
    return {"layers": report}
