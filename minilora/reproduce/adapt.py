"""Items 5–6 of the report: which weights to adapt under a fixed budget, and how small r can be.

A *setting* is a pretrained base, a target-domain stream of batches, a validation loss and the
names of the four attention weights (Wq, Wk, Wv, Wo) in that model. ``Runs`` trains LoRA from a
fresh copy of the base once per (weight types, r, seed) and remembers the result, so the budget
table, the rank table and the subspace analysis (items 7–8) share their runs.

The tiny GPT's setting: the demo's base (English prose, ``minilora demo gpt``), adapted to Python
source; the loss is nats per character on held-out Python modules.

Seeds: run ``seed`` draws its adapters' initial A from ``1000 · seed + r`` and its batches from
``seed + 1``. So two seeds differ in both, and two ranks of one seed do *not* share an initial
A (with one generator the r = 8 adapter's A would be the first rows of the r = 64 one's, and their
subspaces would overlap by construction, not by training).
"""
from __future__ import annotations

import copy
import dataclasses
import time

from .. import backend
from ..nn.lora import add_lora, lora_layers
from ..optim import AdamW
from ..train import fit

TYPES = ("q", "k", "v", "o")  # the paper's Wq, Wk, Wv, Wo
BUDGET = [("q",), ("k",), ("v",), ("o",), ("q", "k"), ("q", "v"), ("q", "k", "v", "o")]  # Table 5's columns


def budget_rank(types, r_one: int) -> int:
    """Table 5's rule: a budget of r_one ranks for one weight type is split evenly over the
    types adapted (8 → 8, 4, 2 for one, two and four types)."""
    return max(1, r_one // len(types))


@dataclasses.dataclass
class Setting:
    """A base to adapt and how to measure it (see the module docstring)."""

    name: str
    base: object  # the pretrained model (never trained here: each run adapts a deep copy)
    batches: object  # seed -> an iterator of (x, y)
    val_loss: object  # model -> float (target-domain validation loss, eval mode)
    names: dict  # {"q": target name in the model, ...}
    layer: str  # the path of the Wq analysed in items 7–8 (a middle block's)
    steps: int
    lr: float
    scale: float = 2.0  # alpha = scale · r: the same alpha / r at every rank (see docs/reproduce.md)
    d_model: int = 0
    loss: str = "cross_entropy"  # the training loss (a name in functional.losses.LOSSES)


class Runs:
    """Trained adapters by (types, r, seed): each trained once, on a fresh copy of the base."""

    def __init__(self, setting: Setting, progress: bool = False):
        self.setting, self.progress, self.done = setting, progress, {}
        self._base_loss = None

    def base_loss(self) -> float:
        if self._base_loss is None:
            self._base_loss = self.setting.val_loss(self.setting.base)
        return self._base_loss

    def get(self, types, r: int, seed: int) -> dict:
        """``{"val_loss", "trainable", "seconds", "A", "A0", "B", "scale"}`` of one run; A, A0
        (A before training), B by layer path, as host arrays (for items 7–8)."""
        key = (tuple(types), int(r), int(seed))
        if key not in self.done:
            self.done[key] = self._train(*key)
        return self.done[key]

    def _train(self, types, r, seed) -> dict:
        s = self.setting
        model = copy.deepcopy(s.base)
        targets = [s.names[t] for t in types]
        add_lora(model, targets, r=r, alpha=s.scale * r, seed=1000 * seed + r)
        layers = lora_layers(model)
        A0 = {p: backend.to_numpy(m.adapters["default"].params["A"]).copy() for p, m in layers.items()}
        t0 = time.perf_counter()
        fit(model, AdamW(model, lr=s.lr), s.batches(seed + 1), s.steps, loss=s.loss, progress=self.progress,
            desc=f"{s.name}: LoRA r={r} on {'+'.join('W' + t for t in types)}, seed {seed}")
        seconds = time.perf_counter() - t0
        out = {"val_loss": s.val_loss(model), "trainable": model.num_parameters(trainable=True),
               "seconds": seconds, "A0": A0, "A": {}, "B": {}, "scale": {}}
        for p, m in layers.items():
            ad = m.adapters["default"]
            out["A"][p] = backend.to_numpy(ad.params["A"]).copy()
            out["B"][p] = backend.to_numpy(ad.params["B"]).copy()
            out["scale"][p] = ad.scale
        return out


def summary(values) -> dict:
    """Mean, sample standard deviation and the values themselves."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "values": list(values)}


def budget_table(runs: Runs, r_one: int, seeds) -> list:
    """Item 5: every column of Table 5 at one budget, each over ``seeds``."""
    rows = []
    for types in BUDGET:
        r = budget_rank(types, r_one)
        got = [runs.get(types, r, s) for s in seeds]
        rows.append({"types": list(types), "r": r, "trainable": got[0]["trainable"],
                     "val_loss": summary([g["val_loss"] for g in got])})
    return rows


def rank_table(runs: Runs, ranks, seeds, type_sets=(("q",), ("q", "v"))) -> list:
    """Item 6: validation loss against r for each set of weight types (Table 6's rows)."""
    rows = []
    for types in type_sets:
        for r in ranks:
            got = [runs.get(types, r, s) for s in seeds]
            rows.append({"types": list(types), "r": r, "trainable": got[0]["trainable"],
                         "val_loss": summary([g["val_loss"] for g in got])})
    return rows
