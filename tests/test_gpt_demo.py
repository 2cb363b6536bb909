"""The text corpora and the GPT demo's quick mode (through the ``minilora`` command), and its
cache: checked before use, a damaged file retrained and overwritten, ``--no-cache``."""
import math
import os
import warnings

import numpy as np
import pytest

from minilora import safetensors as st
from minilora.cli import main
from minilora.data import text
from minilora.experiments import gpt_demo

ROWS = ("base (prose only)", "LoRA (q, v)", "LoRA (all six linears)", "full fine-tuning")


# ----------------------------------------------------------------------------- text data


def test_vocabulary_roundtrip_fold_and_unknown_characters():
    assert len(text.VOCAB) == 97 and len(set(text.VOCAB)) == 97
    s = "def f(x):\n    return {'a': x ~ 1}  # ok!"
    ids = text.encode(s)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < len(text.VOCAB)
    assert text.decode(ids) == s
    assert text.decode(text.encode("\u201cit\u2019s\u201d\u2014\tx")) == '"it\'s"--    x'  # folded to ASCII
    assert text.decode(text.encode("na\u00efve \u03c0")) == f"na{text.UNK}ve {text.UNK}"  # unknown -> UNK
    assert text.encode("\u00ef").tolist() == [text.UNK_ID]


@pytest.mark.parametrize("name", ["prose", "python"])
def test_corpora_are_real_deterministic_and_split(name):
    train, val = text.load_corpus(name)
    assert len(train) > 300_000 and len(val) > 30_000
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-3
    again_train, again_val = text.load_corpus(name)
    np.testing.assert_array_equal(again_train, train)
    np.testing.assert_array_equal(again_val, val)
    assert np.mean(train == text.UNK_ID) < 1e-3  # almost everything is in the vocabulary
    sample = text.decode(train[:2000])
    if name == "python":
        assert "def " in sample or "import " in sample
    else:
        assert " the " in sample


def test_the_two_domains_differ():
    prose, py = text.load_corpus("prose")[0], text.load_corpus("python")[0]
    hp, hq = (np.bincount(ids, minlength=len(text.VOCAB)) / len(ids) for ids in (prose, py))
    assert 0.5 * np.abs(hp - hq).sum() > 0.1  # character frequencies differ (total variation)
    def rate(s, w):
        return s.count(w) / len(s)

    P, Q = text.decode(prose), text.decode(py)
    assert rate(Q, "self.") > 10 * rate(P, "self.") and rate(Q, "    def ") > 10 * rate(P, "    def ")


def test_random_windows_are_seeded_and_shifted_by_one():
    ids = np.arange(1000) % 97
    a = text.batches(ids, 4, 8, seed=3)
    b = text.batches(ids, 4, 8, seed=3)
    for _ in range(3):
        (x1, y1), (x2, _) = next(a), next(b)
        np.testing.assert_array_equal(x1, x2)
        assert x1.shape == (4, 8) and x1.dtype == np.int64
        np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])
        np.testing.assert_array_equal((x1 + 1) % 97, y1)  # the next id of this arange corpus
    with pytest.raises(ValueError, match="T \\+ 1 = 9"):
        next(text.batches(ids[:8], 2, 8))


def test_eval_windows_cover_the_text_in_order():
    ids = np.arange(50)
    x, y = text.windows(ids, 7)
    assert x.shape == (7, 7)
    np.testing.assert_array_equal(x.reshape(-1), np.arange(49))
    np.testing.assert_array_equal(y.reshape(-1), np.arange(1, 50))
    x3, _ = text.windows(ids, 7, max_windows=3)
    np.testing.assert_array_equal(x3[:, 0], [0, 21, 42])


# ----------------------------------------------------------------------------- the demo


def test_demo_gpt_quick_through_the_cli_then_from_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["demo", "gpt", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for row in ROWS:
        assert row in out
    assert "base: trained now" in out and "Python val loss" in out and "step (ms)" in out
    assert "sample, base (before)" in out and "(after)" in out
    cached = list((tmp_path / "minilora").glob("gpt_base_*.safetensors"))
    assert len(cached) == 1 and not list((tmp_path / "minilora").glob("*.tmp*"))  # written atomically

    res = gpt_demo.run(quick=True, progress=False)
    capsys.readouterr()
    assert res["base"]["from_cache"] and "loaded from cache" in res["report"]
    rows = {r["method"]: r for r in res["rows"]}
    assert tuple(rows) == ROWS
    assert rows["full fine-tuning"]["trainable"] == res["total_params"]
    assert 0 < rows["LoRA (q, v)"]["trainable"] < rows["LoRA (all six linears)"]["trainable"] < res["total_params"]
    assert rows["base (prose only)"]["step_time"] is None
    for r in res["rows"]:
        assert math.isfinite(r["val_loss"]) and 0 < r["val_loss"] < math.log(97) + 1
        assert r["step_time"] is None or r["step_time"] > 0
    # adaptation trains on Python: the adapted models fit held-out Python better than the base
    assert rows["full fine-tuning"]["val_loss"] < rows["base (prose only)"]["val_loss"]
    assert all(txt.startswith(gpt_demo.PROMPT) for txt in res["samples"].values())


def test_cached_base_equals_a_fresh_training(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    s, config = gpt_demo.settings(quick=True)
    train, _ = text.load_corpus("prose")
    s = dict(s, pretrain_steps=3)
    a, info_a = gpt_demo.pretrained_base(config, 0, s, train, "cpu", progress=False)
    b, info_b = gpt_demo.pretrained_base(config, 0, s, train, "cpu", progress=False)
    c, info_c = gpt_demo.pretrained_base(config, 0, s, train, "cpu", progress=False, cache=False)
    assert not info_a["from_cache"] and info_b["from_cache"] and not info_c["from_cache"]
    assert info_c["path"] is None
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
        np.testing.assert_array_equal(v, c.state_dict()[k])
    other = gpt_demo.cache_key(config, 1, s, train)  # another seed: another file
    assert other != gpt_demo.cache_key(config, 0, s, train)
    assert os.path.basename(info_a["path"]) == f"gpt_base_{gpt_demo.cache_key(config, 0, s, train)}.safetensors"


# ----------------------------------------------------------------------------- a damaged cache


def _rewrite(path, change):
    tensors, meta = st.load_file(path)
    st.save_file(change(tensors), path, meta)


def _nan_in_wte(tensors):
    tensors["wte.W"][3, 5] = np.nan
    return tensors


DAMAGE = {  # kind -> (damage the file in place, what the warning must say)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "0 bytes"),
    "wrong keys": (lambda p: _rewrite(p, lambda t: {k.replace("ln_f", "ln_final"): v for k, v in t.items()}),
                   "names differ"),
    "non-finite": (lambda p: _rewrite(p, _nan_in_wte), "key 'wte.W': holds NaN"),
}


def _cached_files(tmp_path):
    return sorted((tmp_path / "minilora").glob("gpt_base_*"))


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_cache_is_reported_once_retrained_and_overwritten(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = gpt_demo.run(quick=True, progress=False)
    (path,) = _cached_files(tmp_path)
    good = path.read_bytes()
    damage, reason = DAMAGE[kind]
    damage(path)
    assert path.read_bytes() != good

    with pytest.warns(UserWarning) as caught:  # today: BadZipFile, EOFError, FloatingPointError...
        again = gpt_demo.run(quick=True, progress=False)
    messages = [str(w.message) for w in caught if "cache" in str(w.message)]
    assert len(messages) == 1, messages
    assert str(path) in messages[0] and reason in messages[0], messages[0]
    assert not again["base"]["from_cache"] and "replacing a damaged cache file" in again["report"]
    assert [r["val_loss"] for r in again["rows"]] == [r["val_loss"] for r in first["rows"]]
    assert path.read_bytes() == good  # trained again, the same weights written over the damage
    assert _cached_files(tmp_path) == [path]  # atomically: no temporary file left behind

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: the next run reads it quietly
        third = gpt_demo.run(quick=True, progress=False)
    assert third["base"]["from_cache"]
    capsys.readouterr()


def test_no_cache_neither_reads_nor_writes_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["demo", "gpt", "--quick", "--no-progress", "--no-cache"]) == 0
    assert "(cache off)" in capsys.readouterr().out
    assert _cached_files(tmp_path) == []  # nothing written

    gpt_demo.pretrained_gpt(quick=True)  # now a cache file exists; damage it
    (path,) = _cached_files(tmp_path)
    path.write_bytes(b"not a safetensors file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even looked at: no warning
        assert main(["demo", "gpt", "--quick", "--no-progress", "--no-cache"]) == 0
    assert "base: trained now" in capsys.readouterr().out
    assert path.read_bytes() == b"not a safetensors file"  # and not overwritten


def test_a_cache_that_cannot_be_written_is_a_warning_not_an_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.warns(UserWarning, match="not cached"):
        res = gpt_demo.run(quick=True, progress=False)
    assert not res["base"]["from_cache"] and res["base"]["path"] is None
    assert "(not cached: cannot write" in res["report"]
    capsys.readouterr()
