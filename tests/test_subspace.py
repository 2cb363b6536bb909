"""The LoRA paper's §7 analysis (minilora/analysis/subspace.py), on matrices whose answers are known.

φ(A₁, A₂, i, j) = ‖U_{A₁}^{i⊤} U_{A₂}^{j}‖²_F / min(i, j), U^i the top-i right singular vectors,
and the amplification factor ‖ΔW‖_F / ‖Uᵀ W Vᵀ‖_F with U, V the top-r singular directions of ΔW.
Every expected value below is computed from the construction, not copied from a run. The
statistical tests compare a Monte-Carlo mean with its derived expectation within 5 standard
errors (a correct estimator fails one entry with probability < 1e-6); the seeds are fixed, so
each test gives the same answer on every run.
"""
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import arr
from minilora.analysis import (amplification, phi, phi_grid, phi_random_expected, phi_random_grid,
                               project, random_orthonormal, right_singular_vectors)

TOL = 1e-12  # float64 round-off on matrices of size ~10


def orthonormal(n, k, seed):
    """(n, k) with orthonormal columns."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))
    return Q


def rows_along(directions, sigmas):
    """A (k, d) = diag(σ) · directionsᵀ: right singular vectors = the columns of ``directions``,
    ordered by the decreasing σ given (directions (d, k) orthonormal)."""
    return np.asarray(sigmas)[:, None] * directions.T


# ----------------------------------------------------------------------------- φ: known answers


def test_a_subspace_against_itself_is_one_everywhere():
    # A's top-i directions lie inside its top-j ones (or contain them): every φ(A, A, i, j) = 1
    A = np.random.default_rng(0).standard_normal((5, 12))
    assert np.allclose(phi_grid(A, A), np.ones((5, 5)), atol=TOL, rtol=0)
    for i in range(1, 6):
        assert phi(A, A, i, i) == pytest.approx(1.0, abs=TOL)


def test_the_same_row_space_gives_one_at_full_rank():
    # A2 = M A1 with M invertible: the same row space, other singular vectors inside it
    g = np.random.default_rng(1)
    A1 = g.standard_normal((4, 10))
    M = g.standard_normal((4, 4)) + 4 * np.eye(4)  # invertible (well conditioned)
    A2 = M @ A1
    assert phi(A1, A2, 4, 4) == pytest.approx(1.0, abs=TOL)
    assert phi(A1, A2, 1, 1) < 0.99  # the top directions themselves moved: φ sees directions


def test_orthogonal_row_spaces_give_zero():
    Q = orthonormal(12, 7, seed=2)
    A1 = rows_along(Q[:, :3], [3.0, 2.0, 1.0])  # span(q1, q2, q3)
    A2 = rows_along(Q[:, 3:], [4.0, 3.0, 2.0, 1.0])  # span(q4 .. q7)
    assert np.allclose(phi_grid(A1, A2), 0.0, atol=TOL)


def test_permuted_bases_give_the_counted_overlap():
    # A1's top-i directions are q1..qi; A2's top-j are the first j of (q3, q1, q5, q2, q6).
    # ‖U^{i⊤} U^j‖²_F counts the shared basis vectors, so φ = |shared| / min(i, j); the cases
    # where one set contains the other (nested subspaces) give exactly 1.
    Q = orthonormal(9, 6, seed=3)
    order2 = [2, 0, 4, 1, 5]
    A1 = rows_along(Q[:, :4], [4.0, 3.0, 2.0, 1.0])  # (4, 9)
    A2 = rows_along(Q[:, order2], [5.0, 4.0, 3.0, 2.0, 1.0])  # (5, 9)
    expected = np.array([[len(set(range(i)) & set(order2[:j])) / min(i, j) for j in range(1, 6)]
                         for i in range(1, 5)])
    assert np.allclose(phi_grid(A1, A2), expected, atol=TOL, rtol=0)
    assert phi(A1, A2, 3, 4) == pytest.approx(1.0, abs=TOL)  # {q1, q2, q3} ⊂ {q3, q1, q5, q2}
    assert phi(A1, A2, 1, 1) == pytest.approx(0.0, abs=TOL)  # q1 ⟂ q3


def test_principal_angles_give_cos_squared():
    # A1's directions e1, e2; A2's are e1, e2 turned by θ₁, θ₂ towards e3, e4:
    # φ(1,1) = cos²θ₁, φ(2,2) = (cos²θ₁ + cos²θ₂)/2, φ(1,2) = cos²θ₁ (e1 ⟂ the second turn)
    t1, t2 = 0.3, 1.1
    E = np.eye(6)
    A1 = rows_along(E[:, :2], [2.0, 1.0])
    turned = np.stack([math.cos(t1) * E[0] + math.sin(t1) * E[2],
                       math.cos(t2) * E[1] + math.sin(t2) * E[3]], axis=1)  # (6, 2)
    A2 = rows_along(turned, [3.0, 0.5])
    c1, c2 = math.cos(t1) ** 2, math.cos(t2) ** 2
    assert phi(A1, A2, 1, 1) == pytest.approx(c1, abs=TOL)
    assert phi(A1, A2, 2, 2) == pytest.approx((c1 + c2) / 2, abs=TOL)
    assert phi(A1, A2, 1, 2) == pytest.approx(c1, abs=TOL)
    assert phi(A1, A2, 2, 1) == pytest.approx(c1, abs=TOL)


def test_phi_is_symmetric_with_i_and_j_swapped():
    g = np.random.default_rng(4)
    A1, A2 = g.standard_normal((4, 10)), g.standard_normal((6, 10))
    assert np.allclose(phi_grid(A1, A2), phi_grid(A2, A1).T, atol=TOL, rtol=0)
    assert phi(A1, A2, 3, 5) == pytest.approx(phi(A2, A1, 5, 3), abs=TOL)


def test_phi_grid_equals_phi_entry_by_entry():
    g = np.random.default_rng(5)
    A1, A2 = g.standard_normal((5, 8)), g.standard_normal((7, 8))  # limits 5 and 7
    grid = phi_grid(A1, A2)
    assert grid.shape == (5, 7) and grid.dtype == np.float64
    for i in range(1, 6):
        for j in range(1, 8):
            assert grid[i - 1, j - 1] == pytest.approx(phi(A1, A2, i, j), abs=TOL), (i, j)
    assert np.array_equal(phi_grid(A1, A2, imax=2, jmax=3), grid[:2, :3])


def test_a_wide_A_is_limited_by_d_in():
    # A (r, d_in) with r > d_in has only d_in right singular vectors
    g = np.random.default_rng(6)
    A1, A2 = g.standard_normal((8, 3)), g.standard_normal((2, 3))
    assert phi_grid(A1, A2).shape == (3, 2)
    assert phi(A1, A2, 3, 2) == pytest.approx(1.0, abs=TOL)  # all of R³ contains anything


def test_right_singular_vectors_are_the_rows_of_Vh():
    A = np.random.default_rng(7).standard_normal((3, 7))
    Vh = right_singular_vectors(A)  # (3, 7)
    assert Vh.shape == (3, 7)
    assert np.allclose(Vh @ Vh.T, np.eye(3), atol=TOL)
    s = np.linalg.svd(A, compute_uv=False)
    assert np.allclose(np.linalg.norm(A @ Vh.T, axis=0), s, atol=TOL)  # ‖A v_k‖ = σ_k, decreasing


@settings(max_examples=25, deadline=None)
@given(r1=st.integers(1, 6), r2=st.integers(1, 6), d_in=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_phi_lies_in_zero_one_and_is_symmetric(r1, r2, d_in, seed):
    g = np.random.default_rng(seed)
    A1, A2 = g.standard_normal((r1, d_in)), g.standard_normal((r2, d_in))
    grid = phi_grid(A1, A2)
    assert grid.shape == (min(r1, d_in), min(r2, d_in))
    assert np.all(grid >= -TOL) and np.all(grid <= 1 + TOL)
    assert np.allclose(grid, phi_grid(A2, A1).T, atol=1e-10)


# ----------------------------------------------------------------------------- φ: random floor


def test_phi_random_expected_is_max_over_d():
    assert phi_random_expected(10, 3, 5) == 0.5
    assert phi_random_expected(10, 5, 3) == 0.5
    assert phi_random_expected(64, 1, 1) == 1 / 64
    assert phi_random_expected(8, 8, 2) == 1.0  # R^8 itself contains every subspace


def test_random_phi_averages_to_its_expectation():
    d, imax, jmax, n = 16, 4, 6, 400
    samples = np.stack([phi_random_grid(d, imax, jmax, seed=s) for s in range(n)])  # (n, 4, 6)
    mean, se = samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(n)
    expected = np.array([[phi_random_expected(d, i, j) for j in range(1, jmax + 1)]
                         for i in range(1, imax + 1)])
    assert np.all(np.abs(mean - expected) < 5 * se), (mean, expected, se)
    # draws averages independent pairs: the mean of many is close to the expectation too
    assert np.all(np.abs(phi_random_grid(d, imax, jmax, seed=1, draws=n) - expected) < 5 * se)


def test_phi_random_grid_is_seeded():
    assert np.array_equal(phi_random_grid(12, 3, 3, seed=7), phi_random_grid(12, 3, 3, seed=7))
    assert not np.array_equal(phi_random_grid(12, 3, 3, seed=7), phi_random_grid(12, 3, 3, seed=8))


# ----------------------------------------------------------------------------- dtypes and backends


def test_float32_and_float64_inputs_agree():
    g = np.random.default_rng(8)
    A1, A2 = g.standard_normal((4, 10)), g.standard_normal((6, 10))
    ref = phi_grid(A1, A2)
    got = phi_grid(A1.astype(np.float32), A2.astype(np.float32))
    assert got.dtype == np.float64
    assert np.allclose(got, ref, atol=1e-5)  # only the inputs were rounded to float32
    value = phi(A1.astype(np.float32), A2, 2, 3)
    assert type(value) is float and value == pytest.approx(ref[1, 2], abs=1e-5)


def test_every_backend_gives_the_numpy_answer(xp):
    g = np.random.default_rng(9)
    A1, A2 = g.standard_normal((4, 10)), g.standard_normal((6, 10))
    W, B, A = g.standard_normal((8, 10)), g.standard_normal((8, 2)), g.standard_normal((2, 10))
    assert np.array_equal(phi_grid(arr(A1, xp), arr(A2, xp)), phi_grid(A1, A2))
    assert amplification(arr(B @ A, xp), arr(W, xp), 2) == amplification(B @ A, W, 2)


# ----------------------------------------------------------------------------- amplification


def spectral(d_out, d_in, sigmas, seed):
    """W = U diag(σ) Vh with known singular values, and its U (d_out, d_out), Vh (d_in, d_in)."""
    U, Vh = orthonormal(d_out, d_out, seed), orthonormal(d_in, d_in, seed + 100).T
    S = np.zeros((d_out, d_in))
    S[:len(sigmas), :len(sigmas)] = np.diag(sigmas)
    return U @ S @ Vh, U, Vh


def test_delta_along_W_own_directions_has_factor_c():
    # ΔW = c · U_r diag(σ_r) Vh_r: ΔW's top-r directions are W's, so proj_delta = proj_W =
    # √(σ₁² + … + σ_r²), ‖ΔW‖_F = c · √(σ₁² + … + σ_r²), and factor = c exactly
    sigmas = np.array([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    W, U, Vh = spectral(8, 10, sigmas, seed=10)
    r, c = 3, 2.5
    delta_W = c * U[:, :r] @ np.diag(sigmas[:r]) @ Vh[:r]
    out = amplification(delta_W, W, r)
    top = math.sqrt(np.sum(sigmas[:r] ** 2))
    assert out.proj_delta == pytest.approx(top, rel=1e-12)
    assert out.proj_W == pytest.approx(top, rel=1e-12)
    assert out.delta_norm == pytest.approx(c * top, rel=1e-12)
    assert out.W_norm == pytest.approx(math.sqrt(np.sum(sigmas**2)), rel=1e-12)
    assert out.factor == pytest.approx(c, rel=1e-12)


def test_delta_along_W_weak_directions_is_amplified():
    # ΔW along W's r weakest directions (σ = 2, 1): proj_delta = √(2² + 1²), below proj_W
    sigmas = np.array([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    W, U, Vh = spectral(8, 10, sigmas, seed=11)
    delta_W = U[:, 4:6] @ np.diag([6.0, 4.0]) @ Vh[4:6]  # ‖ΔW‖_F = √52
    out = amplification(delta_W, W, 2)
    assert out.proj_delta == pytest.approx(math.sqrt(5.0), rel=1e-12)
    assert out.proj_W == pytest.approx(math.sqrt(81.0 + 49.0), rel=1e-12)
    assert out.factor == pytest.approx(math.sqrt(52.0 / 5.0), rel=1e-12)


def test_a_tilted_rank_one_delta_sees_cos_theta_of_sigma_one():
    # ΔW = g · u vᵀ, u = cosθ u₁ + sinθ u₇ (u₇ outside W's column space), v = v₁:
    # ‖ΔW‖_F = g, uᵀ W v = σ₁ cosθ, factor = g / (σ₁ cosθ)
    sigmas = np.array([6.0, 4.0, 3.0])
    W, U, Vh = spectral(7, 9, sigmas, seed=12)
    theta, gain = 0.7, 3.0
    u = math.cos(theta) * U[:, 0] + math.sin(theta) * U[:, 6]
    out = amplification(gain * np.outer(u, Vh[0]), W, 1)
    assert out.delta_norm == pytest.approx(gain, rel=1e-12)
    assert out.proj_delta == pytest.approx(6.0 * math.cos(theta), rel=1e-12)
    assert out.factor == pytest.approx(gain / (6.0 * math.cos(theta)), rel=1e-12)


def test_delta_outside_W_support_projects_to_nothing():
    # W = Σ_{k<3} σ_k u_k v_kᵀ; ΔW lives on u₅, u₆ × v₅, v₆, where W is zero
    W, U, Vh = spectral(8, 10, [5.0, 4.0, 3.0], seed=13)
    delta_W = U[:, 5:7] @ np.diag([2.0, 1.0]) @ Vh[5:7]
    out = amplification(delta_W, W, 2)
    assert out.proj_delta < 1e-13 * out.W_norm  # round-off only
    assert out.factor > 1e10 and math.isfinite(out.factor)
    # W exactly zero: proj_delta is exactly 0 and the factor is inf, by definition
    zero = amplification(delta_W, np.zeros_like(W), 2)
    assert zero.proj_delta == 0.0 and zero.proj_W == 0.0 and zero.factor == math.inf


def random_squares(W, r, n, seed):
    """n draws of ‖Uᵀ W V‖²_F with U, V random orthonormal (d_out, r), (d_in, r)."""
    gen = np.random.default_rng(seed)
    d_out, d_in = W.shape
    pairs = ((random_orthonormal(gen, d_out, r), random_orthonormal(gen, d_in, r).T) for _ in range(n))
    return np.array([project(W, U, Vh) ** 2 for U, Vh in pairs])


def test_random_projection_has_its_expected_square():
    # E‖Uᵀ W V‖²_F = tr(E[UUᵀ] W E[VVᵀ] Wᵀ) = (r/d_out)(r/d_in) ‖W‖²_F
    d_out, d_in, n = 12, 20, 2000
    W = np.random.default_rng(14).standard_normal((d_out, d_in)) * np.linspace(0.2, 3.0, d_in)
    for r in (1, 3):
        expected = np.sum(W**2) * r**2 / (d_out * d_in)
        squares = random_squares(W, r, n, seed=15 + r)
        se = squares.std(ddof=1) / math.sqrt(n)
        assert abs(squares.mean() - expected) < 5 * se, (r, squares.mean(), expected, se)
    # amplification's proj_random is the RMS over its draws: its square estimates the r = 1 value
    out = amplification(np.outer(np.ones(d_out), np.ones(d_in)), W, 1, seed=16, draws=n)
    expected = np.sum(W**2) / (d_out * d_in)
    se = random_squares(W, 1, n, seed=17).std(ddof=1) / math.sqrt(n)
    assert abs(out.proj_random**2 - expected) < 5 * se, (out.proj_random**2, expected, se)


def test_random_orthonormal_columns_are_orthonormal():
    Q = random_orthonormal(np.random.default_rng(17), 9, 4)
    assert Q.shape == (9, 4)
    assert np.allclose(Q.T @ Q, np.eye(4), atol=TOL)


def test_a_lora_delta_gives_a_finite_factor_above_the_floor():
    # a trained-looking ΔW = B A (rank 4) on a W with a spread spectrum: proj_random ≤ proj_W
    g = np.random.default_rng(18)
    W = g.standard_normal((16, 24))
    out = amplification(g.standard_normal((16, 4)) @ g.standard_normal((4, 24)), W, 4)
    assert 0 < out.proj_random < out.proj_W and 0 < out.proj_delta <= out.proj_W + TOL
    assert out.factor == pytest.approx(out.delta_norm / out.proj_delta)


# ----------------------------------------------------------------------------- bad inputs

_g = np.random.default_rng(19)
A4, A6 = _g.standard_normal((4, 10)), _g.standard_normal((6, 10))
W8, D8 = _g.standard_normal((8, 10)), _g.standard_normal((8, 2)) @ _g.standard_normal((2, 10))
BAD = [
    (lambda: phi(A4[0], A6, 1, 1), r"phi: A1 must be a 2-D matrix, got shape \(10,\)"),
    (lambda: phi(A4, A6[:, :7], 1, 1), r"phi: A1 and A2 must share d_in .* A1 \(4, 10\) and A2 \(6, 7\)"),
    (lambda: phi(A4, A6, 0, 1), r"phi: i must be an int in \[1, 4\] \(A1 has shape \(4, 10\)\), got 0"),
    (lambda: phi(A4, A6, 5, 1), r"phi: i must be an int in \[1, 4\]"),
    (lambda: phi(A4, A6, 1, 7), r"phi: j must be an int in \[1, 6\] \(A2 has shape \(6, 10\)\), got 7"),
    (lambda: phi(A4, A6, 2.0, 1), r"phi: i must be an int"),
    (lambda: phi(A4, A6, True, 1), r"phi: i must be an int"),
    (lambda: phi(A4, np.full((6, 10), np.nan), 1, 1), r"phi: A2 has NaN or Inf entries \(shape \(6, 10\)\)"),
    (lambda: phi_grid(A4, A6, imax=5), r"phi_grid: imax must be an int in \[1, 4\]"),
    (lambda: phi_grid(A4, A6, jmax=0), r"phi_grid: jmax must be an int in \[1, 6\]"),
    (lambda: phi_random_expected(10, 11, 1), r"phi_random_expected: i must be an int in \[1, 10\]"),
    (lambda: phi_random_expected(0, 1, 1), r"phi_random_expected: d must be a positive int"),
    (lambda: phi_random_grid(5, 2, 6), r"phi_random_grid: jmax must be an int in \[1, 5\]"),
    (lambda: phi_random_grid(5, 2, 2, draws=0), r"phi_random_grid: draws must be a positive int"),
    (lambda: amplification(D8, W8[:, :9], 2), r"amplification: delta_W and W must have one shape .* \(8, 10\) and W \(8, 9\)"),
    (lambda: amplification(D8, W8, 9), r"amplification: r must be an int in \[1, 8\] \(W has shape \(8, 10\)\)"),
    (lambda: amplification(D8, W8, 3), r"amplification: r=3 exceeds rank\(delta_W\)=2 \(shape \(8, 10\)\)"),
    (lambda: amplification(np.zeros((8, 10)), W8, 1), r"amplification: r=1 exceeds rank\(delta_W\)=0"),
    (lambda: amplification(D8, W8[None], 2), r"amplification: W must be a 2-D matrix, got shape \(1, 8, 10\)"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m.split(":")[0] + str(k) for k, (_, m) in enumerate(BAD)])
def test_bad_inputs_raise_value_errors_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- docs/subspace.md


def test_the_docs_page_example_runs(capsys):
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "subspace.md").read_text(encoding="utf-8")
    blocks = page.split("```python\n")[1:]
    assert len(blocks) == 1, "docs/subspace.md should hold one Python block: the usage example"
    exec(compile(blocks[0].split("```", 1)[0], "docs/subspace.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "φ(1,1) = " in printed and "factor " in printed
