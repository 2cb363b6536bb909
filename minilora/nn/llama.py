"""A Llama decoder (SmolLM2's architecture) built from the pairs in ``minilora.functional``.

    x₀ = E[ids]                                                        (B, T, C)
    for each layer:  h = x + attn(rmsnorm₁(x));   x = h + mlp(rmsnorm₂(h))
    logits = rmsnorm_f(x) Eᵀ                                           (B, T, V)   the head is E, tied

    attn(x) = o(merge(softmax(R(q) R(k)ᵀ/√hd + M) v)),   q = split_H(q(x)),  k, v = split_Hkv(k(x)), split_Hkv(v(x))
              R = rotary position embedding; the H query heads share Hkv key/value heads (GQA)
    mlp(x)  = down(silu(gate(x)) ⊙ up(x))                             (SwiGLU)

Module paths are Hugging Face's ``LlamaForCausalLM`` names, so a PEFT adapter file written by
minilora (``base_model.model.<path>.lora_A.weight``) is the one PEFT expects for the
``transformers`` model: ``model.embed_tokens``, ``model.layers.{i}.input_layernorm``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``model.layers.{i}.post_attention_layernorm``,
``model.layers.{i}.mlp.{gate,up,down}_proj``, ``model.norm``. No linear has a bias. LoRA goes on
any projection by name (``add_lora(llama, ["q_proj", "v_proj"])``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import backend, checks
from ..functional.attention import merge_heads
from ..functional.gqa import gqa_attention_backward, gqa_attention_forward, repeat_kv_forward
from ..functional.linear import linear_backward, linear_forward
from ..functional.losses import softmax
from ..functional.rmsnorm import rmsnorm_backward, rmsnorm_forward
from ..functional.rope import rope_backward, rope_forward, rope_tables
from ..functional.swiglu import swiglu_backward, swiglu_forward
from ..io.quant import Q4_1Weight
from .linear import Linear
from .module import Module, add
from .quantized import QuantLinear
from .transformer import Embedding


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes of a Llama. ``LlamaConfig.smollm2_135m()`` is SmolLM2-135M's."""

    vocab_size: int = 64  # V
    n_layer: int = 2  # L
    n_embd: int = 32  # C
    n_head: int = 4  # H query heads, hd = C / H
    n_kv_head: int = 2  # Hkv key/value heads, shared by H / Hkv query heads each
    hidden: int = 48  # the SwiGLU width
    rope_base: float = 1e5
    rms_eps: float = 1e-5
    n_ctx: int = 64  # the longest sequence the model is run on

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "hidden", "n_ctx"):
            checks.positive_int("LlamaConfig", name, getattr(self, name))
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"LlamaConfig: n_head = {self.n_head} must divide n_embd = {self.n_embd} "
                             "into an even head size (RoPE rotates pairs)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_kv_head = {self.n_kv_head} must divide n_head = {self.n_head}")
        checks.finite_number("LlamaConfig", "rope_base", self.rope_base)
        checks.finite_number("LlamaConfig", "rms_eps", self.rms_eps)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def smollm2_135m(cls, **overrides) -> "LlamaConfig":
        c = dict(vocab_size=49152, n_layer=30, n_embd=576, n_head=9, n_kv_head=3, hidden=1536,
                 rope_base=1e5, rms_eps=1e-5, n_ctx=2048)
        return cls(**{**c, **overrides})

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)


def _linear(d_in, d_out, gen, std=0.02, dtype="float32", device="cpu") -> Linear:
    layer = Linear(d_in, d_out, bias=False, seed=0, dtype=dtype, device=device)
    layer.params["W"] = backend.normal(gen, (d_out, d_in), std, dtype, device)
    return layer


# ----------------------------------------------------------------------------- layers


class RMSNorm(Module):
    """y = x / √(mean(x²) + ε) ⊙ γ over the last axis; γ = 1 at init.  x (..., C)."""

    def __init__(self, C: int, eps: float = 1e-5, dtype="float32", device="cpu"):
        super().__init__()
        checks.positive_int("RMSNorm", "C", C)
        self.eps = eps
        self.params["gamma"] = backend.zeros((C,), dtype, device) + 1.0

    def forward(self, x):
        y, self.cache = rmsnorm_forward(x, self.params["gamma"], self.eps)
        return y

    def backward(self, dout):
        if self.skips(dout):
            return None
        dx, self.grads = rmsnorm_backward(dout, self.cache, need=self.wanted())
        return dx


class LlamaAttention(Module):
    """out = o(merge(GQA(R(q), R(k), v))) with q = split_H(q_proj(x)), k, v = split_Hkv(k_proj(x)),
    split_Hkv(v_proj(x)); R rotates by position.  x (B, T, C) -> (B, T, C)."""

    def __init__(self, c: LlamaConfig, gen, dtype="float32", device="cpu"):
        super().__init__()
        self.config = c
        kv = c.n_kv_head * c.head_dim
        kw = dict(dtype=dtype, device=device)
        for name, d_out in (("q_proj", c.n_embd), ("k_proj", kv), ("v_proj", kv)):
            self.add_child(name, _linear(c.n_embd, d_out, gen, **kw))
        self.add_child("o_proj", _linear(c.n_embd, c.n_embd, gen, **kw))

    def _heads(self, y, n, B, T):
        """(N, n·hd) -> (B, n, T, hd)."""
        xp = backend.namespace(y)
        return xp.permute_dims(xp.reshape(y, (B, T, n, self.config.head_dim)), (0, 2, 1, 3))

    def forward(self, x):
        B, T, C = x.shape
        c, ch, xp = self.config, self.children, backend.namespace(x)
        x2 = xp.reshape(x, (B * T, C))
        cos, sin = rope_tables(T, c.head_dim, c.rope_base, dtype=backend.dtype_name(x), xp=xp)
        q, rq = rope_forward(self._heads(ch["q_proj"].forward(x2), c.n_head, B, T), cos, sin)
        k, rk = rope_forward(self._heads(ch["k_proj"].forward(x2), c.n_kv_head, B, T), cos, sin)
        v = self._heads(ch["v_proj"].forward(x2), c.n_kv_head, B, T)
        y, attn = gqa_attention_forward(q, k, v)  # (B, H, T, hd)
        self.cache = (rq, rk, attn)
        y = ch["o_proj"].forward(xp.reshape(merge_heads(y), (B * T, C)))
        return xp.reshape(y, (B, T, C))

    def plan_backward(self) -> None:
        ch = self.children
        qkv = [ch[n].flow(self.need_dx) for n in ("q_proj", "k_proj", "v_proj")]
        ch["o_proj"].flow(any(qkv))

    def backward(self, dout):
        """dy = oᵀ(dout); dq, dk, dv = GQAᵀ(dy); dq, dk = Rᵀ(dq), Rᵀ(dk); dx = Σ projᵀ(d·)."""
        if self.skips(dout):
            return None
        self.plan_backward()
        B, T, C = dout.shape
        ch, xp = self.children, backend.namespace(dout)
        rq, rk, attn = self.cache
        dy = ch["o_proj"].backward(xp.reshape(dout, (B * T, C)))
        names = {"q": "q_proj", "k": "k_proj", "v": "v_proj"}
        need = [n for n, proj in names.items() if ch[proj].wants_dout()]
        g = gqa_attention_backward(self._heads(dy, self.config.n_head, B, T), attn, need=need)[1] if need else {}
        if "q" in g:
            g["q"] = rope_backward(g["q"], rq)[0]
        if "k" in g:
            g["k"] = rope_backward(g["k"], rk)[0]
        dx = None
        for n, proj in names.items():
            d = None if n not in g else xp.reshape(merge_heads(g[n]), (B * T, -1))
            dx = add(ch[proj].backward(d), dx)
        return None if dx is None else xp.reshape(dx, (B, T, C))


class LlamaMLP(Module):
    """out = down(silu(gate(x)) ⊙ up(x)); gate, up: C -> hidden, down: hidden -> C."""

    def __init__(self, c: LlamaConfig, gen, dtype="float32", device="cpu"):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.add_child("gate_proj", _linear(c.n_embd, c.hidden, gen, **kw))
        self.add_child("up_proj", _linear(c.n_embd, c.hidden, gen, **kw))
        self.add_child("down_proj", _linear(c.hidden, c.n_embd, gen, **kw))

    def forward(self, x):
        xp = backend.namespace(x)
        x2 = xp.reshape(x, (-1, x.shape[-1]))
        ch = self.children
        a, self.cache = swiglu_forward(ch["gate_proj"].forward(x2), ch["up_proj"].forward(x2))
        return xp.reshape(ch["down_proj"].forward(a), tuple(x.shape))

    def plan_backward(self) -> None:
        ch = self.children
        inner = ch["gate_proj"].flow(self.need_dx) | ch["up_proj"].flow(self.need_dx)
        ch["down_proj"].flow(inner)

    def backward(self, dout):
        """da = downᵀ(dout); dgate, dup = SwiGLUᵀ(da); dx = gateᵀ(dgate) + upᵀ(dup)."""
        if self.skips(dout):
            return None
        self.plan_backward()
        xp, ch = backend.namespace(dout), self.children
        da = ch["down_proj"].backward(xp.reshape(dout, (-1, dout.shape[-1])))
        g = {} if da is None else swiglu_backward(da, self.cache)[1]
        dx = add(ch["gate_proj"].backward(g.get("gate")), ch["up_proj"].backward(g.get("up")))
        return None if dx is None else xp.reshape(dx, tuple(dout.shape))


class LlamaBlock(Module):
    """h = x + attn(rmsnorm₁(x));  y = h + mlp(rmsnorm₂(h)).  (B, T, C)."""

    def __init__(self, c: LlamaConfig, gen, dtype="float32", device="cpu"):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.add_child("input_layernorm", RMSNorm(c.n_embd, c.rms_eps, **kw))
        self.add_child("self_attn", LlamaAttention(c, gen, **kw))
        self.add_child("post_attention_layernorm", RMSNorm(c.n_embd, c.rms_eps, **kw))
        self.add_child("mlp", LlamaMLP(c, gen, **kw))

    def forward(self, x):
        ch = self.children
        h = x + ch["self_attn"].forward(ch["input_layernorm"].forward(x))
        return h + ch["mlp"].forward(ch["post_attention_layernorm"].forward(h))

    def plan_backward(self) -> None:
        ch, x = self.children, self.need_dx
        h = ch["self_attn"].flow(ch["input_layernorm"].flow(x)) or x
        ch["mlp"].flow(ch["post_attention_layernorm"].flow(h))

    def backward(self, dy):
        """dh = dy + norm₂ᵀ(mlpᵀ(dy));  dx = dh + norm₁ᵀ(attnᵀ(dh))."""
        if self.skips(dy):
            return None
        self.plan_backward()
        ch = self.children
        dh = add(ch["post_attention_layernorm"].backward(ch["mlp"].backward(dy)), dy)
        dx = add(ch["input_layernorm"].backward(ch["self_attn"].backward(dh)), dh)
        return dx if self.need_dx else None


# ----------------------------------------------------------------------------- the model


class Llama(Module):
    """ids (B, T) int -> logits (B, T, V), the LM head tied to the token embedding E.

    ``Llama(LlamaConfig(...), seed=0)`` draws small random weights (for tests); a pretrained
    checkpoint is loaded with ``minilora.smollm2()`` (``minilora/pretrained.py``).
    """

    default_lora_targets = ("q_proj", "v_proj")

    def __init__(self, config: LlamaConfig | None = None, seed=0, dtype="float32", device="cpu"):
        super().__init__()
        self.config = c = config or LlamaConfig()
        gen = backend.rng(seed)
        kw = dict(dtype=dtype, device=device)
        model = self.add_child("model", Module())
        model.add_child("embed_tokens", Embedding(c.vocab_size, c.n_embd, 0.02, gen, **kw))
        layers = model.add_child("layers", Module())
        for i in range(c.n_layer):
            layers.add_child(str(i), LlamaBlock(c, gen, **kw))
        model.add_child("norm", RMSNorm(c.n_embd, c.rms_eps, **kw))
        self.set_paths()

    # ------------------------------------------------------------------ Hugging Face names
    def hf_state_dict(self) -> dict:
        """``{Hugging Face name: array}`` of the base weights (LoRA adapters left out): a
        parameter at path ``p`` (``W`` or ``gamma``) is ``p.weight``, a LoRA-wrapped linear's
        ``p.base.W`` too; ``lm_head.weight`` is the embedding itself (tied)."""
        out = {}
        for name, a in self.named_parameters().items():
            path, _ = name.rsplit(".", 1)
            if ".lora." in f"{path}.":
                continue
            out[f"{path.removesuffix('.base')}.weight"] = a
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
        return out

    @classmethod
    def from_hf_state_dict(cls, config: LlamaConfig, arrays: dict, dtype="float32", device="cpu") -> "Llama":
        """A model with ``arrays`` (Hugging Face names, any float dtype; cast to ``dtype``) as its
        weights. A missing or mis-shaped tensor is a ``ValueError`` naming it and both shapes.

        A projection given as a ``Q4_1Weight`` (``llama_weights(g, quantized=True)``) becomes a
        ``QuantLinear`` that keeps it 4-bit (host only, so ``device`` must be "cpu"); the other
        tensors load as before."""
        model = cls(config, dtype=dtype, device=device)
        for key, a in arrays.items():
            if not isinstance(a, Q4_1Weight):
                continue
            path = key.removesuffix(".weight")
            try:
                layer = model.get_module(path)
            except KeyError:
                continue  # a tensor the model does not use, as for float arrays
            if not isinstance(layer, Linear) or tuple(a.shape) != tuple(layer.params["W"].shape):
                raise ValueError(f"Llama.from_hf_state_dict: 4-bit tensor {key!r} of shape {tuple(a.shape)} does "
                                 f"not fit {path} ({type(layer).__name__} {tuple(layer.params['W'].shape)})")
            if backend.resolve_device(device).__name__ != "numpy":
                raise ValueError(f"Llama.from_hf_state_dict: 4-bit tensor {key!r} runs on the host only; "
                                 f"device must be 'cpu', got {device!r}")
            model.set_module(path, QuantLinear(a))
        model.set_paths()
        ours = {}
        for name, p in model.named_parameters().items():
            key = f"{name.rsplit('.', 1)[0]}.weight"
            if key not in arrays:
                raise ValueError(f"Llama.from_hf_state_dict: tensor {key!r} is missing (config: {config})")
            a = arrays[key]
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"Llama.from_hf_state_dict: tensor {key!r} has shape {tuple(a.shape)}, "
                                 f"the model's {name} needs {tuple(p.shape)}")
            ours[name] = backend.from_numpy(backend.to_numpy(a).astype(dtype), device)
        return model.load_state_dict(ours)

    def _parts(self):
        m = self.children["model"].children
        return m["embed_tokens"], list(m["layers"].children.values()), m["norm"]

    def check_ids(self, ids) -> None:
        """``TypeError``/``ValueError`` naming ``ids`` unless it is (B, T) integers, 1 <= T <= n_ctx."""
        checks.token_ids("Llama", ids, self.config.n_ctx)

    def forward(self, ids):
        """ids (B, T) integers in [0, V) -> logits (B, T, V)."""
        self.check_ids(ids)
        embed, layers, norm = self._parts()
        x = embed.forward(ids)
        for layer in layers:
            x = layer.forward(x)
        B, T, C = x.shape
        xp = backend.namespace(x)
        x = norm.forward(xp.reshape(x, (B * T, C)))
        logits, self.cache = linear_forward(x, embed.params["W"], None, layer="lm_head (tied to embed_tokens)")
        return xp.reshape(logits, (B, T, self.config.vocab_size))

    def plan_backward(self) -> None:
        embed, layers, norm = self._parts()
        x = embed.flow(False)  # ids: no gradient
        for layer in layers:
            x = layer.flow(x)
        norm.flow(x)

    def backward(self, dlogits):
        """The forward in reverse. The tied head's dE = dlogitsᵀ x adds to the embedding's own
        gradient when E trains (one array, two uses: the gradients of both uses add)."""
        self.plan_backward()
        embed, layers, norm = self._parts()
        xp = backend.namespace(dlogits)
        B, T, V = dlogits.shape
        trains_E = "W" in embed.trainable_names()
        need = ({"W"} if trains_E else set()) | ({"x"} if norm.wants_dout() else set())
        d, head = linear_backward(xp.reshape(dlogits, (B * T, V)), self.cache, need=need)
        d = norm.backward(d)
        d = None if d is None else xp.reshape(d, (B, T, d.shape[-1]))
        for layer in reversed(layers):
            d = layer.backward(d)
        embed.backward(d)  # d is not None when E trains: plan_backward made every layer pass it down
        if trains_E:
            embed.grads["W"] = embed.grads["W"] + head["W"]
        return None

    # ------------------------------------------------------------------ greedy decoding (inference only)
    def generate_greedy(self, ids, n_new: int, eos_id: int | None = None):
        """Greedy decoding with a key/value cache: the tokens repeated full forwards would pick.

            prefill:  run the prompt ids (B, T) once; keep every layer's k, v       (B, Hkv, T, hd)
            decode:   t = argmax logits[:, -1];  run t alone at position T, T + 1, …;
                      append its k, v to the cache; attend over all cached positions

        A step costs the new token's work only, instead of the whole sequence's again. Only
        attention sees positions — RoPE turns the new q, k by their true position (``rope_tables``'s
        ``offset`` = tokens already cached) and the new query may read every cached key — so the
        norms, projections (LoRA adapters included) and the MLP are the modules' own forwards.
        Runs in eval mode; keeps nothing for a backward (the module caches are cleared after).

        Inputs:  ids (B, T) int prompts (all rows the same length), n_new >= 0 tokens to add,
                 eos_id: a row that produces it is finished (later tokens of that row are eos_id);
                 decoding stops early once every row is finished
        Returns: (B, T + n) int, the prompt then n <= n_new new tokens (numpy or cupy, like ids)
        """
        self.check_ids(ids)
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 0:
            raise ValueError(f"Llama.generate_greedy: n_new must be a non-negative int, got {n_new!r}")
        B, T = ids.shape
        if T + n_new > self.config.n_ctx:
            raise ValueError(f"Llama.generate_greedy: T + n_new = {T + n_new} > n_ctx = {self.config.n_ctx}")
        xp = backend.namespace(ids)
        out = [ids]
        with self.evaluating():
            logits, kv = self._forward_cached(ids, [None] * self.config.n_layer, offset=0)  # prefill
            done = xp.zeros((B,), dtype=xp.bool)
            for i in range(n_new):
                nxt = xp.astype(xp.argmax(logits, axis=-1), ids.dtype)  # (B,)  greedy
                if eos_id is not None:
                    nxt = xp.where(done, xp.asarray(eos_id, dtype=ids.dtype), nxt)
                    done = done | (nxt == eos_id)
                out.append(nxt[:, None])
                if i == n_new - 1 or (eos_id is not None and bool(xp.all(done))):
                    break
                logits, kv = self._forward_cached(nxt[:, None], kv, offset=T + i)  # one token
        for _, m in self.named_modules():
            m.clear_cache()
        return xp.concat(out, axis=1)

    def _forward_cached(self, ids, kv, offset: int):
        """ids (B, t), the tokens at positions offset … offset + t − 1, and ``kv``: per layer the
        cached (k, v), each (B, Hkv, offset, hd), or None when empty -> (logits of the last
        position (B, V), kv with these t positions appended)."""
        embed, layers, norm = self._parts()
        c = self.config
        B, t = ids.shape
        x = embed.forward(ids)  # (B, t, C)
        xp = backend.namespace(x)
        cos, sin = rope_tables(t, c.head_dim, c.rope_base, offset=offset, dtype=backend.dtype_name(x), xp=xp)
        new_kv = []
        for layer, cached in zip(layers, kv):
            ch = layer.children
            attn = ch["self_attn"]
            a = attn.children
            h = xp.reshape(ch["input_layernorm"].forward(x), (B * t, c.n_embd))  # (B·t, C)
            q, _ = rope_forward(attn._heads(a["q_proj"].forward(h), c.n_head, B, t), cos, sin)  # (B, H, t, hd)
            k, _ = rope_forward(attn._heads(a["k_proj"].forward(h), c.n_kv_head, B, t), cos, sin)  # (B, Hkv, t, hd)
            v = attn._heads(a["v_proj"].forward(h), c.n_kv_head, B, t)  # (B, Hkv, t, hd)
            if cached is not None:
                k = xp.concat([cached[0], k], axis=2)  # (B, Hkv, offset + t, hd)
                v = xp.concat([cached[1], v], axis=2)
            new_kv.append((k, v))
            y = cached_attention(q, k, v, offset)  # (B, H, t, hd)
            x = x + xp.reshape(a["o_proj"].forward(xp.reshape(merge_heads(y), (B * t, c.n_embd))), (B, t, c.n_embd))
            x = x + ch["mlp"].forward(ch["post_attention_layernorm"].forward(x))
        last = norm.forward(x[:, -1, :])  # (B, C)  only the last position's logits are needed
        logits, _ = linear_forward(last, embed.params["W"], None, layer="lm_head (tied to embed_tokens)")
        return logits, new_kv  # (B, V)


def cached_attention(q, k, v, offset: int):
    """out = softmax(q repeat_kv(k)ᵀ / √hd + M) repeat_kv(v) for queries at positions offset + i:

        M_is = 0 if s <= offset + i else −∞          (query i sees the cache and itself, no future)

    With offset = 0 and as many queries as keys this is ``gqa_attention_forward``'s causal mask.

    Inputs:  q (B, H, t, hd), k and v (B, Hkv, offset + t, hd)
    Returns: out (B, H, t, hd)
    """
    xp = backend.namespace(q)
    t, hd = q.shape[2], q.shape[3]
    n_rep = q.shape[1] // k.shape[1]
    k, _ = repeat_kv_forward(k, n_rep)  # (B, H, Tk, hd)
    v, _ = repeat_kv_forward(v, n_rep)
    Tk = k.shape[2]
    S = (q * (1.0 / math.sqrt(hd))) @ xp.matrix_transpose(k)  # (B, H, t, Tk)
    sees = xp.arange(Tk)[None, :] <= (offset + xp.arange(t))[:, None]  # (t, Tk)
    S = xp.where(sees, S, xp.asarray(-math.inf, dtype=S.dtype))
    return softmax(S) @ v  # (B, H, t, hd)
