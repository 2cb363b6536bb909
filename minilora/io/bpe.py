"""Byte-level BPE (GPT-2 style), the tokenizer of SmolLM2: text -> ids -> text, in plain Python.

    tok = bpe_from_gguf(smollm2_path())     # vocabulary and merges read from the GGUF file
    ids = tok.encode("Hello world's")       # [19556, 905, 506]
    tok.decode(ids) == "Hello world's"

``encode`` runs four steps (docs/tokenizer.md walks through them with real ids):

1. special tokens ("<|im_start|>", "<|im_end|>", ...) are cut out whole; they map straight to ids;
2. pre-tokenisation splits the text between them into words: every digit alone (SmolLM2's
   ``split_digits``), then the GPT-2 regex (contractions, letter runs, number runs, other runs,
   whitespace), so no merge ever crosses a word boundary;
3. each word's UTF-8 bytes become printable characters through the GPT-2 byte table;
4. BPE: merge the adjacent pair with the lowest merge rank until no adjacent pair is a merge;
   each remaining symbol is a vocabulary entry, its position there the id.

``decode`` runs the table backwards: ids -> symbols -> bytes -> UTF-8 (bad UTF-8 -> "\\ufffd").

Standard library only. Python's ``re`` has no ``\\p{L}`` / ``\\p{N}``, so both classes are built
once (about 0.4 s, on first use) from ``unicodedata`` general categories, and ``\\s`` is spelled
out as the Unicode White_Space property, which is what the reference's regex engine means by it
(Python's ``\\s`` would also take the separators U+001C..U+001F). Letters and numbers follow the
Unicode version of this Python's ``unicodedata``.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata
from itertools import groupby

# \s of the reference: the 25 code points with the Unicode White_Space property, as a class body.
WHITE_SPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# tokenizer.ggml.pre -> split_digits: is every digit cut out on its own before the GPT-2 regex?
# (llama.cpp's llama-vocab.cpp: "\p{N}" first for smollm and starcoder; in the Hugging Face
# tokenizer.json of SmolLM2: Digits(individual_digits=True) before ByteLevel.)
PRE_TYPES = {"default": False, "gpt2": False, "smollm": True, "starcoder": True}
ERRORS = ("strict", "ignore")  # what encode does with a byte the vocabulary has no symbol for


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte table: each of the 256 byte values -> one printable character.

    The 188 bytes that print as themselves in Latin-1 ("!".."~", "¡".."¬", "®".."ÿ") stay; the
    other 68 (controls, space, DEL, NBSP, soft hyphen, ...) move, in byte order, to U+0100,
    U+0101, ...: space 0x20 becomes "Ġ" (U+0120), newline 0x0A "Ċ" (U+010A). Every vocabulary
    entry is a string over these 256 characters, and none contains a real space. (One shared
    dict: read it, do not change it.)
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, moved = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


@functools.cache
def unicode_class(major: str) -> str:
    """A ``re`` character-class body for every code point whose general category starts with
    ``major``: "L" = \\p{L} (Lu Ll Lt Lm Lo), "N" = \\p{N} (Nd Nl No). Ranges as \\U escapes."""
    inside = (unicodedata.category(chr(cp))[0] == major for cp in range(sys.maxunicode + 1))
    ranges, cp = [], 0
    for is_in, run in groupby(inside):
        n = sum(1 for _ in run)
        if is_in:
            ranges.append(f"\\U{cp:08x}-\\U{cp + n - 1:08x}")
        cp += n
    return "".join(ranges)


@functools.cache
def gpt2_split() -> re.Pattern:
    """The GPT-2 pre-tokenisation regex, ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
    ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``, in Python's ``re``. Every character of a text falls in
    exactly one match, tried left to right, the first alternative that matches winning."""
    L, N, S = unicode_class("L"), unicode_class("N"), WHITE_SPACE
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"  # an English contraction, lower case only
        rf"| ?[{L}]+"                # a run of letters, with at most one space in front
        rf"| ?[{N}]+"                # a run of numbers, likewise
        rf"| ?[^{S}{L}{N}]+"         # a run of anything else: punctuation, symbols, emoji
        rf"|[{S}]+(?![^{S}])"        # whitespace up to, not including, the space before a word
        rf"|[{S}]+"                  # any whitespace left (the one space a word did not take)
    )


@functools.cache
def digit_split() -> re.Pattern:
    """One \\p{N} character, captured, so ``split`` keeps each digit as its own piece."""
    return re.compile(f"([{unicode_class('N')}])")


class BPETokenizer:
    """Byte-level BPE over a fixed vocabulary.

        tok = BPETokenizer(tokens, merges, special_ids=[0, 1, 2], split_digits=True)
        tok.encode("<|im_start|>user\\nHi")   # [1, 4093, 198, 26843]: <|im_start|> user Ċ Hi

    Inputs:  tokens       list of V strings, id -> symbol (byte-table characters; special tokens
                          are plain text)
             merges       list of "left right" strings, rank = position (0 is merged first)
             special_ids  ids of the tokens matched whole in the text before pre-tokenisation
             bos_id, eos_id, add_bos   the file's begin/end-of-text ids; add_bos: encode puts bos_id first
             split_digits cut every \\p{N} character out alone before the GPT-2 regex (SmolLM2)
    """

    def __init__(self, tokens, merges, special_ids=(), bos_id=None, eos_id=None, add_bos=False,
                 split_digits=False):
        self.tokens = list(tokens)                                # id -> symbol
        self.ids = {t: i for i, t in enumerate(self.tokens)}      # symbol -> id
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}  # (left, right) -> rank
        special_ids = set(special_ids)
        self.special = {self.tokens[i]: i for i in special_ids}   # text -> id
        longest_first = sorted(self.special, key=len, reverse=True)  # "<a><b>" before "<a>"
        self.special_split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if self.special else None
        self.bos_id, self.eos_id, self.add_bos, self.split_digits = bos_id, eos_id, add_bos, split_digits
        self.byte_char = bytes_to_unicode()                       # byte -> symbol character
        byte_of = {c: b for b, c in self.byte_char.items()}       # symbol character -> byte
        self.token_bytes = [t.encode("utf-8") if i in special_ids else bytes(byte_of[c] for c in t)
                            for i, t in enumerate(self.tokens)]
        self.cache = {}                                           # word (byte characters) -> ids

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (f"BPETokenizer(V={len(self)}, merges={len(self.ranks)}, special={len(self.special)}, "
                f"split_digits={self.split_digits})")

    # ------------------------------------------------------------------ encode

    def encode(self, text: str, special: bool = True, errors: str = "strict") -> list[int]:
        """Text -> ids. ``special=False`` reads "<|im_end|>" as plain text; ``errors="ignore"``
        drops a byte the vocabulary has no symbol for, as the reference does; "strict" raises.
        (SmolLM2 lacks 21 of the 256: in valid UTF-8 only the controls U+0004 U+0006 U+0013
        U+0014 U+0016 U+001D and the lead bytes 0xF1 0xF2 of the unassigned planes 4..11.)"""
        if errors not in ERRORS:
            raise ValueError(f"BPETokenizer: errors must be one of {ERRORS}, got {errors!r}")
        ids = [self.bos_id] if self.add_bos else []
        parts = self.special_split.split(text) if special and self.special_split else [text]
        for k, part in enumerate(parts):
            if k % 2:  # split with one group: the matches sit at the odd positions
                ids.append(self.special[part])
                continue
            for word in self.pre_tokenize(part):
                ids.extend(self.encode_word(word, errors))
        return ids

    def pre_tokenize(self, text: str) -> list[str]:
        """Text (no special tokens) -> words: digits alone (``split_digits``), then the GPT-2 regex
        on each stretch between them."""
        stretches = digit_split().split(text) if self.split_digits else [text]
        return [word for s in stretches if s for word in gpt2_split().findall(s)]

    def encode_word(self, word: str, errors: str = "strict") -> list[int]:
        """One word -> ids: its UTF-8 bytes as byte-table characters, then ``bpe``; cached."""
        symbols = [self.byte_char[b] for b in word.encode("utf-8")]
        known = [s for s in symbols if s in self.ids]
        if len(known) < len(symbols) and errors == "strict":
            b = next(b for b, s in zip(word.encode("utf-8"), symbols) if s not in self.ids)
            raise ValueError(f"BPETokenizer: the vocabulary has no symbol for byte 0x{b:02X} (in {word!r}); "
                             f"encode(..., errors='ignore') drops such bytes, as the reference tokenizer does")
        key = "".join(known)
        if key not in self.cache:
            self.cache[key] = [self.ids[s] for s in self.bpe(known)]
        return self.cache[key]

    def bpe(self, symbols: list[str]) -> list[str]:
        """Merge the adjacent pair of lowest rank, at every place it occurs (left to right), until
        no adjacent pair is in the merge list. Returns the final symbols."""
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    # ------------------------------------------------------------------ decode

    def decode(self, ids) -> str:
        """Ids (a list or 1-D array) -> text: each id's bytes, joined, read as UTF-8; invalid
        UTF-8 (say, half a character) shows as "\\ufffd". Ids outside [0, V) raise ``ValueError``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.tokens)]
        if bad:
            raise ValueError(f"BPETokenizer: decode needs ids in [0, {len(self.tokens)}), got {bad[0]}")
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")


def bpe_from_gguf(path) -> BPETokenizer:
    """The tokenizer stored in a GGUF file's metadata (needs the ``gguf`` package).

    Reads ``tokenizer.ggml.``: ``model`` (must be "gpt2", i.e. byte-level BPE), ``pre`` (the
    pre-tokeniser: one of ``PRE_TYPES``), ``tokens``, ``merges``, ``token_type`` (CONTROL and
    USER_DEFINED tokens are matched whole), ``bos_token_id``, ``eos_token_id``, ``add_bos_token``.
    """
    try:
        import gguf
    except ImportError as e:
        raise ImportError("bpe_from_gguf reads GGUF files with the `gguf` package: pip install gguf") from e
    fields = gguf.GGUFReader(path).fields

    def value(key, default=None):
        field = fields.get(f"tokenizer.ggml.{key}")
        return default if field is None else field.contents()

    model, pre = value("model"), value("pre", "default")
    if model != "gpt2":
        raise ValueError(f"bpe_from_gguf: {path}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported")
    if pre not in PRE_TYPES:
        raise ValueError(f"bpe_from_gguf: {path}: tokenizer.ggml.pre is {pre!r}; supported: {sorted(PRE_TYPES)}")
    whole = {gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED}
    special_ids = [i for i, t in enumerate(value("token_type", [])) if t in whole]
    return BPETokenizer(value("tokens"), value("merges"), special_ids, bos_id=value("bos_token_id"),
                        eos_id=value("eos_token_id"), add_bos=bool(value("add_bos_token", False)),
                        split_digits=PRE_TYPES[pre])
