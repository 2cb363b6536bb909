"""AdapterHost: what a layer holding named adapters shares — ``LoRALinear`` over its frozen W,
``LoRAEmbedding`` over its frozen table E. Adapters are children of ``self.lora``; one is
``active`` (or none: the base alone), one may be ``merged`` into the frozen weight."""
from __future__ import annotations

from .module import Module


class AdapterHost(Module):
    """The adapter bookkeeping of a LoRA layer; the subclass sets ``weight`` ("W" or "E", for
    messages) and ``self.active``, ``self.merged`` and a ``lora`` child in its ``__init__``."""

    weight = "W"  # the frozen weight's letter in messages

    @property
    def adapters(self) -> dict:
        return self.children["lora"].children

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if self.merged == name:
            raise ValueError(f"{self.label}: adapter {name!r} is merged into {self.weight}; unmerge() first")
        del self.adapters[name]
        if self.active == name:
            self.active = None

    def set_active(self, name: str | None) -> None:
        if name is not None:
            self._require(name)
        if self.merged is not None and name != self.merged:
            raise ValueError(f"{self.label}: adapter {self.merged!r} is merged into {self.weight}; unmerge() "
                             f"before activating {name!r}")
        self.active = name
        self.clear_cache()

    def _require(self, name):
        if name not in self.adapters:
            raise KeyError(f"{self.label}: no adapter {name!r}; adapters: {sorted(self.adapters)}")
