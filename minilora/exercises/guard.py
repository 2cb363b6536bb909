"""The two guards that keep an exercise from being solved with minilora's own backward.

1. ``check_source``: before a submission is imported, its syntax tree is read. An ``import`` of
   minilora (any part of it: the reference is in ``minilora.functional``, ``minilora.fast``,
   ``minilora.nn``, the solutions in ``minilora.exercises.solutions``), of an autodiff library
   (torch, jax, …) or of the import machinery (importlib, builtins), and any use of
   ``__import__``, ``exec`` or ``eval``, is refused with the line and the reason.

2. ``references_blocked``: while a submission is imported and run, every reference backward
   (and the finite-difference checker, the solutions and the grader's mistake catalogue) raises
   instead of computing. This stops the routes a syntax check cannot see —
   ``sys.modules["minilora.functional.lora"].lora_backward``, a function captured at import
   time, ``minilora.fast.PAIRS`` — because it is the function objects themselves that are
   switched off (their code is swapped, then restored), not the names that point at them.

They keep honest shortcuts out; they are not a sandbox. A determined learner can still write
finite differences of their own forward. The teacher reads the code.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import sys
import types
from typing import NamedTuple

# Module-name prefixes a submission may not import, each with the reason the grader prints.
FORBIDDEN_MODULES = {
    "minilora.functional": "it holds minilora's reference backward",
    "minilora.fast": "it holds minilora's fast backward",
    "minilora.nn": "its layers run minilora's reference backward",
    "minilora.exercises": "it holds the solutions and the grader",
    "minilora": "it is the library the exercise re-derives; an exercise imports numpy only",
    "torch": "an autodiff library would compute the gradient for you",
    "jax": "an autodiff library would compute the gradient for you",
    "tensorflow": "an autodiff library would compute the gradient for you",
    "autograd": "an autodiff library would compute the gradient for you",
    "importlib": "imports made at run time are not allowed in an exercise",
    "builtins": "imports made at run time are not allowed in an exercise",
}
FORBIDDEN_NAMES = {  # names a submission may not use at all
    "__import__": "imports made at run time are not allowed in an exercise",
    "exec": "running code built from strings is not allowed in an exercise",
    "eval": "running code built from strings is not allowed in an exercise",
}
AUTODIFF = ("torch", "jax", "tensorflow", "autograd")  # checked in sys.modules after a run too

# The functions switched off while a submission runs: (module, function names); every
# module-level function of the solutions and the specs is added by ``blocked_functions``.
REFERENCE_BACKWARDS = [
    ("minilora.functional.lora", ("lora_backward",)),
    ("minilora.functional.linear", ("linear_backward",)),
    ("minilora.functional.layernorm", ("layernorm_backward", "affine_grads")),
    ("minilora.functional.losses", ("softmax_cross_entropy_backward",)),
    ("minilora.functional.attention", ("attention_backward",)),
    ("minilora.fast.linear", ("lora_backward",)),
    ("minilora.fast.layernorm", ("layernorm_backward",)),
    ("minilora.fast.attention", ("attention_backward", "_softmax_backward_rows")),
    ("minilora.gradcheck", ("numerical_gradient", "check_pair", "check_model")),
]
BLOCKED_MARK = "minilora exercise grader: this minilora function is switched off during grading"


class Refusal(NamedTuple):
    line: int  # where, in the submission
    what: str  # the offending import or name, as written
    why: str  # the reason, in words

    def __str__(self) -> str:
        return f"line {self.line}: {self.what} is not allowed in an exercise: {self.why}"


def _forbidden_module(name: str):
    """The reason ``name`` may not be imported, or None."""
    for prefix, why in FORBIDDEN_MODULES.items():  # most specific first: dicts keep order
        if name == prefix or name.startswith(prefix + "."):
            return why
    return None


def check_source(source: str, filename: str = "<exercise>") -> list:
    """The forbidden imports and names in ``source``, as ``Refusal``s (empty: acceptable).

    Raises SyntaxError when ``source`` is not Python.
    """
    tree = ast.parse(source, filename)
    refusals = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                why = _forbidden_module(alias.name)
                if why:
                    refusals.append(Refusal(node.lineno, f"`import {alias.name}`", why))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                refusals.append(Refusal(node.lineno, "a relative import",
                                        "an exercise file stands alone and imports numpy only"))
                continue
            for alias in node.names:
                why = _forbidden_module(node.module) or _forbidden_module(f"{node.module}.{alias.name}")
                if why:
                    refusals.append(Refusal(node.lineno, f"`from {node.module} import {alias.name}`", why))
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            refusals.append(Refusal(node.lineno, f"`{node.id}`", FORBIDDEN_NAMES[node.id]))
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            refusals.append(Refusal(node.lineno, f"`.{node.attr}`", FORBIDDEN_NAMES[node.attr]))
    return sorted(refusals, key=lambda r: r.line)


def blocked_functions() -> list:
    """Every function ``references_blocked`` switches off, as (qualified name, function)."""
    from . import specs

    targets = [(module, names) for module, names in REFERENCE_BACKWARDS]
    for name in specs.NAMES:
        for package in ("minilora.exercises.solutions", "minilora.exercises.specs"):
            module = importlib.import_module(f"{package}.{name}")
            targets.append((module.__name__, tuple(
                k for k, f in vars(module).items()
                if isinstance(f, types.FunctionType) and f.__module__ == module.__name__)))
    found = []
    for module_name, names in targets:
        module = importlib.import_module(module_name)
        for n in names:
            found.append((f"{module_name}.{n}", getattr(module, n)))
    return found


def _refuse(*args, **kwargs):
    # The body every blocked function runs while a submission is graded. It uses only a
    # builtin, because it runs with the blocked function's globals.
    raise RuntimeError("minilora exercise grader: this minilora function is switched off during grading")


@contextlib.contextmanager
def references_blocked():
    """Inside the block, every function of ``blocked_functions()`` raises RuntimeError
    (``BLOCKED_MARK``) wherever it is reached from; on exit each gets its own code back.

    The swapped code keeps the function's name, so a traceback's last frame (and
    ``blocked_name``) says which reference was called.
    """
    saved = []  # local, not a module global: (function, its own code)
    try:
        for qualname, f in blocked_functions():
            if f.__closure__ is not None:  # pragma: no cover - none of the targets has one
                raise TypeError(f"references_blocked: {qualname} is a closure; it cannot be switched off")
            saved.append((f, f.__code__))
            f.__code__ = _refuse.__code__.replace(co_name=f.__name__, co_qualname=f.__qualname__)
        yield
    finally:
        for f, code in saved:
            f.__code__ = code


def blocked_name(exc: BaseException):
    """The qualified name of the blocked minilora function ``exc`` came from, or None."""
    while exc is not None:
        if isinstance(exc, RuntimeError) and str(exc) == BLOCKED_MARK:
            tb = exc.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            return f"{tb.tb_frame.f_globals.get('__name__', '?')}.{tb.tb_frame.f_code.co_name}"
        exc = exc.__cause__ or exc.__context__
    return None


def new_autodiff_modules(before) -> list:
    """The autodiff libraries in ``sys.modules`` now that were not in ``before`` (a set)."""
    return [m for m in AUTODIFF if m in sys.modules and m not in before]
