"""What the LoRA paper (Hu et al., 2021, arXiv 2106.09685) reports, and GPT-3's numbers from its shapes.

Every number of the paper that the report sets beside a measurement is here, once, with where it
is in the paper. GPT-3's parameter and checkpoint counts are *computed* from the architecture
(96 layers, d_model = 12,288, vocabulary 50,257, context 2,048), never typed in.
"""
from __future__ import annotations

GPT3 = dict(n_layer=96, d_model=12288, vocab=50257, n_ctx=2048)  # GPT-3 175B (Brown et al., 2020, Table 2.1)

PAPER = {
    # §4.2 and Table 4: GPT-3 175B with LoRA on Wq and Wv
    "table4_params_r1": "4.7M",  # the smaller LoRA row of Table 4
    "checkpoint_lora_MB": 35,  # §4.2: "from 350GB to 35MB" (r = 4, Wq and Wv)
    "checkpoint_full_GB": 350,
    "checkpoint_ratio": "10,000×",  # §4.2: "roughly 10,000×" — the checkpoint ratio
    # §4.2: training memory and speed on GPT-3 175B
    "vram_full_TB": 1.2, "vram_lora_GB": 350,  # "from 1.2TB to 350GB"; "up to 2/3" less
    "tokens_per_s_full": 32.5, "tokens_per_s_lora": 43.1,  # the paper's throughput per V100 GPU
    "speedup": "25%",  # §4.2: "a 25% speedup during training ... compared to full fine-tuning"
    # Table 1: adapters add inference latency; LoRA merged adds none ("no additional inference latency")
    # Table 5: an 18M budget on GPT-3 (r = 8 for one weight type, 4 for two, 2 for all four)
    "table5": {  # weight types -> (r, WikiSQL acc ± 0.5%, MultiNLI acc ± 0.1%)
        ("q",): (8, 70.4, 91.0), ("k",): (8, 70.0, 90.8), ("v",): (8, 73.0, 91.0), ("o",): (8, 73.2, 91.3),
        ("q", "k"): (4, 71.4, 91.3), ("q", "v"): (4, 73.7, 91.3), ("q", "k", "v", "o"): (2, 73.7, 91.7),
    },
    # Table 6 (§7.2): r from 1 to 64; in words, since that is what the report compares
    "table6_claim": ("LoRA already performs competitively with a very small r (more so for {Wq, Wv} "
                     "than for Wq alone): r = 1 is enough on {Wq, Wv}, and r = 64 does not beat r = 4–8"),
    # §7.2, Figure 3: subspace similarity between the r = 8 and r = 64 adapters (GPT-3, layer 48)
    "phi_top_direction": "> 0.5",  # "directions corresponding to the top singular vector overlap significantly"
    # §7.3, Table 7: amplification of ΔWq (GPT-3, layer 48)
    "amplification_r4": 21.5,  # ‖ΔWq‖_F = 6.91, ‖Uᵀ Wq Vᵀ‖_F = 0.32
    "amplification_r64": 1.9,  # ‖ΔWq‖_F = 3.57, ‖Uᵀ Wq Vᵀ‖_F = 1.90
}


def lora_params(shapes, r: int) -> int:
    """Trainable parameters of LoRA at rank r on weights of ``shapes`` [(d_out, d_in), ...]:
    each adapted W gets A (r, d_in) and B (d_out, r), so r · (d_in + d_out) numbers."""
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


def gpt3_adapted_shapes(types=("q", "v")) -> list:
    """The (d_out, d_in) of every adapted matrix of GPT-3 175B: one d_model × d_model matrix per
    weight type per layer (the paper's L̂_LoRA = 96 · len(types) matrices)."""
    d = GPT3["d_model"]
    return [(d, d)] * (GPT3["n_layer"] * len(types))


def gpt3_total_params() -> int:
    """GPT-3 175B's parameters from its shapes: per layer 4 d² (attention, with biases 4 d) and
    8 d² (MLP d -> 4d -> d, biases 5 d) and two LayerNorms (4 d); the token and position
    embeddings; a final LayerNorm; the LM head tied to the token embedding."""
    d, L, V, T = GPT3["d_model"], GPT3["n_layer"], GPT3["vocab"], GPT3["n_ctx"]
    per_layer = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d
    return L * per_layer + V * d + T * d + 2 * d


def gpt3_rows() -> dict:
    """Item 1's GPT-3 rows: |Θ| at r = 1 and r = 4 (Wq, Wv), 16-bit bytes, and both ratios."""
    shapes = gpt3_adapted_shapes(("q", "v"))
    total = gpt3_total_params()
    r1, r4 = lora_params(shapes, 1), lora_params(shapes, 4)
    return {
        "total_params": total, "adapted_matrices": len(shapes),
        "lora_params_r1": r1, "lora_params_r4": r4,
        "checkpoint_full_bytes_fp16": 2 * total, "checkpoint_lora_bytes_fp16_r4": 2 * r4,
        "param_ratio_r4": total / r4,
        "checkpoint_ratio_paper": PAPER["checkpoint_full_GB"] * 1e9 / (PAPER["checkpoint_lora_MB"] * 1e6),
    }
