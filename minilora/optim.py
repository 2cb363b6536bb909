"""Optimizers over a model's *trainable* parameters only: SGD with momentum, and AdamW.

State (momentum, first and second moments) is allocated once, at construction, for exactly the
trainable parameters, so its size is what LoRA saves: ``optimizer.state_bytes()``.
Before any parameter changes, every gradient is checked to be finite; a NaN or Inf stops the step
with ``FloatingPointError`` and leaves the model untouched.
"""
from __future__ import annotations

from . import backend, fast
from .fast.optim import AdamWWork


class Optimizer:
    def __init__(self, model, lr: float):
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr!r}")
        self.model, self.lr, self.t = model, lr, 0
        self.names = tuple(model.named_parameters(trainable=True))
        if not self.names:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameters")

    def _params_and_grads(self):
        params = self.model.named_parameters(trainable=True)
        grads = self.model.named_grads()
        if tuple(params) != self.names:
            raise ValueError(
                f"{type(self).__name__}: the model's trainable parameters changed since the "
                "optimizer was built (added/removed adapter or freeze?); build a new optimizer"
            )
        for k in self.names:  # state made for other arrays (after model.to / astype)?
            p = params[k]
            for s in self.state.get(k, ()):
                if type(s) is not type(p) or s.dtype != p.dtype:  # cheap: runs every step
                    raise ValueError(
                        f"{type(self).__name__}: state for {k!r} is {backend.dtype_name(s)} on "
                        f"{backend.device_name(s)} but the parameter is {backend.dtype_name(p)} on "
                        f"{backend.device_name(p)} (model moved or cast?); build a new optimizer"
                    )
        missing = [k for k in self.names if k not in grads]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: no gradient for {missing[:4]}; run backward first")
        if backend.all_finite(grads[k] for k in self.names):  # one cheap test for all of them
            return params, grads
        for k in self.names:  # something is not finite: name it
            if not backend.is_finite(grads[k]):
                raise FloatingPointError(
                    f"{type(self).__name__}: non-finite gradient for {k!r}; step skipped, "
                    "no parameter changed"
                )
        return params, grads

    def state_bytes(self) -> int:
        """Bytes held by the optimizer's state arrays."""
        return sum(int(a.size) * a.dtype.itemsize for s in self.state.values() for a in s)


class SGD(Optimizer):
    """v ← μ v + g;   θ ← θ − lr (g + wd θ) or, with momentum, θ ← θ − lr v"""

    def __init__(self, model, lr=0.1, momentum=0.9, weight_decay=0.0):
        super().__init__(model, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        params = model.named_parameters(trainable=True)
        self.state = {k: (backend.namespace(v).zeros_like(v),) for k, v in params.items()} if momentum else {}

    def step(self):
        params, grads = self._params_and_grads()
        self.t += 1
        for k in self.names:
            p, g = params[k], grads[k]
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                (v,) = self.state[k]
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g  # in place: caches and other references see the update


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), bias-corrected:

        m ← β₁ m + (1−β₁) g;   v ← β₂ v + (1−β₂) g²
        θ ← θ − lr · wd · θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        params = model.named_parameters(trainable=True)
        self.state = {
            k: (backend.namespace(v).zeros_like(v), backend.namespace(v).zeros_like(v))
            for k, v in params.items()
        }
        self.work = AdamWWork()  # the fast update's one work array, reused every step

    def step(self):
        params, grads = self._params_and_grads()
        self.t += 1
        update = fast.update("adamw")  # functional/optim.py, or its fast twin
        options = {"work": self.work} if fast.USE_FAST["adamw"] else {}  # the twin's work array
        for k in self.names:
            m, v = self.state[k]
            update(params[k], grads[k], m, v, self.lr, self.beta1, self.beta2, self.eps,
                   self.weight_decay, self.t, **options)
