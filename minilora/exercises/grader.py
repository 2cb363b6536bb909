"""The grader: a learner's backward against finite differences, a verdict and a hint per gradient.

For each case of the exercise (``specs/NAME.py``), in float64:

1. the truth: central differences (``minilora.gradcheck.numerical_gradient``) of
   ``s = Σ forward(inputs) ⊙ dout``, with minilora's own forward — computed before any of the
   learner's code runs;
2. the known wrong answers: each classic mistake of the catalogue, computed from the inputs;
3. the learner's answer: their file is read (``guard.check_source``), imported and run — their
   forward, then their backward on its cache — with every reference backward switched off
   (``guard.references_blocked``); their forward must give minilora's output.

A gradient passes when its relative error (``gradcheck.rel_error``) is below ``TOLERANCE`` in
every case. A failing one gets the hint of the first mistake it equals (relative error below
``MATCH``) in every case where it fails, or else a pointer to the derivation in the docs.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import pathlib
import sys
import traceback
from typing import NamedTuple

import numpy as np

from .. import gradcheck
from . import guard, spec as get_spec
from .specs import NAMES

TOLERANCE = 1e-7  # a correct backward gives ~1e-9 or less here; a wrong term gives ~1e-2 to 2
MATCH = 1e-6  # this close to a known wrong answer: that is the mistake
FORWARD_TOLERANCE = 1e-10  # the learner's forward must still be minilora's (up to rounding)


class Prepared(NamedTuple):
    """One case, worked out before the learner's code runs."""
    label: str
    inputs: dict  # the forward's keyword arguments (never handed to the learner: copies are)
    dout: object  # the upstream gradient
    out: np.ndarray  # minilora's forward output
    truth: dict  # gradient name -> central differences (float64, the array's shape)
    wrong: list  # per mistake of the catalogue: {gradient name: its wrong gradient}


class Verdict(NamedTuple):
    grad: str  # "x", "A", "gamma", …
    status: str  # "ok", "WRONG", "missing"
    rel_error: float  # the worst over the cases (nan when there is no comparable answer)
    detail: str  # what is printed after the status
    hint: str  # "" when ok


class Report(NamedTuple):
    exercise: str  # "" when the file could not be matched to an exercise
    lines: list  # what ``minilora exercise grade`` prints
    verdicts: list  # one Verdict per graded gradient; empty when grading stopped before them

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.status == "ok" for v in self.verdicts)

    @property
    def status(self) -> int:
        """The command's exit status: 0 when every gradient passes, 1 otherwise."""
        return 0 if self.passed else 1

    def text(self) -> str:
        return "\n".join(self.lines)


class SubmissionError(Exception):
    """The submission could not be graded; the message says why, in the learner's terms.
    ``status`` is what each gradient's line says ("not implemented", "not graded")."""

    def __init__(self, message: str, status: str = "not graded"):
        super().__init__(message)
        self.status = status


def dname(grad: str) -> str:
    """The printed name of a gradient: "x" -> "dx", "gamma" -> "dgamma"."""
    return "d" + grad


# ----------------------------------------------------------------------------- the truth


def _copy(value):
    return value.copy() if isinstance(value, np.ndarray) else value


def prepare(spec) -> list:
    """Every case of ``spec``: minilora's output, the finite-difference truth, the wrong answers."""
    prepared = []
    for case in spec.cases():
        work = {k: _copy(v) for k, v in case.inputs.items()}  # perturbed in place, entry by entry
        out = np.asarray(spec.reference_forward(**work)[0])

        def s():
            return np.sum(spec.reference_forward(**work)[0] * case.dout)

        truth = {g: gradcheck.numerical_gradient(s, work[g]) for g in spec.GRADS}
        wrong = [m.wrong({k: _copy(v) for k, v in case.inputs.items()}, _copy(case.dout)) for m in spec.MISTAKES]
        prepared.append(Prepared(case.label, case.inputs, case.dout, out, truth, wrong))
    return prepared


# ----------------------------------------------------------------------------- judging


def _close(answer, target) -> bool:
    return answer.shape == np.shape(target) and gradcheck.rel_error(answer, target) < MATCH


def _sci(e: float) -> str:
    """1e-07 -> "1e-7"."""
    return f"{e:.0e}".replace("e-0", "e-")


def _fmt(e: float) -> str:
    if not math.isfinite(e):
        return "nan" if math.isnan(e) else "inf"
    return f"{e:.2g}" if e >= 0.01 else f"{e:.1e}"


def _cases(indices, n) -> str:
    """" in cases 2, 3" when only some of the n cases fail, else ""."""
    if len(indices) == n:
        return ""
    return f" in case{'s' if len(indices) > 1 else ''} {', '.join(str(i + 1) for i in indices)}"


def judge(spec, prepared: list, answers: list) -> list:
    """One Verdict per gradient of ``spec.GRADS``.

    ``answers``: per case, {gradient name: the learner's array, or a string saying why there is
    none}. Pure: no learner code runs here.
    """
    verdicts = []
    n = len(prepared)
    for g in spec.GRADS:
        missing = [a[g] for a in answers if isinstance(a[g], str)]
        if missing:
            verdicts.append(Verdict(g, "missing", math.nan, missing[0], ""))
            continue
        errors, failing, shape_problem, not_finite = [], [], None, False
        for i, (p, a) in enumerate(zip(prepared, answers)):
            truth = p.truth[g]
            if a[g].shape != truth.shape:
                failing.append(i)
                shape_problem = shape_problem or f"shape {a[g].shape}, expected {truth.shape}"
                continue
            e = gradcheck.rel_error(a[g], truth)
            not_finite = not_finite or not np.all(np.isfinite(a[g]))
            errors.append(e)
            if not e <= TOLERANCE:  # a nan fails too
                failing.append(i)
        worst = max(errors, default=math.nan)
        if any(math.isnan(e) for e in errors):
            worst = math.nan
        if not failing:
            verdicts.append(Verdict(g, "ok", worst, f"rel. error {_fmt(worst)}", ""))
            continue
        where = _cases(failing, n)
        if shape_problem:
            detail = f"{shape_problem}{where}"
        else:
            detail = f"rel. error {_fmt(worst)}, expected < {_sci(TOLERANCE)}{where}"
        verdicts.append(Verdict(g, "WRONG", worst, detail, _hint(spec, prepared, answers, g, failing,
                                                                  shape_problem, not_finite)))
    return verdicts


def _hint(spec, prepared, answers, g, failing, shape_problem, not_finite) -> str:
    """The first catalogued mistake the answer equals in every failing case, or a pointer."""
    for k, mistake in enumerate(spec.MISTAKES):
        if all(g in prepared[i].wrong[k] and _close(answers[i][g], prepared[i].wrong[k][g]) for i in failing):
            return mistake.hint
    if not_finite:
        return f"{dname(g)} has nan or inf entries: look for a division by zero or an overflow"
    if shape_problem:
        return f"{dname(g)} must have the shape of {g}"
    return (f"it matches none of the classic mistakes the grader knows; re-derive {dname(g)} from the "
            f"forward, one term at a time ({spec.DOCS})")


def verdict_lines(verdicts) -> list:
    width = max(len(dname(v.grad)) for v in verdicts)
    lines = []
    for v in verdicts:
        line = f"{dname(v.grad):<{width}}  {v.status:<5}  {v.detail}"
        lines.append(f"{line}; hint: {v.hint}" if v.hint else line)
    return lines


# ----------------------------------------------------------------------------- the learner's code


def _where(exc: BaseException, path: pathlib.Path, code: bool = True) -> str:
    """" at NAME.py, line 12, in f: the line" for the learner's last frame in the traceback
    (only the learner's own frames are shown, never minilora's or numpy's)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if pathlib.Path(f.filename) == path]
    if not frames:
        return ""
    f = frames[-1]
    line = (f.line or "").strip()
    return f" at {path.name}, line {f.lineno}" + (f", in {f.name}: {line}" if code and line else "")


def _explain(exc: BaseException, path: pathlib.Path, doing: str, function: str) -> SubmissionError:
    """A SubmissionError for an exception raised by the learner's code while ``doing``."""
    blocked = guard.blocked_name(exc)
    if blocked is not None:
        return SubmissionError(
            f"refused: {function} called minilora's own {blocked}{_where(exc, path)} — the exercise "
            f"is to write the backward yourself, with numpy only", "refused")
    if isinstance(exc, NotImplementedError):
        return SubmissionError(
            f"{function} is not implemented yet (it raises NotImplementedError{_where(exc, path, code=False)}): "
            f"write it, delete the raise, and grade again", "not implemented")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return SubmissionError(f"{doing} raised {type(exc).__name__}: {message}{_where(exc, path)}")


def load(path: pathlib.Path, spec, source: str):
    """Import the learner's file as a fresh module (the caller has the references blocked)."""
    module_name = f"_minilora_exercise_{spec.NAME}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # NamedTuple and dataclass look their module up here
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _explain(exc, path, f"importing {path.name}", path.name) from None
    finally:
        sys.modules.pop(module_name, None)
    return module


def check_functions(module, spec, path: pathlib.Path) -> None:
    """The submission defines the exercise's forward and backward."""
    for fn in (spec.FORWARD, spec.BACKWARD):
        if not callable(getattr(module, fn, None)):
            raise SubmissionError(f"{path.name} defines no function {fn}: the exercise needs "
                                  f"{spec.FORWARD} and {spec.BACKWARD} (start again from "
                                  f"`minilora exercise get {spec.NAME}`)")


def check_no_autodiff(before: set, path: pathlib.Path) -> None:
    """No autodiff library was imported since ``before`` (a snapshot of sys.modules' names)."""
    autodiff = guard.new_autodiff_modules(before)
    if autodiff:
        raise SubmissionError(f"refused: {path.name} imported {', '.join(autodiff)} (indirectly): "
                              f"an autodiff library would compute the gradient for you", "refused")


def _as_array(value, what: str):
    """The learner's gradient as a float64 NumPy array, or a string saying why it is not one."""
    if value is None:
        return f"{what} is None"
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return f"{what} is not an array of numbers ({type(value).__name__}: {exc})"
    return a


def run(module, spec, prepared, path: pathlib.Path) -> tuple:
    """The learner's answers (one dict per case, as ``judge`` takes them) and notes to print."""
    forward, backward = getattr(module, spec.FORWARD), getattr(module, spec.BACKWARD)
    answers, notes = [], []
    for i, p in enumerate(prepared):
        case = f"case {i + 1} ({p.label})"
        try:
            out, cache = forward(**{k: _copy(v) for k, v in p.inputs.items()})
        except Exception as exc:
            raise _explain(exc, path, f"{spec.FORWARD} in {case}", spec.FORWARD) from None
        out = np.asarray(out, dtype=np.float64)
        if out.shape != p.out.shape or not gradcheck.rel_error(out, p.out) < FORWARD_TOLERANCE:
            got = f"shape {out.shape}" if out.shape != p.out.shape else \
                f"rel. error {_fmt(gradcheck.rel_error(out, p.out))} from minilora's"
            raise SubmissionError(f"{spec.FORWARD} no longer computes the exercise's forward ({got} "
                                  f"in {case}): the exercise is the backward — restore the forward "
                                  f"from `minilora exercise get {spec.NAME} --dir NEW_DIR`")
        try:
            result = backward(_copy(p.dout), cache)
        except Exception as exc:
            raise _explain(exc, path, f"{spec.BACKWARD} in {case}", spec.BACKWARD) from None
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[1], dict)):
            first = "None" if spec.DX is None else dname(spec.DX)
            raise SubmissionError(f"{spec.BACKWARD} must return a pair ({first}, grads) with grads "
                                  f"a dict, got {type(result).__name__}")
        dx, grads = result
        answer = {}
        for g in spec.GRADS:
            if g == spec.DX:
                answer[g] = _as_array(dx, f"{dname(g)} (the first value returned)")
            elif g not in grads:
                answer[g] = f"grads has no key {g!r} (it has {sorted(map(str, grads)) or 'none'})"
            else:
                answer[g] = _as_array(grads[g], f"grads[{g!r}]")
        extra = sorted(str(k) for k in grads if k not in spec.GRADS)
        if extra and i == 0:
            notes.append(f"note: grads also has {', '.join(map(repr, extra))}, not graded"
                         + (" (W is frozen: LoRA returns no dW)" if "W" in extra else ""))
        answers.append(answer)
    return answers, notes


# ----------------------------------------------------------------------------- the whole grading


def exercise_of(source: str):
    """The value of the file's ``EXERCISE = "..."`` line, or None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "EXERCISE" and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def grade(path, name: str | None = None) -> Report:
    """Grade the learner's file ``path`` (exercise ``name``, else the file's ``EXERCISE`` line,
    else its file name). Never raises for a bad submission: the Report says what went wrong."""
    path = pathlib.Path(path).resolve()
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Report("", [f"cannot read {path}: {exc.strerror or exc}"], [])
    declared = exercise_of(source)
    if name is not None and declared is not None and declared != name:
        return Report("", [f"{path.name} says EXERCISE = {declared!r}, not {name!r}"], [])
    name = name or declared or path.stem
    if name not in NAMES:
        return Report("", [f"cannot tell which exercise {path.name} is: {name!r} is not one of "
                           f"{', '.join(NAMES)} (keep the line EXERCISE = \"...\" that "
                           f"`minilora exercise get` wrote)"], [])
    spec = get_spec(name)
    head = [f"grading {path.name}: exercise {name}, {', '.join(dname(g) for g in spec.GRADS)} "
            f"(float64 finite differences; pass: rel. error < {_sci(TOLERANCE)} in every case)"]
    try:
        refusals = guard.check_source(source, str(path))
    except SyntaxError as exc:
        return Report(name, head + [f"{path.name} is not valid Python: line {exc.lineno}: {exc.msg}"], [])
    if refusals:
        return Report(name, head + [f"refused: {path.name}, {r}" for r in refusals], [])

    prepared = prepare(spec)  # the truth, before any learner code runs
    head += [f"  case {i + 1}  {p.label}" for i, p in enumerate(prepared)]
    before = set(sys.modules)
    try:
        with guard.references_blocked():
            module = load(path, spec, source)
            check_no_autodiff(before, path)
            check_functions(module, spec, path)
            answers, notes = run(module, spec, prepared, path)
            check_no_autodiff(before, path)
    except SubmissionError as exc:
        width = max(len(dname(g)) for g in spec.GRADS)
        return Report(name, head + [str(exc)] + [f"{dname(g):<{width}}  {exc.status}" for g in spec.GRADS], [])
    verdicts = judge(spec, prepared, answers)
    passed = sum(v.status == "ok" for v in verdicts)
    n = len(verdicts)
    summary = f"all {n} gradients correct" if passed == n > 1 else f"{passed} of {n} gradient{'s' * (n > 1)} correct"
    return Report(name, head + notes + verdict_lines(verdicts) + [summary], verdicts)
