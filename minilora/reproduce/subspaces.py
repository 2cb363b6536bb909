"""Items 7–8 of the report: subspace similarity (§7.2, Eq. 4) and amplification (§7.3, Table 7).

The functions themselves (φ, its random baseline, the amplification factor) are in
``minilora/analysis/subspace.py`` and tested on matrices whose answers are known; here they are
applied to the adapters the runs trained, each next to its controls:

    φ(A_{r=8}, A_{r=64})     the paper's comparison, trained adapters of one seed
    φ at initialisation      the same two runs' A before training: what training added
    φ seed to seed           two seeds at the same rank: the ceiling of agreement
    φ random                 E φ of random subspaces, max(i, j) / d: the floor
"""
from __future__ import annotations

import numpy as np

from ..analysis.subspace import amplification, phi_grid, phi_random_expected


def similarity(runs, types, r_small: int, r_large: int, seeds, layer: str) -> dict:
    """φ grids of ``layer``'s A between ranks r_small and r_large (seed ``seeds[0]``), between two
    seeds at r_large (when there are two), at initialisation, and the random floor."""
    s0 = seeds[0]
    small, large = runs.get(types, r_small, s0), runs.get(types, r_large, s0)
    d = small["A"][layer].shape[1]
    out = {"layer": layer, "types": list(types), "r_small": r_small, "r_large": r_large, "d": d, "seed": s0,
           "trained": phi_grid(small["A"][layer], large["A"][layer]).tolist(),
           "init": phi_grid(small["A0"][layer], large["A0"][layer]).tolist(),
           "random": [[phi_random_expected(d, i, j) for j in range(1, r_large + 1)]
                      for i in range(1, r_small + 1)]}
    if len(seeds) > 1:
        other = runs.get(types, r_large, seeds[1])
        k = min(r_small, r_large)  # the top-k block of the seed-to-seed grid, like the paper's Figure 4 zoom
        out["seeds"] = phi_grid(large["A"][layer], other["A"][layer], k, k).tolist()
        out["seeds_random"] = [[phi_random_expected(d, i, j) for j in range(1, k + 1)] for i in range(1, k + 1)]
        out["seed_pair"] = [s0, seeds[1]]
    out["top"] = {name: out[name][0][0] for name in ("trained", "init", "random")}
    if "seeds" in out:
        out["top"]["seeds"] = out["seeds"][0][0]
    return out


def amplification_rows(runs, types, ranks, seed: int, layer: str, W) -> list:
    """Table 7 for ``layer`` at each rank: ΔW = scale · B A of the trained run against W."""
    W = np.asarray(W, np.float64)
    rows = []
    for r in ranks:
        run = runs.get(types, r, seed)
        dW = run["scale"][layer] * (run["B"][layer].astype(np.float64) @ run["A"][layer].astype(np.float64))
        a = amplification(dW, W, r, seed=seed)
        rows.append({"r": r, **a._asdict()})
    return rows
