"""Module: the thin stateful layer over the pure functions.

A module owns three dicts that share keys — ``params`` (name -> array), ``grads`` (filled by
``backward``) and the set ``frozen`` (names that get no gradient) — plus ordered ``children``.
``forward(x)`` keeps the cache it needs; ``backward(dout)`` uses it, *overwrites* ``grads`` for the
trainable parameters (no hidden accumulation across calls) and returns ``dx``.

Qualified names join the path with dots: ``fc1.base.W``, ``fc1.lora.default.A``,
``blocks.0.attn.q.base.W``.
"""
from __future__ import annotations

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
        raise AttributeError(f"{type(self).__name__} has no attribute or parameter {name!r}")

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
        for _, m in self.named_modules():
            m.grads = {}

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
        for layer in self.lora_layers().values():
            layer.unmerge()
        return self

    # ------------------------------------------------------------------ to override
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout, need_dx: bool = True):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)
