"""Thin stateful modules built from ``minilora.functional`` (or its fast twins, ``minilora.fast``)."""
from .linear import Linear
from .llama import Llama, LlamaConfig
from .lora import LoRAAdapter, LoRALinear, add_lora, layers_with, lora_layers, resolve_targets, wrap_with_lora
from .lora_embedding import LoRAEmbedding, add_lora_embedding, lora_embedding_layers
from .mlp import MLP
from .module import Module, ParamInfo
from .transformer import GPT, Block, GPTConfig
