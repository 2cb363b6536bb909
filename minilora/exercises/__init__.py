"""Graded exercises, cs231n style: write a backward by hand, and a grader checks it.

    minilora exercise list                      the exercises, one line each
    minilora exercise get NAME [--dir DIR]      write the skeleton DIR/NAME.py (never over your work)
    minilora exercise grade DIR/NAME.py         finite differences in float64, a verdict per gradient

Each skeleton holds a complete forward and a backward to write (``raise NotImplementedError``).
The grader (``grader.py``) compares the learner's gradients with central differences of
minilora's own forward on a few small cases, names the classic mistake when the answer matches
one (``specs/``), and refuses submissions that import the reference (``guard.py``). The
solutions are in ``solutions/``; a skeleton is its solution with the solution block cut out.
docs/exercises.md is the guide for learners and teachers.
"""
from __future__ import annotations

import importlib
import pathlib
import re

from .specs import NAMES

SOLUTIONS = pathlib.Path(__file__).parent / "solutions"

# A solution block: "# --- solution: WHAT ---" ... "# --- end of solution ---", indented like the body.
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)# --- solution: (?P<what>.*?) ---\n.*?^(?P=indent)# --- end of solution ---\n",
                    re.MULTILINE | re.DOTALL)


def spec(name: str):
    """The grader's spec module for exercise ``name`` (cases, mistakes, reference forward)."""
    if name not in NAMES:
        raise KeyError(f"unknown exercise {name!r}; the exercises are {', '.join(NAMES)}")
    return importlib.import_module(f"minilora.exercises.specs.{name}")


def solution_source(name: str) -> str:
    """The source of the solution file (the skeleton with its backward written)."""
    spec(name)  # the name check
    return (SOLUTIONS / f"{name}.py").read_text(encoding="utf-8")


def skeleton_source(name: str) -> str:
    """What ``minilora exercise get NAME`` writes: the solution file, solution block cut out."""
    spec_module = spec(name)

    def todo(m):
        ind = m.group("indent")
        return (f"{ind}# TODO: {m.group('what')}. Then delete the raise below.\n"
                f"{ind}raise NotImplementedError(\"{spec_module.BACKWARD} is not written yet\")\n")

    source, n = _BLOCK.subn(todo, solution_source(name))
    if n != 1:  # pragma: no cover - a solution file without its block
        raise ValueError(f"solutions/{name}.py has {n} solution blocks, expected 1")
    return source


def write_skeleton(name: str, directory=".", force: bool = False) -> pathlib.Path:
    """Write the skeleton of ``name`` to ``directory/NAME.py`` and return the path.

    Raises FileExistsError if the file exists and ``force`` is False: it may hold the learner's work.
    """
    source = skeleton_source(name)
    path = pathlib.Path(directory) / f"{name}.py"
    if path.exists() and not force:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path
