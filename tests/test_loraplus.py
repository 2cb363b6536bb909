"""Optimizer parameter groups and LoRA+ (issue 14, part 3b): each group steps with its own lr and
weight decay, no groups means the old optimizer bit for bit, bad groups change nothing, and
minilora's LoRA+ groups and AdamW steps are PEFT's ``create_loraplus_optimizer`` + torch AdamW."""
import copy

import numpy as np
import pytest

from minilora import GPT, MLP, SGD, AdamW, add_lora_embedding, create_loraplus_optimizer, loraplus_groups, train_step
from minilora.gradcheck import rel_error


def _lora_mlp(dtype="float64"):
    model = MLP((6, 8, 3), "gelu", seed=0, dtype=dtype).add_lora(["fc1", "fc2"], r=2, alpha=4)
    g = np.random.default_rng(1)
    for k, p in model.named_parameters(trainable=True).items():
        p[...] = (0.5 * g.standard_normal(p.shape)).astype(dtype)  # B off zero: A gets a gradient too
    return model


def _data(dtype="float64", seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((5, 6)).astype(dtype), g.integers(0, 3, 5)


def _set_grads(model, value):
    """Every trainable parameter gets the constant gradient ``value`` (no backward needed)."""
    for _, m in model.named_modules():
        m.grads = {k: v * 0 + value for k, v in m.params.items() if k not in m.frozen}


def _params(model, trainable=True):
    return {k: np.array(v) for k, v in model.named_parameters(trainable=trainable).items()}


# ----------------------------------------------------------------------------- groups


def test_each_group_moves_with_its_own_lr_sgd():
    # SGD without momentum on a known gradient g: θ ← θ − lr_group (g + wd_group θ), exactly.
    model = _lora_mlp()
    groups = [{"params": "*.B", "lr": 0.4}, {"params": ["fc1.lora.default.A"], "lr": 0.02, "weight_decay": 0.5}]
    opt = SGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, groups=groups)
    before = _params(model)
    _set_grads(model, 0.25)
    opt.step()
    after = _params(model)
    expected = {"fc1.lora.default.A": (0.02, 0.5), "fc1.lora.default.B": (0.4, 0.0),
                "fc2.lora.default.A": (0.1, 0.0), "fc2.lora.default.B": (0.4, 0.0)}
    assert set(after) == set(expected)
    for k, (lr, wd) in expected.items():
        np.testing.assert_allclose(after[k], before[k] - lr * (0.25 + wd * before[k]), rtol=1e-14, atol=1e-15)


def test_each_group_moves_with_its_own_lr_adamw():
    # AdamW's first step with a constant g moves every entry by lr·g/(|g| + ε) after the decay
    # θ ← θ (1 − lr·wd): a group's lr shows up directly in the step.
    model = _lora_mlp()
    lr, lr_B, wd, g, eps = 1e-3, 1.6e-2, 0.1, 0.3, 1e-8
    opt = AdamW(model, lr=lr, weight_decay=wd, eps=eps, groups=[{"params": lambda k: k.endswith(".B"), "lr": lr_B}])
    before = _params(model)
    _set_grads(model, g)
    opt.step()
    for k, v in _params(model).items():
        step_lr = lr_B if k.endswith(".B") else lr
        np.testing.assert_allclose(v, before[k] * (1 - step_lr * wd) - step_lr * g / (g + eps), rtol=1e-13, atol=1e-15)


def test_no_groups_is_the_optimizer_as_it_was_bit_for_bit():
    # groups=None, groups=[] and a group that restates the defaults give the same bits; a group
    # holding every parameter at lr X gives the bits of AdamW(lr=X). (Against the optimizer before
    # groups existed the same comparison was run once by hand: equal bits, float16/32/64, fast and
    # reference update; the existing tests/test_optim_*.py pin its behaviour.)
    x, y = _data()
    runs = {}
    for name, kwargs in {"none": {}, "empty": {"groups": []},
                         "restated": {"groups": [{"params": "*", "lr": 3e-3, "weight_decay": 0.01}]},
                         "all_at_x": {"lr": 1.0, "weight_decay": 0.5,
                                      "groups": [{"params": "*", "lr": 3e-3, "weight_decay": 0.01}]}}.items():
        model = _lora_mlp()
        opt = AdamW(model, **{"lr": 3e-3, "weight_decay": 0.01, **kwargs})
        for _ in range(3):
            train_step(model, opt, x, y)
        runs[name] = _params(model)
    for name in ("empty", "restated", "all_at_x"):
        assert all(np.array_equal(runs["none"][k], runs[name][k]) for k in runs["none"]), name


def test_parameters_in_no_group_follow_the_optimizers_lr_when_it_changes():
    model = _lora_mlp()
    opt = SGD(model, lr=0.1, momentum=0.0, groups=[{"params": "*.B", "lr": 0.5}])
    opt.lr = 0.2  # a schedule sets opt.lr: the ungrouped A's follow it, the B group keeps its own
    before = _params(model)
    _set_grads(model, 1.0)
    opt.step()
    for k, v in _params(model).items():
        np.testing.assert_allclose(before[k] - v, 0.5 if k.endswith(".B") else 0.2, rtol=1e-12)
    assert opt.hyper("fc1.lora.default.B") == (0.5, 0.0) and opt.hyper("fc1.lora.default.A") == (0.2, 0.0)


@pytest.mark.parametrize("groups, match", [
    ([{"params": ["fc1.lora.default.Z"], "lr": 1.0}], "names 'fc1.lora.default.Z', which is not a parameter"),
    ([{"params": ["fc1.base.W"], "lr": 1.0}], "'fc1.base.W', which is frozen"),
    ([{"params": "*.B", "lr": 1.0}, {"name": "again", "params": ["fc2.lora.default.B"]}],
     "'fc2.lora.default.B' is in two groups, groups\\[0\\] and group 'again'"),
    ([{"params": "*.B", "lr": 0.0}], "groups\\[0\\] lr must be a positive finite number, got 0.0"),
    ([{"name": "B", "params": "*.B", "lr": -1e-3}], "group 'B' lr must be a positive"),
    ([{"params": "*.B", "lr": float("nan")}], "lr must be a positive finite number"),
    ([{"params": "*.B", "weight_decay": -0.1}], "weight_decay must be >= 0"),
    ([{"params": "*.B", "momentum": 0.5}], "unknown keys \\['momentum'\\]"),
    ([{"params": "*.C"}], "selects no trainable parameter"),
    ([{"lr": 1.0}], "must be a dict with a 'params' key"),
    ([{"params": 3}], "params must be a list of names, a glob or a predicate"),
    ({"params": "*.B"}, "groups must be a list of dicts"),
])
@pytest.mark.parametrize("cls", [AdamW, SGD])
def test_bad_groups_raise_and_change_nothing(groups, match, cls):
    model = _lora_mlp()
    before = _params(model, trainable=None)
    with pytest.raises(ValueError, match=match):
        cls(model, lr=1e-2, groups=groups)
    after = _params(model, trainable=None)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # and on an optimizer that exists: set_groups refuses, the old groups stay, the steps are the same
    x, y = _data()
    good = [{"name": "B", "params": "*.B", "lr": 5e-2}]
    twin, model2 = copy.deepcopy(model), model
    opt, opt2 = cls(twin, lr=1e-2, groups=good), cls(model2, lr=1e-2, groups=good)
    with pytest.raises(ValueError, match=match):
        opt2.set_groups(groups)
    assert opt2.groups == opt.groups and opt2.group_of == opt.group_of
    for _ in range(2):
        train_step(twin, opt, x, y)
        train_step(model2, opt2, x, y)
    assert all(np.array_equal(a, b) for a, b in zip(_params(twin).values(), _params(model2).values()))


# ----------------------------------------------------------------------------- LoRA+


def _gpt_for_loraplus():
    """A tiny GPT with every LoRA+ group filled: LoRA on q, v (A, B), on wte (embedding), the
    biases of q and v trained (1-D bias: B's lr, no decay), ln_f trained (LayerNorm: likewise) and
    the LM head trained in full (2-D: A's lr)."""
    model = GPT("tiny", vocab_size=11, seed=0, dtype="float64", init_std=0.5).add_lora(["q", "v"], r=2, alpha=4)
    add_lora_embedding(model, "wte", r=2, alpha=4)
    model.unfreeze("*.attn.q.base.b").unfreeze("*.attn.v.base.b").unfreeze("ln_f.*").unfreeze("lm_head.W")
    g = np.random.default_rng(2)
    for k, p in model.named_parameters(trainable=True).items():
        if ".lora." in k:
            p[...] = 0.5 * g.standard_normal(p.shape)  # A, B both non-zero: every group gets a gradient
    return model


def test_loraplus_groups_follow_pefts_rules():
    model = _gpt_for_loraplus()
    groups = loraplus_groups(model, lr=2e-4, ratio=16, lr_embedding=1e-6, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert [g["name"] for g in groups] == ["A", "embedding", "B", "B_no_decay"]  # PEFT's order
    assert by_name["A"]["params"] == ["blocks.0.attn.q.lora.default.A", "blocks.0.attn.v.lora.default.A",
                                      "blocks.1.attn.q.lora.default.A", "blocks.1.attn.v.lora.default.A",
                                      "lm_head.W"]
    assert by_name["embedding"]["params"] == ["wte.lora.default.A", "wte.lora.default.B"]
    assert by_name["B"]["params"] == [k.replace(".A", ".B") for k in by_name["A"]["params"][:4]]
    assert by_name["B_no_decay"]["params"] == ["blocks.0.attn.q.base.b", "blocks.0.attn.v.base.b",
                                               "blocks.1.attn.q.base.b", "blocks.1.attn.v.base.b",
                                               "ln_f.gamma", "ln_f.beta"]
    assert {n: (g["lr"], g["weight_decay"]) for n, g in by_name.items()} == {
        "A": (2e-4, 0.01), "embedding": (1e-6, 0.01), "B": (16 * 2e-4, 0.01), "B_no_decay": (16 * 2e-4, 0.0)}
    every = [k for g in groups for k in g["params"]]
    assert sorted(every) == sorted(model.named_parameters(trainable=True))  # each exactly once
    assert [g["name"] for g in loraplus_groups(_lora_mlp(), 1e-3)] == ["A", "B"]  # empty groups left out


def test_loraplus_moves_B_ratio_times_as_far_as_A_on_the_first_step():
    # AdamW's first step moves each entry by about lr · sign(g), so |ΔB| / |ΔA| = ratio.
    model = _lora_mlp()
    opt = create_loraplus_optimizer(model, lr=1e-4, ratio=16)
    before = _params(model)
    train_step(model, opt, *_data())
    step = {k: np.abs(v - before[k]) for k, v in _params(model).items()}
    for k, s in step.items():
        np.testing.assert_allclose(s[s > 0], 16e-4 if k.endswith(".B") else 1e-4, rtol=1e-3)
    assert isinstance(create_loraplus_optimizer(_lora_mlp(), 1e-3, optimizer=SGD, momentum=0.0), SGD)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr must be a positive"), (dict(lr=1e-3, ratio=-16), "ratio must be a positive"),
    (dict(lr=1e-3, lr_embedding=0), "lr_embedding must be a positive"),
    (dict(lr=1e-3, weight_decay=-1), "weight_decay must be >= 0"),
])
def test_loraplus_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loraplus_groups(_lora_mlp(), **kwargs)


@pytest.mark.crosscheck
def test_loraplus_adamw_equals_pefts_create_loraplus_optimizer():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer as peft_loraplus

    from minilora import torch_twin as tt
    from minilora.functional.losses import LOSSES

    model = _gpt_for_loraplus()
    config, adapter = tt.lora_config(model)
    config.target_modules = set(config.target_modules) | {"wte"}
    pm = peft.get_peft_model(tt.torch_twin(model), config, adapter_name=adapter)
    tparams = dict(pm.named_parameters())

    def torch_name(k):
        if k.startswith("wte.lora."):  # PEFT's embedding adapter: a ParameterDict, no ".weight"
            return f"base_model.model.wte.lora_embedding_{k[-1]}.{adapter}"
        return tt.torch_name(k, peft=True)

    names = {k: torch_name(k) for k in model.named_parameters(trainable=True)}
    with torch.no_grad():
        for k, tk in names.items():
            tparams[tk].copy_(tt.to_torch(model.named_parameters()[k]))
    for p in tparams.values():
        p.requires_grad_(False)
    for tk in names.values():
        tparams[tk].requires_grad_(True)

    settings = dict(lr=3e-3, ratio=16.0, lr_embedding=1e-3, weight_decay=0.1)  # lr_embedding > 1e-6: it moves
    opt = create_loraplus_optimizer(model, **settings)
    topt = peft_loraplus(pm, torch.optim.AdamW, lr=settings["lr"], loraplus_lr_ratio=settings["ratio"],
                         loraplus_lr_embedding=settings["lr_embedding"], loraplus_weight_decay=settings["weight_decay"],
                         foreach=False)
    # the same parameters in the same groups with the same lr and weight decay
    by_tensor = {id(tparams[tk]): k for k, tk in names.items()}
    theirs = sorted((sorted(by_tensor[id(p)] for p in g["params"]), g["lr"], g["weight_decay"])
                    for g in topt.param_groups if g["params"])
    ours = sorted((sorted(g["params"]), g["lr"], g["weight_decay"]) for g in loraplus_groups(model, **settings))
    assert theirs == ours

    g = np.random.default_rng(3)
    ids, y = g.integers(0, 11, (2, 8)), g.integers(0, 11, (2, 8))
    ids[:, :3] = 4  # repeated ids: the embedding adapter's scatter-add
    loss_forward, loss_backward = LOSSES["cross_entropy"]
    worst = 0.0
    for _ in range(4):
        value, cache = loss_forward(model.forward(ids), y)
        model.backward(loss_backward(1.0, cache)[0])
        opt.step()
        topt.zero_grad()
        tloss = tt.torch_loss("cross_entropy", pm(torch.from_numpy(ids)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        assert rel_error(np.asarray(float(value)), tloss.detach().numpy()) <= 1e-12
        now = model.named_parameters(trainable=True)
        worst = max(worst, max(rel_error(now[k], tparams[tk].detach().numpy()) for k, tk in names.items()))
    assert worst <= 1e-10, worst  # float64 on both sides: measured ~1e-15
