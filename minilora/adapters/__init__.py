"""Adapters as tasks and as files: one frozen base, many small named adapters.

Each LoRA layer (``LoRALinear``) holds named adapters; this package acts on all layers of a
model at once, one public function per verb:

    add_adapter(model, "rotated", targets=["fc1", "fc2"], r=4, alpha=8)
    set_active(model, "rotated")            # layers without it run the base alone
    with adapters_disabled(model): ...      # base only, previous state restored on exit
    model.merge("rotated")                  # W ← W + ΔW on every layer, or on none (nn/lora.py)
    model.unmerge()
    save_adapter(model, "runs/rotated", adapter="rotated")
    load_adapter(model, "runs/rotated", adapter_name="rotated")
    combine_adapters(model, {"a": 1, "b": 1}, "a+b", how="concat")

  named.py        named adapters across layers: add, list, switch, delete; merge drift
  files.py        the PEFT file format: adapter_config.json, adapter_model.safetensors
  fingerprint.py  which base an adapter file belongs to
  combine.py      a new adapter from weighted adapters (concat, svd, linear)
  inspect.py      what an adapter file holds, and why it would not load onto a model
  hotswap.py      another adapter written into a loaded adapter's arrays, in place
  mixed.py        mixed-adapter batches: each row of a batch through its own adapter
  errors.py       AdapterError

``numpy`` is not imported here: arrays cross to the host through ``backend.to_numpy`` for hashing
and file I/O, and come back through ``backend.from_numpy``; all math uses the model's namespace.
"""
from .combine import combine_adapters
from .errors import AdapterError
from .files import (CONFIG_NAME, KEY_RE, PREFIX, WEIGHTS_NAME, adapter_tensors, load_adapter,
                    read_adapter, save_adapter)
from .fingerprint import base_fingerprint
from .hotswap import hotswap_adapter, prepare_for_hotswap
from .inspect import Problem, diagnose, inspect_adapter
from .mixed import mixed_batch
from .named import (AdapterInfo, active_adapters, adapters_disabled, add_adapter, delete_adapter,
                    list_adapters, merge_drift, restore_active, set_active)

__all__ = [
    "AdapterError", "AdapterInfo", "CONFIG_NAME", "KEY_RE", "PREFIX", "Problem", "WEIGHTS_NAME",
    "active_adapters", "adapter_tensors", "adapters_disabled", "add_adapter", "base_fingerprint",
    "combine_adapters", "delete_adapter", "diagnose", "hotswap_adapter", "inspect_adapter", "list_adapters", "mixed_batch",
    "load_adapter", "merge_drift", "prepare_for_hotswap", "read_adapter", "restore_active", "save_adapter",
    "set_active",
]
