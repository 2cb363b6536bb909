"""minilora's MLP and GPT written in plain PyTorch, and the copy of a minilora model into them.

The classes read like llm.c's ``train_gpt2.py`` and nanoGPT's ``model.py``: one short forward
per module, PyTorch's own operations where they exist (``nn.Linear``, ``nn.LayerNorm``,
``nn.Embedding``, ``F.gelu(approximate="tanh")``, ``F.scaled_dot_product_attention``). Their
attribute paths *are* minilora's module paths (``fc1``, ``wte``, ``blocks.0.attn.q``,
``blocks.0.mlp.fc2``, ``ln_f``, ``lm_head``), so PEFT's ``target_modules`` and the state-dict keys
line up; only parameter names change (``W → weight``, ``b → bias``, ``gamma → weight``,
``beta → bias``). LoRA on this side is real PEFT (``peft_twin``): plain LoRA, DoRA
(``use_dora=True``, m copied into ``lora_magnitude_vector``) and LoRA on the token embedding
(PEFT's ``lora.Embedding``, A and B in ``lora_embedding_A`` / ``lora_embedding_B``).

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
from .nn.lora import adapter_layers
from .nn.lora_embedding import LoRAEmbedding
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


def torch_name(name: str, peft: bool = False, embeddings=()) -> str:
    """minilora parameter name → the PyTorch/PEFT one.

    ``fc1.W`` → ``fc1.weight``;  ``fc1.base.W`` → ``fc1.base_layer.weight`` (PEFT) or
    ``fc1.weight`` (plain twin);  ``fc1.lora.default.A`` → ``fc1.lora_A.default.weight``;
    DoRA's ``fc1.lora.default.m`` → ``fc1.lora_magnitude_vector.default.weight``; on a path in
    ``embeddings`` (LoRA token embeddings) ``wte.lora.default.A`` → ``wte.lora_embedding_A.default``.
    With ``peft=True`` the name gets PEFT's ``base_model.model.`` prefix.
    """
    parts = name.split(".")
    if len(parts) >= 3 and parts[-3] == "lora" and parts[-1] in ("A", "B", "m"):
        path, adapter, which = parts[:-3], parts[-2], parts[-1]
        if ".".join(path) in embeddings:
            out = [*path, f"lora_embedding_{which}", adapter]
        elif which == "m":
            out = [*path, "lora_magnitude_vector", adapter, "weight"]
        else:
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
    for path, layer in adapter_layers(model).items():
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

    Every targeted path is listed exactly (LoRA token embeddings too); per-layer r and alpha go in
    ``rank_pattern`` / ``alpha_pattern`` (anchored regexes), so mixed ranks round-trip too. DoRA
    sets ``use_dora=True``; PEFT has one such switch, so DoRA and plain LoRA layers, or DoRA and an
    embedding (minilora runs DoRA on linear layers only), cannot be mixed.
    """
    layers = {p: m for p, m in adapter_layers(model).items() if m.active is not None}
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
    dora = {p: getattr(a, "dora", False) for p, a in ads.items()}  # an embedding adapter has no DoRA
    if len(set(dora.values())) != 1:
        plain = [p for p, d in dora.items() if not d]
        raise ValueError(f"lora_config: adapter {adapter!r} is DoRA on {[p for p, d in dora.items() if d]} but plain "
                         f"LoRA on {plain}; PEFT's use_dora is one switch for every target")
    config = peft.LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        use_rslora=first.rslora,
        target_modules=list(ads),
        rank_pattern={f"^{p}$": a.r for p, a in ads.items() if a.r != first.r},
        alpha_pattern={f"^{p}$": a.alpha for p, a in ads.items() if a.alpha != first.alpha},
        lora_dropout=0.0,  # replaced by MaskReplay: minilora draws the masks
        bias="none",
        use_dora=next(iter(dora.values())),
    )
    return config, adapter


class ExactDora(peft.tuners.lora.dora.DoraLinearLayer):
    """PEFT's DoRA term with the row norm ‖W + scale · B A‖ kept in the graph.

    PEFT detaches the norm (the DoRA paper's §4.3), which is minilora's ``dora_exact=False``;
    minilora's default differentiates through it. This is PEFT's ``DoraLinearLayer.forward``
    with its two ``.detach()`` calls left out, so autograd gives the exact gradients.
    """

    def forward(self, x, *, lora_A, lora_B, scaling, base_layer, base_result=None, adapter_name="default"):
        lora_weight = self.get_lora_weight(lora_A=lora_A, lora_B=lora_B).to(x.dtype)  # B A (d_out, d_in)
        weight = base_layer.weight.to(x.dtype)  # W (d_out, d_in)
        weight_norm = self.get_weight_norm(weight, lora_weight, scaling)  # ‖W + scale · B A‖ (d_out,)
        mag_norm_scale = (self.weight / weight_norm).view(1, -1)  # m / n (1, d_out)
        lora_result = lora_B(lora_A(x))  # (..., d_out)
        if base_result is not None:  # x W ᵀ without the bias
            if base_layer.bias is not None:
                base_result = base_result - base_layer.bias
        else:
            base_result = F.linear(x, weight)
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling


def peft_twin(model, dtype: str = "float64"):
    """``get_peft_model`` on ``torch_twin(model)`` with minilora's A and B (and DoRA's m) copied in
    and each linear layer's ``lora_dropout`` replaced by a ``MaskReplay`` (PEFT's embedding path
    has no dropout). A DoRA adapter with ``dora_exact=True`` gets an ``ExactDora`` term, so the
    gradients are the exact ones minilora computes. Returns ``(peft_model, adapter_name)``."""
    config, adapter = lora_config(model)
    pm = peft.get_peft_model(torch_twin(model, dtype), config, adapter_name=adapter)
    embeddings = embedding_layers(model)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for path, layer in adapter_layers(model).items():
            if layer.active != adapter:
                continue
            ad = layer.adapters[adapter]
            twin_layer = pm.base_model.model.get_submodule(path)
            if getattr(ad, "dora", False) and ad.dora_exact:
                twin_layer.lora_magnitude_vector[adapter] = ExactDora(fan_in_fan_out=False)
                twin_layer.lora_magnitude_vector[adapter].weight = nn.Parameter(to_torch(ad.params["m"], dtype))
                params = dict(pm.named_parameters())
            for k in ad.params:  # A, B, and m for DoRA
                name = torch_name(f"{path}.lora.{adapter}.{k}", peft=True, embeddings=embeddings)
                params[name].copy_(to_torch(ad.params[k], dtype))
            if path not in embeddings:
                twin_layer.lora_dropout[adapter] = MaskReplay()
    return pm, adapter


def embedding_layers(model) -> set:
    """Paths of ``model``'s LoRA token embeddings (``torch_name``'s ``embeddings``)."""
    return {p for p, m in adapter_layers(model).items() if isinstance(m, LoRAEmbedding)}


def replay_masks(model, pm, adapter) -> None:
    """Copy the dropout mask each minilora LoRA layer used in its last forward into PEFT (a DoRA
    layer's too: PEFT's DoRA term reads the same x̃ = x ⊙ mask)."""
    for path, layer in model.lora_layers().items():
        kind, cache = getattr(layer, "cache", ("base", None))
        mask = cache.mask if kind in ("lora", "dora") and cache.mask is not None else None
        replay = pm.base_model.model.get_submodule(path).lora_dropout[adapter]
        replay.mask = None if mask is None else to_torch(mask)
