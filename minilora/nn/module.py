"""Module: the thin stateful layer over the pure functions.

A module owns three dicts that share keys — ``params`` (name -> array), ``grads`` (filled by
``backward``) and the set ``frozen`` (names that get no gradient) — plus ordered ``children``.
``forward(x)`` keeps the cache it needs; ``backward(dout)`` uses it, *overwrites* ``grads`` for the
trainable parameters (no hidden accumulation across calls) and returns ``dx``.

Qualified names join the path with dots: ``fc1.base.W``, ``fc1.lora.default.A``,
``blocks.0.attn.q.base.W``.

Which gradients a backward computes is decided as autograd frameworks propagate requires-grad:
a module's *input* needs a gradient (``need_dx``) only if something before it trains. Each
composite module says how its children connect in ``plan_backward`` — the forward's dataflow,
line by line — and runs it at the top of its backward, so its children know their ``need_dx``;
each layer then asks its pair for exactly ``wanted()``: its trainable parameters, plus "x" when
``need_dx``. A module whose output gradient nobody needs is handed ``None`` and skips its work.
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import NamedTuple

from .. import backend


class ParamInfo(NamedTuple):
    name: str
    shape: tuple
    dtype: str
    trainable: bool
    count: int


class Module:
    need_dx = True  # is the input gradient wanted? Set by the parent's plan_backward

    def __init__(self):
        # object.__setattr__ is not needed: __getattr__ only runs for missing attributes.
        self.params: dict = {}
        self.grads: dict = {}
        self.frozen: set = set()
        self.children: dict = {}
        self.training = True

    # ------------------------------------------------------------------ attribute sugar
    def __getattr__(self, name):
        # Called only when normal lookup fails: expose params and children as attributes,
        # so ``layer.W`` and ``mlp.fc1`` read like the equations.
        d = self.__dict__
        if "params" in d and name in d["params"]:
            return d["params"][name]
        if "children" in d and name in d["children"]:
            return d["children"][name]
        if name == "cache":
            raise RuntimeError(f"{self.label}: backward called before forward (no cache to use)")
        raise AttributeError(f"{type(self).__name__} has no attribute or parameter {name!r}")

    def __setattr__(self, name, value):
        # ``layer.W = arr`` sets the parameter (same shape, dtype and device), instead of
        # creating a plain attribute the forward would never read; ``mlp.fc1 = m`` the child.
        d = self.__dict__
        if "params" in d and name in d["params"]:
            self.set_parameter(name, value)
        elif "children" in d and name in d["children"]:
            if not isinstance(value, Module):
                raise TypeError(f"{self.label}: child {name!r} must be a Module, got {type(value).__name__}")
            d["children"][name] = value
        else:
            object.__setattr__(self, name, value)

    def set_parameter(self, name: str, value) -> None:
        """Replace parameter ``name`` by ``value``: same shape, dtype and device, or an error
        naming all three and nothing changed. Clears this module's grads and cache."""
        old = self.params[name]
        if not hasattr(value, "__array_namespace__"):
            raise TypeError(f"{self.label}: parameter {name!r} must be an array, got {type(value).__name__}")
        same = (tuple(value.shape) == tuple(old.shape)
                and backend.dtype_name(value) == backend.dtype_name(old)
                and backend.namespace(value) is backend.namespace(old))
        if not same:
            raise ValueError(
                f"{self.label}: parameter {name!r} is {tuple(old.shape)} {backend.dtype_name(old)} on "
                f"{backend.device_name(old)}; got {tuple(value.shape)} {backend.dtype_name(value)} on "
                f"{backend.device_name(value)} (cast with .astype / move with backend.move first)"
            )
        self.params[name] = value
        self.grads.pop(name, None)
        self.clear_cache()

    @property
    def label(self) -> str:
        """A name for error messages: the module's path if it knows it, else its type."""
        return getattr(self, "path", "") or type(self).__name__

    # ------------------------------------------------------------------ tree
    def add_child(self, name: str, module: "Module") -> "Module":
        self.children[name] = module
        return module

    def named_modules(self, prefix: str = ""):
        """Yield ``(path, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def get_module(self, path: str) -> "Module":
        m = self
        for part in path.split(".") if path else []:
            if part not in m.children:
                raise KeyError(f"{self.label}: no submodule {path!r}")
            m = m.children[part]
        return m

    def set_module(self, path: str, module: "Module") -> None:
        parent_path, _, name = path.rpartition(".")
        parent = self.get_module(parent_path)
        if name not in parent.children:
            raise KeyError(f"{self.label}: no submodule {path!r}")
        parent.children[name] = module

    def set_paths(self) -> "Module":
        """Record each module's path (used in error messages)."""
        for path, m in self.named_modules():
            m.path = path
        return self

    # ------------------------------------------------------------------ parameters
    def named_parameters(self, trainable: bool | None = None) -> dict:
        """``{qualified name: array}``; ``trainable=True/False`` filters, ``None`` keeps all."""
        out = {}
        for path, m in self.named_modules():
            for k, v in m.params.items():
                if trainable is None or (k not in m.frozen) == trainable:
                    out[f"{path}.{k}" if path else k] = v
        return out

    def named_grads(self) -> dict:
        """``{qualified name: gradient}`` from the last backward, trainable parameters only."""
        out = {}
        for path, m in self.named_modules():
            for k, v in m.grads.items():
                out[f"{path}.{k}" if path else k] = v
        return out

    def parameter_table(self) -> list:
        """One ``ParamInfo(name, shape, dtype, trainable, count)`` per parameter."""
        rows = []
        for path, m in self.named_modules():
            for k, v in m.params.items():
                n = 1
                for s in v.shape:
                    n *= int(s)
                name = f"{path}.{k}" if path else k
                rows.append(
                    ParamInfo(name, tuple(v.shape), backend.dtype_name(v), k not in m.frozen, n)
                )
        return rows

    def num_parameters(self, trainable: bool | None = None) -> int:
        return sum(p.count for p in self.parameter_table() if trainable is None or p.trainable == trainable)

    def summary(self) -> str:
        """A printable table of every parameter, then the trainable/total counts."""
        rows = self.parameter_table()
        w = max([len(r.name) for r in rows] + [4])
        lines = [f"{'name':<{w}}  {'shape':<14} {'dtype':<8} {'trainable':<9} {'count':>10}"]
        for r in rows:
            lines.append(
                f"{r.name:<{w}}  {str(r.shape):<14} {r.dtype:<8} {str(r.trainable):<9} {r.count:>10,}"
            )
        t, n = self.num_parameters(True), self.num_parameters()
        lines.append(f"trainable {t:,} of {n:,} parameters ({100.0 * t / max(n, 1):.2f}%)")
        return "\n".join(lines)

    def freeze(self, pattern: str = "*") -> "Module":
        """Freeze every parameter whose qualified name matches the glob ``pattern``."""
        return self._set_frozen(pattern, True)

    def unfreeze(self, pattern: str = "*") -> "Module":
        return self._set_frozen(pattern, False)

    def _set_frozen(self, pattern, frozen):
        for path, m in self.named_modules():
            for k in m.params:
                if fnmatch.fnmatchcase(f"{path}.{k}" if path else k, pattern):
                    (m.frozen.add if frozen else m.frozen.discard)(k)
                    m.grads.pop(k, None)
        return self

    def zero_grad(self) -> None:
        self.grads = {}
        for child in self.children.values():
            child.zero_grad()

    # ------------------------------------------------------------------ which gradients
    def has_trainable(self) -> bool:
        """True if any parameter in this module's subtree is trainable."""
        if any(k not in self.frozen for k in self.params):
            return True
        return any(child.has_trainable() for child in self.children.values())

    def trainable_names(self) -> set:
        """Names of this module's own trainable parameters (not its children's)."""
        return {k for k in self.params if k not in self.frozen}

    def wanted(self) -> set:
        """The gradients this module's pair must compute: its trainable parameters, and "x"
        (the input gradient) when ``need_dx``."""
        return self.trainable_names() | ({"x"} if self.need_dx else set())

    def flow(self, x_requires_grad: bool) -> bool:
        """One step of requires-grad propagation: this module's input requires a gradient iff
        ``x_requires_grad``; its output does iff that, or anything in it trains."""
        self.need_dx = bool(x_requires_grad)
        return self.need_dx or self.has_trainable()

    def wants_dout(self) -> bool:
        """True if a gradient arriving here is used: the input needs one, or something trains."""
        return self.need_dx or self.has_trainable()

    def skips(self, dout) -> bool:
        """True (and this subtree's grads cleared) when there is nothing to do: no gradient
        arrives (``dout`` is None: nothing above needs one) or nothing here uses it."""
        if dout is None or not self.wants_dout():
            self.zero_grad()
            return True
        return False

    def plan_backward(self) -> None:
        """Set each child's ``need_dx`` from this module's, following the forward's dataflow
        (composite modules override this; a layer without children has nothing to plan)."""

    # ------------------------------------------------------------------ state
    def to(self, device) -> "Module":
        """Move every parameter to ``device`` ("cpu", "cuda", or an array namespace)."""
        for _, m in self.named_modules():
            m.params = {k: backend.move(v, device) for k, v in m.params.items()}
            m.grads = {}
            m.clear_cache()
        return self

    def astype(self, dtype: str) -> "Module":
        """Cast every parameter to ``dtype`` ("float16", "float32", "float64")."""
        if dtype not in backend.FLOAT_DTYPES:
            raise ValueError(f"{self.label}: dtype must be one of {backend.FLOAT_DTYPES}, got {dtype!r}")
        for _, m in self.named_modules():
            m.params = {
                k: backend.namespace(v).astype(v, getattr(backend.namespace(v), dtype))
                for k, v in m.params.items()
            }
            m.grads = {}
            m.clear_cache()
        return self

    def state_dict(self) -> dict:
        """``{qualified name: array}`` of every parameter (the arrays themselves, not copies)."""
        return self.named_parameters()

    def load_state_dict(self, arrays: dict) -> "Module":
        """Replace every parameter by ``arrays[name]`` (any backend; moved to this model's device).

        Names, shapes and dtypes must equal the model's exactly. Everything is checked before
        anything changes, so a failed load raises ``ValueError`` and leaves the model as it was.
        """
        current = self.named_parameters()
        if set(arrays) != set(current):
            raise ValueError(
                f"{self.label}: load_state_dict: names differ from the model's: missing "
                f"{sorted(set(current) - set(arrays))[:6]}, unexpected {sorted(set(arrays) - set(current))[:6]}"
            )
        for name, a in arrays.items():
            p = current[name]
            if tuple(a.shape) != tuple(p.shape) or backend.dtype_name(a) != backend.dtype_name(p):
                raise ValueError(
                    f"{self.label}: load_state_dict: {name} has shape {tuple(a.shape)} and dtype "
                    f"{backend.dtype_name(a)}, the model's has shape {tuple(p.shape)} and dtype "
                    f"{backend.dtype_name(p)}"
                )
        device = backend.namespace(next(iter(current.values())))
        for name, a in arrays.items():
            path, _, k = name.rpartition(".")
            self.get_module(path).params[k] = backend.move(a, device)
        self.zero_grad()
        self.clear_cache()
        return self

    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    @contextlib.contextmanager
    def evaluating(self):
        """``with model.evaluating(): ...`` runs the block in eval mode (dropout off) and puts
        back the train/eval mode each module had, even if the block raises."""
        modes = [(m, m.training) for _, m in self.named_modules()]
        self.eval()
        try:
            yield self
        finally:
            for m, mode in modes:
                m.training = mode

    def clear_cache(self) -> None:
        self.__dict__.pop("cache", None)

    @property
    def device(self) -> str:
        for v in self.named_parameters().values():
            return backend.device_name(v)
        return "cpu"

    @property
    def dtype(self) -> str:
        for v in self.named_parameters().values():
            return backend.dtype_name(v)
        return "float32"

    # ------------------------------------------------------------------ LoRA (see nn/lora.py)
    # These import nn/lora.py when called, not at the top: nn/lora.py builds on Module (its
    # LoRALinear *is* a Module), so a top-level import here would be a circle. The methods stay
    # on Module because ``model.add_lora(...)`` is how the README and the notebooks read.
    def add_lora(self, targets=None, **kwargs) -> "Module":
        from .lora import add_lora

        return add_lora(self, targets, **kwargs)

    def lora_layers(self) -> dict:
        from .lora import lora_layers

        return lora_layers(self)

    def merge(self, adapter: str | None = None) -> "Module":
        """Fold the active (or the named) adapter into W on every LoRA layer, all or none."""
        from .lora import merge

        return merge(self, adapter)

    def unmerge(self) -> "Module":
        """Take every merged adapter out of W again (LoRA embeddings included)."""
        from .lora import unmerge

        return unmerge(self)

    # ------------------------------------------------------------------ to override
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)


def add(a, b):
    """a + b for two gradients of one array, where either may be None (no gradient arrived).
    ``a`` must be a fresh array the caller owns: the sum is taken in place in it."""
    if a is None:
        return b
    if b is not None:
        a += b
    return a
