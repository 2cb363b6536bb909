"""The models and batches every checker uses: ``minilora gradcheck``'s finite differences, the
PyTorch/PEFT cross-check and the adapter-file round trips.

    cases(full, seed)        {name: build},  build() -> (model, x, y, loss)     float64
    interop_cases(seed)      {name: build},  build() -> (model, x, y, targets)  float32, no LoRA

No PyTorch here, directly or not: the finite-difference report builds its models from this module
and runs on a machine without torch.
"""
from __future__ import annotations

from . import backend
from .nn.mlp import MLP
from .nn.transformer import GPT, GPTConfig

ALL_LINEARS = ["q", "k", "v", "o", "fc1", "fc2", "lm_head"]  # "LoRA on all linear layers" of a GPT


def perturb_lora_B(model, seed=0, std: float = 0.5):
    """Give every adapter's B random values (it starts at 0, where dA = 0 and A's gradient check
    would pass trivially). Returns the model."""
    gen = backend.rng(seed)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            B[...] = backend.from_numpy(std * gen.standard_normal(tuple(B.shape)), backend.namespace(B))
    return model


def _gpt_config(full: bool):
    """The GPT sizes of the checks, and the batch shape ``(B, T)``."""
    if full:
        return GPTConfig(vocab_size=17, n_ctx=16, n_layer=2, n_head=4, n_embd=32), (4, 12)
    return GPTConfig(vocab_size=11, n_ctx=8, n_layer=2, n_head=2, n_embd=8), (2, 5)


def gpt_for_checks(full: bool = False, seed: int = 0):
    """The float64 GPT both checkers use, and its batch shape ``(B, T)``.

    Weights are drawn with std 0.5, not GPT-2's 0.02: at 0.02 the q/k gradients are ~1e-5 and
    fall into finite-difference roundoff. The key bias is frozen: its exact gradient is 0
    (softmax ignores a constant added to a row of scores), so both frameworks return rounding
    noise there — a relative error of two roundings of 0 means nothing, and Adam would step by
    the sign of that noise (it is tested apart to be ~0).
    """
    config, BT = _gpt_config(full)
    return GPT(config, seed=seed, dtype="float64", init_std=0.5).freeze("*.attn.k.b"), BT


def cases(full: bool = False, seed: int = 0, masks: bool = True) -> dict:
    """Named check cases: ``{name: build}``, ``build() -> (model, x, y, loss)``, float64.

    MLP and GPT, full fine-tuning and LoRA on the attention q, v or on every linear layer; with
    ``masks`` also the LoRA cases with dropout on, whose masks minilora draws (the PyTorch side
    replays them). Finite differences run in eval mode, where a mask case is its unmasked twin,
    so they pass ``masks=False``.
    """
    sizes, N = ((32, 48, 24, 10), 16) if full else ((5, 7, 3), 6)

    def mlp(activation, targets=None, dropout=0.0, loss="cross_entropy", rslora=False):
        def build():
            gen = backend.rng(seed)
            model = MLP(sizes, activation, seed=seed, dtype="float64")
            if targets is not None:
                model.add_lora(targets, r=2, alpha=4, rslora=rslora, dropout=dropout, seed=seed)
                perturb_lora_B(model, seed)
            model.train()
            x = gen.standard_normal((N, sizes[0]))
            y = gen.integers(0, sizes[-1], N) if loss == "cross_entropy" else gen.standard_normal((N, sizes[-1]))
            return model, x, y, loss
        return build

    def gpt(targets=None, dropout=0.0):
        def build():
            gen = backend.rng(seed)
            model, (B, T) = gpt_for_checks(full, seed)
            if targets is not None:
                model.add_lora(targets, r=2, alpha=4, dropout=dropout, seed=seed)
                perturb_lora_B(model, seed)
            model.train()
            V = model.config.vocab_size
            ids = gen.integers(0, V, (B, T))
            return model, ids, gen.integers(0, V, (B, T)), "cross_entropy"
        return build

    out = {
        "mlp full": mlp("gelu"),
        "mlp lora(all)": mlp("relu", ["fc*"]),
        "mlp lora(all) mask": mlp("gelu", ["fc*"], dropout=0.3),
        "mlp lora(fc1) rslora mse": mlp("gelu", ["fc1"], loss="mse", rslora=True),
        "gpt full": gpt(),
        "gpt lora(q,v)": gpt(["q", "v"]),
        "gpt lora(q,v) mask": gpt(["q", "v"], dropout=0.25),
        "gpt lora(all)": gpt(ALL_LINEARS),
        "gpt lora(all) mask": gpt(ALL_LINEARS, dropout=0.25),
    }
    return out if masks else {k: v for k, v in out.items() if not k.endswith(" mask")}


def interop_cases(seed: int = 0) -> dict:
    """``{name: build}`` for the adapter-file checks (float32): ``build() -> (model, x, y,
    targets)``, ``model`` being a base without LoRA."""

    def mlp():
        gen = backend.rng(seed)
        model = MLP((5, 7, 3), "gelu", seed=seed, dtype="float32")
        return model, gen.standard_normal((6, 5)).astype("float32"), gen.integers(0, 3, 6), ["fc1", "fc2"]

    def gpt():
        gen = backend.rng(seed)
        config, BT = _gpt_config(full=False)
        model = GPT(config, seed=seed, dtype="float32", init_std=0.5)
        V = config.vocab_size
        return model, gen.integers(0, V, BT), gen.integers(0, V, BT), ["q", "v"]

    return {"MLP": mlp, "GPT": gpt}
