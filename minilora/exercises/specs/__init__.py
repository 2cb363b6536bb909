"""What the grader checks for each exercise: its cases and its catalogue of classic mistakes.

One module per exercise, each with the same names::

    NAME, SUMMARY         the exercise's name and its one line in ``minilora exercise list``
    FORWARD, BACKWARD     the names of the two functions a submission defines
    DX                    the input whose gradient the backward returns first (None: attention)
    GRADS                 the gradients graded, in the order they are printed
    DOCS                  where the derivation is written up (the generic hint points there)
    reference_forward     minilora's own forward: finite differences of it are the truth
    cases()               the graded cases: a few small float64 inputs with non-trivial settings
    MISTAKES              classic wrong answers, each a function of (inputs, dout) that returns
                          the wrong gradients it produces; a learner's gradient that equals one
                          (relative error < 1e-6) gets that mistake's hint

The mistakes are written out one by one, each with its wrong line visible, so that a teacher can
read the catalogue and add to it. These modules are grader-side: a submission may not import them,
and the grader blocks their functions while a submission runs (``minilora.exercises.guard``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple


class Case(NamedTuple):
    label: str  # what is special about it; the grader prints it
    inputs: dict  # the forward's keyword arguments: float64 NumPy arrays and numbers
    dout: object  # the upstream gradient: an array of the output's shape (a float for a loss)


class Mistake(NamedTuple):
    name: str  # a few words, for the docs' list and the tests
    hint: str  # printed after "hint: " when the learner's gradient equals this one
    wrong: Callable  # (inputs, dout) -> {gradient name: the wrong gradient it gives}


NAMES = ("lora_linear", "layernorm", "softmax_cross_entropy", "causal_attention")
