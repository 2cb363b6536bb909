"""Thin stateful modules built from ``minilora.functional``."""
from .linear import Linear, LoRAAdapter, LoRALinear
from .lora import add_lora, layers_with, lora_layers, resolve_targets, wrap_with_lora
from .mlp import MLP
from .module import Module, ParamInfo
from .transformer import GPT, Block, GPTConfig
