"""A small GPT (decoder-only transformer) built from the pairs in ``minilora.functional``.

    x₀ = wte[ids] + wpe[0:T]                                       (B, T, C)
    for each block:  h = x + attn(ln1(x));   x = h + mlp(ln2(h))   pre-LayerNorm residual
    logits = ln_f(x) Wₕᵀ                                           (B, T, V)

    attn(x) = o(merge(softmax(q kᵀ/√hd + M) v)),  q, k, v = split(q(x)), split(k(x)), split(v(x))
    mlp(x)  = fc2(GELU(fc1(x)))

Module paths (a contract shared with the PEFT adapter files and the PyTorch twin):
``wte``, ``wpe``, ``blocks.{i}.ln1``, ``blocks.{i}.attn.{q,k,v,o}``, ``blocks.{i}.ln2``,
``blocks.{i}.mlp.{fc1,fc2}``, ``ln_f``, ``lm_head``; parameters ``W``/``b`` (Linear),
``gamma``/``beta`` (LayerNorm), ``W`` (embeddings). ``lm_head`` has no bias and is not tied to
``wte``. LoRA goes on any of the six linears per block by name (``add_lora(gpt, ["q", "v"])``);
the modules call their children by name, so a ``LoRALinear`` put in a ``Linear``'s place just works.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import backend, checks, fast
from ..functional.attention import merge_heads, split_heads
from ..functional.embedding import (
    embedding_backward,
    embedding_forward,
    position_backward,
    position_forward,
)
from .linear import Linear
from .module import Module, add


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT. ``GPTConfig.preset("tiny", vocab_size=97)`` starts from a named preset."""

    vocab_size: int = 97  # V: token ids lie in [0, V); 97 = minilora.data.text's characters
    n_ctx: int = 64  # the context length: most positions per sequence (rows of wpe)
    n_layer: int = 4  # number of blocks
    n_head: int = 4  # H: attention heads; must divide n_embd
    n_embd: int = 128  # C: the residual width; each head has hd = C / H channels
    mlp_ratio: int = 4  # fc1 maps C -> mlp_ratio · C, fc2 maps back
    ln_eps: float = 1e-5  # ε of every LayerNorm
    init_std: float = 0.02  # N(0, std²) for weights (GPT-2); o and fc2 use std / √(2 n_layer)

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            checks.positive_int("GPTConfig", name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_head = {self.n_head} must divide n_embd = {self.n_embd} "
                f"(each head gets n_embd / n_head channels)"
            )
        if not self.ln_eps > 0 or not self.init_std > 0:
            raise ValueError(
                f"GPTConfig: ln_eps and init_std must be positive, got {self.ln_eps!r}, {self.init_std!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"GPTConfig: unknown preset {name!r}; presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)


PRESETS = {
    # tests and the demo's quick mode: ~12k parameters, milliseconds per step
    "tiny": dict(n_ctx=16, n_layer=2, n_head=2, n_embd=16),
    # the demo: ~0.2M parameters, trains on 2 CPU cores in a couple of minutes
    "small": dict(n_ctx=64, n_layer=3, n_head=4, n_embd=64),
}


def _normal_linear(d_in, d_out, std, gen, bias=True, dtype="float32", device="cpu") -> Linear:
    """A ``Linear`` with GPT-2's init: W ~ N(0, std²), b = 0 (drawn from the model's generator)."""
    layer = Linear(d_in, d_out, bias=bias, seed=0, dtype=dtype, device=device)  # shapes; W replaced
    layer.params["W"] = backend.normal(gen, (d_out, d_in), std, dtype, device)
    if bias:
        layer.params["b"] = backend.zeros((d_out,), dtype, device)
    return layer


# ----------------------------------------------------------------------------- layers


class LayerNorm(Module):
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β over the last axis; γ = 1, β = 0 at init.  x (..., C)."""

    def __init__(self, C: int, eps: float = 1e-5, dtype="float32", device="cpu"):
        super().__init__()
        checks.positive_int("LayerNorm", "C", C)
        self.eps = eps
        self.params["gamma"] = backend.zeros((C,), dtype, device) + 1.0
        self.params["beta"] = backend.zeros((C,), dtype, device)

    def forward(self, x):
        layernorm_forward, _ = fast.pair("layernorm")
        y, self.cache = layernorm_forward(x, self.params["gamma"], self.params["beta"], self.eps)
        return y

    def backward(self, dout):
        if self.skips(dout):
            return None
        _, layernorm_backward = fast.pair("layernorm")
        dx, self.grads = layernorm_backward(dout, self.cache, need=self.wanted())
        return dx


class Embedding(Module):
    """out = W[ids] with W (V, C) ~ N(0, std²).  ids (...) integers -> out (..., C)."""

    def __init__(self, V: int, C: int, std: float = 0.02, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        checks.positive_int("Embedding", "V", V)
        checks.positive_int("Embedding", "C", C)
        self.params["W"] = backend.normal(backend.rng(seed), (V, C), std, dtype, device)

    def forward(self, ids):
        out, self.cache = embedding_forward(ids, self.params["W"])
        return out

    def backward(self, dout):
        """Fills ``grads["W"]`` unless frozen (then the one-hot product is skipped); returns None
        (ids are integers: no input gradient)."""
        if self.skips(dout):
            return None
        self.grads = embedding_backward(dout, self.cache)[1]
        return None


class PositionEmbedding(Module):
    """out = W[0:T] with W (n_ctx, C) ~ N(0, std²): one learned vector per position."""

    def __init__(self, n_ctx: int, C: int, std: float = 0.02, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        checks.positive_int("PositionEmbedding", "n_ctx", n_ctx)
        self.params["W"] = backend.normal(backend.rng(seed), (n_ctx, C), std, dtype, device)

    def forward(self, T: int):
        out, self.cache = position_forward(self.params["W"], T)
        return out  # (T, C)

    def backward(self, dout):
        """dW[t] = Σ_batch dout[:, t] unless frozen; returns None (positions are not inputs)."""
        if self.skips(dout):
            return None
        self.grads = {"W": position_backward(dout, self.cache)[1]["P"]}
        return None


class CausalSelfAttention(Module):
    """out = o(merge(softmax(q kᵀ/√hd + M) v)) with q, k, v = split(q(x)), split(k(x)), split(v(x)).

    Children ``q``, ``k``, ``v``, ``o``: Linear (C -> C) with bias.  x (B, T, C) -> (B, T, C).
    """

    def __init__(self, C: int, n_head: int, std=0.02, proj_std=0.02, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        if C % n_head:
            raise ValueError(f"CausalSelfAttention: n_head = {n_head} must divide the width C = {C}")
        self.n_head = n_head
        gen = backend.rng(seed)
        for name in ("q", "k", "v", "o"):
            s = proj_std if name == "o" else std
            self.add_child(name, _normal_linear(C, C, s, gen, dtype=dtype, device=device))

    def forward(self, x):
        B, T, C = x.shape
        ch, H, xp = self.children, self.n_head, backend.namespace(x)
        x2 = xp.reshape(x, (B * T, C))  # (N, C) view: 2-D matmuls run far faster than 3-D ones
        q = split_heads(xp.reshape(ch["q"].forward(x2), (B, T, C)), H)  # (B, H, T, hd)
        k = split_heads(xp.reshape(ch["k"].forward(x2), (B, T, C)), H)
        v = split_heads(xp.reshape(ch["v"].forward(x2), (B, T, C)), H)
        attention_forward, _ = fast.pair("attention")
        y, self.cache = attention_forward(q, k, v)  # (B, H, T, hd)
        y = ch["o"].forward(xp.reshape(merge_heads(y), (B * T, C)))  # (N, C)
        return xp.reshape(y, (B, T, C))

    def plan_backward(self) -> None:
        ch = self.children
        qkv = [ch[n].flow(self.need_dx) for n in ("q", "k", "v")]  # all three read x
        ch["o"].flow(any(qkv))

    def backward(self, dout):
        """dy = oᵀ(dout);  dq, dk, dv = attentionᵀ(dy);  dx = qᵀ(dq) + kᵀ(dk) + vᵀ(dv)."""
        if self.skips(dout):
            return None
        self.plan_backward()
        B, T, C = dout.shape
        ch, H, xp = self.children, self.n_head, backend.namespace(dout)
        dy = ch["o"].backward(xp.reshape(dout, (B * T, C)))  # (N, C)
        need = [n for n in ("q", "k", "v") if ch[n].wants_dout()]  # each one skipped saves a product
        _, attention_backward = fast.pair("attention")
        g = attention_backward(split_heads(xp.reshape(dy, (B, T, C)), H), self.cache, need=need)[1] if need else {}
        dx = None
        for n in ("q", "k", "v"):
            d = None if n not in g else xp.reshape(merge_heads(g[n]), (B * T, C))
            dx = add(ch[n].backward(d), dx)  # each backward's dx is fresh: summed in place
        return None if dx is None else xp.reshape(dx, (B, T, C))


class FeedForward(Module):
    """out = fc2(GELU(fc1(x))), fc1: C -> hidden, fc2: hidden -> C (hidden = mlp_ratio · C; GELU
    in its tanh form)."""

    def __init__(self, C: int, hidden: int, std=0.02, proj_std=0.02, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        gen = backend.rng(seed)
        self.add_child("fc1", _normal_linear(C, hidden, std, gen, dtype=dtype, device=device))
        self.add_child("fc2", _normal_linear(hidden, C, proj_std, gen, dtype=dtype, device=device))

    def forward(self, x):
        xp = backend.namespace(x)
        x2 = xp.reshape(x, (-1, x.shape[-1]))  # (N, C) view: 2-D matmuls run far faster than 3-D
        gelu_forward, _ = fast.pair("gelu")
        a, self.cache = gelu_forward(self.children["fc1"].forward(x2))  # (N, 4C)
        return xp.reshape(self.children["fc2"].forward(a), tuple(x.shape))

    def plan_backward(self) -> None:
        self.children["fc2"].flow(self.children["fc1"].flow(self.need_dx))

    def backward(self, dout):
        """da = fc2ᵀ(dout);  dh = GELUᵀ(da);  dx = fc1ᵀ(dh)."""
        if self.skips(dout):
            return None
        self.plan_backward()
        xp = backend.namespace(dout)
        _, gelu_backward = fast.pair("gelu")
        da = self.children["fc2"].backward(xp.reshape(dout, (-1, dout.shape[-1])))  # (N, 4C)
        dh = None if da is None else gelu_backward(da, self.cache)[0]
        dx = self.children["fc1"].backward(dh)
        return None if dx is None else xp.reshape(dx, tuple(dout.shape))


class Block(Module):
    """Pre-LayerNorm residual block:  h = x + attn(ln1(x));  y = h + mlp(ln2(h)).  (B, T, C)."""

    def __init__(self, config: GPTConfig, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        c, gen = config, backend.rng(seed)
        proj_std = c.init_std / math.sqrt(2 * c.n_layer)  # GPT-2: residual writes shrink with depth
        kw = dict(dtype=dtype, device=device)
        self.add_child("ln1", LayerNorm(c.n_embd, c.ln_eps, **kw))
        self.add_child("attn", CausalSelfAttention(c.n_embd, c.n_head, c.init_std, proj_std, gen, **kw))
        self.add_child("ln2", LayerNorm(c.n_embd, c.ln_eps, **kw))
        self.add_child("mlp", FeedForward(c.n_embd, c.mlp_ratio * c.n_embd, c.init_std, proj_std, gen, **kw))

    def forward(self, x):
        ch = self.children
        h = x + ch["attn"].forward(ch["ln1"].forward(x))
        return h + ch["mlp"].forward(ch["ln2"].forward(h))

    def plan_backward(self) -> None:
        ch, x = self.children, self.need_dx
        h = ch["attn"].flow(ch["ln1"].flow(x)) or x  # h = x + attn(ln1(x))
        ch["mlp"].flow(ch["ln2"].flow(h))  # y = h + mlp(ln2(h))

    def backward(self, dy):
        """dh = dy + ln2ᵀ(mlpᵀ(dy));  dx = dh + ln1ᵀ(attnᵀ(dh))   (the residuals pass d through)."""
        if self.skips(dy):
            return None
        self.plan_backward()
        ch = self.children
        dh = add(ch["ln2"].backward(ch["mlp"].backward(dy)), dy)
        dx = add(ch["ln1"].backward(ch["attn"].backward(dh)), dh)
        return dx if self.need_dx else None


# ----------------------------------------------------------------------------- the model


class GPT(Module):
    """A character-level GPT: ids (B, T) int -> logits (B, T, V).

    ``GPT("tiny", vocab_size=97)`` or ``GPT(GPTConfig(...))``. Weights are drawn on the CPU by a
    NumPy generator seeded with ``seed`` (so NumPy and CuPy runs start equal), cast to ``dtype``
    and moved to ``device``.
    """

    default_lora_targets = ("q", "v")  # the paper's choice: W_q and W_v in every block

    def __init__(self, config="tiny", seed=0, dtype="float32", device="cpu", **overrides):
        super().__init__()
        if isinstance(config, str):
            config = GPTConfig.preset(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig or a preset name, got {type(config).__name__}")
        self.config = c = config
        gen = backend.rng(seed)
        kw = dict(dtype=dtype, device=device)
        self.add_child("wte", Embedding(c.vocab_size, c.n_embd, c.init_std, gen, **kw))
        self.add_child("wpe", PositionEmbedding(c.n_ctx, c.n_embd, c.init_std, gen, **kw))
        blocks = self.add_child("blocks", Module())
        for i in range(c.n_layer):
            blocks.add_child(str(i), Block(c, gen, **kw))
        self.add_child("ln_f", LayerNorm(c.n_embd, c.ln_eps, **kw))
        self.add_child("lm_head", _normal_linear(c.n_embd, c.vocab_size, c.init_std, gen, bias=False, **kw))
        self.set_paths()

    def check_ids(self, ids) -> None:
        """``TypeError``/``ValueError`` naming ``ids`` unless it is (B, T) integers, T <= n_ctx."""
        checks.token_ids("GPT", ids, self.config.n_ctx)

    def forward(self, ids):
        """ids (B, T) integers in [0, V), T <= n_ctx  ->  logits (B, T, V)."""
        self.check_ids(ids)
        ch = self.children
        x = ch["wte"].forward(ids) + ch["wpe"].forward(ids.shape[1])  # (B, T, C)
        for block in ch["blocks"].children.values():
            x = block.forward(x)
        B, T, C = x.shape
        xp = backend.namespace(x)
        x = ch["ln_f"].forward(xp.reshape(x, (B * T, C)))  # (N, C) view for a 2-D matmul
        return xp.reshape(ch["lm_head"].forward(x), (B, T, self.config.vocab_size))  # (B, T, V)

    def plan_backward(self) -> None:
        ch = self.children
        wte, wpe = ch["wte"].flow(False), ch["wpe"].flow(False)  # ids and positions: no gradient
        x = wte or wpe  # x₀ = wte[ids] + wpe[0:T]
        for block in ch["blocks"].children.values():
            x = block.flow(x)
        ch["lm_head"].flow(ch["ln_f"].flow(x))

    def backward(self, dlogits):
        """The forward in reverse, a line per layer; returns None (ids are integers).

        Gradients stop below the lowest module that trains (``plan_backward``), so a LoRA model
        never computes the frozen embeddings' input gradients.
        """
        self.plan_backward()
        ch, xp = self.children, backend.namespace(dlogits)
        B, T, V = dlogits.shape
        d = ch["lm_head"].backward(xp.reshape(dlogits, (B * T, V)))  # (N, C)
        d = ch["ln_f"].backward(d)
        d = None if d is None else xp.reshape(d, (B, T, d.shape[-1]))  # (B, T, C)
        for block in reversed(list(ch["blocks"].children.values())):
            d = block.backward(d)
        ch["wpe"].backward(d)  # sums d over the batch
        ch["wte"].backward(d)
        return None

    # ------------------------------------------------------------------ sampling
    def generate(self, ids, n_new: int, temperature: float = 1.0, seed=0, top_k: int | None = None):
        """Append ``n_new`` sampled ids to ``ids`` (B, T0); returns (B, T0 + n_new) on ``ids``' backend.

        Each step runs the model on the last n_ctx ids (no key/value cache: simple, and fast enough
        for demo samples) and samples from softmax(logits / temperature), optionally restricted to
        the ``top_k`` most likely ids; ``temperature = 0`` picks the most likely id. Random numbers
        come from a NumPy generator seeded with ``seed``, so samples repeat across backends.
        """
        if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
            raise ValueError(f"GPT.generate: n_new must be a non-negative int, got {n_new!r}")
        if not temperature >= 0:
            raise ValueError(f"GPT.generate: temperature must be >= 0, got {temperature!r}")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"GPT.generate: top_k must lie in [1, {self.config.vocab_size}], got {top_k!r}")
        if not hasattr(ids, "__array_namespace__") or "int" not in backend.dtype_name(ids):
            raise TypeError(f"GPT.generate: argument 'ids' must be an integer array, got {ids!r:.60}")
        device = backend.namespace(ids)
        out = backend.to_numpy(ids)  # the sequence grows on the host; only the model runs on device
        out = out.reshape(1, -1) if out.ndim == 1 else out
        if out.ndim != 2 or out.shape[1] < 1:
            raise ValueError(f"GPT.generate: argument 'ids' must be (B, T0) with T0 >= 1, got shape {out.shape}")
        hp = backend.namespace(out)  # the host namespace (NumPy), reached through the seam
        gen = backend.rng(seed)
        with self.evaluating():
            for _ in range(n_new):
                ctx = backend.from_numpy(out[:, -self.config.n_ctx:], device)
                logits = self.forward(ctx)[:, -1, :]  # (B, V) only the last position is sampled
                z = hp.astype(backend.to_numpy(logits), hp.float64)
                if temperature == 0:
                    nxt = hp.argmax(z, axis=-1)
                else:
                    z = z / temperature
                    if top_k is not None:
                        kth = hp.sort(z, axis=-1)[:, -top_k][:, None]
                        z = hp.where(z < kth, -math.inf, z)
                    p = hp.exp(z - hp.max(z, axis=-1, keepdims=True))
                    cdf = hp.cumsum(p / hp.sum(p, axis=-1, keepdims=True), axis=-1)
                    u = gen.random((out.shape[0], 1))
                    nxt = hp.minimum(hp.sum(cdf < u, axis=-1), self.config.vocab_size - 1)  # inverse CDF
                out = hp.concat([out, hp.astype(nxt[:, None], out.dtype)], axis=1)
        return backend.from_numpy(out, device)
