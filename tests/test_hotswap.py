"""minilora.adapters.hotswap: zero-padding an adapter to a larger rank, and writing another
adapter (other rank, other alpha, rsLoRA or not) into its arrays in place.

Tolerances. The padded forward computes exactly the same products, plus products with exact
zeros; but ``(scale · u) @ Bᵀ`` then sums over R instead of r terms, and BLAS may block and order
that sum differently for the wider shape, so the outputs agree to float32 rounding, not bitwise
(measured: a few 1e-7 of the largest output). The arrays themselves are compared bitwise. A
hot-swapped B is ``(s'/s) B'`` rounded once to float32, and the layer multiplies it by s again,
so a swap equals a fresh load to a few float32 ulps: ``TOL`` = 2e-5 of the largest output (the
suite's float32 tolerance, ``conftest.tol``), far below the adapters' own effect on the outputs
(order 1, asserted in each test).
"""
import copy
import math

import numpy as np
import pytest

from minilora import MLP, backend
from minilora import adapters as ad
from minilora.adapters.hotswap import _alpha_for_scale, hotswap_adapter, prepare_for_hotswap
from minilora.functional.lora import lora_scale

from conftest import arr

TOL = 2e-5
SIZES = (32, 48, 48, 10)


# ----------------------------------------------------------------------------- helpers


def base(xp=np):
    return MLP(SIZES, "gelu", seed=0, device=xp)


def make_file(tmp_path, name, targets, r, alpha, rslora=False, seed=1):
    """An adapter trained in spirit: random A and B (B is 0 at init, which would hide bugs)."""
    model = base()
    ad.add_adapter(model, "default", targets=targets, r=r, alpha=alpha, rslora=rslora, seed=seed)
    g = np.random.default_rng(seed)
    for layer in model.lora_layers().values():
        a = layer.adapters["default"]
        a.params["B"] = (0.5 * g.standard_normal(a.params["B"].shape)).astype("float32")
    d = tmp_path / name
    ad.save_adapter(model, d)
    return d


@pytest.fixture
def files(tmp_path):
    return {
        # the first adapter: rank 4, alpha 8, on every layer
        "a": make_file(tmp_path, "a", ["fc1", "fc2", "fc3"], r=4, alpha=8, seed=1),
        # another: rank 8 (2 on fc2), alpha 3, rsLoRA, on fc1 and fc2 only
        "b": make_file(tmp_path, "b", ["fc1", "fc2"], r={"fc1": 8, "fc2": 2}, alpha=3, rslora=True, seed=2),
        # rank 6 on fc3, which `a`'s slot has and `b`'s does not
        "c": make_file(tmp_path, "c", ["fc3"], r=6, alpha=1.5, seed=3),
        # rank 16: larger than any slot below pads to
        "big": make_file(tmp_path, "big", ["fc1"], r=16, alpha=16, seed=4),
    }


def loaded(path, xp=np):
    model = base(xp)
    ad.load_adapter(model, path)
    return model


def x_in(xp=np):
    return arr(np.random.default_rng(9).standard_normal((16, SIZES[0])), xp, "float32")


def out(model, xp=np):
    return backend.to_numpy(model(x_in(xp))).astype("float64")


def close(y, ref):
    """max |y − ref| ≤ TOL · max |ref|; returns the relative difference."""
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())
    assert rel <= TOL, rel
    return rel


def arrays(model):
    return {p: (l.adapters["default"].params["A"], l.adapters["default"].params["B"])
            for p, l in model.lora_layers().items() if "default" in l.adapters}


def snapshot(model):
    params = {k: (backend.dtype_name(v), tuple(v.shape), backend.to_numpy(v).tobytes())
              for k, v in model.named_parameters().items()}
    hyper = {p: {n: a.config() for n, a in l.adapters.items()} for p, l in model.lora_layers().items()}
    state = {p: (l.active, l.merged) for p, l in model.lora_layers().items()}
    frozen = {p: sorted(m.frozen) for p, m in model.named_modules()}
    return params, hyper, state, frozen


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("rslora", [False, True])
def test_padding_appends_zeros_and_keeps_the_scale(tmp_path, rslora):
    d = make_file(tmp_path, "a", ["fc1", "fc2", "fc3"], r=4, alpha=7, rslora=rslora)
    model = loaded(d)
    old = {p: (backend.to_numpy(A).copy(), backend.to_numpy(B).copy(), l.adapters["default"].scale)
           for (p, (A, B)), l in zip(arrays(model).items(), model.lora_layers().values())}
    assert prepare_for_hotswap(model, 10) == {p: (4, 10) for p in old}
    for p, layer in model.lora_layers().items():
        a = layer.adapters["default"]
        A, B = a.params["A"], a.params["B"]
        A0, B0, s0 = old[p]
        assert A.shape == (10, A0.shape[1]) and B.shape == (B0.shape[0], 10)
        assert np.array_equal(A[:4], A0) and np.array_equal(B[:, :4], B0)  # bitwise
        assert not A[4:].any() and not B[:, 4:].any()  # exact zeros
        assert a.r == 10 and a.rslora == rslora and a.scale == s0  # the same float


def test_padded_model_computes_the_unpadded_model(files):
    model = loaded(files["a"])
    y0 = out(model)
    with ad.adapters_disabled(model):
        y_base = out(model)
    delta0 = {p: backend.to_numpy(l.adapters["default"].delta()) for p, l in model.lora_layers().items()}
    prepare_for_hotswap(model, 10)
    close(out(model), y0)
    for p, layer in model.lora_layers().items():  # ΔW = s · B_pad A_pad: the zeros add exact zeros
        d = backend.to_numpy(layer.adapters["default"].delta())
        assert np.abs(d - delta0[p]).max() <= TOL * np.abs(delta0[p]).max()
    assert np.abs(y0 - y_base).max() > 0.1 * np.abs(y0).max()  # the adapter matters


def test_alpha_for_scale_keeps_the_scale():
    """Within one float64 ulp, and the same float32 — what multiplies the float32 code in the
    forward; the same float64 in most cases."""
    exact = total = 0
    for r in (1, 2, 3, 4, 7, 8):
        for alpha in (0.1, 1, 1.5, 3, 7.3, 8, 16, 1e-3, 123.456):
            for rslora in (False, True):
                s = lora_scale(r, alpha, rslora)
                for R in range(r, 70):
                    got = lora_scale(R, _alpha_for_scale(s, R, rslora), rslora)
                    assert abs(got - s) <= math.ulp(s), (r, alpha, rslora, R)
                    assert np.float32(got) == np.float32(s), (r, alpha, rslora, R)
                    exact += got == s
                    total += 1
    assert exact > 0.85 * total  # the docstring's "about 94%"


# ----------------------------------------------------------------------------- swapping


def test_hotswap_equals_a_fresh_load(files):
    model = loaded(files["a"])
    y_a = out(model)
    prepare_for_hotswap(model, 8)
    info = hotswap_adapter(model, files["b"])
    assert info["layers"] == ["fc1", "fc2"] and info["zeroed"] == ["fc3"]
    assert info["rank"] == {"fc1": (8, 8), "fc2": (2, 8)} and info["fingerprint"] == "exact"
    y_b = out(loaded(files["b"]))
    close(out(model), y_b)
    assert np.abs(y_b - y_a).max() > 0.1 * np.abs(y_b).max()  # a really different adapter
    fc3 = model.get_module("fc3").adapters["default"]
    assert not fc3.params["A"].any() and not fc3.params["B"].any()  # b has no fc3: ΔW = 0 there


def test_swaps_keep_the_arrays_identity_and_shape(files):
    model = loaded(files["a"])
    prepare_for_hotswap(model, 8)
    before = arrays(model)
    shapes = {p: (A.shape, B.shape) for p, (A, B) in before.items()}
    for name in ("b", "c", "a", "b"):
        hotswap_adapter(model, files[name])
        now = arrays(model)
        assert all(now[p][0] is before[p][0] and now[p][1] is before[p][1] for p in before)
        assert {p: (A.shape, B.shape) for p, (A, B) in now.items()} == shapes
        close(out(model), out(loaded(files[name])))


def test_swapping_back_restores_the_first_adapter(files):
    model = loaded(files["a"])
    y_a = out(model)
    prepare_for_hotswap(model, 8)
    hotswap_adapter(model, files["b"])
    hotswap_adapter(model, files["a"])
    close(out(model), y_a)


def test_target_rank_pads_and_swaps_in_one_call(files):
    model = loaded(files["a"])
    info = hotswap_adapter(model, files["b"], target_rank=8)
    assert info["rank"]["fc1"] == (8, 8)
    assert all(A.shape[0] == 8 for A, _ in arrays(model).values())
    close(out(model), out(loaded(files["b"])))


def test_a_hotswapped_adapter_saves_as_a_valid_file(files, tmp_path):
    model = loaded(files["a"])
    prepare_for_hotswap(model, 8)
    hotswap_adapter(model, files["c"])
    ad.save_adapter(model, tmp_path / "saved")  # r = 8 everywhere, alpha that keeps each scale
    fresh = loaded(tmp_path / "saved")
    close(out(fresh), out(loaded(files["c"])))
    assert set(ad.list_adapters(fresh)["default"].r.values()) == {8}


def test_dropout_follows_the_file(tmp_path, files):
    model = loaded(files["a"])
    other = base()
    ad.add_adapter(other, "default", targets=["fc1"], r=2, alpha=2, dropout=0.25)
    ad.save_adapter(other, tmp_path / "drop")
    hotswap_adapter(model, tmp_path / "drop")
    assert model.get_module("fc1").adapters["default"].dropout == 0.25


def test_hotswap_on_every_backend(files, xp):
    model = loaded(files["a"], xp)
    prepare_for_hotswap(model, 8)
    before = arrays(model)
    hotswap_adapter(model, files["b"])
    assert all(arrays(model)[p][0] is before[p][0] for p in before)
    close(out(model, xp), out(loaded(files["b"], xp), xp))


# ----------------------------------------------------------------------------- refusals, model unchanged


def refused(model, match, fn, *args, **kwargs):
    before = snapshot(model)
    with pytest.raises(ad.AdapterError, match=match):
        fn(model, *args, **kwargs)
    assert snapshot(model) == before


def test_refuses_a_layer_the_slot_lacks(files):
    model = loaded(files["b"])  # fc1, fc2
    prepare_for_hotswap(model, 8)
    refused(model, r"targets \['fc3'\], which adapter 'default' does not have", hotswap_adapter, files["a"])


def test_refuses_a_rank_above_the_padded_rank(files):
    model = loaded(files["a"])  # rank 4
    refused(model, r"rank 8 but adapter 'default' holds rank 4 .* prepare_for_hotswap\(model, target_rank=8\)",
            hotswap_adapter, files["b"])
    prepare_for_hotswap(model, 8)
    refused(model, "rank 16 but adapter 'default' holds rank 8", hotswap_adapter, files["big"])


def test_refuses_bad_target_ranks(files):
    model = loaded(files["b"])  # ranks 8 (fc1) and 2 (fc2)
    refused(model, "has rank 8; target_rank = 6 cannot hold it", prepare_for_hotswap, 6)
    refused(model, r"min\(d_in, d_out\)", prepare_for_hotswap, 40)  # fc1 is (48, 32)
    refused(model, "must be an int", prepare_for_hotswap, 8.0)
    refused(model, "target_rank = 6 cannot hold it", hotswap_adapter, files["b"], target_rank=6)
    # a target rank too small for the *file* is refused before the slot is padded
    refused(model, "rank 16 but adapter 'default' holds rank 12", hotswap_adapter, files["big"],
            target_rank=12)


def test_refuses_a_merged_adapter(files):
    model = loaded(files["a"])
    model.merge("default")
    refused(model, "merged into W", prepare_for_hotswap, 8)
    refused(model, "merged into W", hotswap_adapter, files["a"])


def test_refuses_an_unknown_adapter_and_a_bad_file(files, tmp_path):
    model = loaded(files["a"])
    refused(model, "no adapter 'task'", hotswap_adapter, files["a"], adapter_name="task")
    refused(model, "file not found", hotswap_adapter, tmp_path / "nowhere")
    wide = base().astype("float64")
    ad.add_adapter(wide, "default", targets=["fc1"], r=2, alpha=2)
    ad.save_adapter(wide, tmp_path / "f64")
    refused(model, "wrong dtype F64", hotswap_adapter, tmp_path / "f64", check_fingerprint=False)


def test_refuses_dora(files, tmp_path):
    model = loaded(files["a"])
    other = base()
    ad.add_adapter(other, "default", targets=["fc1"], r=2, alpha=2, use_dora=True)
    ad.save_adapter(other, tmp_path / "dora")
    refused(model, "DoRA", hotswap_adapter, tmp_path / "dora")
    refused(other, "hot-swapping handles plain LoRA", prepare_for_hotswap, 4)


def test_scale_fold_is_what_makes_it_right(files):
    """Without B ← (s'/s) B' the swapped model would compute the new adapter at the old scale."""
    model = loaded(files["a"])
    prepare_for_hotswap(model, 8)
    hotswap_adapter(model, files["c"])
    s_slot = model.get_module("fc3").adapters["default"].scale
    s_file = lora_scale(6, 1.5)
    assert not math.isclose(s_slot, s_file)  # the fold is not a no-op here
    B = model.get_module("fc3").adapters["default"].params["B"]
    fresh_B = loaded(files["c"]).get_module("fc3").adapters["default"].params["B"]
    assert np.allclose(B[:, :6] * s_slot, fresh_B * s_file, rtol=1e-6, atol=0)


def test_refuses_a_slot_whose_init_rewrote_the_base():
    from minilora.checks import ADAPTER_INITS

    if "pissa" not in ADAPTER_INITS:
        pytest.skip("no PiSSA init in this version")
    model = base()
    ad.add_adapter(model, "default", targets=["fc1"], r=2, alpha=2, init="pissa")
    refused(model, "rewrote the base W", prepare_for_hotswap, 4)
