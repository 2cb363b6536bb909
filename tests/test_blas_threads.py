"""BLAS threads per problem size: ``minilora.blas_threads(n)`` and ``fit(blas_threads=...)``."""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import minilora as ml
from minilora import train
from minilora.fast import runtime


def blas_counts():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """BLAS on two threads for the test (so that "limited to one" is visible), restored after."""
    with threadpool_limits(2, user_api="blas"):
        if set(blas_counts()) != {2}:
            pytest.fail(f"could not set BLAS to 2 threads: {threadpool_info()}")
        yield


def test_blas_threads_sets_and_restores_the_count(two_blas_threads):
    with ml.blas_threads(1):
        assert set(blas_counts()) == {1}
        assert runtime.chosen_blas_threads()
    assert set(blas_counts()) == {2}
    assert not runtime.chosen_blas_threads()


def test_blas_threads_none_changes_nothing_but_counts_as_a_choice(two_blas_threads):
    with ml.blas_threads(None):
        assert set(blas_counts()) == {2}
        assert runtime.chosen_blas_threads()
    assert not runtime.chosen_blas_threads()


def test_blas_threads_is_restored_when_the_block_raises(two_blas_threads):
    with pytest.raises(KeyError):
        with ml.blas_threads(1):
            raise KeyError("x")
    assert set(blas_counts()) == {2}
    assert not runtime.chosen_blas_threads()


def test_blas_threads_off_the_main_thread_changes_nothing(two_blas_threads):
    seen = []

    def work():
        with ml.blas_threads(1):
            seen.append((blas_counts(), runtime.chosen_blas_threads()))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [([2] * len(blas_counts()), False)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_blas_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match="blas_threads: n must be a positive int or None"):
        ml.blas_threads(bad)


def test_the_size_rule_has_its_boundary_at_the_threshold():
    n = runtime.BLAS_THREADED_MIN_MACS
    assert runtime.blas_threads_for(n - 1) == 1
    assert runtime.blas_threads_for(n) is None


def test_largest_product_counts_rows_times_the_largest_weight():
    mlp = ml.MLP((6, 10, 3), seed=0)
    assert train.largest_product(mlp, np.zeros((7, 6), np.float32)) == 7 * 60
    assert train.largest_product(mlp, np.zeros((2, 7, 6), np.float32)) == 14 * 60  # rows of any batch shape
    gpt = ml.GPT(ml.GPTConfig.preset("tiny"), seed=0)
    ids = np.zeros((3, 5), np.int64)  # one row per token
    biggest = max(p.size for p in gpt.named_parameters().values() if p.ndim == 2)
    assert train.largest_product(gpt, ids) == 15 * biggest


def _record_blas_during_steps(monkeypatch):
    seen = []
    real = train.train_step

    def step(*args, **kwargs):
        seen.append(tuple(blas_counts()))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", step)
    return seen


def _mlp_batches(n=3, rows=4):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((rows, 6)).astype(np.float32), rng.integers(0, 3, rows)) for _ in range(n)]


def test_fit_auto_runs_a_small_model_on_one_blas_thread(two_blas_threads, monkeypatch):
    seen = _record_blas_during_steps(monkeypatch)
    model = ml.MLP((6, 10, 3), seed=0)
    ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(), 3, progress=False)
    assert seen and all(set(s) == {1} for s in seen)
    assert set(blas_counts()) == {2}  # and puts the count back


def test_fit_auto_leaves_a_large_model_on_blas_threads(two_blas_threads, monkeypatch):
    monkeypatch.setattr(runtime, "BLAS_THREADED_MIN_MACS", 4 * 60)  # this step's size: threaded
    seen = _record_blas_during_steps(monkeypatch)
    model = ml.MLP((6, 10, 3), seed=0)
    ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(), 3, progress=False)
    assert seen and all(set(s) == {2} for s in seen)


def test_fit_auto_keeps_the_callers_choice(two_blas_threads, monkeypatch):
    seen = _record_blas_during_steps(monkeypatch)
    model = ml.MLP((6, 10, 3), seed=0)
    with ml.blas_threads(None):  # "BLAS's own count", chosen by the caller
        ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(), 3, progress=False)
    assert seen and all(set(s) == {2} for s in seen)


@pytest.mark.parametrize("n", [1, 2])
def test_fit_with_a_count_uses_it(two_blas_threads, monkeypatch, n):
    monkeypatch.setattr(runtime, "BLAS_THREADED_MIN_MACS", 4 * 60)
    seen = _record_blas_during_steps(monkeypatch)
    model = ml.MLP((6, 10, 3), seed=0)
    ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(), 3, progress=False, blas_threads=n)
    assert seen and all(set(s) == {n} for s in seen)


def test_fit_puts_the_first_batch_back_and_reads_none_for_zero_steps():
    model = ml.MLP((6, 10, 3), seed=0)
    batches = _mlp_batches(3)
    it = iter(batches)
    hist = ml.fit(model, ml.AdamW(model, lr=1e-3), it, 2, progress=False)
    assert len(hist["losses"]) == 2
    assert next(it) is batches[2]  # exactly two batches were taken, the first one included
    it = iter(batches)
    ml.fit(model, ml.AdamW(model, lr=1e-3), it, 0, progress=False)
    assert next(it) is batches[0]


def test_fit_reports_running_out_after_the_size_check():
    model = ml.MLP((6, 10, 3), seed=0)
    with pytest.raises(ValueError, match="ran out after 2 of 5 steps"):
        ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(2), 5, progress=False)


@pytest.mark.parametrize("bad", [0, -2, 1.0, "all", True])
def test_fit_refuses_bad_blas_threads(bad):
    model = ml.MLP((6, 10, 3), seed=0)
    before = model.state_dict()
    with pytest.raises(ValueError, match="fit: blas_threads must be 'auto', None or a positive int"):
        ml.fit(model, ml.AdamW(model, lr=1e-3), _mlp_batches(), 1, progress=False, blas_threads=bad)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("flag, want", [("1", 1), ("3", 3), ("all", "all"), ("auto", "auto")])
def test_cli_reads_blas_threads(flag, want):
    from minilora import cli

    args = cli.build_parser().parse_args(["demo", "--blas-threads", flag])
    assert args.blas_threads == want


@pytest.mark.parametrize("flag", ["0", "-1", "two", "1.5"])
def test_cli_refuses_bad_blas_threads(flag, capsys):
    from minilora import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--blas-threads", flag])
    assert e.value.code == 2
    assert f"argument --blas-threads: expected 'auto', 'all' or a positive integer, got {flag!r}" in capsys.readouterr().err


def _without_times(report):
    """The report's numbers, less the measured times (which no seed fixes)."""
    if isinstance(report, dict):
        return {k: _without_times(v) for k, v in report.items()
                if "time" not in k and "seconds" not in k and k != "report"}  # "report": the text
    if isinstance(report, (list, tuple)):
        return [_without_times(v) for v in report]
    return report


@pytest.mark.parametrize("demo, kwargs", [("mlp_demo", {}), ("gpt_demo", {"cache": False})])
def test_a_demo_prints_the_same_numbers_whatever_blas_started_with(capsys, demo, kwargs):
    # the demos run on the BLAS threads their size calls for (one), so the count BLAS starts
    # with (the machine's cores) cannot change the products' reduction order, hence the numbers.
    # (Before: the MLP demo's merge error read 4.2955e-07 on one thread, 4.2993e-07 on two.)
    import importlib

    module = importlib.import_module(f"minilora.experiments.{demo}")
    reports = []
    for n in (1, 2):
        with threadpool_limits(n, user_api="blas"):
            reports.append(_without_times(module.run(quick=True, progress=False, **kwargs)))
    capsys.readouterr()
    assert reports[0] and reports[0] == reports[1]
