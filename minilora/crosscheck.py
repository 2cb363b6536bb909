"""Cross-check against PyTorch and PEFT: the same model, the same numbers, another framework.

Finite differences (``gradcheck``) prove each backward against *its own* forward. This module
proves the forward itself is the standard one: ``minilora.torch_twin`` rebuilds a minilora model
in plain PyTorch from minilora's own arrays, with the same module paths as attribute names
(``fc1``, ``blocks.0.attn.q``), and LoRA on the PyTorch side is real PEFT (``LoraConfig`` +
``get_peft_model``) with minilora's A and B copied in. The models and batches come from
``minilora.cases``, the catalogue the finite-difference report uses too.

    compare_with_torch(model, x, y)  →  rows: logits, loss, every trainable gradient,
                                          then every trainable array after k AdamW steps
    suite(full)                      →  compare_with_torch on every case of cases(full)
    interop_suite(directory)         →  adapter files minilora → PEFT, PEFT → minilora, merges

Dropout: minilora's LoRA layer draws its inverted-dropout mask itself; PEFT's ``lora_dropout``
module is replaced by ``MaskReplay``, which multiplies by the mask minilora just drew (read from the
layer's cache), so both frameworks see the same x̃ = x ⊙ mask on every step.

PyTorch is optional: this module imports ``minilora.torch_twin`` (hence torch) only inside
functions, after ``require()`` has found it. Its names (``torch_twin``, ``peft_twin``,
``to_torch``, ``torch_name``, ``lora_config``, ``replay_masks``, ``torch_loss``) can be read
from here too, and import it on first use::

    pip install torch==2.13.0              # the pinned CPU build first (an open range pulls CUDA)
    pip install 'minilora[crosscheck]'     # then PEFT and safetensors
"""
from __future__ import annotations

import copy

import numpy as np

from . import backend
from .cases import ALL_LINEARS, cases, gpt_for_checks, interop_cases, perturb_lora_B  # noqa: F401
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


def _pytorch():
    """The PyTorch side, ``minilora.torch_twin``, imported on first use (it imports torch and
    peft at its top)."""
    require("torch")
    require("peft")
    from . import torch_twin

    return torch_twin


_TWIN_NAMES = ("torch_twin", "peft_twin", "to_torch", "torch_name", "lora_config", "replay_masks",
               "torch_loss", "MaskReplay")


def __getattr__(name):
    """``crosscheck.torch_twin`` and the rest of ``_TWIN_NAMES``: read from ``minilora.torch_twin``
    on first use, so that importing this module never imports torch."""
    if name in _TWIN_NAMES:
        return getattr(_pytorch(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- comparisons


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
    pt = _pytorch()
    from .functional.losses import LOSSES

    if model.dtype != "float64":
        raise TypeError(f"compare_with_torch: the model must be float64, got {model.dtype}")
    model = copy.deepcopy(model)
    name = name or type(model).__name__
    lora = any(m.active is not None for m in model.lora_layers().values())
    if lora:
        twin, adapter = pt.peft_twin(model)
    else:
        twin, adapter = pt.torch_twin(model), None
    trainable = model.named_parameters(trainable=True)
    tparams = dict(twin.named_parameters())
    embeddings = pt.embedding_layers(model)  # LoRA on a token embedding: PEFT's lora_embedding_A/B
    tnames = {k: pt.torch_name(k, peft=lora, embeddings=embeddings) for k in trainable}
    for p in tparams.values():
        p.requires_grad_(False)
    for k in trainable:
        tparams[tnames[k]].requires_grad_(True)
    xt = pt.to_torch(x)
    yt = pt.to_torch(y)
    loss_forward, loss_backward = LOSSES[loss]

    def both_steps():
        """One forward + backward on each side; returns minilora's (out, loss) and torch's."""
        out = model.forward(x)
        value, cache = loss_forward(out, y)
        model.backward(loss_backward(1.0, cache)[0])
        if lora:
            pt.replay_masks(model, twin, adapter)
        twin.zero_grad(set_to_none=True)
        tout = twin(xt)
        tloss = pt.torch_loss(loss, tout, yt)
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
        return pm(_pytorch().to_torch(x)).numpy()


def _lora_W(model, path):
    """W of the (possibly LoRA-wrapped) linear layer at ``path``."""
    layer = model.get_module(path)
    return (layer.base if isinstance(layer, LoRALinear) else layer).params["W"]


def interop_minilora_to_peft(model, x, directory, adapter: str = "default", name: str | None = None,
                             tolerance: float = INTEROP_TOLERANCE) -> list:
    """Save ``model``'s adapter with ``minilora.adapters.save_adapter``, load the directory with
    ``peft.PeftModel.from_pretrained`` onto the PyTorch twin of the base, and compare:

      ``output``            minilora's forward vs PEFT's (eval, no dropout);
      ``merged <path>.W``   W + ΔW after ``model.merge(adapter)`` vs PEFT's ``merge_and_unload``;
      ``ΔW <path>``         the merged minus the base weights on each side (the stricter test).
    """
    peft = require("peft")
    pt = _pytorch()
    from . import adapters

    name = name or f"minilora→peft {type(model).__name__}"
    dtype = model.dtype
    model.eval()
    adapters.set_active(model, adapter)
    adapters.save_adapter(model, directory, adapter=adapter)
    out = backend.to_numpy(model.forward(x))
    pm = peft.PeftModel.from_pretrained(pt.torch_twin(model, dtype), directory, adapter_name=adapter)
    pm.eval()
    rows = [CheckResult(name, "output", rel_error(out, _peft_outputs(pm, x)), tolerance)]

    paths = list(adapters.list_adapters(model)[adapter].targets)
    base = {p: np.array(backend.to_numpy(_lora_W(model, p))) for p in paths}
    model.merge(adapter)
    merged = pm.merge_and_unload()
    tstate = merged.state_dict()
    for p in paths:
        ours = backend.to_numpy(_lora_W(model, p))
        theirs = tstate[f"{p}.weight"].numpy()
        rows.append(CheckResult(name, f"merged {p}.W", rel_error(ours, theirs), tolerance))
        rows.append(CheckResult(name, f"ΔW {p}", rel_error(ours - base[p], theirs - base[p]), tolerance))
    model.unmerge()
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
    pt = _pytorch()
    from . import adapters

    name = name or f"peft→minilora {type(model).__name__}"
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights="gaussian")
    with torch.random.fork_rng():  # PEFT draws A from the global generator: seed it, locally
        torch.manual_seed(seed)
        pm = peft.get_peft_model(pt.torch_twin(model, model.dtype), config, adapter_name=adapter)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in pm.named_parameters():
            if ".lora_B." in k:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    xt, yt = pt.to_torch(x), pt.to_torch(y)
    for _ in range(steps):
        opt.zero_grad()
        pt.torch_loss("cross_entropy", pm(xt), yt).backward()
        opt.step()
    pm.eval()
    pm.save_pretrained(directory)
    theirs = _peft_outputs(pm, x)
    adapters.load_adapter(model, directory, adapter_name=adapter)
    model.eval()
    ours = backend.to_numpy(model.forward(x))
    return [CheckResult(name, "output", rel_error(ours, theirs), tolerance)]


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
