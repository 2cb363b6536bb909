"""minilora: LoRA from first principles, every gradient written by hand, on NumPy or CuPy.

    y = x Wᵀ + b + (alpha / r) · (x Aᵀ) Bᵀ,   W frozen, A (r, d_in) and B (d_out, r) trained.
"""
from . import adapters, backend, fast, functional, gradcheck
from .adapters import load_adapter, save_adapter
from .checkpoint import load_weights, save_weights
from .data.text import CharTokenizer
from .data.text import batches as text_batches
from .fast.runtime import blas_threads
from .experiments.gpt_demo import pretrained_gpt
from .language import generate_text, text_loss
from .gradcheck import check_model, check_pair, rel_error
from .nn import GPT, MLP, GPTConfig, Linear, Llama, LlamaConfig, LoRALinear, Module, add_lora
from .nn.lora_embedding import LoRAEmbedding, add_lora_embedding
from .optim import SGD, AdamW, create_loraplus_optimizer, loraplus_groups
from .pretrained import smollm2, smollm2_tokenizer
from .train import fit, train_step

__version__ = "0.1.0"
