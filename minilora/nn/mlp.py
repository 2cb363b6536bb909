"""MLP: Linear → activation → … → Linear, with layers named fc1, fc2, …"""
from __future__ import annotations

from .. import backend, fast
from ..functional.activations import ACTIVATIONS
from .linear import Linear
from .module import Module


class MLP(Module):
    """h₀ = x,  hₗ = act(hₗ₋₁ W_lᵀ + b_l) for l < L,  logits = h_{L−1} W_Lᵀ + b_L

    ``sizes = (d_0, d_1, …, d_L)`` gives the widths: layer ``fcl`` maps d_{l−1} → d_l.
    Inputs: x (N, d_0).  Returns: logits (N, d_L).  The input is data: its gradient is not
    computed unless ``need_dx`` is set True.
    """

    default_lora_targets = ("fc*",)
    need_dx = False  # x is data

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
        act_forward, _ = fast.pair(self.activation)
        layers = list(self.children.values())
        self.cache = []
        h = x
        for layer in layers[:-1]:
            h, act_cache = act_forward(layer.forward(h))
            self.cache.append(act_cache)
        return layers[-1].forward(h)

    def plan_backward(self) -> None:
        x = self.need_dx
        for layer in self.children.values():  # a chain: each layer's input is the last's output
            x = layer.flow(x)

    def backward(self, dout):
        """The forward in reverse: d ← fcₗᵀ(d), then d ← actᵀ(d), down to fc1."""
        if self.skips(dout):
            return None
        self.plan_backward()
        _, act_backward = fast.pair(self.activation)
        layers = list(self.children.values())
        d = layers[-1].backward(dout)
        for layer, act_cache in zip(reversed(layers[:-1]), reversed(self.cache)):
            d = None if d is None else act_backward(d, act_cache)[0]
            d = layer.backward(d)
        return d
