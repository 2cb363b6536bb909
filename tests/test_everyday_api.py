"""The everyday API for "my own model, my own text": whole-model weights on disk (save_weights,
load_weights), the character tokenizer, text_loss, generate_text, pretrained_gpt, the script in
docs/own_text.md, and the command line's errors in its own words."""
import ast
import math
import pathlib

import numpy as np
import pytest

import minilora as ml
from minilora import safetensors as st
from minilora.cli import main
from minilora.data import text
from minilora.experiments import gpt_demo
from minilora.functional.losses import softmax_cross_entropy_forward

ROOT = pathlib.Path(__file__).resolve().parents[1]


def params(model) -> dict:
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


# ----------------------------------------------------------------------------- save_weights / load_weights


@pytest.fixture
def saved(tmp_path):
    """A tiny GPT with LoRA on q, v (B moved off zero), saved; and where."""
    model = ml.GPT("tiny", vocab_size=11, seed=0).add_lora(["q", "v"], r=2, alpha=4, seed=1)
    for layer in model.lora_layers().values():
        layer.adapters["default"].params["B"] += 0.5
    path = tmp_path / "sub" / "model.safetensors"  # the directory is created
    size = ml.save_weights(model, path)
    assert size == path.stat().st_size
    return model, path


def test_weights_round_trip_bitwise(saved):
    model, path = saved
    other = ml.GPT("tiny", vocab_size=11, seed=5).add_lora(["q", "v"], r=2, alpha=4, seed=6)
    assert ml.load_weights(other, path) is other
    assert_same(params(other), params(model))
    ids = np.arange(12).reshape(2, 6) % 11
    assert other.forward(ids).tobytes() == model.forward(ids).tobytes()


def test_save_is_atomic_a_crash_midway_keeps_the_old_file(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()
    model.lm_head.W += 1.0  # something new to save

    def half_then_crash(f, data):
        f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(st, "write_bytes", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        ml.save_weights(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


def test_a_model_with_a_merged_adapter_is_not_saved(saved, tmp_path):
    model, _ = saved
    model.merge()
    with pytest.raises(ValueError, match=r"merged into W; call model.unmerge\(\) first"):
        ml.save_weights(model, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def _tensors(path):
    return st.load_file(path)[0]


def _save(path, tensors):
    st.save_file(tensors, path)


DAMAGED = {  # kind -> (change the file at path, the error must match)
    "empty": (lambda p: p.write_bytes(b""), r"file is 0 bytes"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-7]), r"truncated"),
    "corrupt header": (lambda p: p.write_bytes(b"\x10" + b"\x00" * 7 + b"{not json at all"), r"not valid JSON"),
    "missing key": (lambda p: _save(p, {k: v for k, v in _tensors(p).items() if k != "ln_f.beta"}),
                    r"names differ from the model's: missing \['ln_f.beta'\]"),
    "unexpected key": (lambda p: _save(p, dict(_tensors(p), extra=np.zeros(2, np.float32))),
                       r"unexpected \['extra'\]"),
    "wrong shape": (lambda p: _save(p, dict(_tensors(p), **{"wpe.W": np.zeros((3, 16), np.float32)})),
                    r"wpe.W has shape \(3, 16\) and dtype float32, the model's has shape \(16, 16\)"),
    "wrong dtype": (lambda p: _save(p, {k: v.astype(np.float64) if k == "wte.W" else v
                                        for k, v in _tensors(p).items()}),
                    r"wte.W has shape \(11, 16\) and dtype float64, the model's has shape \(11, 16\) and dtype float32"),
    "non-finite": (lambda p: _save(p, {k: np.where(np.arange(v.size).reshape(v.shape) == 1, np.inf, v).astype(v.dtype)
                                       if k.endswith("lora.default.B") else v for k, v in _tensors(p).items()}),
                   r"key 'blocks.0.attn.q.lora.default.B': holds NaN or infinite"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_bad_file_is_a_value_error_naming_it_and_the_model_is_unchanged(kind, saved):
    _, path = saved
    damage, message = DAMAGED[kind]
    damage(path)
    target = ml.GPT("tiny", vocab_size=11, seed=7).add_lora(["q", "v"], r=2, alpha=4, seed=8)
    before = params(target)
    with pytest.raises(ValueError, match=message) as err:
        ml.load_weights(target, path)
    assert str(path) in str(err.value)
    assert_same(params(target), before)


def test_the_adapters_demo_saves_and_loads_the_base_with_these():
    from minilora.experiments import task_switch

    assert task_switch.save_model is ml.save_weights and task_switch.load_model_weights is ml.load_weights


# ----------------------------------------------------------------------------- CharTokenizer


def test_tokenizer_round_trip_and_vocabulary():
    tok = ml.CharTokenizer()
    assert len(tok) == tok.vocab_size == 97 and tok.vocab == text.VOCAB and tok.unk_id == 96
    s = "def f(x):\n    return {'a': x ~ 1}  # ok!"
    ids = tok.encode(s)
    assert ids.dtype == np.int64 and ids.shape == (len(s),) and ids.tolist() == text.encode(s).tolist()
    assert tok.decode(ids) == s and tok.decode(ids.tolist()) == s and tok.decode([]) == ""
    assert tok.decode(ids.reshape(1, -1)) == s  # any shape, flattened


def test_unknown_characters_become_unk_or_raise_when_strict():
    assert ml.CharTokenizer().decode(ml.CharTokenizer().encode("café\r\n")) == "caf\ufffd\ufffd\n"
    strict = ml.CharTokenizer("strict")
    assert strict.decode(strict.encode("\u201cit\u2019s\u201d\tok \ufffd")) == '"it\'s"    ok \ufffd'  # folded, UNK kept
    with pytest.raises(ValueError, match=r"2 characters are outside .* the first 'é' \(U\+00E9\) at position 3"):
        strict.encode("café au lait, naïve")
    with pytest.raises(ValueError, match="errors must be one of"):
        ml.CharTokenizer("ignore")
    with pytest.raises(TypeError, match="needs a str"):
        strict.encode(b"bytes")


def test_decode_refuses_ids_outside_the_vocabulary():
    tok = ml.CharTokenizer()
    for bad in ([97], [-1], np.array([3, 200])):
        with pytest.raises(ValueError, match=r"ids in \[0, 97\)"):
            tok.decode(bad)
    with pytest.raises(TypeError, match="integer ids"):
        tok.decode(np.array([1.0, 2.0]))


# ----------------------------------------------------------------------------- text_loss


@pytest.fixture(scope="module")
def gpt():
    return ml.GPT("tiny", vocab_size=97, seed=0)  # n_ctx = 16


def reference_loss(model, ids) -> float:
    """Mean over every target: the text cut into consecutive n_ctx windows, the last one shorter,
    each run alone and the per-character losses summed by hand."""
    T, total = model.config.n_ctx, 0.0
    for start in range(0, len(ids) - 1, T):
        w = ids[start:start + T + 1]
        logits = model.forward(w[None, :-1])[0].astype(np.float64)  # (t, V)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= logp[np.arange(len(w) - 1), w[1:]].sum()
    return total / (len(ids) - 1)


def test_text_loss_predicts_every_character_once(gpt):
    s = text.decode(text.load_corpus("python")[1][:16 * 7 + 6])  # 7 full windows and a tail of 5
    ids = text.encode(s)
    got = ml.text_loss(gpt, s)
    assert got == pytest.approx(reference_loss(gpt, ids), rel=1e-5)
    assert ml.text_loss(gpt, ids) == got and ml.text_loss(gpt, list(ids)) == got
    assert ml.text_loss(gpt, s, batch=3) == pytest.approx(got, rel=1e-6)  # batching changes nothing
    changed_last = s[:-1] + ("x" if s[-1] != "x" else "y")
    assert ml.text_loss(gpt, changed_last) != got  # the tail counts
    short = "def f"
    assert ml.text_loss(gpt, short) == pytest.approx(reference_loss(gpt, text.encode(short)), rel=1e-5)
    assert 0 < got < math.log(97) + 1


def test_text_loss_runs_in_eval_mode_and_restores_the_mode():
    model = ml.GPT("tiny", vocab_size=97, seed=0).add_lora(["q", "v"], r=2, alpha=4, dropout=0.5)
    for layer in model.lora_layers().values():
        layer.adapters["default"].params["B"] += 1.0
    s = ("for i in range(10):\n    print(i)\n" * 3)[:16 * 6 + 1]  # exactly 6 windows of 16 targets
    a, b = ml.text_loss(model, s), ml.text_loss(model, s)
    assert a == b  # dropout off: deterministic
    assert model.training  # and the model is back in training mode
    x, y = text.windows(s, 16)
    model.eval()
    loss, _ = softmax_cross_entropy_forward(model.forward(x), y)
    assert a == pytest.approx(float(loss), rel=1e-6)


def test_text_loss_errors(gpt):
    with pytest.raises(ValueError, match="at least 2 characters"):
        ml.text_loss(gpt, "x")
    with pytest.raises(TypeError, match="must be a GPT"):
        ml.text_loss(ml.MLP((4, 3)), "hello")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        ml.text_loss(gpt, "hello", batch=0)
    with pytest.raises(TypeError, match="integer ids"):
        ml.text_loss(gpt, np.zeros((2, 3), np.int64))


# ----------------------------------------------------------------------------- generate_text


def test_generate_text_is_the_prompt_then_seeded_samples(gpt):
    out = ml.generate_text(gpt, "def ", 30, seed=3)
    assert isinstance(out, str) and out.startswith("def ") and len(out) == 34
    assert out == ml.generate_text(gpt, "def ", 30, seed=3)
    assert out == text.decode(gpt.generate(text.encode("def ")[None, :], 30, temperature=0.8, seed=3))
    assert ml.generate_text(gpt, "def ", 30, seed=4) != out
    greedy = ml.generate_text(gpt, "def ", 10, temperature=0, seed=1)
    assert greedy == ml.generate_text(gpt, "def ", 10, temperature=0, seed=2)
    top1 = ml.generate_text(gpt, "def ", 10, temperature=1.0, top_k=1, seed=5)
    assert top1 == greedy
    long_prompt = "x = 1\n" * 10  # longer than n_ctx = 16: the model reads its last 16 characters
    assert ml.generate_text(gpt, long_prompt, 5).startswith(long_prompt)
    assert ml.generate_text(gpt, "caf\u00e9", 2).startswith("caf\ufffd")  # as the model read it
    with pytest.raises(ValueError, match="non-empty str"):
        ml.generate_text(gpt, "", 5)


# ----------------------------------------------------------------------------- pretrained_gpt


def test_pretrained_gpt_is_the_demos_cached_base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = ml.pretrained_gpt(quick=True)
    assert isinstance(model, ml.GPT) and model.config.vocab_size == 97 and model.training
    (path,) = (tmp_path / "minilora").glob("gpt_base_*.safetensors")
    again = ml.pretrained_gpt(quick=True)  # read back from the cache
    assert_same(params(again), params(model))
    fresh = ml.pretrained_gpt(quick=True, cache=False)  # trained again: the same weights
    assert_same(params(fresh), params(model))
    assert ml.text_loss(model, "the quick brown fox jumps over the lazy dog") < math.log(97)
    res = gpt_demo.run(quick=True, progress=False)  # the demo finds the same file
    capsys.readouterr()
    assert res["base"]["from_cache"] and res["base"]["path"] == str(path)
    other = params(ml.pretrained_gpt(quick=True, seed=1, cache=False))
    assert other["wte.W"].tobytes() != params(model)["wte.W"].tobytes()  # another seed, another base


def test_pretrained_gpt_checks_its_arguments():
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        ml.pretrained_gpt(quick=True, seed=-1)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ml.pretrained_gpt(quick=True, device="tpu")


# ----------------------------------------------------------------------------- docs/own_text.md


def own_text_script() -> str:
    md = (ROOT / "docs" / "own_text.md").read_text()
    blocks = md.split("```python\n")[1:]
    assert len(blocks) == 1, "docs/own_text.md should hold exactly one Python block: the script"
    return blocks[0].split("```", 1)[0]


def test_own_text_script_uses_only_public_names():
    tree = ast.parse(own_text_script())
    imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"os", "minilora"}, imported
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ml"}
    assert used and all(not name.startswith("_") and hasattr(ml, name) for name in used), used
    for name in ("pretrained_gpt", "CharTokenizer", "AdamW", "fit", "text_loss", "generate_text",
                 "save_adapter", "save_weights", "text_batches"):
        assert name in used, name


def test_own_text_script_runs_and_lowers_the_held_out_loss(tmp_path, monkeypatch, capsys):
    my_text = tmp_path / "my_text.txt"
    my_text.write_text(text.python_text(("textwrap", "fnmatch", "string")), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MINILORA_QUICK", "1")
    monkeypatch.setenv("MY_TEXT", str(my_text))
    namespace = {}
    exec(compile(own_text_script(), str(ROOT / "docs" / "own_text.md"), "exec"), namespace)
    out = capsys.readouterr().out
    assert namespace["after"] < namespace["before"], out
    assert f"held-out loss: {namespace['before']:.3f} -> {namespace['after']:.3f}" in out
    assert (tmp_path / "my_adapter" / "adapter_model.safetensors").exists()
    whole = ml.pretrained_gpt(quick=True).add_lora(["q", "v"], r=8, alpha=16)
    ml.load_weights(whole, tmp_path / "my_model.safetensors")  # the whole model, loaded back
    assert ml.text_loss(whole, namespace["val_ids"]) == namespace["after"]


# ----------------------------------------------------------------------------- the command line


def exit_status(argv) -> int:
    """What ``minilora ARGV`` exits with: argparse's own errors raise SystemExit(2), the checks
    made after parsing return 2."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv, flag, value", [
    (["demo", "--seed", "-1"], "--seed", "'-1'"),
    (["demo", "--seed", "1.5"], "--seed", "'1.5'"),
    (["demo", "--seed", "ten"], "--seed", "'ten'"),
    (["demo", "--device", "tpu"], "--device", "'tpu'"),
    (["demo", "mlp", "--no-cache"], "--no-cache", "'mlp'"),
])
def test_bad_flags_are_argparse_errors_naming_flag_and_value(argv, flag, value, capsys):
    assert exit_status(argv + ["--quick"]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err and "usage: minilora" in err, err


def test_a_missing_gpu_is_an_argparse_error_with_the_install_hint(monkeypatch, capsys):
    from minilora import backend

    monkeypatch.setattr(backend, "cupy_or_none", lambda: None)
    assert exit_status(["demo", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "argument --device: 'cuda'" in err and "pip install" in err


def test_good_seeds_reach_the_demo(monkeypatch):
    seen = {}
    monkeypatch.setattr(gpt_demo, "run", lambda **kw: seen.update(kw))
    assert main(["demo", "gpt", "--seed", "12", "--quick", "--no-cache", "--no-progress"]) == 0
    assert seen == {"quick": True, "seed": 12, "device": "cpu", "progress": False, "cache": False}
