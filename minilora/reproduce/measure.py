"""Items 2–4 of the report: training memory as an exact byte ledger, step time, inference latency.

    memory_ledger(model, optimizer, x, y)   weights · gradients · optimizer state · activations
    step_times(models, batch, rounds)       median seconds per training step, interleaved
    latencies(variants, ids, rounds)        median seconds per forward, interleaved

Timings are medians of rounds that alternate between the things compared (A, B, A, B, ...), so a
busy machine slows all of them alike and the *ratios* stay meaningful.
"""
from __future__ import annotations

import time
import tracemalloc

from .. import backend
from ..functional.losses import LOSSES
from ..train import train_step


def _arrays(obj, out: list) -> list:
    """Every array inside a cache: tuples, named tuples, lists, dicts, nested."""
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _arrays(v, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _arrays(v, out)
    return out


def _root(a):
    """The array that owns ``a``'s memory (a view's base, followed to the end)."""
    while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
        a = a.base
    return a


def distinct_bytes(arrays, exclude=()) -> int:
    """Bytes of the distinct buffers behind ``arrays`` (views counted once, with their owner);
    buffers that also back an array of ``exclude`` (the parameters) are not counted."""
    skip = {id(_root(a)) for a in exclude}
    seen = {}
    for a in arrays:
        root = _root(a)
        if id(root) not in skip:
            seen[id(root)] = int(root.nbytes)
    return sum(seen.values())


def activation_bytes(model) -> int:
    """Bytes the forward's caches keep for the backward (the activations), parameters excluded:
    a cache that holds W (to compute dx = dout W) holds no new memory for it."""
    arrays = []
    for _, m in model.named_modules():
        _arrays(m.__dict__.get("cache"), arrays)  # a module without a cache (a container) adds nothing
    return distinct_bytes(arrays, exclude=list(model.named_parameters().values()))


def memory_ledger(model, optimizer, x, y, loss: str = "cross_entropy") -> dict:
    """One training step's memory, exactly, from the arrays themselves:

        weights      every parameter (frozen or trainable)
        gradients    the gradients the backward produced (trainable parameters only)
        optimizer    the optimizer's state (AdamW: m and v per trainable parameter)
        activations  what the forward caches keep for the backward (measured after forward)

    and ``peak_traced``: the largest memory NumPy held during one whole step (forward, loss,
    backward, update), measured with ``tracemalloc`` (NumPy reports its buffers to it), which
    also counts the temporaries the ledger leaves out. The step is a real one: the model trains.
    """
    loss_forward, _ = LOSSES[loss]
    weights = sum(int(p.nbytes) for p in model.named_parameters().values())
    train_step(model, optimizer, x, y, loss)  # allocate the optimizer state and the gradients
    model.train()
    loss_forward(model.forward(x), y)
    acts = activation_bytes(model)
    grads = sum(int(g.nbytes) for g in model.named_grads().values())
    state = optimizer.state_bytes()
    model.clear_cache()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base_now, _ = tracemalloc.get_traced_memory()
        train_step(model, optimizer, x, y, loss)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"weights": weights, "gradients": grads, "optimizer": state, "activations": acts,
            "total": weights + grads + state + acts, "peak_traced_above_start": peak - base_now}


def step_times(runs: dict, rounds: int) -> dict:
    """``{name: median seconds per step}`` for ``runs = {name: (model, optimizer, x, y)}``,
    the names taking turns for ``rounds`` rounds after one warm-up step each."""
    times = {name: [] for name in runs}
    for _ in range(rounds + 1):
        for name, (model, opt, x, y) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opt, x, y)
            backend.synchronize(x)
            times[name].append(time.perf_counter() - t0)
    return {name: _median(t[1:]) for name, t in times.items()}


def latencies(variants: dict, ids, rounds: int) -> dict:
    """``{name: median seconds per forward}`` for ``variants = {name: model}`` (eval mode), taking
    turns for ``rounds`` rounds after a warm-up forward each."""
    times = {name: [] for name in variants}
    for _ in range(rounds + 1):
        for name, model in variants.items():
            with model.evaluating():
                t0 = time.perf_counter()
                out = model.forward(ids)
                backend.synchronize(out)
                times[name].append(time.perf_counter() - t0)
            model.clear_cache()
    return {name: _median(t[1:]) for name, t in times.items()}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
