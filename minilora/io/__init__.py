"""Other people's files: GGUF (llama.cpp's format) and ggml's block quantisations.

    from minilora.io import read_gguf, smollm2_path, llama_config, llama_weights
    g = read_gguf(smollm2_path())
    weights = llama_weights(g)                  # HF LlamaForCausalLM names, float32 (d_out, d_in)

``quant``: Q8_0 and Q4_1 dequantised in NumPy, and ``Q4_1Weight`` (a frozen weight kept 4-bit).
``gguf``: the reader (on top of the ``gguf`` package, imported only when a file is read), the
Llama config and weights with q/k un-permuted back to Hugging Face's row order.
"""
from .gguf import (GGUFError, GGUFFile, GGUFTensor, llama_config, llama_names, llama_weights, read_gguf,
                   reverse_permute, smollm2_path)
from .quant import Q4_1Weight, dequantize, dequantize_q4_1, dequantize_q8_0
