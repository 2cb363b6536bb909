"""The solutions: each exercise's file with its backward written, the teacher's copy.

``minilora exercise get NAME`` writes the same file with the backward's solution block (between
``# --- solution`` and ``# --- end of solution ---``) replaced by a TODO and
``raise NotImplementedError``. Each file imports numpy only — never minilora — so its source is
itself a valid submission (the tests grade it).
"""
