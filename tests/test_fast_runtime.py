"""runtime.rowwise (elementwise work split into row blocks across threads) and the fast paths
that use it: the same numbers as the plain array-API lines, on arrays big enough to be split."""
import array_api_strict
import numpy as np
import pytest

from minilora import backend
from minilora.fast import runtime


def _axpy(a, b, out):  # row by row, in place: out = 2a + b
    out[...] = 2.0 * a + b


@pytest.mark.parametrize("rows", [1, 7, 1001])
def test_rowwise_writes_every_row(monkeypatch, rows):
    monkeypatch.setattr(runtime, "THREADS", 3)  # more blocks than a 2-core machine would use
    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)  # split even small arrays
    gen = np.random.default_rng(0)
    a, b = gen.standard_normal((rows, 5)), gen.standard_normal((rows, 5))
    out = np.full_like(a, np.nan)
    runtime.rowwise(_axpy, a, b, out)
    np.testing.assert_array_equal(out, 2.0 * a + b)


def test_rowwise_falls_back_to_a_plain_call_on_other_namespaces():
    a = array_api_strict.ones((4, 3))
    out = array_api_strict.zeros((4, 3))
    runtime.rowwise(_axpy, a, a, out)
    assert bool(array_api_strict.all(out == 3.0))


def test_rowwise_reraises_a_workers_exception(monkeypatch):
    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(runtime, "THREADS", 2)

    def fail_on_late_rows(a):
        if a[0, 0] >= 2:
            raise ValueError("row block failed")

    with pytest.raises(ValueError, match="row block failed"):
        runtime.rowwise(fail_on_late_rows, np.arange(8.0).reshape(4, 2))


def _strict(a):
    return array_api_strict.asarray(a)


def test_batched_matmul_equals_the_operator():
    # (4, 3, 160, 32) @ (4, 3, 32, 160): 61k-element inputs; split when the threshold allows it
    gen = np.random.default_rng(3)
    a = gen.standard_normal((4, 160, 3, 32)).astype(np.float32).transpose(0, 2, 1, 3)  # strided
    b = gen.standard_normal((4, 3, 160, 32)).astype(np.float32)
    bt = np.swapaxes(b, -1, -2)
    for min_size in (1, runtime.ROWWISE_MIN_SIZE):
        runtime.ROWWISE_MIN_SIZE, saved = min_size, runtime.ROWWISE_MIN_SIZE
        try:
            np.testing.assert_allclose(runtime.batched_matmul(a, bt), a @ bt, rtol=1e-5, atol=1e-5)
        finally:
            runtime.ROWWISE_MIN_SIZE = saved
    sa, sb = _strict(np.ascontiguousarray(a)), _strict(b)  # other namespaces: the plain operator
    got = runtime.batched_matmul(sa, array_api_strict.matrix_transpose(sb))
    np.testing.assert_allclose(backend.to_numpy(got), a @ bt, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_rowwise_works_in_a_forked_child(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(runtime, "THREADS", 2)
    a = np.arange(12.0).reshape(6, 2)
    out = np.zeros_like(a)
    runtime.rowwise(_axpy, a, a, out)  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # the child must build its own pool, not wait on the parent's
        got = pool.apply_async(_rowwise_in_child).get(timeout=30)
    np.testing.assert_array_equal(got, 3.0 * np.arange(12.0).reshape(6, 2))


def _rowwise_in_child():
    runtime.ROWWISE_MIN_SIZE, runtime.THREADS = 1, 2
    a = np.arange(12.0).reshape(6, 2)
    out = np.zeros_like(a)
    runtime.rowwise(_axpy, a, a, out)
    return out


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_batched_matmul_from_several_threads_leaves_blas_threads_as_they_were(monkeypatch):
    # BLAS's thread count is process-wide: overlapping limits used to leave it at 1 for good.
    # (Only detectable where BLAS starts with more than one thread.)
    import threading

    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(runtime, "THREADS", 2)
    gen = np.random.default_rng(4)
    a = gen.standard_normal((4, 2, 24, 16)).astype(np.float32)
    b = gen.standard_normal((4, 2, 16, 20)).astype(np.float32)
    want = a @ b
    before = _blas_threads()
    wrong = []

    def work():
        for _ in range(150):
            got = runtime.batched_matmul(a, b)
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                wrong.append(got)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert _blas_threads() == before


def test_rowwise_waits_for_the_workers_when_the_callers_block_raises(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(runtime, "THREADS", 2)
    worker_done = threading.Event()

    def fail_first_block(a, out):
        if a[0, 0] == 0:  # the first block, run by the caller's thread
            raise ValueError("first block failed")
        time.sleep(0.2)  # the worker's block is still writing when the first block fails
        out[...] = 1.0
        worker_done.set()

    a = np.arange(8.0).reshape(4, 2)
    out = np.zeros_like(a)
    with pytest.raises(ValueError, match="first block failed"):
        runtime.rowwise(fail_first_block, a, out)
    assert worker_done.is_set()  # finished before rowwise raised, not after
    np.testing.assert_array_equal(out[2:], 1.0)


def test_rowwise_pool_is_built_once_when_first_calls_race(monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    def slow_executor(*args, **kwargs):  # widens the window two first calls could both enter
        time.sleep(0.05)
        return ThreadPoolExecutor(*args, **kwargs)

    monkeypatch.setattr(runtime, "ThreadPoolExecutor", slow_executor)
    monkeypatch.setattr(runtime, "_pool", None)
    monkeypatch.setattr(runtime, "_pool_size", 0)
    start = threading.Barrier(6)
    pools = []

    def first_call():
        start.wait()
        pools.append(runtime._get_pool(1))

    threads = [threading.Thread(target=first_call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pools) == 6 and all(p is pools[0] for p in pools)
    assert runtime._pool is pools[0]


_real_matmul_into = runtime._matmul_into


def _batched_matmul_in_child():
    runtime._matmul_into = _real_matmul_into  # the parent's is patched to block
    runtime.ROWWISE_MIN_SIZE, runtime.THREADS = 1, 2
    a = np.arange(2 * 2 * 3 * 3, dtype=np.float64).reshape(2, 2, 3, 3)
    got = runtime.batched_matmul(a, a)
    return np.array_equal(got, a @ a), _blas_threads()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_fork_while_another_thread_holds_the_blas_limit(monkeypatch):
    # the child must not wait forever on the lock that thread held, and its BLAS gets its
    # thread count back (the thread that would have restored it does not exist there)
    import multiprocessing
    import threading

    monkeypatch.setattr(runtime, "ROWWISE_MIN_SIZE", 1)
    monkeypatch.setattr(runtime, "THREADS", 2)
    inside, release = threading.Event(), threading.Event()

    def blocking_matmul_into(a, b, out):
        inside.set()
        release.wait(30)
        _real_matmul_into(a, b, out)

    monkeypatch.setattr(runtime, "_matmul_into", blocking_matmul_into)
    before = _blas_threads()
    a = np.ones((2, 2, 3, 3))
    holder = threading.Thread(target=runtime.batched_matmul, args=(a, a))
    holder.start()
    try:
        assert inside.wait(30)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            ok, child_blas = pool.apply_async(_batched_matmul_in_child).get(timeout=30)
    finally:
        release.set()
        holder.join(30)
    assert ok
    assert child_blas == before
    assert _blas_threads() == before
