"""Mutation testing: plant each curated bug (mutation/mutants.py) alone and run the tests that
should catch it.

    .venv/bin/python mutation/run.py                      # every mutant, results.json, the score
    .venv/bin/python mutation/run.py --only adamw --jobs 2
    .venv/bin/python mutation/run.py --check              # only: does every mutant still apply?
    .venv/bin/python mutation/run.py --list

The repository is copied once per job into a temporary directory (the working tree is never
touched). For each mutant the runner replaces ``original`` by ``replacement`` in the copy (a
mutant whose snippet is not found exactly once is stale: the run stops and names it), runs
``pytest -x -q -n 0 -p no:randomly`` (``-n 0``: no xdist workers, the runner has its own
``--jobs``) on the mutant's test files with that copy first on PYTHONPATH, restores the file,
and records

    killed    a test failed (or the tests could not be collected because of the mutant)
    timeout   the tests ran past --timeout: counted as killed (the bug hangs something)
    survived  every listed test passed: a test is missing
    error     pytest itself failed (usage error, no tests collected): fix the mutant's test list

Equivalent mutants (``equivalent="why"``) are checked to apply but neither run nor scored.
Before the mutants, the clean copy runs every test file the selected mutants list (skip with
--no-baseline): a failing baseline would make every mutant look killed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "mutation"))
from mutants import MUTANTS, Mutant  # noqa: E402

# what the copy leaves out: environments, caches, VCS, build output, earlier results
_IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis",
                                 "*.egg-info", "build", "dist", "out", ".ipynb_checkpoints")


def IGNORE(directory, names):
    skip = set(_IGNORE(directory, names))
    if Path(directory) == ROOT / "mutation":  # earlier results
        skip |= {n for n in names if n.startswith("results") and n.endswith(".json")}
    return skip
PYTEST = ["-x", "-q", "-n", "0", "-p", "no:randomly", "-p", "no:cacheprovider", "--hypothesis-seed=0"]


# ----------------------------------------------------------------------------- selection


def select(only: list[str] | None) -> list[Mutant]:
    """The mutants ``only`` names: a pattern equal to an id selects that mutant; otherwise one
    whose id, file or area contains the pattern (matches it, if it is a glob with * ? or [)."""
    if not only:
        return list(MUTANTS)
    ids = {m.id for m in MUTANTS}

    def hit(m, pat):
        if pat in ids:
            return m.id == pat
        fields = (m.id, m.file, m.area)
        if any(c in pat for c in "*?["):
            return any(fnmatch.fnmatchcase(f, pat) for f in fields)
        return any(pat in f for f in fields)

    return [m for m in MUTANTS if any(hit(m, p) for p in only)]


def tests_for(m: Mutant, exclude: list[str]) -> list[str]:
    return [t for t in m.tests if not any(fnmatch.fnmatchcase(t.split("::")[0], p) for p in exclude)]


def problems(root: Path, mutants: list[Mutant], exclude: list[str]) -> list[str]:
    """Everything that makes a mutant unusable: unknown file, a snippet found other than exactly
    once (stale), no change, duplicate id, a missing test file, no test left after --exclude."""
    out, seen = [], set()
    for m in mutants:
        if m.id in seen:
            out.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        path = root / m.file
        if not path.is_file():
            out.append(f"{m.id}: no file {m.file}")
            continue
        n = path.read_text(encoding="utf-8").count(m.original)
        if n != 1:
            out.append(f"{m.id}: stale — its original snippet occurs {n} times in {m.file} "
                       f"(expected once): {m.original!r}")
        if m.original == m.replacement:
            out.append(f"{m.id}: replacement equals the original")
        if not m.equivalent:
            tests = tests_for(m, exclude)
            if not tests:
                out.append(f"{m.id}: no test files left to run")
            for t in tests:
                if not (root / t.split("::")[0]).is_file():
                    out.append(f"{m.id}: no test file {t.split('::')[0]}")
    return out


# ----------------------------------------------------------------------------- running


def make_copy(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)
    return dest


def env_for(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet the mutant's .pyc
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_pytest(copy: Path, tests: list[str], timeout: float, extra=()) -> tuple[str, float, str]:
    """(status, seconds, first failing test or reason) for one pytest run in ``copy``."""
    shutil.rmtree(copy / ".hypothesis", ignore_errors=True)  # no example replay between mutants
    cmd = [sys.executable, "-m", "pytest", *PYTEST, *extra, *tests]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, f"ran past {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    out = done.stdout + done.stderr
    first = next((line.split(" - ")[0] for line in out.splitlines()
                  if line.startswith(("FAILED ", "ERROR "))), "")
    if done.returncode == 0:
        return "survived", seconds, ""
    if done.returncode == 1:
        return "killed", seconds, first
    if done.returncode == 2:  # interrupted: collection failed (an import the mutant broke)
        return "killed", seconds, first or "collection error"
    tail = " | ".join(out.strip().splitlines()[-3:])
    return "error", seconds, f"pytest exit {done.returncode}: {tail}"


def run_mutant(copy: Path, m: Mutant, tests: list[str], timeout: float) -> dict:
    path = copy / m.file
    source = path.read_text(encoding="utf-8")
    if source.count(m.original) != 1:  # checked before, but the copy is the truth
        return result(m, tests, "stale", 0.0, "original snippet not found exactly once")
    try:
        path.write_text(source.replace(m.original, m.replacement), encoding="utf-8")
        status, seconds, why = run_pytest(copy, tests, timeout)
    finally:
        path.write_text(source, encoding="utf-8")
    return result(m, tests, status, seconds, why)


def result(m, tests, status, seconds, why) -> dict:
    return {"id": m.id, "area": m.area, "file": m.file, "description": m.description,
            "status": status, "seconds": round(seconds, 2), "killed_by": why, "tests": tests}


# ----------------------------------------------------------------------------- reporting


def score(results: list[dict]) -> dict:
    def count(rows):
        killed = sum(r["status"] in ("killed", "timeout") for r in rows)
        scored = [r for r in rows if r["status"] in ("killed", "timeout", "survived")]
        return {"killed": killed, "total": len(scored),
                "percent": round(100.0 * killed / len(scored), 1) if scored else 0.0}

    areas = sorted({r["area"] for r in results})
    return {"all": count(results), "per_area": {a: count([r for r in results if r["area"] == a]) for a in areas}}


def table(results: list[dict]) -> str:
    w = max([len(r["id"]) for r in results] + [6])
    lines = [f"{'mutant':<{w}}  {'area':<15} {'status':<8} {'sec':>6}  killed by"]
    for r in results:
        by = r["killed_by"].removeprefix("FAILED ").removeprefix("ERROR ")
        lines.append(f"{r['id']:<{w}}  {r['area']:<15} {r['status']:<8} {r['seconds']:>6.1f}  {by[:70]}")
    return "\n".join(lines)


def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="PATTERN",
                    help="run one mutant (its id), or those whose id, file or area contains "
                         "PATTERN (or matches it as a glob); repeatable")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel, one tree copy each")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant (default 180)")
    ap.add_argument("--exclude-tests", action="append", default=[], metavar="GLOB",
                    help="drop matching test files from every mutant's list (e.g. to score the "
                         "suite without some tests); repeatable")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the results (default mutation/results.json for a run of "
                         "every mutant with every test; a partial run writes only if given)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the clean-tree test run")
    ap.add_argument("--check", action="store_true", help="only check that every mutant applies")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)

    mutants = select(args.only)
    if not mutants:
        print(f"no mutant matches {args.only}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            eq = "  [equivalent]" if m.equivalent else ""
            print(f"{m.id:<42} {m.area:<15} {m.description}{eq}")
        print(f"{len(mutants)} mutants ({sum(bool(m.equivalent) for m in mutants)} equivalent)")
        return 0
    bad = problems(ROOT, mutants, args.exclude_tests)
    if bad:
        print("mutation/run.py: unusable mutants (update mutation/mutants.py):", file=sys.stderr)
        for line in bad:
            print("  " + line, file=sys.stderr)
        return 2
    live = [m for m in mutants if not m.equivalent]
    if args.check:
        print(f"all {len(mutants)} mutants apply ({len(live)} to run, {len(mutants) - len(live)} equivalent)")
        return 0

    start = time.perf_counter()
    jobs = max(1, min(args.jobs, len(live)))
    with tempfile.TemporaryDirectory(prefix="minilora-mutation-") as tmp:
        copies = [make_copy(Path(tmp) / f"tree{i}") for i in range(jobs)]
        if problems(copies[0], mutants, args.exclude_tests):  # the tree changed while copying
            print("mutation/run.py: the tree changed under the copy; run again", file=sys.stderr)
            return 2
        if not args.no_baseline:
            files = sorted({t for m in live for t in tests_for(m, args.exclude_tests)})
            extra = ["-n", str(jobs)] if jobs > 1 else []
            print(f"baseline: {len(files)} test files on the clean tree ...", flush=True)
            status, seconds, why = run_pytest(copies[0], files, max(args.timeout, 600.0), extra)
            if status != "survived":
                print(f"baseline failed ({status}: {why}); the mutants would prove nothing", file=sys.stderr)
                return 2
            print(f"baseline: green in {seconds:.0f} s", flush=True)

        free, lock = list(copies), threading.Lock()

        def one(m):
            with lock:
                copy = free.pop()
            try:
                r = run_mutant(copy, m, tests_for(m, args.exclude_tests), args.timeout)
            finally:
                with lock:
                    free.append(copy)
            print(f"  {r['status']:<8} {r['seconds']:6.1f} s  {m.id}", flush=True)
            return r

        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(one, live))
    elapsed = time.perf_counter() - start

    s = score(results)
    print()
    print(table(results))
    print()
    print(f"{'area':<15} killed / total")
    for area, c in s["per_area"].items():
        print(f"{area:<15} {c['killed']:>6} / {c['total']:<5} {c['percent']:5.1f}%")
    a = s["all"]
    survivors = [r["id"] for r in results if r["status"] == "survived"]
    errors = [r["id"] for r in results if r["status"] in ("error", "stale")]
    print(f"\nscore: {a['killed']} / {a['total']} killed ({a['percent']}%), "
          f"{len(mutants) - len(live)} equivalent not run, {elapsed:.0f} s with {jobs} job(s)")
    if survivors:
        print("survivors: " + ", ".join(survivors))
    if errors:
        print("errors: " + ", ".join(errors))

    full = not args.only and not args.exclude_tests
    out = args.out.resolve() if args.out else (ROOT / "mutation" / "results.json" if full else None)
    if out is not None:
        doc = {
            "command": "python mutation/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "tree": git_state(), "jobs": jobs, "seconds": round(elapsed, 1),
            "score": s["all"], "per_area": s["per_area"], "survivors": survivors,
            "equivalent": [{"id": m.id, "file": m.file, "why": m.equivalent} for m in mutants if m.equivalent],
            "mutants": results,
        }
        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
