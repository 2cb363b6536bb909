"""MLP: Linear → activation → … → Linear, with layers named fc1, fc2, …"""
from __future__ import annotations

from .. import backend
from ..functional.activations import ACTIVATIONS
from .linear import Linear
from .module import Module


class MLP(Module):
    """h₀ = x,  hₗ = act(hₗ₋₁ W_lᵀ + b_l) for l < L,  logits = h_{L−1} W_Lᵀ + b_L

    ``sizes = (d_0, d_1, …, d_L)`` gives the widths: layer ``fcl`` maps d_{l−1} → d_l.
    Inputs: x (N, d_0).  Returns: logits (N, d_L).
    """

    default_lora_targets = ("fc*",)

    def __init__(self, sizes=(64, 128, 10), activation="relu", seed=0, dtype="float32", device="cpu"):
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least (d_in, d_out), got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.sizes, self.activation = sizes, activation
        gen = backend.rng(seed)
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.add_child(f"fc{i}", Linear(d_in, d_out, seed=gen, dtype=dtype, device=device))
        self.set_paths()

    def forward(self, x):
        act_forward, _ = ACTIVATIONS[self.activation]
        layers = list(self.children.values())
        self.cache = []
        h = x
        for i, layer in enumerate(layers):
            h = layer.forward(h)
            if i < len(layers) - 1:
                h, c = act_forward(h)
                self.cache.append(c)
        return h

    def backward(self, dout, need_dx: bool = False):
        """Backward through every layer in reverse; the input gradient is skipped unless asked."""
        _, act_backward = ACTIVATIONS[self.activation]
        layers = list(self.children.values())
        d = dout
        for i in range(len(layers) - 1, -1, -1):
            if i < len(layers) - 1:
                d, _ = act_backward(d, self.cache[i])
            d = layers[i].backward(d, need_dx=need_dx or i > 0)
        return d
