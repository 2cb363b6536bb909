"""PiSSA (Meng et al., 2024) and OLoRA (Büyükakyüz, 2024): A, B from W, the base rewritten to
W_res = W − scale · B A (functional/lora.py ``pissa_init``, ``olora_init``; docs/lora.md §11).

Expected magnitudes: W_res + scale · B A against W in float64 ~1e-16 relative (tolerance 1e-12);
minilora's init against PEFT's (float32, up to the sign of each singular pair) ~1e-7 (tolerance
1e-5); a converted adapter on the original base against the trained model, float32 ~1e-7
(tolerance 1e-5).
"""
import json

import numpy as np
import pytest

import minilora as ml
from minilora import adapters
from minilora.adapters import AdapterError
from minilora.functional.lora import lora_delta, olora_init, pissa_init
from minilora.gradcheck import check_model, rel_error

from conftest import arr

X = np.random.default_rng(0).standard_normal((16, 8))
Y = np.arange(16) % 5


def base(dtype="float64"):
    return ml.MLP((8, 16, 5), activation="gelu", seed=0, dtype=dtype)  # 2r = 4 <= 5: the converted rank fits


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_init_rewrites_the_base_so_the_layer_is_unchanged(init):
    model = base()
    W = {p: model.get_module(p).params["W"].copy() for p in ("fc1", "fc2")}
    before = model.forward(X)
    model.add_lora(["fc1", "fc2"], r=2, alpha=4, init=init)
    for p, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        W_res = layer.base.params["W"]
        assert rel_error(W_res + ad.delta(), W[p]) < 1e-12  # W_res + scale · B A = W
        assert rel_error(W_res, W[p]) > 0.1  # the base really changed: a rank-2 part moved out
        assert np.array_equal(ad.initial["A"], ad.params["A"]) and np.array_equal(ad.initial["B"], ad.params["B"])
    assert rel_error(model.forward(X), before) < 1e-12


def test_pissa_takes_the_top_singular_directions(xp):
    g = np.random.default_rng(1)
    W = arr(g.standard_normal((9, 6)), xp, "float64")
    scale, r = 2.0, 3
    A, B, W_res = pissa_init(W, r, scale)
    Wn = np.asarray(W)
    U, S, Vh = np.linalg.svd(Wn, full_matrices=False)
    best = (U[:, :r] * S[:r]) @ Vh[:r]  # Eckart–Young: the best rank-r part
    assert rel_error(lora_delta(A, B, scale), best) < 1e-12
    assert rel_error(np.linalg.svd(np.asarray(W_res), compute_uv=False)[:6 - r], S[r:]) < 1e-12
    # √(Σ_r / scale) on both sides (PEFT's Sr /= scaling): A Aᵀ = B ᵀB = Σ_r / scale
    assert rel_error(np.asarray(A) @ np.asarray(A).T, np.diag(S[:r] / scale)) < 1e-12
    assert rel_error(np.asarray(B).T @ np.asarray(B), np.diag(S[:r] / scale)) < 1e-12


def test_olora_is_the_thin_qr(xp):
    g = np.random.default_rng(2)
    W = arr(g.standard_normal((9, 6)), xp, "float64")
    scale, r = 2.0, 3
    A, B, W_res = olora_init(W, r, scale)
    A, B = np.asarray(A), np.asarray(B)
    assert rel_error(B.T @ B, np.eye(r)) < 1e-12  # Q_r: orthonormal columns
    assert np.allclose(np.tril(A[:, :r], -1), 0)  # R_r: upper triangular
    Q, R = np.linalg.qr(np.asarray(W))
    assert rel_error(B @ A, Q[:, :r] @ R[:r]) < 1e-12  # the scale is not folded into A, B
    assert rel_error(np.asarray(W_res) + scale * B @ A, np.asarray(W)) < 1e-12


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_gradients_on_the_residual_base(init):
    model = base().add_lora(["fc1", "fc2"], r=2, alpha=4, init=init)
    rows = check_model(model, X, Y)
    assert len(rows) == 4 and all(r.passed for r in rows), [(r.array, r.rel_error) for r in rows]


def test_refusals_leave_the_model_unchanged():
    model = base().add_lora(["fc1"], r=2, alpha=4)
    W = model.fc1.base.params["W"].copy()
    with pytest.raises(ValueError, match=r"fc1: init='pissa' rewrites the base W, but the layer already has "
                                         r"adapters \['default'\]"):
        model.add_lora(["fc1", "fc2"], r=2, alpha=4, init="pissa", adapter="p")
    assert np.array_equal(model.fc1.base.params["W"], W) and sorted(model.lora_layers()) == ["fc1"]
    from minilora.nn.quantized import QuantLinear, quantize_q4_1

    q = base("float32")
    q.set_module("fc1", QuantLinear(quantize_q4_1(np.zeros((16, 32), np.float32) + 0.1)))
    with pytest.raises(ValueError, match=r"fc1: init='olora' \(it rewrites W\) is not supported on a 4-bit"):
        q.add_lora(["fc1"], r=2, alpha=4, init="olora")


# ----------------------------------------------------------------------------- export


def trained(init="pissa", dtype="float32", rslora=False, steps=30):
    model = base(dtype).add_lora(["fc1", "fc2"], r=2, alpha=4, init=init, rslora=rslora)
    opt = ml.AdamW(model, lr=2e-2)
    for _ in range(steps):
        ml.train_step(model, opt, X.astype(dtype), Y)
    return model.eval()


@pytest.mark.parametrize("init, rslora", [("pissa", False), ("olora", False), ("pissa", True)])
def test_converted_adapter_on_the_original_base_gives_the_trained_outputs(tmp_path, init, rslora):
    model = trained(init, rslora=rslora)
    x = X.astype("float32")
    out = model.forward(x)
    adapters.save_adapter(model, tmp_path / "lora", convert_to_lora=True)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["init_lora_weights"] is True and cfg["use_rslora"] is rslora
    assert cfg["lora_alpha"] == pytest.approx(4 * (2 ** 0.5 if rslora else 2))  # the same scale at rank 2r
    original = base("float32")
    assert rel_error(original.forward(x), out) > 1e-2  # training changed the outputs
    info = ml.load_adapter(original, tmp_path / "lora")
    assert info["fingerprint"] in ("exact", "rounding")  # the original base's, not the residual's
    ad = original.fc1.adapters["default"]
    assert ad.params["A"].shape == (4, 8) and ad.params["B"].shape == (16, 4)
    assert rel_error(original.forward(x), out) < 1e-5
    # the residual base is not the base this file belongs to
    with pytest.raises(AdapterError, match="fingerprint mismatch"):
        ml.load_adapter(model, tmp_path / "lora", adapter_name="again", activate=False)
    assert np.array_equal(model.forward(x), out)  # saving left the trained model as it was


def test_unconverted_save_says_pissa_and_minilora_refuses_it(tmp_path):
    model = trained()
    adapters.save_adapter(model, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    with pytest.raises(AdapterError, match="init_lora_weights"):
        ml.load_adapter(base("float32"), tmp_path / "p")


def test_convert_refuses_a_plain_adapter(tmp_path):
    model = base("float32").add_lora(["fc1"], r=2, alpha=4)
    with pytest.raises(AdapterError, match=r"fc1: adapter 'default' has init 'gaussian', which left the base"):
        adapters.save_adapter(model, tmp_path / "x", convert_to_lora=True)
    dora = base("float32").add_lora(["fc1"], r=2, alpha=4, init="pissa", use_dora=True)
    with pytest.raises(AdapterError, match="is DoRA"):
        adapters.save_adapter(dora, tmp_path / "x", convert_to_lora=True)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- PEFT


@pytest.fixture
def peft():
    pytest.importorskip("torch", reason="PyTorch is not installed")
    return pytest.importorskip("peft", reason="PEFT is not installed")


def _same_up_to_sign(ours, theirs, axis):
    """Equal up to the sign of each singular (or QR) pair: columns of B, rows of A."""
    signs = np.sign(np.sum(ours * theirs, axis=axis, keepdims=True))
    return rel_error(ours * signs, theirs)


@pytest.mark.crosscheck
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_init_matches_peft(peft, init):
    from minilora import torch_twin as tt

    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"], init_lora_weights=init)
    pm = peft.get_peft_model(tt.torch_twin(base("float32"), "float32"), config)
    theirs = {k: v.detach().numpy() for k, v in pm.named_parameters()}
    model = base("float32").add_lora(["fc1", "fc2"], r=2, alpha=4, init=init)
    for p, layer in model.lora_layers().items():
        ad = layer.adapters["default"]
        key = f"base_model.model.{p}"
        assert _same_up_to_sign(ad.params["A"], theirs[f"{key}.lora_A.default.weight"], axis=1) < 1e-5
        assert _same_up_to_sign(ad.params["B"], theirs[f"{key}.lora_B.default.weight"], axis=0) < 1e-5
        assert rel_error(layer.base.params["W"], theirs[f"{key}.base_layer.weight"]) < 1e-5


@pytest.mark.crosscheck
@pytest.mark.parametrize("convert", [True, False], ids=["converted", "as pissa"])
def test_peft_loads_the_saved_adapter_on_the_original_base(tmp_path, peft, convert):
    import torch

    from minilora import torch_twin as tt

    model = trained()
    x = X.astype("float32")
    out = model.forward(x)
    adapters.save_adapter(model, tmp_path / "a", convert_to_lora=convert)
    pm = peft.PeftModel.from_pretrained(tt.torch_twin(base("float32"), "float32"), str(tmp_path / "a"))
    pm.eval()
    with torch.no_grad():
        theirs = pm(torch.from_numpy(x)).numpy()
    assert rel_error(theirs, out) < 1e-5  # unconverted: PEFT redoes the SVD on the original W
