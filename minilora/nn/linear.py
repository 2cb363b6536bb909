"""Linear: y = x Wᵀ + b as a module (the pair: ``functional/linear.py``; LoRA: ``nn/lora.py``)."""
from __future__ import annotations

import math

from .. import backend, checks, fast
from .module import Module


class Linear(Module):
    """y = x Wᵀ + b with W (d_out, d_in), b (d_out,).

    Initialised like PyTorch's ``nn.Linear``: W, b ~ U(−1/√d_in, 1/√d_in), drawn on the CPU by a
    seeded NumPy generator and then moved to ``device``.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        d_in, d_out = checks.positive_int("Linear", "d_in", d_in), checks.positive_int("Linear", "d_out", d_out)
        gen = backend.rng(seed)
        bound = 1.0 / math.sqrt(d_in)
        self.params["W"] = backend.uniform(gen, (d_out, d_in), bound, dtype, device)
        if bias:
            self.params["b"] = backend.uniform(gen, (d_out,), bound, dtype, device)

    @property
    def d_in(self) -> int:
        return self.params["W"].shape[1]

    @property
    def d_out(self) -> int:
        return self.params["W"].shape[0]

    def forward(self, x):
        linear_forward, _ = fast.pair("linear")
        y, self.cache = linear_forward(x, self.params["W"], self.params.get("b"), layer=self.label)
        return y

    def backward(self, dout):
        """dx = dout W, and dW, db for the ones that train (BitFit: b alone)."""
        if self.skips(dout):
            return None
        _, linear_backward = fast.pair("linear")
        dx, self.grads = linear_backward(dout, self.cache, need=self.wanted())
        return dx
