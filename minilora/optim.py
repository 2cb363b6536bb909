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

Parameter groups: ``groups=[{"params": ..., "lr": ..., "weight_decay": ...}, ...]`` gives some
parameters their own lr and weight decay (LoRA+ gives B a larger lr than A: ``loraplus_groups``).
``"params"`` is a list of parameter names, a glob (``"*.lora.*.B"``) or a predicate
``name -> bool``; a key left out takes the optimizer's own value; parameters in no group use the
optimizer's ``lr`` and ``weight_decay``, read at every step. Unknown or frozen names, a parameter
in two groups or a bad value raise ``ValueError`` before anything changes.
"""
from __future__ import annotations

import fnmatch
from typing import NamedTuple

from . import backend, checks, fast
from .fast.optim import AdamWWork
from .nn.lora_embedding import LoRAEmbedding
from .nn.transformer import LayerNorm


class ParamGroup(NamedTuple):
    name: str  # for messages: the group's "name", or "groups[i]"
    params: tuple  # the parameter names it holds, in model order
    lr: float | None  # None: the optimizer's own lr (read at each step)
    weight_decay: float | None  # None: the optimizer's own weight decay


class Optimizer:
    def __init__(self, model, lr: float):
        self.lr = checks.finite_number(type(self).__name__, "lr", lr, positive=True)
        self.model, self.t = model, 0
        self.names = tuple(model.named_parameters(trainable=True))
        if not self.names:
            raise ValueError(f"{type(self).__name__}: the model has no trainable parameters")
        self.groups, self.group_of = (), {}

    # ------------------------------------------------------------------ parameter groups
    def set_groups(self, groups) -> None:
        """Give the parameters each group selects its own ``lr`` / ``weight_decay`` (see the module
        docstring). Everything is checked first: a bad group raises ``ValueError`` and the
        optimizer keeps the groups it had. ``None`` or ``[]``: one lr and weight decay for all."""
        resolved = self._resolve_groups(groups)
        self.groups = resolved
        self.group_of = {k: i for i, g in enumerate(resolved) for k in g.params}

    def hyper(self, name: str) -> tuple:
        """``(lr, weight_decay)`` for parameter ``name``: its group's, else the optimizer's."""
        if name not in self.group_of:
            return self.lr, self.weight_decay
        g = self.groups[self.group_of[name]]
        lr = self.lr if g.lr is None else g.lr
        return lr, (self.weight_decay if g.weight_decay is None else g.weight_decay)

    def _resolve_groups(self, groups) -> tuple:
        owner = type(self).__name__
        if groups is None:
            return ()
        if not isinstance(groups, (list, tuple)):
            raise ValueError(f"{owner}: groups must be a list of dicts, got {type(groups).__name__}")
        every = self.model.named_parameters()
        out, owner_of = [], {}
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(f"{owner}: groups[{i}] must be a dict with a 'params' key, got {group!r:.80}")
            unknown = set(group) - {"params", "lr", "weight_decay", "name"}
            if unknown:
                raise ValueError(f"{owner}: groups[{i}] has unknown keys {sorted(unknown)}; "
                                 "a group takes 'params', 'lr', 'weight_decay' and 'name'")
            label = f"group {group['name']!r}" if "name" in group else f"groups[{i}]"
            names = self._select(label, group["params"], every)
            for k in names:
                if k in owner_of:
                    raise ValueError(f"{owner}: parameter {k!r} is in two groups, {owner_of[k]} and {label}")
                owner_of[k] = label
            lr, wd = group.get("lr"), group.get("weight_decay")
            if lr is not None:
                lr = checks.finite_number(owner, f"{label} lr", lr, positive=True)
            if wd is not None and checks.finite_number(owner, f"{label} weight_decay", wd) < 0:
                raise ValueError(f"{owner}: {label} weight_decay must be >= 0, got {wd!r}")
            out.append(ParamGroup(label, names, lr, None if wd is None else float(wd)))
        return tuple(out)

    def _select(self, label: str, params, every: dict) -> tuple:
        """The trainable names a group's ``params`` (names, a glob or a predicate) selects."""
        owner = type(self).__name__
        if callable(params):
            names = tuple(k for k in self.names if params(k))
        elif isinstance(params, str):
            names = tuple(k for k in self.names if fnmatch.fnmatchcase(k, params))
        elif isinstance(params, (list, tuple)):
            for k in params:
                if k not in every:
                    some = list(self.names)[:6] + (["..."] if len(self.names) > 6 else [])
                    raise ValueError(f"{owner}: {label} names {k!r}, which is not a parameter of the model "
                                     f"(trainable ones: {some})")
                if k not in self.names:
                    raise ValueError(f"{owner}: {label} names {k!r}, which is frozen (not trainable)")
            if len(set(params)) != len(params):
                raise ValueError(f"{owner}: {label} lists a parameter twice")
            chosen = set(params)
            names = tuple(k for k in self.names if k in chosen)
        else:
            raise ValueError(f"{owner}: {label} params must be a list of names, a glob or a predicate, "
                             f"got {type(params).__name__}")
        if not names:
            raise ValueError(f"{owner}: {label} selects no trainable parameter")
        return names

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

    def __init__(self, model, lr=0.1, momentum=0.9, weight_decay=0.0, groups=None):
        super().__init__(model, lr)
        self.momentum = checks.in_range("SGD", "momentum", momentum, 0.0, 1.0)
        self.weight_decay = checks.finite_number("SGD", "weight_decay", weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay!r}")
        self.set_groups(groups)
        params = model.named_parameters(trainable=True)
        self.state = {k: (self._zeros_like(v),) for k, v in params.items()} if self.momentum else {}

    def step(self):
        params, grads = self._params_and_grads()
        self.t += 1
        for k in self.names:
            p, g = params[k], grads[k]
            lr, weight_decay = self.hyper(k)
            if weight_decay:
                g = g + weight_decay * p
            if self.momentum:
                (v,) = self.state[k]
                v *= self.momentum
                v += g
                g = v
            p -= lr * g  # in place: caches and other references see the update
        self._check_updated(params, self.names)


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), bias-corrected:

        m ← β₁ m + (1−β₁) g;   v ← β₂ v + (1−β₂) g²
        θ ← θ − lr · wd · θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)

    The update itself is ``functional/optim.py`` (or its fast twin, as ``minilora.fast`` says).
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, groups=None):
        super().__init__(model, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"AdamW: betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = checks.in_range("AdamW", "betas[0]", betas[0], 0.0, 1.0)
        self.beta2 = checks.in_range("AdamW", "betas[1]", betas[1], 0.0, 1.0)
        self.eps = checks.finite_number("AdamW", "eps", eps, positive=True)
        self.weight_decay = checks.finite_number("AdamW", "weight_decay", weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay!r}")
        self.set_groups(groups)
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
            self._update(params[k], grads[k], m, v, t, *self.hyper(k))
        if rest:
            self._check_updated(params, rest)
        for k, (p16, m, v) in staged.items():
            params[k][...] = p16
            self.state[k][0][...] = m
            self.state[k][1][...] = v
        self.t = t

    def _update(self, p, g, m, v, t, lr, weight_decay):
        update = fast.update("adamw")  # functional/optim.py, or its fast twin
        options = {"work": self.work} if fast.USE_FAST["adamw"] else {}  # the twin's work array
        update(p, g, m, v, lr, self.beta1, self.beta2, self.eps, weight_decay, t, **options)

    def _float16_updates(self, params, grads, names, t) -> dict:
        """``{name: (new p, new m, new v)}`` for float16 parameters, computed in float32 on
        copies and checked finite; nothing is written here."""
        staged = {}
        for k in names:
            p, (m, v) = params[k], self.state[k]
            xp = backend.namespace(p)
            p32 = xp.astype(p, xp.float32)
            m32, v32 = xp.asarray(m, copy=True), xp.asarray(v, copy=True)
            self._update(p32, xp.astype(grads[k], xp.float32), m32, v32, t, *self.hyper(k))
            p16 = xp.astype(p32, xp.float16)
            if not backend.all_finite([p16, m32, v32]):
                raise FloatingPointError(
                    f"AdamW: the update makes {k!r} non-finite in float16 (a weight beyond "
                    "±65,504); step skipped, no parameter changed"
                )
            staged[k] = (p16, m32, v32)
        return staged


# ----------------------------------------------------------------------------- LoRA+


def loraplus_groups(model, lr: float, ratio: float = 16.0, lr_embedding: float = 1e-6,
                    weight_decay: float = 0.0) -> list:
    """LoRA+ (Hayou, Ghosh & Yu, 2024): B learns ``ratio`` times faster than A, lr_B = ratio · lr_A.

    The groups of PEFT's ``create_loraplus_optimizer``, rule for rule, over the trainable
    parameters (docs/lora_family.md):

        "embedding"    any parameter of a LoRA embedding layer   lr_embedding   weight_decay
        "B"            a LoRA B, or any other 1-D parameter        ratio · lr     weight_decay
        "B_no_decay"   a 1-D bias (``b``) or LayerNorm parameter   ratio · lr     0
        "A"            everything else (LoRA A, full 2-D weights)  lr             weight_decay

    Returns the non-empty groups, in PEFT's order (A, embedding, B, B_no_decay), for the
    ``groups=`` argument of ``AdamW`` / ``SGD``; every trainable parameter is in exactly one.
    """
    lr = checks.finite_number("loraplus_groups", "lr", lr, positive=True)
    ratio = checks.finite_number("loraplus_groups", "ratio", ratio, positive=True)
    lr_embedding = checks.finite_number("loraplus_groups", "lr_embedding", lr_embedding, positive=True)
    weight_decay = checks.finite_number("loraplus_groups", "weight_decay", weight_decay)
    if weight_decay < 0:
        raise ValueError(f"loraplus_groups: weight_decay must be >= 0, got {weight_decay!r}")
    embeddings = [p for p, m in model.named_modules() if isinstance(m, LoRAEmbedding)]
    names = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for path, m in model.named_modules():
        inside_embedding = any(e in ("", path) or path.startswith(f"{e}.") for e in embeddings)
        for k, p in m.params.items():
            if k in m.frozen:
                continue
            name = f"{path}.{k}" if path else k
            is_B = k == "B" and ".lora." in f".{path}."
            if inside_embedding:
                names["embedding"].append(name)
            elif is_B or p.ndim == 1:
                no_decay = k == "b" or isinstance(m, LayerNorm)  # PEFT: "bias" in the name, LayerNorm
                names["B_no_decay" if no_decay else "B"].append(name)
            else:
                names["A"].append(name)
    settings = {"A": (lr, weight_decay), "embedding": (lr_embedding, weight_decay),
                "B": (ratio * lr, weight_decay), "B_no_decay": (ratio * lr, 0.0)}
    return [{"name": g, "params": names[g], "lr": settings[g][0], "weight_decay": settings[g][1]}
            for g in names if names[g]]


def create_loraplus_optimizer(model, lr: float, ratio: float = 16.0, lr_embedding: float = 1e-6,
                              weight_decay: float = 0.0, optimizer=None, **options):
    """``AdamW(model, lr, groups=loraplus_groups(model, lr, ratio, lr_embedding, weight_decay),
    **options)`` — PEFT's ``create_loraplus_optimizer(model, AdamW, lr=lr, loraplus_lr_ratio=ratio,
    loraplus_lr_embedding=lr_embedding, loraplus_weight_decay=weight_decay)``. ``optimizer``: the
    class (``AdamW`` by default, or ``SGD``); ``options`` go to it (betas, eps, momentum)."""
    cls = AdamW if optimizer is None else optimizer
    groups = loraplus_groups(model, lr, ratio, lr_embedding, weight_decay)
    return cls(model, lr=lr, weight_decay=weight_decay, groups=groups, **options)
