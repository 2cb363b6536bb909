"""Training: one step (forward, loss, backward, update) and a loop with a progress bar."""
from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time

from . import backend, checks
from .fast import runtime
from .functional.losses import LOSSES


def train_step(model, optimizer, x, y, loss: str = "cross_entropy") -> float:
    """forward → loss → backward → optimizer.step(); returns the loss as a float.

    A non-finite loss raises ``FloatingPointError`` before backward, and a non-finite gradient
    raises inside ``optimizer.step()`` before any update: no parameter changes either way.
    """
    if loss not in LOSSES:
        raise ValueError(f"train_step: unknown loss {loss!r}; losses are {sorted(LOSSES)}")
    loss_forward, loss_backward = LOSSES[loss]
    value, cache = loss_forward(model.forward(x), y)
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"train_step: loss is {value}; step skipped, no parameter changed")
    dout, _ = loss_backward(1.0, cache)
    model.backward(dout)
    optimizer.step()
    return value


def fit(model, optimizer, batches, steps: int, loss: str = "cross_entropy", progress: bool = True,
        desc: str = "train", blas_threads="auto") -> dict:
    """Run ``steps`` training steps over ``batches``: any iterable of ``(x, y)`` — an iterator,
    a generator, a list (``itertools.cycle(a_list)`` to go round it more than once).

    ``progress``: a bar on a terminal; when the output is not a terminal (a log, CI), no bar but
    one summary line at the end. Raises ``ValueError`` if ``batches`` runs out before ``steps``.
    ``blas_threads``: ``"auto"`` (default) runs NumPy's BLAS on one thread when the first batch's
    largest product is small (``fast.runtime.blas_threads_for``; a small model gains nothing from
    BLAS threads and loses much on a busy machine), unless the caller chose inside a
    ``minilora.blas_threads(n)`` block; a positive int sets the count; None leaves it as it is.
    Returns ``{"losses": [...], "step_time": median seconds per step}``.
    """
    if not checks.is_int(steps) or steps < 0:
        raise ValueError(f"fit: steps must be a non-negative int, got {steps!r}")
    if loss not in LOSSES:
        raise ValueError(f"fit: unknown loss {loss!r}; losses are {sorted(LOSSES)}")
    if not (blas_threads in ("auto", None) or (checks.is_int(blas_threads) and blas_threads >= 1)):
        raise ValueError(f"fit: blas_threads must be 'auto', None or a positive int, got {blas_threads!r}")
    batches = iter(batches)
    threads = contextlib.nullcontext()
    if blas_threads != "auto":
        threads = runtime.blas_threads(None if blas_threads is None else int(blas_threads))
    elif steps > 0 and not runtime.chosen_blas_threads():
        first = next(batches, None)  # the first batch decides; it is put back
        if first is not None:
            batches = itertools.chain([first], batches)
            x = first[0] if isinstance(first, (tuple, list)) and first else None
            if hasattr(x, "shape"):
                threads = runtime.auto_blas_threads(largest_product(model, x))
    with threads:
        return _fit(model, optimizer, batches, steps, loss, progress, desc)


def largest_product(model, x) -> int:
    """Multiply-adds of the biggest matrix product a step of ``model`` on ``x`` can contain:
    the rows of ``x`` (one per token for integer ids, one per vector otherwise) times the size
    of the model's largest weight matrix."""
    rows = x.size if backend.dtype_name(x).startswith(("int", "uint")) or x.ndim < 2 else x.size // x.shape[-1]
    biggest = max((p.size for p in model.named_parameters().values() if p.ndim == 2), default=0)
    return int(rows) * int(biggest)


class _NoBar:
    """What ``_fit`` uses of a tqdm bar, showing nothing: where tqdm is not installed (a bare
    CUDA machine with only NumPy and CuPy) ``fit`` prints its one summary line instead."""

    disable = True

    def __init__(self, iterable, **_):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


def _fit(model, optimizer, batches, steps, loss, progress, desc) -> dict:
    try:
        from tqdm import tqdm  # plain text bars: they also work in Jupyter without ipywidgets
    except ImportError:
        tqdm = _NoBar

    model.train()
    losses, times = [], []
    # disable=None: tqdm switches itself off when its stream is not a terminal
    bar = tqdm(range(int(steps)), desc=desc, disable=None if progress else True, leave=False)
    start = time.perf_counter()
    for i in bar:
        try:
            x, y = next(batches)
        except StopIteration:
            bar.close()
            raise ValueError(
                f"fit: batches ran out after {i} of {steps} steps ({i} steps were taken); give "
                "an iterable with at least `steps` batches, e.g. itertools.cycle(a_list)"
            ) from None
        t0 = time.perf_counter()
        losses.append(train_step(model, optimizer, x, y, loss))
        backend.synchronize(x)  # a GPU step is queued, not done, when train_step returns
        times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    if progress and bar.disable and losses:  # no bar was shown: one line instead
        print(f"{desc}: {len(losses)} steps in {time.perf_counter() - start:.1f} s, "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", file=sys.stderr)
    times.sort()
    return {"losses": losses, "step_time": times[len(times) // 2] if times else 0.0}


def accuracy(model, x, y) -> float:
    """Fraction of rows whose largest logit is the label, in eval mode (dropout off); the
    model's train/eval mode is restored afterwards."""
    with model.evaluating():
        pred = backend.to_numpy(model.forward(x)).argmax(-1)
    return float((pred == backend.to_numpy(y)).mean())
