"""Mixed-adapter batches (functional/mixed_lora.py, fast/mixed_lora.py): each row its own adapter.

- every row equals a single-adapter run of that row (``lowrank_forward`` on it alone);
- float64 gradient checks of dx, dA_k, dB_k with B ≠ 0, a dropout mask, rows of no adapter;
- adapter k's gradient comes from its rows only (changing another row's dout leaves it alone),
  and an adapter with no rows in the batch gets none;
- the fast gather over zero-padded stacked adapters equals the sub-batch loop;
- bad rows / shapes are refused naming the layer.
"""
from __future__ import annotations

import numpy as np
import pytest

from minilora.fast import mixed_lora as fast_mixed
from minilora.functional.lora import lowrank_backward, lowrank_forward
from minilora.functional.mixed_lora import mixed_lowrank_backward, mixed_lowrank_forward
from minilora.gradcheck import check_pair, rel_error

from conftest import arr

D_IN, D_OUT = 6, 5
RANKS = (2, 3, 1)
SCALES = (0.5, 2.0, 1.5)


def adapters(xp=None, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    out = []
    for r, s in zip(RANKS, SCALES):
        A, B = rng.standard_normal((r, D_IN)), rng.standard_normal((D_OUT, r))  # B ≠ 0: every term shows
        out.append((A.astype(dtype) if xp is None else arr(A, xp, dtype),
                    B.astype(dtype) if xp is None else arr(B, xp, dtype), s))
    return out


ROWS = (1, 0, -1, 0, 1)  # adapter 2 has no row in this batch


def x_of(shape=(5, 3, D_IN), seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("impl", ["reference", "gather"])
def test_every_row_equals_a_single_adapter_run_of_that_row(impl):
    forward = mixed_lowrank_forward if impl == "reference" else fast_mixed.mixed_lowrank_forward
    x, ads = x_of(), adapters()
    h, _ = forward(x, ads, ROWS)
    for n, a in enumerate(ROWS):
        if a < 0:
            assert not np.any(h[n])  # no adapter: no low-rank term
            continue
        A, B, s = ads[a]
        alone, _ = lowrank_forward(x[n:n + 1], A, B, s)
        assert rel_error(h[n:n + 1], alone) <= 1e-14


def _flat(impl):
    fwd, bwd = ((mixed_lowrank_forward, mixed_lowrank_backward) if impl == "reference"
                else (fast_mixed.mixed_lowrank_forward, fast_mixed.mixed_lowrank_backward))

    def forward(x, A0, B0, A1, B1, A2, B2, mask):
        return fwd(x, [(A0, B0, SCALES[0]), (A1, B1, SCALES[1]), (A2, B2, SCALES[2])], ROWS, mask)

    def backward(dout, cache):
        dx, grads = bwd(dout, cache)
        return dx, {f"{k}{i}": g for i, gk in enumerate(grads) for k, g in gk.items()}

    return forward, backward


@pytest.mark.parametrize("impl", ["reference", "gather"])
def test_gradients_in_float64(impl):
    ads = adapters()
    mask = (np.random.default_rng(3).random((5, 3, D_IN)) > 0.3) / 0.7  # inverted dropout
    inputs = {"x": x_of(), "mask": mask}
    for i, (A, B, _) in enumerate(ads):
        inputs[f"A{i}"], inputs[f"B{i}"] = A, B
    forward, backward = _flat(impl)
    results = check_pair(forward, backward, inputs, wrt=["x", "A0", "B0", "A1", "B1"])
    assert len(results) == 5 and all(r.passed for r in results), results
    _, grads = backward(np.ones((5, 3, D_OUT)), forward(**inputs)[1])
    assert "A2" not in grads and "B2" not in grads  # adapter 2 had no row: no gradient at all


def test_each_adapter_learns_from_its_own_rows_only():
    x, ads = x_of(), adapters()
    h, cache = mixed_lowrank_forward(x, ads, ROWS)
    dout = np.random.default_rng(5).standard_normal(h.shape)
    _, g = mixed_lowrank_backward(dout, cache)
    other = dout.copy()
    other[[0, 4]] *= -3.0  # the rows of adapter 1 only
    other[2] = 7.0  # the row of no adapter
    _, g2 = mixed_lowrank_backward(other, cache)
    assert np.array_equal(g[0]["A"], g2[0]["A"]) and np.array_equal(g[0]["B"], g2[0]["B"])
    assert not np.allclose(g[1]["B"], g2[1]["B"])
    # and adapter 0's gradient equals a single-adapter backward over its rows alone
    sel = [1, 3]
    _, c0 = lowrank_forward(x[sel], ads[0][0], ads[0][1], ads[0][2])
    _, alone = lowrank_backward(dout[sel], c0)
    assert rel_error(g[0]["A"], alone["A"]) <= 1e-13 and rel_error(g[0]["B"], alone["B"]) <= 1e-13


def test_the_gather_equals_the_sub_batch_loop(xp):
    ads = adapters(xp, dtype="float32")
    x = arr(x_of(), xp, "float32")
    h, c = mixed_lowrank_forward(x, ads, ROWS)
    hf, cf = fast_mixed.mixed_lowrank_forward(x, ads, ROWS)
    assert rel_error(hf, h) <= 1e-6
    dout = arr(np.random.default_rng(2).standard_normal(tuple(h.shape)), xp, "float32")
    dx, g = mixed_lowrank_backward(dout, c)
    dxf, gf = fast_mixed.mixed_lowrank_backward(dout, cf)
    assert rel_error(dxf, dx) <= 1e-6
    for a, b in zip(g, gf):
        assert set(a) == set(b)
        for k in a:
            assert tuple(b[k].shape) == tuple(a[k].shape) and rel_error(b[k], a[k]) <= 1e-5


def test_rows_without_a_token_axis():
    x, ads = x_of((4, D_IN)), adapters()
    rows = (0, 1, 1, 2)
    h, c = mixed_lowrank_forward(x, ads, rows)
    hf, cf = fast_mixed.mixed_lowrank_forward(x, ads, rows)
    assert h.shape == (4, D_OUT) and rel_error(hf, h) <= 1e-14
    dx, _ = mixed_lowrank_backward(np.ones_like(h), c)
    dxf, _ = fast_mixed.mixed_lowrank_backward(np.ones_like(h), cf)
    assert rel_error(dxf, dx) <= 1e-14


@pytest.mark.parametrize("rows, match", [((0, 1, 3, 0, 0), r"indices \[3\]"), ((0, 1), "names 2 adapters"),
                                         ((-2, 0, 0, 0, 0), r"indices \[-2\]")])
def test_bad_rows_are_refused_naming_the_layer(rows, match):
    with pytest.raises(ValueError, match=match) as e:
        mixed_lowrank_forward(x_of(), adapters(), rows, layer="blocks.0.attn.q")
    assert "blocks.0.attn.q" in str(e.value)


def test_adapters_of_different_widths_are_refused():
    ads = adapters()
    ads[1] = (ads[1][0], np.ones((D_OUT + 1, RANKS[1])), 1.0)
    with pytest.raises(ValueError, match="one d_out"):
        mixed_lowrank_forward(x_of(), ads, ROWS)
