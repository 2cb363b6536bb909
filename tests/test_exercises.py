"""The graded exercises (minilora/exercises, docs/exercises.md): the grader passes every solution,
fails planted wrong answers with the right hint, refuses the reference by import and by any
indirect route, and the command line's ``exercise list | get | grade`` keeps its promises.

Every submission here is a file written into tmp_path, as a learner's would be: the solution
file's source (numpy only, no minilora), with one line changed for a planted mistake.
"""
import ast
import pathlib
import re

import numpy as np
import pytest

from minilora import functional as F
from minilora import gradcheck
from minilora.cli import main
from minilora.exercises import grader, guard, skeleton_source, solution_source, spec, write_skeleton
from minilora.exercises.specs import NAMES

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "exercises.md").read_text(encoding="utf-8")

REFERENCE_BACKWARD = {  # the truth the solutions are held to, besides finite differences
    "lora_linear": F.lora_backward,
    "layernorm": F.layernorm_backward,
    "softmax_cross_entropy": F.softmax_cross_entropy_backward,
    "causal_attention": F.attention_backward,
}


def submit(tmp_path, name, *edits, filename=None) -> pathlib.Path:
    """Write the solution of ``name`` into tmp_path, with each (old, new) edit applied once."""
    source = solution_source(name)
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    path = tmp_path / (filename or f"{name}.py")
    path.write_text(source, encoding="utf-8")
    return path


def grade(path, name=None) -> grader.Report:
    return grader.grade(path, name)


def verdict(report, grad) -> grader.Verdict:
    return next(v for v in report.verdicts if v.grad == grad)


def exit_status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


# ----------------------------------------------------------------------------- solutions and skeletons


@pytest.mark.parametrize("name", NAMES)
def test_the_solution_passes_every_gradient(name, tmp_path):
    report = grade(submit(tmp_path, name))
    assert report.passed and report.status == 0, report.text()
    assert [v.grad for v in report.verdicts] == list(spec(name).GRADS)
    for v in report.verdicts:  # a correct backward is ~1e-9: far inside the pass mark
        assert v.rel_error < grader.TOLERANCE / 10, (v, report.text())
        assert re.search(rf"^d{v.grad}\s+ok\s+rel\. error \d\.\de-\d\d$", report.text(), re.M), report.text()


@pytest.mark.parametrize("name", NAMES)
def test_solutions_and_skeletons_import_numpy_only(name):
    for source in (solution_source(name), skeleton_source(name)):
        assert guard.check_source(source) == []
        imported = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
        assert imported <= {"numpy", "math", "typing"}, imported


@pytest.mark.parametrize("name", NAMES)
def test_solution_equals_the_reference_and_the_truth_is_finite_differences(name):
    """The solution's backward equals minilora's reference on every graded case (1e-12), and the
    grader's truth (finite differences) equals both (well inside the pass mark)."""
    s = spec(name)
    ns = {}
    exec(compile(solution_source(name), f"solutions/{name}.py", "exec"), ns)
    for p in grader.prepare(s):
        out, cache = ns[s.FORWARD](**p.inputs)
        np.testing.assert_allclose(out, p.out, rtol=1e-12, atol=0)
        dx, grads = ns[s.BACKWARD](p.dout, cache)
        ref_dx, ref_grads = REFERENCE_BACKWARD[name](p.dout, s.reference_forward(**p.inputs)[1])
        for g in s.GRADS:
            mine, ref = (dx, ref_dx) if g == s.DX else (grads[g], ref_grads[g])
            assert gradcheck.rel_error(mine, ref) < 1e-12, (name, g)
            assert gradcheck.rel_error(ref, p.truth[g]) < grader.TOLERANCE / 10, (name, g)


@pytest.mark.parametrize("name", NAMES)
def test_the_skeleton_as_shipped_is_not_implemented_and_does_not_crash(name, tmp_path):
    path = write_skeleton(name, tmp_path)
    text = path.read_text(encoding="utf-8")
    s = spec(name)
    assert "raise NotImplementedError" in text and "# TODO" in text and "solution" not in text
    assert f'EXERCISE = "{name}"' in text and f"def {s.FORWARD}(" in text and f"def {s.BACKWARD}(" in text
    report = grade(path)
    assert report.status == 1 and not report.verdicts
    out = report.text()
    assert f"{s.BACKWARD} is not implemented yet (it raises NotImplementedError at {name}.py, line" in out
    for g in s.GRADS:
        assert re.search(rf"^d{g}\s+not implemented$", out, re.M), out
    assert "Traceback" not in out


@pytest.mark.parametrize("name", NAMES)
def test_the_skeleton_forward_is_the_reference_forward(name, tmp_path):
    s = spec(name)
    ns = {}
    exec(compile(skeleton_source(name), f"{name}.py", "exec"), ns)
    for p in grader.prepare(s):
        assert gradcheck.rel_error(ns[s.FORWARD](**p.inputs)[0], p.out) < 1e-14


# ----------------------------------------------------------------------------- planted mistakes


PLANTED = [  # (exercise, id, (old, new), the wrong gradient, words of its hint)
    ("lora_linear", "missing-scale-in-dB", ("dB = scale * (dout.T @ u)", "dB = dout.T @ u"),
     "B", "the scale s = alpha / r is missing"),
    ("lora_linear", "scale-twice", ("du = scale * (dout @ B)", "du = scale * (dout @ (scale * B))"),
     "A", "the scale s is applied twice"),
    ("lora_linear", "dB-transposed", ("dB = scale * (dout.T @ u)", "dB = scale * (u.T @ dout)"),
     "B", "dB is transposed"),
    ("lora_linear", "mask-forgotten-in-dA", ("dA = du.T @ x_drop", "dA = du.T @ x"),
     "A", "the dropout mask is missing from dA"),
    ("lora_linear", "mask-forgotten-in-dx", ("        dx_lora = dx_lora * mask", "        pass"),
     "x", "the dropout mask is missing from the low-rank part of dx"),
    ("lora_linear", "dx-without-low-rank", ("dx = dout @ W + dx_lora", "dx = dout @ W"),
     "x", "dx is missing the low-rank term"),
    ("lora_linear", "dx-without-frozen", ("dx = dout @ W + dx_lora", "dx = dx_lora"),
     "x", "frozen means no dW, never no backward"),
    ("layernorm", "no-mean-term", ("dxhat - mean_dxhat - xhat", "dxhat - xhat"),
     "x", "dx is missing the − mean_c(dx̂) term"),
    ("layernorm", "no-variance-term", ("dxhat - mean_dxhat - xhat * mean_dxhat_xhat", "dxhat - mean_dxhat"),
     "x", "dx is missing the − x̂ ⊙ mean_c(dx̂ ⊙ x̂) term"),
    ("layernorm", "eps-forgotten", ("dx = rstd * (", "dx = 1 / np.std(xhat / rstd, axis=-1, keepdims=True) * ("),
     "x", "the backward divides by σ, not √(σ² + ε)"),
    ("layernorm", "dgamma-first-axis-only",
     ("dgamma = np.sum(dout2 * xhat2, axis=0)", "dgamma = np.sum(dout * xhat, axis=0)"),
     "gamma", "sum over every leading axis"),
    ("layernorm", "dbeta-averaged", ("dbeta = np.sum(dout2, axis=0)", "dbeta = np.mean(dout2, axis=0)"),
     "beta", "it must be summed"),
    ("layernorm", "dgamma-without-xhat", ("dgamma = np.sum(dout2 * xhat2, axis=0)", "dgamma = np.sum(dout2, axis=0)"),
     "gamma", "dγ is missing the x̂ factor"),
    ("softmax_cross_entropy", "not-divided-by-N", ("* (dloss / N)", "* dloss"),
     "logits", "the gradient is not divided by N"),
    ("softmax_cross_entropy", "one-hot-not-subtracted", ("(probs - onehot)", "probs"),
     "logits", "the one-hot target is not subtracted"),
    ("softmax_cross_entropy", "divided-by-B", ("N = probs.shape[0]", "N = shape[0]"),
     "logits", "divided by the batch size B = logits.shape[0]"),
    ("softmax_cross_entropy", "dloss-ignored", ("* (dloss / N)", "/ N"),
     "logits", "dloss is ignored"),
    ("causal_attention", "dq-without-1/sqrt(hd)", ("dq = (dS @ k) * scale", "dq = dS @ k"),
     "q", "the 1/√hd is missing"),
    ("causal_attention", "dk-with-1/sqrt(hd)-twice",
     ("dk = np.swapaxes(dS, -1, -2) @ qs", "dk = np.swapaxes(dS, -1, -2) @ qs * scale"),
     "k", "the 1/√hd is applied twice"),
    ("causal_attention", "no-rowsum", ("dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))", "dS = P * dP"),
     "q", "the softmax backward is missing − rowsum(dP ⊙ P)"),
    ("causal_attention", "mask-not-applied-to-dS", ("dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))",
                                                    "dS = dP - np.sum(dP * P, axis=-1, keepdims=True)"),
     "k", "dS is not zero above the diagonal"),
    ("causal_attention", "dv-not-transposed", ("dv = np.swapaxes(P, -1, -2) @ dout", "dv = P @ dout"),
     "v", "dv = P dout is missing a transpose"),
]


@pytest.mark.parametrize("name, edit, grad, hint",
                         [pytest.param(n, e, g, h, id=f"{n}:{i}") for n, i, e, g, h in PLANTED])
def test_a_planted_mistake_fails_with_its_hint(name, edit, grad, hint, tmp_path):
    report = grade(submit(tmp_path, name, edit))
    assert report.status == 1 and not report.passed
    v = verdict(report, grad)
    assert v.status == "WRONG" and hint in v.hint, report.text()
    line = next(l for l in report.lines if l.startswith(f"d{grad} "))
    assert re.match(rf"d{grad}\s+WRONG\s+(rel\. error [\d.e+-]+, expected < 1e-7|shape \(.*\), expected \(.*\))"
                    rf".*; hint: ", line), line
    untouched = {"B": ["x", "A"], "gamma": ["x", "beta"], "beta": ["x", "gamma"], "v": ["q", "k"]}.get(grad, [])
    for other in untouched:  # the planted line changes only its own gradient
        assert verdict(report, other).status == "ok", report.text()


def test_a_mistake_in_some_cases_only_says_which(tmp_path):
    report = grade(submit(tmp_path, "lora_linear", ("dA = du.T @ x_drop", "dA = du.T @ x")))
    line = next(l for l in report.lines if l.startswith("dA "))
    assert re.match(r"dA\s+WRONG\s+rel\. error 0\.\d+, expected < 1e-7 in cases 2, 3; "
                    r"hint: the dropout mask", line), line
    assert verdict(report, "x").status == verdict(report, "B").status == "ok"


def test_an_unknown_mistake_gets_the_generic_hint_with_the_docs_section(tmp_path):
    report = grade(submit(tmp_path, "lora_linear", ("dA = du.T @ x_drop", "dA = du.T @ x_drop + 0.1")))
    v = verdict(report, "A")
    assert v.status == "WRONG" and "matches none of the classic mistakes" in v.hint
    assert 'docs/lora.md, section 3 "Backward, derived step by step"' in v.hint


def test_a_small_error_is_still_wrong(tmp_path):
    """1e-6 relative is far above float64 finite-difference noise: it fails (the pass mark is
    1e-7, not the 1e-6 used to recognise mistakes)."""
    edit = ("dB = scale * (dout.T @ u)", "dB = scale * (1 + 1e-6) * (dout.T @ u)")
    report = grade(submit(tmp_path, "lora_linear", edit))
    assert verdict(report, "B").status == "WRONG" and report.status == 1


@pytest.mark.parametrize("name", NAMES)
def test_every_catalogued_mistake_is_recognised_as_itself(name):
    """Each mistake of the catalogue, answered alone (the other gradients correct), fails its
    gradients with its own hint: no two mistakes are confused and none equals the truth."""
    s = spec(name)
    prepared = grader.prepare(s)
    for k, mistake in enumerate(s.MISTAKES):
        answers = [{g: p.wrong[k].get(g, p.truth[g]) for g in s.GRADS} for p in prepared]
        touched = set().union(*(p.wrong[k] for p in prepared))
        assert touched, mistake.name
        for v in grader.judge(s, prepared, answers):
            if v.grad in touched:
                assert v.status == "WRONG" and v.hint == mistake.hint, (mistake.name, v)
            else:
                assert v.status == "ok", (mistake.name, v)


def test_a_hint_needs_the_mistake_in_every_failing_case():
    """An answer that equals a catalogued mistake in case 1 but is something else in the other
    failing cases is not that mistake: it gets the generic hint."""
    s = spec("lora_linear")
    prepared = grader.prepare(s)
    k = [m.name for m in s.MISTAKES].index("missing scale")
    answers = [{g: p.truth[g] for g in s.GRADS} for p in prepared]
    answers[0]["B"] = prepared[0].wrong[k]["B"]
    for a in answers[1:]:
        a["B"] = 2.0 * a["B"]  # wrong, but no catalogued mistake
    v = next(v for v in grader.judge(s, prepared, answers) if v.grad == "B")
    assert v.status == "WRONG" and "matches none of the classic mistakes" in v.hint, v
    answers[1]["B"], answers[2]["B"] = prepared[1].wrong[k]["B"], prepared[2].wrong[k]["B"]
    v = next(v for v in grader.judge(s, prepared, answers) if v.grad == "B")
    assert v.hint == s.MISTAKES[k].hint


def test_the_example_in_the_docs_is_what_the_grader_prints(tmp_path):
    example = DOCS.split("**Grade.**", 1)[1].split("```\n", 2)[1].rstrip("\n")
    report = grade(submit(tmp_path, "lora_linear", ("dA = du.T @ x_drop", "dA = du.T @ x")))
    assert report.text() == example


@pytest.mark.parametrize("name", NAMES)
def test_the_docs_list_every_mistake(name):
    section = DOCS.split(f"### {name}", 1)[1].split("\n### ", 1)[0]
    for mistake in spec(name).MISTAKES:
        assert mistake.name in section, (name, mistake.name)


# ----------------------------------------------------------------------------- the reference is out of reach


@pytest.mark.parametrize("line, named", [
    ("import minilora.functional", "`import minilora.functional`"),
    ("from minilora.functional import lora_backward", "`from minilora.functional import lora_backward`"),
    ("from minilora import functional as F", "`from minilora import functional`"),
    ("import minilora.fast.linear as fl", "`import minilora.fast.linear`"),
    ("from minilora.nn import LoRALinear", "`from minilora.nn import LoRALinear`"),
    ("from minilora.exercises.solutions import lora_linear", "`from minilora.exercises.solutions import lora_linear`"),
    ("import minilora", "`import minilora`"),
    ("import torch", "`import torch`"),
    ("import importlib", "`import importlib`"),
    ("ref = __import__('minilora.functional')", "`__import__`"),
    ("exec('import minilora')", "`exec`"),
])
def test_a_forbidden_import_is_refused_before_the_file_runs(line, named, tmp_path):
    path = submit(tmp_path, "lora_linear", ("import numpy as np\n", f"import numpy as np\n{line}\n"))
    report = grade(path)
    assert report.status == 1 and not report.verdicts
    out = report.text()
    assert f"refused: lora_linear.py, line 19: {named} is not allowed in an exercise" in out, out
    assert "case 1" not in out  # refused before the cases were even worked out


SNEAKY = [  # (code replacing the solution block, the reference it reaches)
    ('import sys\n    return getattr(sys.modules["minilora.functional.lora"], "lora_backward")(dout, cache)',
     "minilora.functional.lora.lora_backward"),
    ('import sys\n    return sys.modules["minilora.fast"].PAIRS["lora"][1][1](dout, cache)',
     "minilora.fast.linear.lora_backward"),
    ('import sys\n    return sys.modules["minilora.exercises.solutions.lora_linear"].lora_backward(dout, cache)',
     "minilora.exercises.solutions.lora_linear.lora_backward"),
    ('import sys\n    gc = sys.modules["minilora.gradcheck"]\n'
     '    return None, {"B": gc.numerical_gradient(lambda: 0.0, cache.B)}',
     "minilora.gradcheck.numerical_gradient"),
]


@pytest.mark.parametrize("code, reached", SNEAKY, ids=[r for _, r in SNEAKY])
def test_an_indirect_route_to_the_reference_is_refused_at_grade_time(code, reached, tmp_path):
    source = solution_source("lora_linear")
    block = source[source.index("    # --- solution"):source.index("    return dx, {")]
    path = tmp_path / "lora_linear.py"
    path.write_text(source.replace(block, f"    {code}\n"), encoding="utf-8")
    assert guard.check_source(path.read_text(encoding="utf-8")) == []  # the syntax check cannot see it
    report = grade(path)
    out = report.text()
    assert report.status == 1 and f"refused: lora_backward called minilora's own {reached}" in out, out
    assert re.search(r"^dA\s+refused$", out, re.M)


def test_a_reference_captured_at_import_time_is_still_switched_off(tmp_path):
    path = submit(tmp_path, "causal_attention",
                  ("import numpy as np\n", 'import numpy as np\nimport sys\n'
                   '_ref = sys.modules["minilora.functional"].attention_backward\n'),
                  ("    return None, {\"q\": dq, \"k\": dk, \"v\": dv}", "    return _ref(dout, cache)"))
    report = grade(path)
    assert "refused: attention_backward called minilora's own minilora.functional.attention.attention_backward" \
        in report.text(), report.text()


def test_an_autodiff_library_imported_indirectly_is_refused(tmp_path, monkeypatch):
    import sys
    path = tmp_path / "softmax_cross_entropy.py"
    path.write_text(solution_source("softmax_cross_entropy") + '\nimport sys\n'
                    'jax = sys.modules["importlib"].import_module("json")\n', encoding="utf-8")
    monkeypatch.setattr(guard, "AUTODIFF", ("json",))  # a stand-in: torch may be loaded already
    monkeypatch.delitem(sys.modules, "json", raising=False)
    report = grade(path)
    assert report.status == 1 and "refused: softmax_cross_entropy.py imported json (indirectly)" in report.text()


def test_the_references_work_again_after_grading(tmp_path):
    g = np.random.default_rng(0)
    x, W = g.standard_normal((3, 4)), g.standard_normal((5, 4))
    A, B = g.standard_normal((2, 4)), g.standard_normal((5, 2))
    h, cache = F.lora_forward(x, W, None, A, B, 2.0)
    before = F.lora_backward(np.ones_like(h), cache)
    grade(submit(tmp_path, "lora_linear", ("dA = du.T @ x_drop", "dA = 1 / 0")))  # raises mid-grade
    grade(tmp_path / "missing.py")
    after = F.lora_backward(np.ones_like(h), cache)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1]["A"], after[1]["A"])
    for qualname, f in guard.blocked_functions():
        assert f.__code__.co_filename != guard._refuse.__code__.co_filename, qualname
        assert f.__closure__ is None, qualname


def test_the_blocked_message_is_the_one_the_grader_recognises():
    assert guard.BLOCKED_MARK in guard._refuse.__code__.co_consts


# ----------------------------------------------------------------------------- a submission that breaks


def test_a_file_that_fails_to_import_gets_its_own_line_not_a_traceback(tmp_path):
    path = submit(tmp_path, "layernorm", ("import numpy as np\n", "import numpy as np\nnp.frobnicate()\n"))
    out = grade(path).text()
    assert ("importing layernorm.py raised AttributeError: module 'numpy' has no attribute 'frobnicate' "
            "at layernorm.py, line 19, in <module>: np.frobnicate()") in out, out
    assert "Traceback" not in out and "grader.py" not in out
    assert re.search(r"^dgamma\s+not graded$", out, re.M)


def test_a_backward_that_raises_names_the_case_and_the_learners_line(tmp_path):
    path = submit(tmp_path, "lora_linear", ("dA = du.T @ x_drop", "dA = du @ x_drop"))
    report = grade(path)
    out = report.text()
    assert report.status == 1
    assert re.search(r"lora_backward in case 1 \(N=4 .*\) raised ValueError: matmul: .* at lora_linear\.py, "
                     r"line \d+, in lora_backward: dA = du @ x_drop", out), out
    assert "Traceback" not in out


def test_syntax_errors_missing_gradients_and_a_changed_forward_are_explained(tmp_path):
    bad = tmp_path / "a"
    bad.mkdir()
    out = grade(submit(bad, "lora_linear", ("dA = du.T @ x_drop", "dA = du.T @@ x_drop"))).text()
    assert "lora_linear.py is not valid Python: line 70: invalid syntax" in out, out

    report = grade(submit(tmp_path, "lora_linear", ('return dx, {"A": dA, "B": dB}', 'return dx, {"A": dA, "W": 0}')))
    assert verdict(report, "B").status == "missing" and report.status == 1
    out = report.text()
    assert re.search(r"^dB\s+missing\s+grads has no key 'B' \(it has \['A', 'W'\]\)$", out, re.M), out
    assert "note: grads also has 'W', not graded (W is frozen: LoRA returns no dW)" in out

    out = grade(submit(tmp_path, "layernorm", ("y = gamma * xhat + beta", "y = xhat + beta"))).text()
    assert "layernorm_forward no longer computes the exercise's forward" in out, out

    out = grade(submit(tmp_path, "layernorm", ('return dx, {"gamma": dgamma, "beta": dbeta}', "return dx"))).text()
    assert "layernorm_backward must return a pair (dx, grads) with grads a dict, got ndarray" in out, out


def test_the_exercise_comes_from_the_file_or_its_name(tmp_path):
    path = submit(tmp_path, "layernorm", filename="my_try.py")
    assert grade(path).passed  # the EXERCISE line says which
    assert "says EXERCISE = 'layernorm', not 'lora_linear'" in grade(path, "lora_linear").text()
    anon = tmp_path / "anon.py"
    anon.write_text(solution_source("layernorm").replace('EXERCISE = "layernorm"', ""), encoding="utf-8")
    assert "cannot tell which exercise anon.py is" in grade(anon).text()
    assert grade(anon, "layernorm").passed


# ----------------------------------------------------------------------------- the command line


def test_get_writes_the_skeleton_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "hw"
    assert exit_status(["exercise", "get", "lora_linear", "--dir", str(d)]) == 0
    path = d / "lora_linear.py"
    assert path.read_text(encoding="utf-8") == skeleton_source("lora_linear")
    assert f"wrote {path}: write lora_backward in it" in capsys.readouterr().out
    path.write_text("my work", encoding="utf-8")
    assert exit_status(["exercise", "get", "lora_linear", "--dir", str(d)]) == 1
    err = capsys.readouterr().err
    assert f"{path} exists already; not overwritten (it may hold your work)" in err and "--force" in err
    assert path.read_text(encoding="utf-8") == "my work"
    with pytest.raises(FileExistsError):
        write_skeleton("lora_linear", d)
    assert exit_status(["exercise", "get", "lora_linear", "--dir", str(d), "--force"]) == 0
    assert path.read_text(encoding="utf-8") == skeleton_source("lora_linear")


def test_get_all_writes_every_skeleton(tmp_path):
    assert exit_status(["exercise", "get", "all", "--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.py" for n in NAMES)


def test_list_names_every_exercise_with_one_line(capsys):
    assert exit_status(["exercise", "list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert re.search(rf"^{name}\s+\S.*: d", out, re.M), out


def test_grade_exit_status_is_0_only_when_every_gradient_passes(tmp_path, capsys):
    submit(tmp_path, "causal_attention")
    assert exit_status(["exercise", "grade", str(tmp_path / "causal_attention.py")]) == 0
    assert exit_status(["exercise", "grade", "causal_attention", "--dir", str(tmp_path)]) == 0
    assert "all 3 gradients correct" in capsys.readouterr().out
    write_skeleton("layernorm", tmp_path)
    assert exit_status(["exercise", "grade", "layernorm", "--dir", str(tmp_path)]) == 1
    submit(tmp_path, "softmax_cross_entropy", ("(probs - onehot)", "probs"))
    assert exit_status(["exercise", "grade", str(tmp_path / "softmax_cross_entropy.py")]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 gradient correct" in out and "hint: the one-hot target is not subtracted" in out


def test_grade_and_get_usage_errors_exit_2(tmp_path, capsys):
    assert exit_status(["exercise", "grade", str(tmp_path / "nothing.py")]) == 2
    assert "argument FILE_OR_NAME: no file" in capsys.readouterr().err
    assert exit_status(["exercise", "get", "backprop"]) == 2
    assert "invalid choice: 'backprop'" in capsys.readouterr().err
    assert exit_status(["exercise"]) == 2
