"""The fast layer: the same pairs as ``minilora.functional``, in place and split across cores.

``minilora.functional`` is the reference: every pair written as its equation. The pairs here have
the same signatures and return the same caches; they trade readability for speed (``out=``
writes, in-place sequences, row blocks on every core, one-thread BLAS per core for attention's
small products). Each is proven equal to its reference by ``tests/test_fast.py``.

Which one runs is this table, and nothing else. The modules in ``minilora.nn`` and the
optimizer ask ``pair(name)`` (or ``update(name)``) at every call, so a change takes effect at
once::

    import minilora.fast
    minilora.fast.USE_FAST["gelu"] = False      # one layer on its reference
    with minilora.fast.reference():             # everything on the reference pairs
        loss = ml.train_step(model, opt, x, y)

Every pair is fast by default; docs/performance.md measures what each one saves. A forward and
its backward come from the same row, so a cache always meets the backward that understands it.
"""
from __future__ import annotations

import contextlib

from ..functional import activations as ref_activations
from ..functional import attention as ref_attention
from ..functional import layernorm as ref_layernorm
from ..functional import linear as ref_linear
from ..functional import lora as ref_lora
from ..functional import mixed_lora as ref_mixed_lora
from ..functional import optim as ref_optim
from . import activations, attention, layernorm, linear, mixed_lora
from . import optim as fast_optim

# name: (reference (forward, backward), fast (forward, backward))
PAIRS = {
    "linear": ((ref_linear.linear_forward, ref_linear.linear_backward),
               (linear.linear_forward, linear.linear_backward)),
    "lora": ((ref_lora.lora_forward, ref_lora.lora_backward),
             (linear.lora_forward, linear.lora_backward)),
    "relu": ((ref_activations.relu_forward, ref_activations.relu_backward),
             (activations.relu_forward, activations.relu_backward)),
    "gelu": ((ref_activations.gelu_forward, ref_activations.gelu_backward),
             (activations.gelu_forward, activations.gelu_backward)),
    "layernorm": ((ref_layernorm.layernorm_forward, ref_layernorm.layernorm_backward),
                  (layernorm.layernorm_forward, layernorm.layernorm_backward)),
    "attention": ((ref_attention.attention_forward, ref_attention.attention_backward),
                  (attention.attention_forward, attention.attention_backward)),
    # a mixed-adapter batch: the sub-batch loop, or one gather over the stacked adapters
    "mixed_lora": ((ref_mixed_lora.mixed_lowrank_forward, ref_mixed_lora.mixed_lowrank_backward),
                   (mixed_lora.mixed_lowrank_forward, mixed_lora.mixed_lowrank_backward)),
}
# name: (reference update, fast update)
UPDATES = {
    "adamw": (ref_optim.adamw_update, fast_optim.adamw_update),
}

# The switch: True runs the fast version. GELU, attention and AdamW measure 8-88% of a step
# faster on NumPy; linear, LoRA, ReLU and LayerNorm within ±3% (docs/performance.md).
# Off by default: the mixed-batch gather, which on NumPy is 11-27% slower than the reference's
# sub-batch loop (benchmarks/mixed_batch.py, 1-16 adapters); it is there for devices where one
# batched product beats K small ones, and proven equal to the loop (tests/test_mixed_lora.py).
SLOWER_ON_NUMPY = ("mixed_lora",)
USE_FAST = {name: name not in SLOWER_ON_NUMPY for name in (*PAIRS, *UPDATES)}


def pair(name: str):
    """``(forward, backward)`` for layer ``name``: fast or reference, as ``USE_FAST`` says."""
    reference, fast = PAIRS[name]
    return fast if USE_FAST[name] else reference


def update(name: str):
    """The optimizer update ``name``: fast or reference, as ``USE_FAST`` says."""
    reference, fast = UPDATES[name]
    return fast if USE_FAST[name] else reference


@contextlib.contextmanager
def reference(*names):
    """Run ``names`` (default: every pair and update) on the reference inside the block; the
    switch is restored on exit."""
    unknown = [name for name in names if name not in USE_FAST]
    if unknown:  # checked before anything is switched
        raise KeyError(f"minilora.fast.reference: unknown name {unknown[0]!r}; names are {sorted(USE_FAST)}")
    saved = dict(USE_FAST)
    for name in names or USE_FAST:
        USE_FAST[name] = False
    try:
        yield
    finally:
        USE_FAST.clear()
        USE_FAST.update(saved)
