"""What a trained LoRA update looks like (Hu et al., 2021, §7): subspace similarity and amplification.

    φ(A₁, A₂, i, j) = ‖U_{A₁}^{i⊤} U_{A₂}^{j}‖²_F / min(i, j)                 (Eq. 4, §7.2)
    factor          = ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F,   U, V the top-r singular directions of ΔW   (§7.3)

U_A^i (d_in, i) holds the top-i *right* singular vectors of A (r, d_in): A = U Σ V_h, and
U_A^i = V_h[:i]ᵀ. They span the input directions that ΔW = B A reads from x, which is the
subspace §7.2 compares ("the right-singular unitary matrix"). See docs/subspace.md.

The analysis runs once, on a few small matrices, after training: every function here copies its
inputs to the host (``backend.to_numpy``, so NumPy and CuPy arrays both work) and computes in
float64 with NumPy's SVD. Results are Python floats or float64 NumPy arrays.

Letters: r (LoRA rank, rows of A), d_in, d_out (W is (d_out, d_in)), i, j (subspace dims), d
(ambient dimension of a random baseline).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import checks
from ..backend import rng, to_numpy

# ----------------------------------------------------------------------------- inputs


def _matrix(fn: str, name: str, M) -> np.ndarray:
    """``M`` on the host in float64, or ``ValueError`` naming ``fn`` and ``name``."""
    M = to_numpy(M)
    if M.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D matrix, got shape {M.shape}")
    if M.size == 0:
        raise ValueError(f"{fn}: {name} must not be empty, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError(f"{fn}: {name} has NaN or Inf entries (shape {M.shape})")
    return M.astype(np.float64)


def _index(fn: str, name: str, v, limit: int, why: str) -> int:
    """``int(v)``, or ``ValueError`` unless ``v`` is an int with 1 ≤ v ≤ limit."""
    if not checks.is_int(v) or not 1 <= v <= limit:
        raise ValueError(f"{fn}: {name} must be an int in [1, {limit}] ({why}), got {v!r}")
    return int(v)


def _two_As(fn: str, A1, A2):
    A1 = _matrix(fn, "A1", A1)  # (r1, d_in)
    A2 = _matrix(fn, "A2", A2)  # (r2, d_in)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(f"{fn}: A1 and A2 must share d_in (their number of columns), "
                         f"got A1 {A1.shape} and A2 {A2.shape}")
    return A1, A2


def right_singular_vectors(A) -> np.ndarray:
    """V_h of A = U Σ V_h: its rows are A's right singular vectors, by decreasing σ.

    Inputs:  A (r, d_in)
    Returns: V_h (k, d_in) with orthonormal rows, k = min(r, d_in); U_A^i = V_h[:i]ᵀ

    Rows past rank(A) belong to σ = 0 and are an arbitrary orthonormal completion.
    """
    A = _matrix("right_singular_vectors", "A", A)
    _, _, Vh = np.linalg.svd(A, full_matrices=False)  # (k, d_in)
    return Vh


# ----------------------------------------------------------------------------- φ (Eq. 4)


def phi(A1, A2, i: int, j: int) -> float:
    """φ(A₁, A₂, i, j) = ‖U_{A₁}^{i⊤} U_{A₂}^{j}‖²_F / min(i, j)     (LoRA Eq. 4)

    U_A^i (d_in, i) = the top-i right singular vectors of A, as columns. ‖U^{i⊤} U^j‖²_F is the
    sum of cos² of the principal angles between the two subspaces, so φ ∈ [0, 1]: 1 when one
    subspace contains the other, 0 when they are orthogonal.

    Inputs:  A1 (r1, d_in), A2 (r2, d_in), e.g. two LoRA ``A`` matrices of one layer
             i (int, 1 ≤ i ≤ min(r1, d_in)), j (int, 1 ≤ j ≤ min(r2, d_in))
    Returns: φ (float)

    Right, not left, singular vectors: A is (r, d_in), so its left singular vectors live in R^r,
    a space of LoRA's own internal coordinates that two adapters do not share; its right
    singular vectors live in R^{d_in}, where ΔW = B A reads the input x (§7.2: "right-singular").
    """
    A1, A2 = _two_As("phi", A1, A2)
    i = _index("phi", "i", i, min(A1.shape), f"A1 has shape {A1.shape}")
    j = _index("phi", "j", j, min(A2.shape), f"A2 has shape {A2.shape}")
    U1 = right_singular_vectors(A1)[:i].T  # (d_in, i)  U_{A1}^i
    U2 = right_singular_vectors(A2)[:j].T  # (d_in, j)  U_{A2}^j
    overlap = U1.T @ U2  # (i, j)  cosines between the two bases
    return float(np.sum(overlap**2) / min(i, j))


def phi_grid(A1, A2, imax: int | None = None, jmax: int | None = None) -> np.ndarray:
    """Φ[i-1, j-1] = φ(A₁, A₂, i, j) for i = 1..imax, j = 1..jmax, from one SVD of each A.

    With O = V_{h,1} V_{h,2}ᵀ (all cosines), ‖U_{A₁}^{i⊤} U_{A₂}^{j}‖²_F = Σ_{a≤i} Σ_{b≤j} O²_ab:
    a cumulative sum of O² over both axes, then a division by min(i, j).

    Inputs:  A1 (r1, d_in), A2 (r2, d_in), imax ≤ min(r1, d_in), jmax ≤ min(r2, d_in)
             (None: those limits)
    Returns: Φ (imax, jmax) float64
    """
    A1, A2 = _two_As("phi_grid", A1, A2)
    k1, k2 = min(A1.shape), min(A2.shape)  # how many right singular vectors each A has
    imax = k1 if imax is None else _index("phi_grid", "imax", imax, k1, f"A1 has shape {A1.shape}")
    jmax = k2 if jmax is None else _index("phi_grid", "jmax", jmax, k2, f"A2 has shape {A2.shape}")
    V1 = right_singular_vectors(A1)[:imax]  # (imax, d_in)
    V2 = right_singular_vectors(A2)[:jmax]  # (jmax, d_in)
    O = V1 @ V2.T  # (imax, jmax)  O_ab = cos between V1's a-th and V2's b-th direction
    overlap = np.cumsum(np.cumsum(O**2, axis=0), axis=1)  # (imax, jmax)  ‖U^{i⊤} U^j‖²_F
    i = np.arange(1, imax + 1)[:, None]  # (imax, 1)
    j = np.arange(1, jmax + 1)[None, :]  # (1, jmax)
    return overlap / np.minimum(i, j)


# ----------------------------------------------------------------------------- random baselines


def phi_random_expected(d: int, i: int, j: int) -> float:
    """E φ = max(i, j) / d for two independent, uniformly random subspaces of dims i, j in R^d.

    P = U_i U_iᵀ and Q = U_j U_jᵀ are their projections, ‖U_iᵀ U_j‖²_F = tr(P Q). Q is
    rotation-invariant in law, so E Q = c·I, and tr Q = j gives c = j/d. Independence:
    E tr(P Q) = tr(P · E Q) = (j/d) tr P = i·j/d, and E φ = (i·j/d) / min(i, j) = max(i, j)/d.

    Inputs:  d, i, j ints with 1 ≤ i, j ≤ d
    Returns: E φ (float)
    """
    d = checks.positive_int("phi_random_expected", "d", d)
    i = _index("phi_random_expected", "i", i, d, f"a subspace of R^{d}")
    j = _index("phi_random_expected", "j", j, d, f"a subspace of R^{d}")
    return max(i, j) / d


def phi_random_grid(d: int, imax: int, jmax: int, seed: int = 0, draws: int = 1) -> np.ndarray:
    """φ between two random Gaussian matrices G₁ (imax, d) and G₂ (jmax, d), i ≤ imax, j ≤ jmax.

    The law of G is invariant under G ↦ G Q for any rotation Q, so its top-i right singular
    subspace is uniformly random: each entry's expectation is ``phi_random_expected(d, i, j)``.
    This is the floor a measured φ grid is read against. ``draws`` > 1 averages that many
    independent pairs (one seeded generator, drawn on the CPU).

    Inputs:  d, imax ≤ d, jmax ≤ d, seed, draws ≥ 1
    Returns: Φ_random (imax, jmax) float64
    """
    d = checks.positive_int("phi_random_grid", "d", d)
    imax = _index("phi_random_grid", "imax", imax, d, f"a subspace of R^{d}")
    jmax = _index("phi_random_grid", "jmax", jmax, d, f"a subspace of R^{d}")
    draws = checks.positive_int("phi_random_grid", "draws", draws)
    gen = rng(seed)
    total = np.zeros((imax, jmax))
    for _ in range(draws):
        G1 = gen.standard_normal((imax, d))  # (imax, d)
        G2 = gen.standard_normal((jmax, d))  # (jmax, d)
        total += phi_grid(G1, G2)
    return total / draws


# ----------------------------------------------------------------------------- amplification (§7.3)


class Amplification(NamedTuple):
    """Table 7 of the LoRA paper for one weight: how much of W lies along ΔW's directions."""

    delta_norm: float  # ‖ΔW‖_F
    W_norm: float  # ‖W‖_F
    proj_delta: float  # ‖Uᵀ W Vᵀ‖_F, U, V = ΔW's top-r left/right singular directions
    proj_W: float  # the same with W's own top-r directions = √(σ₁² + … + σ_r²) of W
    proj_random: float  # the same with random orthonormal U, V: RMS over `draws` draws
    factor: float  # ‖ΔW‖_F / proj_delta (inf when proj_delta is exactly 0)


def project(W, U, Vh) -> float:
    """‖Uᵀ W Vᵀ‖_F: the part of W that maps the r directions of V onto the r directions of U.

    Inputs:  W (d_out, d_in), U (d_out, r) orthonormal columns, Vh (r, d_in) orthonormal rows
    Returns: ‖Uᵀ W Vhᵀ‖_F (float)
    """
    return float(np.linalg.norm(U.T @ W @ Vh.T))  # (r, r) before the norm


def random_orthonormal(gen: np.random.Generator, n: int, r: int) -> np.ndarray:
    """Q (n, r) with orthonormal columns spanning a uniformly random r-dim subspace of R^n.

    Q from the QR of a Gaussian (n, r) matrix, signs fixed by R's diagonal (Haar measure).
    """
    Q, R = np.linalg.qr(gen.standard_normal((n, r)))  # (n, r), (r, r)
    return Q * np.sign(np.diag(R))


def amplification(delta_W, W, r: int, seed: int = 0, draws: int = 8) -> Amplification:
    """factor = ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F   (LoRA §7.3, Table 7)

    ΔW = U_Δ Σ_Δ V_{h,Δ} (SVD); U = U_Δ[:, :r] (d_out, r), V = V_{h,Δ}[:r] (r, d_in). The paper's
    reading: ‖Uᵀ W Vᵀ‖_F is how strongly W already acts along ΔW's directions; a factor ≫ 1
    means ΔW amplifies directions that W has but does not emphasise. Two references put
    ‖Uᵀ W Vᵀ‖_F on a scale: W's own top-r directions (``proj_W``, the most any r directions can
    capture) and random orthonormal directions (``proj_random``), for which
    E‖Uᵀ W Vᵀ‖²_F = ‖W‖²_F · r² / (d_out · d_in)  (E UUᵀ = (r/d_out) I, E VᵀV = (r/d_in) I).

    Inputs:  delta_W (d_out, d_in) with rank ≥ r (e.g. scale · B @ A), W (d_out, d_in),
             r (int, 1 ≤ r ≤ min(d_out, d_in)), seed and draws for ``proj_random``
    Returns: Amplification(delta_norm, W_norm, proj_delta, proj_W, proj_random, factor)

    The paper (W_q of one GPT-3 175B layer): r = 4, ‖ΔW_q‖_F = 6.91 and ‖Uᵀ W_q Vᵀ‖_F = 0.32,
    factor ≈ 21.5; r = 64: 3.57 / 1.90, factor ≈ 1.9 (docs/subspace.md).

    ``factor`` is ``inf`` when proj_delta is exactly 0 (W = 0, or W exactly zero on ΔW's
    directions); when it is only round-off small, the factor is huge and finite.
    """
    fn = "amplification"
    delta_W = _matrix(fn, "delta_W", delta_W)  # (d_out, d_in)
    W = _matrix(fn, "W", W)  # (d_out, d_in)
    if delta_W.shape != W.shape:
        raise ValueError(f"{fn}: delta_W and W must have one shape (d_out, d_in), "
                         f"got delta_W {delta_W.shape} and W {W.shape}")
    d_out, d_in = W.shape
    r = _index(fn, "r", r, min(d_out, d_in), f"W has shape {W.shape}")
    draws = checks.positive_int(fn, "draws", draws)

    U_d, s_d, Vh_d = np.linalg.svd(delta_W, full_matrices=False)  # ΔW = U_d diag(s_d) Vh_d
    rank = int(np.sum(s_d > s_d[0] * max(d_out, d_in) * np.finfo(np.float64).eps))
    if rank < r:
        raise ValueError(f"{fn}: r={r} exceeds rank(delta_W)={rank} (shape {delta_W.shape}): "
                         f"ΔW has no direction past its rank, so its top-{r} directions are "
                         f"not defined; pass r ≤ {rank}")
    U, V = U_d[:, :r], Vh_d[:r]  # (d_out, r), (r, d_in)  ΔW's top-r directions
    proj_delta = project(W, U, V)

    U_W, _, Vh_W = np.linalg.svd(W, full_matrices=False)
    proj_W = project(W, U_W[:, :r], Vh_W[:r])  # = √(σ₁² + … + σ_r²)

    gen = rng(seed)
    squares = []
    for _ in range(draws):
        U_rand, V_rand = random_orthonormal(gen, d_out, r), random_orthonormal(gen, d_in, r).T
        squares.append(project(W, U_rand, V_rand) ** 2)
    proj_random = math.sqrt(sum(squares) / draws)  # RMS: its square estimates E‖UᵀWVᵀ‖²_F

    delta_norm = float(np.linalg.norm(delta_W))
    factor = math.inf if proj_delta == 0.0 else delta_norm / proj_delta
    return Amplification(delta_norm, float(np.linalg.norm(W)), proj_delta, proj_W, proj_random,
                         factor)
