"""Tests of the checker itself: correct backwards pass, a backward with one wrong term fails —
in ``check_pair``, in ``check_model`` and in the ``minilora gradcheck`` command — and the
relative error behaves at its edges.

A correct float64 backward measures ~1e-9 against central differences (h = 1e-6); a wrong term
measures ~1e-1 or more, so "broken" below means a relative error above 1e-3, far from both.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

from minilora import cli, fast, gradcheck
from minilora.cases import perturb_lora_B
from minilora.experiments import gradcheck_report
from minilora.functional import activations, attention, layernorm, lora
from minilora.gradcheck import (
    CheckResult,
    check_model,
    check_pair,
    format_table,
    rel_error,
)
from minilora.nn import MLP

from conftest import plant

BROKEN = 1e-3  # a wrong term gives a relative error far above this; a right one far below


def _by_array(rows):
    return {r.array: r for r in rows}


# ----------------------------------------------------------------------------- correct passes


def test_every_layer_pair_passes():
    rows = gradcheck_report.pair_checks()
    assert rows and all(r.passed for r in rows), format_table(rows)
    components = {r.component for r in rows}
    assert {"linear", "lora", "lora+mask", "relu", "gelu", "cross_entropy", "mse",
            "layernorm", "attention", "embedding"} <= components
    assert {f"{name} (fast)" for name in [*fast.PAIRS, "lora+mask"]} <= components  # both columns
    assert max(r.rel_error for r in rows) < 1e-7  # float64 central differences: ~1e-9 expected


def test_whole_models_pass():
    rows = gradcheck_report.model_checks()
    assert rows and all(r.passed for r in rows), format_table(rows)
    assert any(".lora." in r.array for r in rows) and any(r.array.endswith(".W") for r in rows)
    default = [r for r in rows if not r.component.endswith(" (reference)")]
    reference = [r for r in rows if r.component.endswith(" (reference)")]
    assert [(r.component + " (reference)", r.array) for r in default] == [(r.component, r.array) for r in reference]


# ----------------------------------------------------------------------------- broken terms


def _lora_inputs(seed=0, N=4, d_in=5, d_out=3, r=2):
    g = np.random.default_rng(seed)
    W, b = g.standard_normal((d_out, d_in)), g.standard_normal(d_out)
    mask = (g.random((N, d_in)) >= 0.3) / 0.7
    inputs = {"x": g.standard_normal((N, d_in)), "A": g.standard_normal((r, d_in)),
              "B": g.standard_normal((d_out, r))}
    return (lambda x, A, B: lora.lora_forward(x, W, b, A, B, 1.5, mask)), inputs


def test_check_pair_catches_lora_dx_without_mask():
    forward, inputs = _lora_inputs()

    def no_mask_in_dx(dout, cache):  # one term wrong: dx forgets the dropout mask
        return lora.lora_backward(dout, cache._replace(mask=None))

    good = _by_array(check_pair(forward, lora.lora_backward, inputs))
    bad = _by_array(check_pair(forward, no_mask_in_dx, inputs))
    assert all(r.passed for r in good.values())
    assert not bad["x"].passed and bad["x"].rel_error > BROKEN
    assert bad["A"].passed and bad["B"].passed  # the check points at the wrong array only


def _dB_without_scale(real):
    def backward(dout, cache, need=lora.ALL):  # one term wrong: dB = doutᵀ u, the scale forgotten
        dx, grads = real(dout, cache, need=need)
        return dx, {**grads, "B": grads["B"] / cache.scale}
    return backward


def _gelu_first_term_only(dout, cache):  # one term wrong: dy/dx = ½(1 + t), tanh' term dropped
    return dout * 0.5 * (1.0 + cache.t), {}


def test_check_pair_catches_dB_without_scale():
    forward, inputs = _lora_inputs()
    bad = _by_array(check_pair(forward, _dB_without_scale(lora.lora_backward), inputs))
    assert not bad["B"].passed and bad["B"].rel_error > BROKEN
    assert bad["A"].passed and bad["x"].passed


@pytest.mark.parametrize("name", ["gelu", "layernorm dgamma", "attention dq"])
def test_check_pair_catches_other_wrong_terms(name):
    g = np.random.default_rng(1)
    if name == "gelu":
        fwd, bwd = activations.gelu_forward, _gelu_first_term_only
        inputs, key = {"x": 2.0 * g.standard_normal((4, 3))}, "x"
    elif name == "layernorm dgamma":
        def bwd(dout, cache):  # dγ = Σ dout ⊙ x̂ with x̂ replaced by x (normalisation forgotten)
            dx, grads = layernorm.layernorm_backward(dout, cache)
            x = fwd_inputs["x"]
            return dx, {**grads, "gamma": (dout * x).reshape(-1, x.shape[-1]).sum(0)}
        fwd = layernorm.layernorm_forward
        fwd_inputs = inputs = {"x": 3.0 + 2.0 * g.standard_normal((2, 3, 5)),
                               "gamma": g.standard_normal(5), "beta": g.standard_normal(5)}
        key = "gamma"
    else:
        def bwd(dout, cache):  # dq without the 1/√hd
            _, grads = attention.attention_backward(dout, cache)
            return None, {**grads, "q": grads["q"] / cache.scale}
        fwd = attention.attention_forward
        inputs = {k: g.standard_normal((1, 2, 4, 3)) for k in "qkv"}
        key = "q"
    good = _by_array(check_pair(fwd, {"gelu": activations.gelu_backward,
                                      "layernorm dgamma": layernorm.layernorm_backward,
                                      "attention dq": attention.attention_backward}[name],
                                inputs, wrt=[key]))
    bad = _by_array(check_pair(fwd, bwd, inputs, wrt=[key]))
    assert good[key].passed
    assert not bad[key].passed and bad[key].rel_error > BROKEN


def _lora_mlp(activation="relu"):
    model = MLP((6, 8, 4), activation, dtype="float64").add_lora(r=2, alpha=4)
    perturb_lora_B(model, seed=3)
    g = np.random.default_rng(2)
    return model, g.standard_normal((5, 6)), g.integers(0, 4, 5)


def test_check_model_catches_dB_without_scale(monkeypatch):
    model, x, y = _lora_mlp()
    assert all(r.passed for r in check_model(model, x, y))
    plant(monkeypatch, "lora", backward=_dB_without_scale(lora.lora_backward))
    rows = check_model(model, x, y)
    for r in rows:
        if r.array.endswith(".B"):
            assert not r.passed and r.rel_error > BROKEN
        else:  # dA and dx (hence the layer below) do not use the broken term
            assert r.passed, r


def test_check_model_catches_wrong_gelu(monkeypatch):
    model = MLP((6, 8, 4), "gelu", dtype="float64")
    g = np.random.default_rng(2)
    x, y = g.standard_normal((5, 6)), g.integers(0, 4, 5)
    plant(monkeypatch, "gelu", backward=_gelu_first_term_only)
    bad = _by_array(check_model(model, x, y))
    assert not bad["fc1.W"].passed and bad["fc1.W"].rel_error > BROKEN  # below the GELU
    assert bad["fc2.W"].passed  # above it: untouched


def _run_command(capsys, *args):
    status = cli.main(["gradcheck", "--no-torch", *args])
    return status, capsys.readouterr().out


def test_command_passes_when_correct(capsys):
    status, out = _run_command(capsys)
    assert status == 0, out
    assert "component" in out and "rel. error" in out and "FAIL" not in out
    assert "PyTorch/PEFT comparison skipped: --no-torch" in out


@pytest.mark.parametrize("broken", ["lora dB scale", "lora dx mask", "gelu"])
def test_command_fails_on_a_broken_backward(monkeypatch, capsys, broken):
    if broken == "lora dB scale":
        bad = _dB_without_scale(lora.lora_backward)
        monkeypatch.setattr(lora, "lora_backward", bad)  # the functional module
        plant(monkeypatch, "lora", backward=bad)  # both columns of fast.PAIRS: both tables
        expect = "FAIL lora B"
    elif broken == "lora dx mask":
        real = lora.lora_backward
        bad = lambda d, c, need=lora.ALL: real(d, c._replace(mask=None), need)  # noqa: E731
        monkeypatch.setattr(lora, "lora_backward", bad)
        plant(monkeypatch, "lora", backward=bad)
        expect = "FAIL lora+mask x"
    else:
        monkeypatch.setattr(activations, "gelu_backward", _gelu_first_term_only)
        plant(monkeypatch, "gelu", backward=_gelu_first_term_only)
        expect = "FAIL gelu x"
    status, out = _run_command(capsys)
    assert status != 0
    assert expect in out
    label, array = expect.removeprefix("FAIL ").rsplit(" ", 1)
    assert f"FAIL {label} (fast) {array}" in out  # planted in both columns: both rows fail


@pytest.mark.parametrize("column", ["fast", "reference"])
def test_command_fails_on_a_bug_in_one_column_only(monkeypatch, capsys, column):
    (ref_fwd, ref_bwd), (fast_fwd, fast_bwd) = fast.PAIRS["gelu"]
    if column == "fast":
        monkeypatch.setitem(fast.PAIRS, "gelu", ((ref_fwd, ref_bwd), (fast_fwd, _gelu_first_term_only)))
        bad, good = ["FAIL gelu (fast) x", "FAIL mlp full fc1.W"], ["FAIL gelu x", "(reference)"]
    else:
        monkeypatch.setitem(fast.PAIRS, "gelu", ((ref_fwd, _gelu_first_term_only), (fast_fwd, fast_bwd)))
        bad, good = ["FAIL gelu x", "FAIL mlp full (reference) fc1.W"], ["FAIL gelu (fast)", "FAIL mlp full fc1"]
    status, out = _run_command(capsys)
    assert status != 0
    fails = "\n".join(line for line in out.splitlines() if "FAIL" in line)
    for text in bad:  # the column with the bug: its pair row, and the models that run on it
        assert text in fails, out
    for text in good:  # the other column passes
        assert text not in fails, fails


def test_command_says_why_torch_was_skipped(monkeypatch, capsys):
    from minilora import crosscheck

    monkeypatch.setattr(crosscheck, "available", lambda: (False, "no module named 'torch' (test)"))
    status = cli.main(["gradcheck"])
    out = capsys.readouterr().out
    assert status == 0
    assert "PyTorch/PEFT comparison skipped: no module named 'torch' (test)" in out


def test_command_runs_as_a_process():
    done = subprocess.run([sys.executable, "-m", "minilora", "gradcheck", "--no-torch"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all pass" in done.stdout


# ----------------------------------------------------------------------------- rel_error


def test_rel_error_edges():
    a = np.array([3.0, -4.0])
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0  # both zero: equal, not 0/0
    assert rel_error(np.zeros(2), a) == 1.0  # one zero: as wrong as can be short of a sign flip
    assert rel_error(a, -a) == 2.0  # opposite signs: the maximum
    assert rel_error(a, a) == 0.0
    assert rel_error(a, a + np.array([0.0, 5e-6])) == pytest.approx(1e-6, rel=1e-6)  # ‖δ‖/‖a‖ = 5e-6/5
    assert rel_error(1e-30 * a, 1e-30 * (a + 1.0)) == pytest.approx(rel_error(a, a + 1.0))  # scale-free
    assert rel_error(a, 2 * a) == rel_error(2 * a, a)  # symmetric
    assert math.isnan(rel_error(a, np.array([np.nan, 1.0])))
    assert rel_error(a.astype(np.float32), a) == 0.0  # computed in float64
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.zeros(2), np.zeros(3))


def test_check_result_pass_boundary():
    assert CheckResult("c", "a", 1e-6, 1e-6).passed  # at the tolerance: pass
    assert not CheckResult("c", "a", 1.01e-6, 1e-6).passed
    assert not CheckResult("c", "a", float("nan"), 1e-6).passed  # a NaN gradient never passes
    table = format_table([CheckResult("lora", "B", 0.5, 1e-6), CheckResult("lora", "A", 1e-9, 1e-6)])
    assert table.splitlines()[1].endswith("FAIL") and table.splitlines()[2].endswith("pass")


def test_numerical_gradient_needs_float64_and_restores_x():
    x = np.array([0.5, -1.0, 2.0])
    before = x.copy()
    num = gradcheck.numerical_gradient(lambda: np.sum(x**3), x)
    assert np.array_equal(x, before)
    assert np.allclose(num, 3 * before**2, rtol=1e-8)
    with pytest.raises(TypeError, match="float64"):
        gradcheck.numerical_gradient(lambda: 0.0, x.astype(np.float32))
    with pytest.raises(TypeError, match="float64"):
        check_model(MLP((3, 2)), np.zeros((1, 3), np.float32), np.zeros(1, np.int64))


# ----------------------------------------------------------------------------- torch is optional


def test_minilora_never_imports_torch():
    code = ("import sys, minilora, minilora.crosscheck, minilora.experiments.gradcheck_report; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0


def test_case_catalogue_and_finite_difference_report_never_import_torch():
    code = ("import sys, minilora.cases, minilora.experiments.gradcheck_report as report; "
            "[build() for build in (*minilora.cases.cases().values(), *minilora.cases.interop_cases().values())]; "
            "report.pair_checks(); report.model_checks(); "
            "sys.exit(('torch' in sys.modules) + 2 * ('minilora.crosscheck' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0


def test_finite_differences_skip_only_the_mask_cases():
    from minilora import cases

    every, unmasked = cases.cases(), cases.cases(masks=False)
    assert list(unmasked) == [k for k in every if not k.endswith(" mask")]
    for name in set(every) - set(unmasked):  # a mask case is an unmasked one with dropout on
        assert name.removesuffix(" mask") in unmasked


def test_missing_torch_gives_a_clear_error(monkeypatch, capsys):
    from minilora import crosscheck

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0.*minilora\[crosscheck\]"):
        crosscheck.require("torch")
    ok, why = crosscheck.available()
    assert not ok and "torch==2.13.0" in why
    assert cli.main(["gradcheck"]) == 0  # the finite-difference tables still run and pass
    assert "PyTorch/PEFT comparison skipped: minilora.crosscheck needs 'torch'" in capsys.readouterr().out


def test_crosscheck_tests_skip_with_a_reason_without_torch():
    # -n 0: the tests run in this process, where torch is blocked (xdist's workers would not be)
    code = ("import sys; sys.modules['torch'] = None; import pytest; "
            "sys.exit(pytest.main(['-q', '-rs', '-n', '0', '-p', 'no:cacheprovider', 'tests/test_crosscheck.py']))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=__file__.rsplit("/tests/", 1)[0])
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: the whole module skipped
    assert "SKIPPED" in done.stdout and "PyTorch is not installed" in done.stdout
    assert "pip install torch==2.13.0" in done.stdout


def test_rel_error_accepts_numpy_scalars_such_as_a_loss():
    assert rel_error(np.float64(2.0), np.sum(np.ones(2))) == 0.0
    assert rel_error(np.float64(1.0), np.float64(3.0)) == pytest.approx(2.0 / 3.0)
