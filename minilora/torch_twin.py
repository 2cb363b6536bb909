"""minilora's MLP and GPT written in plain PyTorch, and the copy of a minilora model into them.

The classes read like llm.c's ``train_gpt2.py`` and nanoGPT's ``model.py``: one short forward
per module, PyTorch's own operations where they exist (``nn.Linear``, ``nn.LayerNorm``,
``nn.Embedding``, ``F.gelu(approximate="tanh")``, ``F.scaled_dot_product_attention``). Their
attribute paths *are* minilora's module paths (``fc1``, ``wte``, ``blocks.0.attn.q``,
``blocks.0.mlp.fc2``, ``ln_f``, ``lm_head``), so PEFT's ``target_modules`` and the state-dict keys
line up; only parameter names change (``W → weight``, ``b → bias``, ``gamma → weight``,
``beta → bias``). LoRA on this side is real PEFT (``peft_twin``).

    torch_twin(model)   a PyTorch model computing what ``model`` computes without LoRA
    peft_twin(model)    get_peft_model on it, with minilora's A and B copied in

This module imports torch and peft at its top; ``minilora.crosscheck`` imports it only once
``require()`` has found them, so importing minilora never imports torch.
"""
from __future__ import annotations

import numpy as np
import peft
import torch
import torch.nn as nn
from torch.nn import functional as F

from . import backend
from .nn.mlp import MLP as MiniloraMLP
from .nn.transformer import GPT as MiniloraGPT

# ----------------------------------------------------------------------------- the models


class MLP(nn.Module):
    """minilora's ``MLP``: fc1 → act → fc2 → … → fcL, no activation after the last."""

    def __init__(self, sizes, activation, dtype):
        super().__init__()
        self.names = [f"fc{i}" for i in range(1, len(sizes))]
        for name, d_in, d_out in zip(self.names, sizes[:-1], sizes[1:]):
            setattr(self, name, nn.Linear(d_in, d_out, dtype=dtype))
        self.activation = activation

    def forward(self, x):
        *hidden, last = [getattr(self, name) for name in self.names]
        for fc in hidden:
            x = fc(x)
            x = F.relu(x) if self.activation == "relu" else F.gelu(x, approximate="tanh")
        return last(x)


class CausalSelfAttention(nn.Module):
    """q, k, v, o (C → C, with bias) around PyTorch's own causal attention."""

    def __init__(self, C, n_head, dtype):
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(C, C, dtype=dtype)
        self.k = nn.Linear(C, C, dtype=dtype)
        self.v = nn.Linear(C, C, dtype=dtype)
        self.o = nn.Linear(C, C, dtype=dtype)

    def forward(self, x):
        B, T, C = x.size()
        H = self.n_head
        q = self.q(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        v = self.v(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # softmax(q kᵀ/√hd + M) v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.o(y)


class FeedForward(nn.Module):
    """mlp(x) = fc2(GELU(fc1(x)))."""

    def __init__(self, C, hidden, dtype):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden, dtype=dtype)
        self.fc2 = nn.Linear(hidden, C, dtype=dtype)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm residual: h = x + attn(ln1(x)),  out = h + mlp(ln2(h))."""

    def __init__(self, config, dtype):
        super().__init__()
        C = config.n_embd
        self.ln1 = nn.LayerNorm(C, eps=config.ln_eps, dtype=dtype)
        self.attn = CausalSelfAttention(C, config.n_head, dtype)
        self.ln2 = nn.LayerNorm(C, eps=config.ln_eps, dtype=dtype)
        self.mlp = FeedForward(C, config.mlp_ratio * C, dtype)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    """minilora's ``GPT``: wte, wpe, blocks.{i}, ln_f, lm_head (no bias, not tied to wte)."""

    def __init__(self, config, dtype):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, dtype=dtype)
        self.wpe = nn.Embedding(config.n_ctx, config.n_embd, dtype=dtype)
        self.blocks = nn.ModuleList([Block(config, dtype) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.ln_eps, dtype=dtype)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, dtype=dtype)

    def forward(self, ids):
        B, T = ids.size()
        pos = torch.arange(0, T, dtype=torch.long)  # (T,)
        x = self.wte(ids) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x)  # (B, T, V)


class MaskReplay(nn.Module):
    """Stands in for PEFT's ``lora_dropout``: x̃ = x ⊙ mask with the mask minilora drew
    (identity while ``mask`` is None). minilora may run a layer on rows flattened to (N, d_in)
    where PyTorch keeps (B, T, d_in): the same rows in the same order, so the mask is reshaped to
    x's shape."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return x if self.mask is None else x * self.mask.reshape(x.shape)


def torch_loss(loss: str, out, y):
    """``F.cross_entropy`` over every position, or ``F.mse_loss``: minilora's ``LOSSES[loss]``."""
    if loss == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
    if loss == "mse":
        return F.mse_loss(out, y)
    raise ValueError(f"unknown loss {loss!r}")


# ----------------------------------------------------------------------------- copying the weights


def to_torch(a, dtype: str | None = None):
    """A PyTorch CPU tensor copied from any backend's array (optionally cast)."""
    a = np.array(backend.to_numpy(a))  # a copy: the tensor never aliases minilora's arrays
    t = torch.from_numpy(a)
    return t if dtype is None else t.to(getattr(torch, dtype))


_TORCH_PARAM = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}


def torch_name(name: str, peft: bool = False) -> str:
    """minilora parameter name → the PyTorch/PEFT one.

    ``fc1.W`` → ``fc1.weight``;  ``fc1.base.W`` → ``fc1.base_layer.weight`` (PEFT) or
    ``fc1.weight`` (plain twin);  ``fc1.lora.default.A`` → ``fc1.lora_A.default.weight``.
    With ``peft=True`` the name gets PEFT's ``base_model.model.`` prefix.
    """
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] == "lora" and parts[-1] in ("A", "B"):
        path, adapter, which = parts[:-3], parts[-2], parts[-1]
        out = [*path, f"lora_{which}", adapter, "weight"]
    elif len(parts) >= 2 and parts[-2] == "base":
        out = [*parts[:-2], *(["base_layer"] if peft else []), _TORCH_PARAM[parts[-1]]]
    else:
        out = [*parts[:-1], _TORCH_PARAM[parts[-1]]]
    return ("base_model.model." if peft else "") + ".".join(out)


def torch_twin(model, dtype: str = "float64"):
    """A PyTorch model computing what ``model`` computes *without* LoRA, from its base arrays.

    Attribute names equal minilora's module paths; LoRA layers contribute their frozen base.
    Supports ``MLP`` and ``GPT``. Raises ``ValueError`` if an adapter is merged into W.
    """
    for path, layer in model.lora_layers().items():
        if layer.merged is not None:
            raise ValueError(f"torch_twin: {path} has adapter {layer.merged!r} merged; unmerge() first")
    if isinstance(model, MiniloraMLP):
        twin = MLP(model.sizes, model.activation, getattr(torch, dtype))
    elif isinstance(model, MiniloraGPT):
        twin = GPT(model.config, getattr(torch, dtype))
    else:
        raise TypeError(f"torch_twin: no PyTorch twin for {type(model).__name__}")
    state = {
        torch_name(k): to_torch(v, dtype)
        for k, v in model.named_parameters().items()
        if ".lora." not in k
    }
    twin.load_state_dict(state, strict=True)
    return twin


# ----------------------------------------------------------------------------- PEFT


def lora_config(model):
    """PEFT ``LoraConfig`` equivalent to ``model``'s active LoRA layers, and the adapter name.

    Every targeted path is listed exactly; per-layer r and alpha go in ``rank_pattern`` /
    ``alpha_pattern`` (anchored regexes), so mixed ranks round-trip too.
    """
    layers = {p: m for p, m in model.lora_layers().items() if m.active is not None}
    if not layers:
        raise ValueError("lora_config: the model has no active LoRA layer")
    names = {m.active for m in layers.values()}
    if len(names) != 1:
        raise ValueError(f"lora_config: PEFT needs one adapter name, the layers use {sorted(names)}")
    (adapter,) = names
    ads = {p: m.adapters[adapter] for p, m in layers.items()}
    first = next(iter(ads.values()))
    if len({a.rslora for a in ads.values()}) != 1:
        raise ValueError("lora_config: rsLoRA must be on or off for every layer")
    config = peft.LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        use_rslora=first.rslora,
        target_modules=list(ads),
        rank_pattern={f"^{p}$": a.r for p, a in ads.items() if a.r != first.r},
        alpha_pattern={f"^{p}$": a.alpha for p, a in ads.items() if a.alpha != first.alpha},
        lora_dropout=0.0,  # replaced by MaskReplay: minilora draws the masks
        bias="none",
    )
    return config, adapter


def peft_twin(model, dtype: str = "float64"):
    """``get_peft_model`` on ``torch_twin(model)`` with minilora's A and B copied in and each
    ``lora_dropout`` replaced by a ``MaskReplay``. Returns ``(peft_model, adapter_name)``."""
    config, adapter = lora_config(model)
    pm = peft.get_peft_model(torch_twin(model, dtype), config, adapter_name=adapter)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for path, layer in model.lora_layers().items():
            ad = layer.adapters[adapter]
            for k in ("A", "B"):
                name = torch_name(f"{path}.lora.{adapter}.{k}", peft=True)
                params[name].copy_(to_torch(ad.params[k], dtype))
            pm.base_model.model.get_submodule(path).lora_dropout[adapter] = MaskReplay()
    return pm, adapter


def replay_masks(model, pm, adapter) -> None:
    """Copy the dropout mask each minilora LoRA layer used in its last forward into PEFT."""
    for path, layer in model.lora_layers().items():
        kind, cache = getattr(layer, "cache", ("base", None))
        mask = cache.mask if kind == "lora" and cache.mask is not None else None
        replay = pm.base_model.model.get_submodule(path).lora_dropout[adapter]
        replay.mask = None if mask is None else to_torch(mask)
