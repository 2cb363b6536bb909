"""DoRA (Liu et al., 2024): W′ = m ⊙ V / ‖V‖_rows, V = W + scale · B A (functional/dora.py, docs/dora.md).

Expected magnitudes: the exact backward against central differences in float64 ~1e-9 relative
(tolerance 1e-6); PEFT's detached backward against them ~0.2-0.7 for dA and dB (a real
difference, not noise) and ~1e-10 for dx and dm (which the norm does not reach); minilora against
PyTorch autograd in float64 ~1e-15 (tolerance 1e-10); adapter files in float32 ~1e-7 (tolerance 1e-5).
Every check runs with B ≠ 0 and m ≠ ‖W‖ per row, so no term hides behind a zero or a one.
"""
import numpy as np
import pytest

import minilora as ml
from minilora import adapters, backend
from minilora.adapters import AdapterError
from minilora.functional.dora import ALL, dora_backward, dora_forward, dora_weight, row_norm
from minilora.functional.linear import linear_forward
from minilora.gradcheck import TOLERANCE, check_model, check_pair, rel_error

from conftest import arr

EVERY = ("x", "A", "B", "m", "W", "b")


def inputs(xp, mask=False, seed=0, d_in=7, d_out=5, r=2):
    """A DoRA layer off its init: B ≠ 0 and m ≠ ‖W + scale · B A‖ per row."""
    g = np.random.default_rng(seed)
    out = dict(x=g.standard_normal((2, 3, d_in)), W=g.standard_normal((d_out, d_in)), b=g.standard_normal(d_out),
               A=g.standard_normal((r, d_in)), B=g.standard_normal((d_out, r)), m=g.uniform(0.5, 2.0, d_out),
               mask=((g.random((2, 3, d_in)) > 0.3) / 0.7) if mask else None)
    out = {k: None if v is None else arr(v, xp, "float64") for k, v in out.items()}
    return {**out, "scale": 1.5}


def backward_all(exact):
    return lambda dout, cache: dora_backward(dout, cache, need=EVERY, exact=exact)


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_exact_backward_matches_finite_differences(xp, mask):
    inp = inputs(xp, mask)
    n = backend.to_numpy(row_norm(inp["W"] + inp["scale"] * (inp["B"] @ inp["A"])))
    assert np.abs(backend.to_numpy(inp["m"]) / n - 1).min() > 0.05  # m is not ‖V‖: the norm's terms show
    results = check_pair(dora_forward, backward_all(True), inp, wrt=list(EVERY))
    assert [r.array for r in results] == list(EVERY)
    assert all(r.rel_error <= TOLERANCE for r in results), [(r.array, r.rel_error) for r in results]


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_detached_backward_drops_only_the_norm_terms(mask):
    inp = inputs(np, mask)
    y, cache = dora_forward(**inp)
    dout = np.random.default_rng(5).standard_normal(y.shape)
    dx_e, exact = dora_backward(dout, cache, exact=True)
    dx_d, detached = dora_backward(dout, cache, exact=False)
    assert set(exact) == set(detached) == {"A", "B", "m"}  # the default need: no dW, no db
    # x and m do not reach n = ‖W + scale · B A‖: their gradients are the same in both
    assert np.array_equal(dx_e, dx_d) and np.array_equal(exact["m"], detached["m"])
    # A and B do: PEFT's gradient is a different vector, not a rounding-sized speck away
    assert rel_error(exact["A"], detached["A"]) > 0.05 and rel_error(exact["B"], detached["B"]) > 0.05
    # ... and it is the exact one minus the terms through the norm, nothing else (finite differences
    # with n frozen at its forward value give the detached gradient)
    frozen_n = cache.n

    def forward_n_fixed(x, W, b, A, B, m, scale, mask):
        V = W + scale * (B @ A)
        x_drop = x if mask is None else x * mask
        y = (m / frozen_n) * (x_drop @ V.T) + b
        return (y if mask is None else y + (x - x_drop) @ W.T), cache

    checks = check_pair(forward_n_fixed, lambda d, c: dora_backward(d, c, exact=False), inp, wrt=["x", "A", "B", "m"],
                        dout=dout)
    assert all(r.rel_error <= TOLERANCE for r in checks), [(r.array, r.rel_error) for r in checks]


def test_need_restricts_the_gradients():
    y, cache = dora_forward(**inputs(np))
    dx, grads = dora_backward(np.ones_like(y), cache, need={"B", "m"})
    assert dx is None and set(grads) == {"B", "m"}
    assert set(ALL) == {"x", "A", "B", "m"}


@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_forward_is_the_merged_weight_and_peft_s_dropout_rule(xp, mask):
    inp = inputs(xp, mask)
    y, cache = dora_forward(**inp)
    x, W, b, mk = inp["x"], inp["W"], inp["b"], inp["mask"]
    W_new, n = dora_weight(W, inp["A"], inp["B"], inp["m"], inp["scale"])
    # each row of W′ has length m_j: the magnitude is what the name says
    assert rel_error(row_norm(W_new), inp["m"]) < 1e-14
    if mk is None:  # y = x W′ᵀ + b
        want = linear_forward(x, W_new, b)[0]
    else:  # PEFT: the base sees x, the adapter's part W′ − W sees x̃ = x ⊙ mask
        want = linear_forward(x, W, b)[0] + (x * mk) @ (W_new - W).T
    assert rel_error(y, want) < 1e-13


def test_input_checks_name_the_magnitude():
    inp = inputs(np)
    with pytest.raises(ValueError, match=r"dora: magnitude m has shape \(4,\), expected \(d_out,\) = \(5,\)"):
        dora_forward(**{**inp, "m": np.ones(4)})
    with pytest.raises(TypeError, match="arrays must share one dtype"):
        dora_forward(**{**inp, "m": np.ones(5, np.float32)})


# ----------------------------------------------------------------------------- the module


def dora_mlp(dtype="float64", exact=True, dropout=0.0, seed=0):
    model = ml.MLP((6, 7, 3), activation="gelu", seed=seed, dtype=dtype)
    model.add_lora(["fc1", "fc2"], r=2, alpha=4, use_dora=True, dora_exact=exact, dropout=dropout)
    return model


def off_init(model, seed=1):
    """B random, m moved 30% off ‖W‖: every DoRA term matters."""
    gen = np.random.default_rng(seed)
    for layer in model.lora_layers().values():
        ad = layer.adapters["default"]
        B, m = ad.params["B"], ad.params["m"]
        B[...] = (0.5 * gen.standard_normal(B.shape)).astype(B.dtype)
        m[...] = (m * gen.uniform(0.7, 1.3, m.shape)).astype(m.dtype)
    return model


X = np.random.default_rng(0).standard_normal((8, 6))
Y = np.arange(8) % 3


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_at_init_the_dora_layer_is_the_base(dtype):
    model = ml.MLP((6, 7, 3), activation="gelu", seed=0, dtype=dtype)
    x = X.astype(dtype)
    base = model.forward(x)
    model.add_lora(["fc1", "fc2"], r=2, alpha=4, use_dora=True)
    for layer in model.lora_layers().values():  # m = ‖W‖ per row, B = 0
        ad = layer.adapters["default"]
        assert np.array_equal(ad.params["m"], row_norm(layer.base.params["W"]))
        assert not ad.params["B"].any()
    assert np.array_equal(model.forward(x), base)  # g = m / n = 1 exactly: bit for bit


def test_parameters_config_and_list_adapters():
    model = dora_mlp(exact=False)
    assert list(model.named_parameters(trainable=True)) == [
        "fc1.lora.default.A", "fc1.lora.default.B", "fc1.lora.default.m",
        "fc2.lora.default.A", "fc2.lora.default.B", "fc2.lora.default.m"]
    assert model.fc1.lora.default.m.shape == (7,)
    ad = model.fc1.adapters["default"]
    assert ad.config()["dora"] is True and ad.config()["dora_exact"] is False
    info = adapters.list_adapters(model)["default"]
    assert info.dora and not info.dora_exact


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "detached"])
def test_module_gradients(exact):
    model = off_init(dora_mlp(exact=exact))
    rows = {r.array: r for r in check_model(model, X, Y)}
    assert set(rows) == set(model.named_parameters(trainable=True))
    for name, r in rows.items():
        if exact or name.endswith(".m"):
            assert r.passed, (name, r.rel_error)
        else:  # PEFT's choice is not the derivative of the loss: finite differences disagree
            assert r.rel_error > 0.05, (name, r.rel_error)


def test_module_with_dropout_uses_the_pair_and_its_mask():
    model = off_init(dora_mlp(dropout=0.3))
    layer, ad = model.fc1, model.fc1.adapters["default"]
    layer.train()
    h = layer.forward(X)
    kind, cache = layer.cache
    assert kind == "dora" and cache.mask is not None and (cache.mask == 0).any() and (cache.mask > 1).any()
    W, b = layer.base.params["W"], layer.base.params["b"]
    want, _ = dora_forward(X, W, b, ad.params["A"], ad.params["B"], ad.params["m"], ad.scale, cache.mask)
    assert np.array_equal(h, want)
    layer.eval()
    h_eval = layer.forward(X)
    assert layer.cache[1].mask is None and rel_error(h, h_eval) > 1e-2


def test_trainable_base_gets_the_dora_gradient_of_W():
    model = off_init(dora_mlp())
    model.unfreeze("fc1.base.*")
    rows = {r.array: r for r in check_model(model, X, Y)}
    assert {"fc1.base.W", "fc1.base.b"} <= set(rows)
    assert all(r.passed for r in rows.values()), [(k, r.rel_error) for k, r in rows.items()]


def test_training_moves_m_and_leaves_the_base():
    model = off_init(dora_mlp(dtype="float32"))
    W = {p: layer.base.params["W"].copy() for p, layer in model.lora_layers().items()}
    m0 = model.fc1.adapters["default"].params["m"].copy()
    opt = ml.AdamW(model, lr=1e-2)
    losses = [ml.train_step(model, opt, X.astype("float32"), Y) for _ in range(20)]
    assert losses[-1] < losses[0]
    assert not np.array_equal(model.fc1.adapters["default"].params["m"], m0)
    assert all(np.array_equal(layer.base.params["W"], W[p]) for p, layer in model.lora_layers().items())


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_merge_is_w_prime_and_unmerge_restores_w(dtype, tol):
    model = off_init(dora_mlp(dtype=dtype))
    model.eval()
    x = X.astype(dtype)
    before = model.forward(x)
    W = {p: layer.base.params["W"].copy() for p, layer in model.lora_layers().items()}
    model.merge()
    for p, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        W_new, _ = dora_weight(W[p], ad.params["A"], ad.params["B"], ad.params["m"], ad.scale)
        assert rel_error(layer.base.params["W"], W_new) < tol
        assert layer.merged == "default"
    assert rel_error(model.forward(x), before) < tol
    assert all(layer.cache[0] == "base" for layer in model.lora_layers().values())  # plain linear speed
    model.unmerge()
    for p, layer in model.lora_layers().items():
        assert rel_error(layer.base.params["W"], W[p]) < tol and layer.merged is None
    assert rel_error(model.forward(x), before) < tol
    drift = adapters.merge_drift(model, "default", dtypes=(dtype,))[dtype]["max_rel"]
    assert drift < tol


def test_merge_refuses_a_zero_magnitude_and_changes_nothing():
    model = off_init(dora_mlp())
    model.fc2.adapters["default"].params["m"][1] = 0.0
    W1 = model.fc1.base.params["W"].copy()
    with pytest.raises(ValueError, match=r"fc2: DoRA adapter 'default' has zero entries in its magnitude m"):
        model.merge()
    assert np.array_equal(model.fc1.base.params["W"], W1) and model.fc1.merged is None  # all layers or none


def test_dora_is_refused_on_a_4bit_base():
    from minilora.nn.quantized import QuantLinear, quantize_q4_1

    model = ml.MLP((32, 8, 3), seed=0)
    q = QuantLinear(quantize_q4_1(model.fc1.params["W"]))
    model.set_module("fc1", q)
    with pytest.raises(ValueError, match=r"fc1: DoRA \(it needs the row norms of W \+ scale · B A\) is not "
                                         r"supported on a 4-bit \(Q4_1\) base"):
        model.add_lora(["fc1", "fc2"], r=2, alpha=4, use_dora=True)
    assert model.get_module("fc1") is q and not model.lora_layers()  # nothing wrapped, fc2 included


# ----------------------------------------------------------------------------- files (no PEFT needed)


def test_file_round_trip_keeps_m_and_the_backward_choice(tmp_path):
    model = off_init(dora_mlp(dtype="float32", exact=False))
    adapters.save_adapter(model, tmp_path / "d")
    import json

    from safetensors.numpy import load_file

    cfg = json.loads((tmp_path / "d" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True
    saved = load_file(str(tmp_path / "d" / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(f"base_model.model.{p}.{k}" for p in ("fc1", "fc2")
                                   for k in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector"))
    assert np.array_equal(saved["base_model.model.fc1.lora_magnitude_vector"], model.fc1.adapters["default"].params["m"])
    fresh = ml.MLP((6, 7, 3), activation="gelu", seed=0, dtype="float32")
    assert ml.load_adapter(fresh, tmp_path / "d")["fingerprint"] == "exact"
    x = X.astype("float32")
    assert np.array_equal(fresh.forward(x), model.eval().forward(x))
    info = adapters.list_adapters(fresh)["default"]
    assert info.dora and info.dora_exact is False


def test_loader_checks_the_magnitude(tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    model = off_init(dora_mlp(dtype="float32"))
    d = tmp_path / "d"
    adapters.save_adapter(model, d)
    tensors = load_file(str(d / "adapter_model.safetensors"))
    key = "base_model.model.fc2.lora_magnitude_vector"
    fresh = ml.MLP((6, 7, 3), activation="gelu", seed=0, dtype="float32")
    before = {k: v.copy() for k, v in fresh.named_parameters().items()}

    def fails(tensors, match, cfg_edit=None):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        save_file(tensors, str(bad / "adapter_model.safetensors"))
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(cfg_edit or {})
        (bad / "adapter_config.json").write_text(json.dumps(cfg))
        with pytest.raises(AdapterError, match=match):
            ml.load_adapter(fresh, bad)
        assert not fresh.lora_layers() and all(np.array_equal(v, before[k]) for k, v in fresh.named_parameters().items())

    fails({k: v for k, v in tensors.items() if k != key}, rf"missing key {key} \(layer 'fc2' is targeted by .* with use_dora true\)")
    fails({**tensors, key: np.ones(4, np.float32)}, r"wrong shape \(4,\), expected \(d_out,\) = \(3,\)")
    fails({**tensors, key: np.full(3, np.nan, np.float32)}, "contains NaN or Inf")
    fails(tensors, "a DoRA magnitude, but .* has use_dora false", {"use_dora": False})
    fails(tensors, r"key 'use_dora': must be true or false, got 'yes'", {"use_dora": "yes"})


def test_saving_while_a_dora_adapter_is_merged_is_refused(tmp_path):
    model = off_init(dora_mlp(dtype="float32")).eval()
    model.merge()
    with pytest.raises(AdapterError, match="a DoRA adapter is merged into W; unmerge"):
        adapters.save_adapter(model, tmp_path / "d")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- PyTorch and PEFT


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed")


def torch_dora(torch, inp, detach):
    """The forward in PyTorch, autograd doing the backward; ``detach`` is PEFT's choice."""
    t = {k: None if v is None else torch.tensor(backend.to_numpy(v), requires_grad=k != "mask")
         for k, v in inp.items() if k != "scale"}
    s = inp["scale"]
    V = t["W"] + s * t["B"] @ t["A"]
    n = torch.linalg.norm(V, dim=1)
    if detach:
        n = n.detach()
    Wp = (t["m"] / n)[:, None] * V
    x_drop = t["x"] if t["mask"] is None else t["x"] * t["mask"]
    y = x_drop @ Wp.T + (t["x"] - x_drop) @ t["W"].T + t["b"]
    return y, t


@pytest.mark.crosscheck
@pytest.mark.parametrize("exact", [True, False], ids=["exact vs autograd", "detached vs autograd with .detach()"])
@pytest.mark.parametrize("mask", [False, True], ids=["no mask", "mask"])
def test_pair_matches_pytorch_autograd(torch, exact, mask):
    inp = inputs(np, mask, seed=3)
    y, cache = dora_forward(**inp)
    dout = np.random.default_rng(4).standard_normal(y.shape)
    dx, grads = dora_backward(dout, cache, need=EVERY, exact=exact)
    yt, t = torch_dora(torch, inp, detach=not exact)
    (yt * torch.tensor(dout)).sum().backward()
    assert rel_error(y, yt.detach().numpy()) < 1e-12
    assert rel_error(dx, t["x"].grad.numpy()) < 1e-10
    for k in ("A", "B", "m", "W", "b"):
        assert rel_error(grads[k], t[k].grad.numpy()) < 1e-10, k
    # and the other choice of backward is far from this autograd
    _, other = dora_backward(dout, cache, need=EVERY, exact=not exact)
    assert rel_error(other["B"], t["B"].grad.numpy()) > 0.05


def peft_dora_twin(model, torch, peft, dtype="float64"):
    """PEFT's DoRA (get_peft_model(use_dora=True)) on the PyTorch twin, with minilora's A, B, m
    copied in and each lora_dropout replaced by a mask replay (PEFT's DoRA dropout branch)."""
    from minilora import torch_twin as tt

    layers = model.lora_layers()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(layers), use_dora=True, lora_dropout=0.0)
    pm = peft.get_peft_model(tt.torch_twin(model, dtype), config)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for path, layer in layers.items():
            ad = layer.adapters["default"]
            for k, name in (("A", "lora_A.default.weight"), ("B", "lora_B.default.weight"),
                            ("m", "lora_magnitude_vector.default.weight")):
                params[f"base_model.model.{path}.{name}"].copy_(tt.to_torch(ad.params[k], dtype))
            pm.base_model.model.get_submodule(path).lora_dropout["default"] = tt.MaskReplay()
    return pm


@pytest.mark.crosscheck
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no dropout", "dropout"])
def test_detached_module_matches_peft_gradients(torch, dropout):
    peft = pytest.importorskip("peft")
    from minilora import torch_twin as tt

    model = off_init(dora_mlp(exact=False, dropout=dropout))
    pm = peft_dora_twin(model, torch, peft)
    model.train()
    pm.train()
    from minilora.functional.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    logits = model.forward(X)
    for path, layer in model.lora_layers().items():  # the masks minilora drew, replayed in PEFT
        mask = layer.cache[1].mask
        assert (mask is not None) == (dropout > 0)
        pm.base_model.model.get_submodule(path).lora_dropout["default"].mask = None if mask is None else tt.to_torch(mask)
    loss, cache = softmax_cross_entropy_forward(logits, Y)
    model.backward(softmax_cross_entropy_backward(1.0, cache)[0])
    out = pm(tt.to_torch(X))
    tt.torch_loss("cross_entropy", out, tt.to_torch(Y)).backward()
    assert rel_error(logits, out.detach().numpy()) < 1e-12
    theirs = dict(pm.named_parameters())
    ours = model.named_grads()
    assert len(ours) == 6
    for name, g in ours.items():
        path, _, _, k = name.rsplit(".", 3)
        key = {"A": "lora_A.default.weight", "B": "lora_B.default.weight", "m": "lora_magnitude_vector.default.weight"}[k]
        assert rel_error(g, theirs[f"base_model.model.{path}.{key}"].grad.numpy()) < 1e-10, name


@pytest.mark.crosscheck
@pytest.mark.parametrize("which", ["MLP", "GPT"])
def test_minilora_dora_adapter_loads_in_peft(tmp_path, torch, which):
    pytest.importorskip("peft")
    from minilora import crosscheck

    model, x, _, targets = crosscheck.interop_cases()[which]()
    model.add_lora(targets, r=2, alpha=4, use_dora=True)
    off_init(model)
    model.eval()
    with adapters.adapters_disabled(model):
        base = model.forward(x)
    assert rel_error(model.forward(x), base) > 1e-2  # the adapter changes the outputs
    rows = crosscheck.interop_minilora_to_peft(model, x, tmp_path / "adapter")  # outputs, merged W′, W′ − W
    assert all(r.passed and r.tolerance == 1e-5 for r in rows), [(r.array, r.rel_error) for r in rows]
    assert len(rows) == 1 + 2 * len(model.lora_layers())


@pytest.mark.crosscheck
def test_peft_dora_adapter_loads_in_minilora(tmp_path, torch):
    peft = pytest.importorskip("peft")
    from minilora import crosscheck
    from minilora import torch_twin as tt

    model, x, y, targets = crosscheck.interop_cases()["MLP"]()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, use_dora=True, lora_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pm = peft.get_peft_model(tt.torch_twin(model, "float32"), config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, p in pm.named_parameters():
            if ".lora_B." in k:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        tt.torch_loss("cross_entropy", pm(tt.to_torch(x)), tt.to_torch(y)).backward()
        opt.step()
    pm.eval()
    pm.save_pretrained(str(tmp_path / "peft"))
    with torch.no_grad():
        theirs = pm(tt.to_torch(x)).numpy()
    info = ml.load_adapter(model, tmp_path / "peft")
    assert info["fingerprint"] == "absent"
    model.eval()
    ours = model.forward(x)
    assert rel_error(ours, theirs) < 1e-5
    with adapters.adapters_disabled(model):
        assert rel_error(model.forward(x), ours) > 1e-2
    ad = model.fc1.adapters["default"]
    assert ad.dora and ad.dora_exact is False  # trained with PEFT's detached norm: keeps training so
    m_peft = dict(pm.named_parameters())["base_model.model.fc1.lora_magnitude_vector.default.weight"]
    assert np.array_equal(ad.params["m"], m_peft.detach().numpy())
    assert not np.array_equal(ad.params["m"], row_norm(model.fc1.base.params["W"]))  # m was trained


def test_the_exact_gradient_of_V_has_no_radial_part():
    # dV_j = g_j (dW′_j − (dW′_j · V̂_j) V̂_j): the exact backward leaves the length of each row to m
    # (docs/dora.md §3). With no mask dW = dV, so each row of dW is orthogonal to its row of V.
    inp = inputs(np)
    y, cache = dora_forward(**inp)
    dout = np.random.default_rng(2).standard_normal(y.shape)
    for exact in (True, False):
        _, grads = dora_backward(dout, cache, need=("W",), exact=exact)
        radial = np.sum(grads["W"] * cache.V, axis=1) / (np.linalg.norm(grads["W"], axis=1) * cache.n)
        if exact:
            assert np.abs(radial).max() < 1e-14
        else:  # PEFT's keeps it
            assert np.abs(radial).max() > 0.1


def documented_layer(ratio, seed=0):
    """docs/dora.md §4's layer: 64 × 64, r = 4, scale = 2, 32 rows, ‖scale · B A‖ = ratio · ‖W‖,
    m = ‖V‖ per row (as at init, and as PEFT keeps it), a random dout."""
    g = np.random.default_rng(seed)
    d, r, N, scale = 64, 4, 32, 2.0
    W = g.standard_normal((d, d)) / np.sqrt(d)
    A = g.uniform(-1, 1, (r, d)) / np.sqrt(d)
    x, dout = g.standard_normal((N, d)), g.standard_normal((N, d))
    B = g.standard_normal((d, r))
    B = B * (ratio * np.linalg.norm(W) / np.linalg.norm(scale * B @ A)) if ratio else 0 * B
    m = row_norm(W + scale * B @ A)
    _, cache = dora_forward(x, W, None, A, B, m, scale)
    return dora_backward(dout, cache, exact=True)[1], dora_backward(dout, cache, exact=False)[1]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1.0])
def test_detached_differs_by_about_the_radial_share(ratio):
    # Near init (m = ‖V‖, small B) PEFT's gradient keeps the radial part of dW′ that the exact one
    # removes; for a random dout that part is about 1/√d_in of the whole (docs/dora.md §4)
    exact, detached = documented_layer(ratio)
    expected = 1 / np.sqrt(64)
    assert np.array_equal(exact["m"], detached["m"])
    if ratio == 0.0:  # B = 0: dA = 0 in both
        assert not exact["A"].any() and not detached["A"].any()
    for k in ("B",) if ratio == 0.0 else ("A", "B"):
        diff = rel_error(exact[k], detached[k])
        if ratio <= 0.1:
            assert 0.5 * expected < diff < 2 * expected, (k, diff)
        else:
            assert diff > 0.5 * expected, (k, diff)


def test_gpt_with_dora_on_q_and_v_passes_the_gradient_check():
    from minilora.nn.transformer import GPT, GPTConfig

    config = GPTConfig(vocab_size=11, n_ctx=8, n_layer=1, n_head=2, n_embd=8)
    model = GPT(config, dtype="float64", init_std=0.5)
    model.add_lora(["q", "v"], r=2, alpha=4, use_dora=True)
    off_init(model)
    gen = np.random.default_rng(0)
    ids, y = gen.integers(0, 11, (2, 5)), gen.integers(0, 11, (2, 5))
    rows = check_model(model, ids, y)
    assert {r.array.rsplit(".", 1)[1] for r in rows} == {"A", "B", "m"} and len(rows) == 6
    assert all(r.passed for r in rows), [(r.array, r.rel_error) for r in rows]
