"""Training: one step (forward, loss, backward, update) and a loop with a progress bar."""
from __future__ import annotations

import time

from . import backend
from .functional.losses import LOSSES


def train_step(model, optimizer, x, y, loss: str = "cross_entropy") -> float:
    """forward → loss → backward → optimizer.step(); returns the loss as a float.

    A non-finite loss raises ``FloatingPointError`` before backward, and a non-finite gradient
    raises inside ``optimizer.step()`` before any update: no parameter changes either way.
    """
    loss_forward, loss_backward = LOSSES[loss]
    value, cache = loss_forward(model.forward(x), y)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise FloatingPointError(f"train_step: loss is {value}; step skipped, no parameter changed")
    dout, _ = loss_backward(1.0, cache)
    model.backward(dout)
    optimizer.step()
    return value


def fit(model, optimizer, batches, steps: int, loss: str = "cross_entropy", progress: bool = True,
        desc: str = "train") -> dict:
    """Run ``steps`` training steps over ``batches`` (an iterator of ``(x, y)``).

    Returns ``{"losses": [...], "step_time": median seconds per step}``.
    """
    from tqdm import tqdm  # plain text bars: they also work in Jupyter without ipywidgets

    model.train()
    losses, times = [], []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        x, y = next(batches)
        t0 = time.perf_counter()
        losses.append(train_step(model, optimizer, x, y, loss))
        backend.synchronize(x)  # a GPU step is queued, not done, when train_step returns
        times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    times.sort()
    return {"losses": losses, "step_time": times[len(times) // 2] if times else 0.0}


def accuracy(model, x, y) -> float:
    """Fraction of rows whose largest logit is the label, in eval mode (dropout off); the
    model's train/eval mode is restored afterwards."""
    with model.evaluating():
        pred = backend.to_numpy(model.forward(x)).argmax(-1)
    return float((pred == backend.to_numpy(y)).mean())
