"""Cross-check against PyTorch and PEFT: the same model, the same numbers, another framework.

Finite differences (``gradcheck``) prove each backward against *its own* forward. This module
proves the forward itself is the standard one: it rebuilds a minilora model in PyTorch from
minilora's own arrays, with the same module paths as attribute names (``fc1``,
``blocks.0.attn.q``), so PEFT's ``target_modules`` and state-dict keys line up with no renaming
beyond ``W → weight``, ``b → bias``, ``gamma → weight``, ``beta → bias``. LoRA on the PyTorch side
is real PEFT (``LoraConfig`` + ``get_peft_model``) with minilora's A and B copied in.

    compare_with_torch(model, x, y)  →  rows: logits, loss, every trainable gradient,
                                          then every trainable array after k AdamW steps

Dropout: minilora's LoRA layer draws its inverted-dropout mask itself; PEFT's ``lora_dropout``
module is replaced by ``MaskReplay``, which multiplies by the mask minilora just drew (read from the
layer's cache), so both frameworks see the same x̃ = x ⊙ mask on every step.

PyTorch is optional and imported only inside functions::

    pip install torch==2.13.0              # the pinned CPU build first (an open range pulls CUDA)
    pip install 'minilora[crosscheck]'     # then PEFT and safetensors
"""
from __future__ import annotations

import copy
import functools

import numpy as np

from . import backend
from .gradcheck import CheckResult, rel_error
from .nn.lora import LoRALinear
from .optim import AdamW

GRAD_TOLERANCE = 1e-10  # float64: forward, loss and every gradient vs PyTorch (rel. error)
ADAMW_TOLERANCE = 1e-10  # float64: every trainable array after k AdamW steps (rel. error); Adam
# normalises each entry by its own gradient scale, so small entries carry their relative rounding
# into the step: measured ~1e-15 at the default sizes, ~1e-13 with --full
INTEROP_TOLERANCE = 1e-5  # float32: outputs of an adapter moved between minilora and PEFT

INSTALL_HINT = (
    "install the pinned CPU build of PyTorch first, `pip install torch==2.13.0` (an open range "
    "downloads a CUDA build of several GB), then the extra: `pip install 'minilora[crosscheck]'`"
)


def require(module: str = "torch"):
    """Import ``torch``, ``peft`` or ``safetensors``; a clear ``ImportError`` if it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"minilora.crosscheck needs {module!r}: {INSTALL_HINT}") from e


def available() -> tuple[bool, str]:
    """``(True, "")`` if torch and PEFT import, else ``(False, reason)``."""
    for name in ("torch", "peft", "safetensors"):
        try:
            require(name)
        except ImportError as e:
            return False, str(e)
    return True, ""


# ----------------------------------------------------------------------------- torch twins


@functools.cache
def _torch_classes():
    """The PyTorch module classes, defined on first use so that importing minilora never
    imports torch. Returns a dict of classes."""
    torch = require("torch")
    nn = torch.nn
    F = nn.functional

    class MaskReplay(nn.Module):
        """Stands in for PEFT's ``lora_dropout``: x̃ = x ⊙ mask with the mask minilora drew
        (identity while ``mask`` is None). minilora may run a layer on rows flattened to
        (N, d_in) where PyTorch keeps (B, T, d_in): the same rows in the same order, so the
        mask is reshaped to x's shape."""

        def __init__(self):
            super().__init__()
            self.mask = None

        def forward(self, x):
            return x if self.mask is None else x * self.mask.reshape(x.shape)

    class TorchMLP(nn.Module):
        """minilora's ``MLP``: fc1 → act → fc2 → … → fcL, same attribute names."""

        def __init__(self, sizes, activation, dtype):
            super().__init__()
            self.names = [f"fc{i}" for i in range(1, len(sizes))]
            for name, d_in, d_out in zip(self.names, sizes[:-1], sizes[1:]):
                setattr(self, name, nn.Linear(d_in, d_out, dtype=dtype))
            self.activation = activation

        def forward(self, x):
            for i, name in enumerate(self.names):
                x = getattr(self, name)(x)
                if i < len(self.names) - 1:
                    x = torch.relu(x) if self.activation == "relu" else F.gelu(x, approximate="tanh")
            return x

    class TorchAttention(nn.Module):
        """``CausalSelfAttention``: q, k, v, o (C -> C, bias) around PyTorch's own causal SDPA."""

        def __init__(self, C, n_head, dtype):
            super().__init__()
            self.n_head = n_head
            for name in ("q", "k", "v", "o"):
                setattr(self, name, nn.Linear(C, C, dtype=dtype))

        def forward(self, x):
            B, T, C = x.shape
            H = self.n_head

            def split(t):  # (B, T, C) -> (B, H, T, hd)
                return t.view(B, T, H, C // H).transpose(1, 2)

            y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                               is_causal=True)
            return self.o(y.transpose(1, 2).reshape(B, T, C))

    class TorchFeedForward(nn.Module):
        def __init__(self, C, hidden, dtype):
            super().__init__()
            self.fc1 = nn.Linear(C, hidden, dtype=dtype)
            self.fc2 = nn.Linear(hidden, C, dtype=dtype)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    class TorchBlock(nn.Module):
        def __init__(self, c, dtype):
            super().__init__()
            self.ln1 = nn.LayerNorm(c.n_embd, eps=c.ln_eps, dtype=dtype)
            self.attn = TorchAttention(c.n_embd, c.n_head, dtype)
            self.ln2 = nn.LayerNorm(c.n_embd, eps=c.ln_eps, dtype=dtype)
            self.mlp = TorchFeedForward(c.n_embd, c.mlp_ratio * c.n_embd, dtype)

        def forward(self, x):
            h = x + self.attn(self.ln1(x))
            return h + self.mlp(self.ln2(h))

    class TorchGPT(nn.Module):
        """minilora's ``GPT``: wte, wpe, blocks.{i}.{ln1, attn.{q,k,v,o}, ln2, mlp.{fc1,fc2}},
        ln_f, lm_head (no bias, not tied)."""

        def __init__(self, c, dtype):
            super().__init__()
            self.wte = nn.Embedding(c.vocab_size, c.n_embd, dtype=dtype)
            self.wpe = nn.Embedding(c.n_ctx, c.n_embd, dtype=dtype)
            self.blocks = nn.ModuleList([TorchBlock(c, dtype) for _ in range(c.n_layer)])
            self.ln_f = nn.LayerNorm(c.n_embd, eps=c.ln_eps, dtype=dtype)
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False, dtype=dtype)

        def forward(self, ids):
            T = ids.shape[1]
            x = self.wte(ids) + self.wpe(torch.arange(T))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return {"MaskReplay": MaskReplay, "TorchMLP": TorchMLP, "TorchGPT": TorchGPT}


def _torch_dtype(dtype: str):
    return getattr(require("torch"), dtype)


def to_torch(a, dtype: str | None = None):
    """A PyTorch CPU tensor copied from any backend's array (optionally cast)."""
    torch = require("torch")
    a = np.array(backend.to_numpy(a))  # a copy: the tensor never aliases minilora's arrays
    t = torch.from_numpy(a)
    return t if dtype is None else t.to(_torch_dtype(dtype))


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
    from .nn.mlp import MLP
    from .nn.transformer import GPT

    for path, layer in model.lora_layers().items():
        if layer.merged is not None:
            raise ValueError(f"torch_twin: {path} has adapter {layer.merged!r} merged; unmerge() first")
    classes = _torch_classes()
    if isinstance(model, MLP):
        twin = classes["TorchMLP"](model.sizes, model.activation, _torch_dtype(dtype))
    elif isinstance(model, GPT):
        twin = classes["TorchGPT"](model.config, _torch_dtype(dtype))
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
    peft = require("peft")
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
    peft = require("peft")
    torch = require("torch")
    config, adapter = lora_config(model)
    pm = peft.get_peft_model(torch_twin(model, dtype), config, adapter_name=adapter)
    MaskReplay = _torch_classes()["MaskReplay"]
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


# ----------------------------------------------------------------------------- comparisons


def _torch_loss(loss: str, out, y):
    F = require("torch").nn.functional
    if loss == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if loss == "mse":
        return F.mse_loss(out, y)
    raise ValueError(f"unknown loss {loss!r}")


def compare_with_torch(model, x, y, loss: str = "cross_entropy", steps: int = 3, lr: float = 1e-2,
                       weight_decay: float = 0.01, name: str | None = None,
                       tolerance: float = GRAD_TOLERANCE,
                       adamw_tolerance: float = ADAMW_TOLERANCE) -> list:
    """Compare a float64 minilora model with its PyTorch (and PEFT, if it has LoRA) twin.

    Rows (``CheckResult``), each a relative error:
      ``output``, ``loss``         one forward on ``(x, y)``;
      every trainable array         minilora's gradient vs ``param.grad``;
      ``adamw<k> <array>``          the array after k AdamW steps on both sides (worst step).
    LoRA dropout masks (when the model is in training mode with dropout > 0) are drawn by minilora
    and replayed in PEFT. ``model`` itself is left unchanged (a deep copy is trained).
    """
    torch = require("torch")
    from .functional.losses import LOSSES

    if model.dtype != "float64":
        raise TypeError(f"compare_with_torch: the model must be float64, got {model.dtype}")
    model = copy.deepcopy(model)
    name = name or type(model).__name__
    lora = any(m.active is not None for m in model.lora_layers().values())
    if lora:
        twin, adapter = peft_twin(model)
    else:
        twin, adapter = torch_twin(model), None
    trainable = model.named_parameters(trainable=True)
    tparams = dict(twin.named_parameters())
    tnames = {k: torch_name(k, peft=lora) for k in trainable}
    for p in tparams.values():
        p.requires_grad_(False)
    for k in trainable:
        tparams[tnames[k]].requires_grad_(True)
    xt = to_torch(x)
    yt = to_torch(y)
    loss_forward, loss_backward = LOSSES[loss]

    def both_steps():
        """One forward + backward on each side; returns minilora's (out, loss) and torch's."""
        out = model.forward(x)
        value, cache = loss_forward(out, y)
        model.backward(loss_backward(1.0, cache)[0])
        if lora:
            replay_masks(model, twin, adapter)
        twin.zero_grad(set_to_none=True)
        tout = twin(xt)
        tloss = _torch_loss(loss, tout, yt)
        tloss.backward()
        return out, value, tout.detach(), tloss.detach()

    out, value, tout, tloss = both_steps()
    rows = [CheckResult(name, "output", rel_error(out, tout.numpy()), tolerance),
            CheckResult(name, "loss", rel_error(np.asarray(float(value)), tloss.numpy()), tolerance)]
    grads = model.named_grads()
    for k in trainable:
        rows.append(CheckResult(name, k, rel_error(grads[k], tparams[tnames[k]].grad.numpy()), tolerance))

    if steps:
        opt = AdamW(model, lr=lr, weight_decay=weight_decay)
        topt = torch.optim.AdamW([tparams[tnames[k]] for k in trainable], lr=lr,
                                 weight_decay=weight_decay, foreach=False)
        worst = dict.fromkeys(trainable, 0.0)
        for step in range(steps):
            if step:
                both_steps()
            opt.step()
            topt.step()
            now = model.named_parameters(trainable=True)
            for k in trainable:
                err = rel_error(now[k], tparams[tnames[k]].detach().numpy())
                worst[k] = max(worst[k], err)
        rows += [CheckResult(name, f"adamw{steps} {k}", worst[k], adamw_tolerance) for k in trainable]
    return rows


# ----------------------------------------------------------------------------- the suite


def perturb_lora_B(model, seed=0, std: float = 0.5):
    """Give every adapter's B random values (it starts at 0, where dA = 0 and A's gradient check
    would pass trivially). Returns the model."""
    gen = backend.rng(seed)
    for layer in model.lora_layers().values():
        for ad in layer.adapters.values():
            B = ad.params["B"]
            B[...] = backend.from_numpy(std * gen.standard_normal(tuple(B.shape)), backend.namespace(B))
    return model


def cases(full: bool = False, seed: int = 0) -> dict:
    """Named cross-check cases: ``{name: build}``, ``build() -> (model, x, y, loss)``.

    MLP and GPT, full fine-tuning and LoRA on the attention q, v or on every
    linear layer, each with dropout off and with dropout masks drawn by minilora and replayed.
    """
    from .nn.mlp import MLP

    sizes, N = ((32, 48, 24, 10), 16) if full else ((5, 7, 3), 6)

    def mlp(activation, targets=None, dropout=None, loss="cross_entropy", rslora=False):
        def build():
            gen = backend.rng(seed)
            model = MLP(sizes, activation, seed=seed, dtype="float64")
            if targets is not None:
                model.add_lora(targets, r=2, alpha=4, rslora=rslora, dropout=dropout or 0.0, seed=seed)
                perturb_lora_B(model, seed)
            model.train()
            x = gen.standard_normal((N, sizes[0]))
            y = gen.integers(0, sizes[-1], N) if loss == "cross_entropy" else gen.standard_normal((N, sizes[-1]))
            return model, x, y, loss
        return build

    out = {
        "mlp full": mlp("gelu"),
        "mlp lora(all)": mlp("relu", ["fc*"]),
        "mlp lora(all) mask": mlp("gelu", ["fc*"], dropout=0.3),
        "mlp lora(fc1) rslora mse": mlp("gelu", ["fc1"], loss="mse", rslora=True),
    }
    out.update(_gpt_cases(full, seed))
    return out


ALL_LINEARS = ["q", "k", "v", "o", "fc1", "fc2", "lm_head"]  # "LoRA on all linear layers" of a GPT


def gpt_for_checks(full: bool = False, seed: int = 0):
    """The float64 GPT both checkers use, and its batch shape ``(B, T)``.

    Weights are drawn with std 0.5, not GPT-2's 0.02: at 0.02 the q/k gradients are ~1e-5 and
    fall into finite-difference roundoff. The key bias is frozen: its exact gradient is 0
    (softmax ignores a constant added to a row of scores), so both frameworks return rounding
    noise there — a relative error of two roundings of 0 means nothing, and Adam would step by
    the sign of that noise (it is tested apart to be ~0).
    """
    from .nn.transformer import GPT, GPTConfig

    if full:
        config, BT = GPTConfig(vocab_size=17, n_ctx=16, n_layer=2, n_head=4, n_embd=32), (4, 12)
    else:
        config, BT = GPTConfig(vocab_size=11, n_ctx=8, n_layer=2, n_head=2, n_embd=8), (2, 5)
    return GPT(config, seed=seed, dtype="float64", init_std=0.5).freeze("*.attn.k.b"), BT


def _gpt_cases(full, seed):
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

    every_linear = ALL_LINEARS
    return {
        "gpt full": gpt(),
        "gpt lora(q,v)": gpt(["q", "v"]),
        "gpt lora(q,v) mask": gpt(["q", "v"], dropout=0.25),
        "gpt lora(all)": gpt(every_linear),
        "gpt lora(all) mask": gpt(every_linear, dropout=0.25),
    }


def suite(full: bool = False, steps: int = 3, seed: int = 0) -> list:
    """``compare_with_torch`` on every case of ``cases(full)``; one list of ``CheckResult``."""
    rows = []
    for name, build in cases(full, seed).items():
        model, x, y, loss = build()
        rows += compare_with_torch(model, x, y, loss=loss, steps=steps, name=name)
    return rows


# ----------------------------------------------------------------------------- PEFT adapter files


def _peft_outputs(pm, x):
    torch = require("torch")
    with torch.no_grad():
        return pm(to_torch(x)).numpy()


def _lora_W(model, path):
    """W of the (possibly LoRA-wrapped) linear layer at ``path``."""
    layer = model.get_module(path)
    return (layer.base if isinstance(layer, LoRALinear) else layer).params["W"]


def interop_minilora_to_peft(model, x, directory, adapter: str = "default", name: str | None = None,
                             tolerance: float = INTEROP_TOLERANCE) -> list:
    """Save ``model``'s adapter with ``minilora.adapters.save_adapter``, load the directory with
    ``peft.PeftModel.from_pretrained`` onto the PyTorch twin of the base, and compare:

      ``output``            minilora's forward vs PEFT's (eval, no dropout);
      ``merged <path>.W``   W + ΔW after minilora's ``merge_adapter`` vs PEFT's ``merge_and_unload``;
      ``ΔW <path>``         the merged minus the base weights on each side (the stricter test).
    """
    peft = require("peft")
    from . import adapters

    name = name or f"minilora→peft {type(model).__name__}"
    dtype = model.dtype
    model.eval()
    adapters.set_active(model, adapter)
    adapters.save_adapter(model, directory, adapter=adapter)
    out = backend.to_numpy(model.forward(x))
    pm = peft.PeftModel.from_pretrained(torch_twin(model, dtype), directory, adapter_name=adapter)
    pm.eval()
    rows = [CheckResult(name, "output", rel_error(out, _peft_outputs(pm, x)), tolerance)]

    paths = list(adapters.list_adapters(model)[adapter].targets)
    base = {p: np.array(backend.to_numpy(_lora_W(model, p))) for p in paths}
    adapters.merge_adapter(model, adapter)
    merged = pm.merge_and_unload()
    tstate = merged.state_dict()
    for p in paths:
        ours = backend.to_numpy(_lora_W(model, p))
        theirs = tstate[f"{p}.weight"].numpy()
        rows.append(CheckResult(name, f"merged {p}.W", rel_error(ours, theirs), tolerance))
        rows.append(CheckResult(name, f"ΔW {p}", rel_error(ours - base[p], theirs - base[p]), tolerance))
    adapters.unmerge_adapter(model, adapter)
    return rows


def interop_peft_to_minilora(model, x, y, directory, targets, r=2, alpha=4, steps: int = 3,
                             adapter: str = "default", name: str | None = None,
                             tolerance: float = INTEROP_TOLERANCE, seed: int = 0) -> list:
    """Train an adapter with PEFT on the PyTorch twin of ``model`` (a base without LoRA), save it
    with ``save_pretrained``, load it into ``model`` with ``minilora.adapters.load_adapter`` and
    compare outputs (``output`` row). B is given random values before the ``steps`` AdamW steps,
    so the adapter changes the outputs by O(1) and the comparison cannot pass by accident.
    Returns the rows; ``model`` ends up carrying the adapter, active.
    """
    torch = require("torch")
    peft = require("peft")
    from . import adapters

    name = name or f"peft→minilora {type(model).__name__}"
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights="gaussian")
    with torch.random.fork_rng():  # PEFT draws A from the global generator: seed it, locally
        torch.manual_seed(seed)
        pm = peft.get_peft_model(torch_twin(model, model.dtype), config, adapter_name=adapter)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in pm.named_parameters():
            if ".lora_B." in k:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    xt, yt = to_torch(x), to_torch(y)
    for _ in range(steps):
        opt.zero_grad()
        _torch_loss("cross_entropy", pm(xt), yt).backward()
        opt.step()
    pm.eval()
    pm.save_pretrained(directory)
    theirs = _peft_outputs(pm, x)
    adapters.load_adapter(model, directory, adapter_name=adapter)
    model.eval()
    ours = backend.to_numpy(model.forward(x))
    return [CheckResult(name, "output", rel_error(ours, theirs), tolerance)]


def interop_cases(seed: int = 0) -> dict:
    """``{name: build}`` for the adapter-file checks (float32): ``build() -> (model, x, y,
    targets)``, ``model`` being a base without LoRA."""
    from .nn.mlp import MLP
    from .nn.transformer import GPT, GPTConfig

    def mlp():
        gen = backend.rng(seed)
        model = MLP((5, 7, 3), "gelu", seed=seed, dtype="float32")
        return model, gen.standard_normal((6, 5)).astype("float32"), gen.integers(0, 3, 6), ["fc1", "fc2"]

    def gpt():
        gen = backend.rng(seed)
        config = GPTConfig(vocab_size=11, n_ctx=8, n_layer=2, n_head=2, n_embd=8)
        model = GPT(config, seed=seed, dtype="float32", init_std=0.5)
        ids = gen.integers(0, 11, (2, 5))
        return model, ids, gen.integers(0, 11, (2, 5)), ["q", "v"]

    return {"MLP": mlp, "GPT": gpt}


def interop_suite(directory, seed: int = 0) -> list:
    """Both directions and the merge, for the MLP (ranks 2 and 3, two alphas: ``rank_pattern``
    and ``alpha_pattern`` in the file) and the GPT (LoRA on q, v), in float32."""
    import os

    rows = []
    for label, build in interop_cases(seed).items():
        model, x, y, targets = build()
        if label == "MLP":
            model.add_lora(targets, r={"fc1": 2, "fc2": 3}, alpha={"fc1": 4, "fc2": 3}, seed=seed)
        else:
            model.add_lora(targets, r=2, alpha=4, seed=seed)
        perturb_lora_B(model, seed)
        rows += interop_minilora_to_peft(model, x, os.path.join(directory, f"{label}-minilora"),
                                         name=f"minilora→peft {label}")
        model, x, y, targets = build()
        rows += interop_peft_to_minilora(model, x, y, os.path.join(directory, f"{label}-peft"), targets,
                                         name=f"peft→minilora {label}", seed=seed)
    return rows
