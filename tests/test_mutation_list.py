"""The mutant list stays usable: every mutant names a real file and real tests, and its snippet
still occurs exactly once in the code. (Running the mutants is ``python mutation/run.py``,
minutes, docs/mutation.md; this file only keeps the list from going stale, in milliseconds.)

A failure here after an edit means the edited line carried a mutant: re-read the line and
update that mutant's ``original`` and ``replacement`` in mutation/mutants.py (or delete the
mutant if the code it guarded is gone).
"""
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(f"_mutation_{name}", ROOT / "mutation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mutants = load("mutants")
MUTANTS = mutants.MUTANTS


def test_the_list_covers_every_area_it_promises():
    assert len(MUTANTS) >= 60
    assert len({m.id for m in MUTANTS}) == len(MUTANTS)
    areas = {m.area for m in MUTANTS}
    assert {"functional", "fast", "optim", "checks", "gradcheck", "nn/lora", "nn/module",
            "nn/transformer", "adapters"} <= areas
    files = {m.file for m in MUTANTS}
    for f in ("linear", "lora", "activations", "layernorm", "attention", "embedding", "losses", "optim"):
        assert f"minilora/functional/{f}.py" in files, f
    for f in ("files", "fingerprint", "combine", "named"):
        assert f"minilora/adapters/{f}.py" in files, f


@pytest.mark.parametrize("m", MUTANTS, ids=[m.id for m in MUTANTS])
def test_mutant_still_applies(m):
    source = (ROOT / m.file).read_text(encoding="utf-8")
    assert source.count(m.original) == 1, (
        f"{m.id}: its snippet occurs {source.count(m.original)} times in {m.file}, expected once "
        f"(stale: update it in mutation/mutants.py): {m.original!r}")
    assert m.replacement != m.original and m.description
    if m.equivalent is None:
        assert m.tests, m.id
        for t in m.tests:
            assert (ROOT / t.split("::")[0]).is_file(), f"{m.id}: no test file {t}"


def test_the_runner_finds_no_problem_and_selects_by_id_file_and_area():
    run = load("run")
    assert run.problems(ROOT, MUTANTS, []) == []
    assert [m.id for m in run.select(["relu-backward-kink"])] == ["relu-backward-kink"]
    assert {m.area for m in run.select(["adapters"])} == {"adapters"}
    assert {m.file for m in run.select(["minilora/fast/*"])} <= {m.file for m in MUTANTS if m.area == "fast"}
    # an --exclude-tests glob that removes every test of a mutant is a problem, not a silent pass
    only = run.select(["relu-backward-kink"])
    assert run.problems(ROOT, only, ["tests/*"]) == ["relu-backward-kink: no test files left to run"]
