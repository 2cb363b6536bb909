"""Optimizers over a model's *trainable* parameters only: SGD with momentum, and AdamW.

State (momentum, first and second moments) is allocated once, at construction, for exactly the
trainable parameters, so its size is what LoRA saves: ``optimizer.state_bytes()``.

Nothing changes on a failed step. Before any parameter changes, every gradient is checked to be
finite; a NaN or Inf stops the step with ``FloatingPointError`` and leaves the model untouched.

float16 parameters: AdamW keeps their moments in float32 and computes their update in float32
(in float16, ε = 1e-8 rounds to 0, so a zero gradient — every LoRA A at step 1 — gives 0/0, and
g² overflows for |g| > 256). The new float16 values and moments are computed on copies, checked
finite, and only then written, so a step whose *update* is not finite (a weight pushed past
float16's 65,504) raises and changes nothing either. In float32/float64 a finite gradient gives a
finite update except for weights within lr of the dtype's largest value; the result is checked
all the same and named if it is not finite.
"""
from __future__ import annotations

from . import backend, checks, fast
from .fast.optim import AdamWWork


class Optimizer:
    def __init__(self, model, lr: float):
        self.lr = checks.finite_number(type(self).__name__, "lr", lr, positive=True)
        self.model, self.t = model, 0
        self.names = tuple(model.named_parameters(trainable=True))
        if not self.names:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameters")

    def state_dtype(self, p) -> str:
        """The dtype of a parameter's state: float32 for float16 parameters, else its own."""
        name = backend.dtype_name(p)
        return "float32" if name == "float16" else name

    def _zeros_like(self, p):
        xp = backend.namespace(p)
        return xp.zeros(p.shape, dtype=getattr(xp, self.state_dtype(p)))

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
                if type(s) is not type(p) or backend.dtype_name(s) != self.state_dtype(p):
                    raise ValueError(
                        f"{type(self).__name__}: state for {k!r} is {backend.dtype_name(s)} on "
                        f"{backend.device_name(s)} but the parameter is {backend.dtype_name(p)} on "
                        f"{backend.device_name(p)} (model moved or cast?); build a new optimizer"
                    )
        missing = [k for k in self.names if k not in grads]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: no gradient for {missing[:4]}; run backward first")
        if not backend.all_finite(grads[k] for k in self.names):  # one cheap test for all of them
            bad = next(k for k in self.names if not backend.is_finite(grads[k]))
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite gradient for {bad!r}; step skipped, "
                "no parameter changed"
            )
        return params, grads

    def _check_updated(self, params, names) -> None:
        """Name the first parameter the update made non-finite (one cheap test for all)."""
        if backend.all_finite(params[k] for k in names):
            return
        k = next(k for k in names if not backend.is_finite(params[k]))
        raise FloatingPointError(
            f"{type(self).__name__}: the update made {k!r} non-finite (a weight within lr of "
            f"the {backend.dtype_name(params[k])} range); lower lr or train in a wider dtype"
        )

    def state_bytes(self) -> int:
        """Bytes held by the optimizer's state arrays."""
        return sum(int(a.size) * a.dtype.itemsize for s in self.state.values() for a in s)


class SGD(Optimizer):
    """v ← μ v + g;   θ ← θ − lr (g + wd θ) or, with momentum, θ ← θ − lr v"""

    def __init__(self, model, lr=0.1, momentum=0.9, weight_decay=0.0):
        super().__init__(model, lr)
        self.momentum = checks.in_range("SGD", "momentum", momentum, 0.0, 1.0)
        self.weight_decay = checks.finite_number("SGD", "weight_decay", weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay!r}")
        params = model.named_parameters(trainable=True)
        self.state = {k: (self._zeros_like(v),) for k, v in params.items()} if self.momentum else {}

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
        self._check_updated(params, self.names)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), bias-corrected:

        m ← β₁ m + (1−β₁) g;   v ← β₂ v + (1−β₂) g²
        θ ← θ − lr · wd · θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)

    The update itself is ``functional/optim.py`` (or its fast twin, as ``minilora.fast`` says).
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(model, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"AdamW: betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = checks.in_range("AdamW", "betas[0]", betas[0], 0.0, 1.0)
        self.beta2 = checks.in_range("AdamW", "betas[1]", betas[1], 0.0, 1.0)
        self.eps = checks.finite_number("AdamW", "eps", eps, positive=True)
        self.weight_decay = checks.finite_number("AdamW", "weight_decay", weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay!r}")
        params = model.named_parameters(trainable=True)
        self.state = {k: (self._zeros_like(v), self._zeros_like(v)) for k, v in params.items()}
        self.work = AdamWWork()  # the fast update's one work array, reused every step

    def step(self):
        params, grads = self._params_and_grads()
        t = self.t + 1
        half = [k for k in self.names if backend.dtype_name(params[k]) == "float16"]
        staged = self._float16_updates(params, grads, half, t)  # raises before any change
        rest = [k for k in self.names if k not in staged]
        for k in rest:
            m, v = self.state[k]
            self._update(params[k], grads[k], m, v, t)
        if rest:
            self._check_updated(params, rest)
        for k, (p16, m, v) in staged.items():
            params[k][...] = p16
            self.state[k][0][...] = m
            self.state[k][1][...] = v
        self.t = t

    def _update(self, p, g, m, v, t):
        update = fast.update("adamw")  # functional/optim.py, or its fast twin
        options = {"work": self.work} if fast.USE_FAST["adamw"] else {}  # the twin's work array
        update(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.weight_decay, t, **options)

    def _float16_updates(self, params, grads, names, t) -> dict:
        """``{name: (new p, new m, new v)}`` for float16 parameters, computed in float32 on
        copies and checked finite; nothing is written here."""
        staged = {}
        for k in names:
            p, (m, v) = params[k], self.state[k]
            xp = backend.namespace(p)
            p32 = xp.astype(p, xp.float32)
            m32, v32 = xp.asarray(m, copy=True), xp.asarray(v, copy=True)
            self._update(p32, xp.astype(grads[k], xp.float32), m32, v32, t)
            p16 = xp.astype(p32, xp.float16)
            if not backend.all_finite([p16, m32, v32]):
                raise FloatingPointError(
                    f"AdamW: the update makes {k!r} non-finite in float16 (a weight beyond "
                    "±65,504); step skipped, no parameter changed"
                )
            staged[k] = (p16, m32, v32)
        return staged
