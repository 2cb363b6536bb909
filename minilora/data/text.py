"""Two text domains that ship with Python itself, as character ids for the GPT demo.

- ``"prose"``:  English prose, the help topics of ``pydoc_data.topics`` (the text behind
  ``help("for")``), every topic in sorted order: about 0.46 M characters.
- ``"python"``: Python source, a fixed list of pure-Python standard-library modules read with
  ``inspect.getsource``, in list order: about 0.45 M characters.

Both use one character vocabulary ``VOCAB`` (V = 97): newline, the 95 printable ASCII characters
and ``UNK`` = "\\ufffd". Typographic quotes, dashes and the ellipsis are folded to ASCII, a tab
to four spaces; any other character (non-ASCII letters, symbols, "\\r") becomes ``UNK``, so every
text encodes and the model never sees an id outside [0, V) — or, with ``errors="strict"``, raises
``ValueError`` naming the first such character. ``CharTokenizer`` is the same pair of functions
as an object. Exact text depends on the Python version.

Splits are deterministic: the last ``val_fraction`` of each corpus's characters is its
validation set (held-out topics / modules, never seen in training).
"""
from __future__ import annotations

import functools
import importlib
import inspect

import numpy as np

from .. import backend

UNK = "\ufffd"
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127)) + UNK  # id = position in this string
UNK_ID = len(VOCAB) - 1
# Characters folded to ASCII before encoding (the prose uses typographic punctuation).
FOLD = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "--",
                      "\u2013": "-", "\u2026": "...", "\t": "    "})

PYTHON_MODULES = (
    "textwrap", "string", "functools", "heapq", "bisect", "fractions", "dataclasses",
    "json.decoder", "json.encoder", "csv", "glob", "fnmatch", "copy", "pprint", "contextlib",
    "operator", "queue", "calendar", "gettext", "random", "statistics",
)

_LOOKUP = np.full(128, UNK_ID, dtype=np.int64)  # code point (< 128) -> id; others map to UNK
for _i, _ch in enumerate(VOCAB[:-1]):
    _LOOKUP[ord(_ch)] = _i


ERRORS = ("replace", "strict")  # what encode does with a character outside the vocabulary


def encode(text: str, errors: str = "replace") -> np.ndarray:
    """Characters -> int64 ids in [0, V): fold punctuation, then map each character outside the
    vocabulary to ``UNK_ID`` (``errors="replace"``) or raise ``ValueError`` (``errors="strict"``)."""
    if not isinstance(text, str):
        raise TypeError(f"text: encode needs a str, got {type(text).__name__}")
    if errors not in ERRORS:
        raise ValueError(f"text: errors must be one of {ERRORS}, got {errors!r}")
    codes = np.frombuffer(text.translate(FOLD).encode("utf-32-le"), dtype=np.uint32)  # code points
    ids = np.full(codes.shape, UNK_ID, dtype=np.int64)
    ascii_ = codes < 128
    ids[ascii_] = _LOOKUP[codes[ascii_]]
    if errors == "strict":
        unknown = (ids == UNK_ID) & (codes != ord(UNK))  # UNK itself is in the vocabulary
        if unknown.any():
            ch = chr(int(codes[np.argmax(unknown)]))  # the first one; folding keeps the order
            raise ValueError(
                f"text: {int(unknown.sum())} characters are outside the {len(VOCAB)}-character "
                f"vocabulary, the first {ch!r} (U+{ord(ch):04X}) at position {text.find(ch)}; "
                f"errors='replace' maps them to {UNK!r}"
            )
    return ids


def decode(ids) -> str:
    """Ids (any backend, list or array, any shape; flattened) -> text; ``UNK_ID`` shows as
    "\\ufffd". Ids outside [0, V) raise ``ValueError``."""
    a = host_ids(ids, "decode", flatten=True)
    if a.size and (a.min() < 0 or a.max() >= len(VOCAB)):
        raise ValueError(f"text: decode needs ids in [0, {len(VOCAB)}), got values in [{a.min()}, {a.max()}]")
    return "".join(VOCAB[i] for i in a.tolist())


def host_ids(ids, caller: str, flatten: bool = False) -> np.ndarray:
    """``ids`` (any backend, a list or an array) as a 1-D NumPy integer array (``flatten``: any
    shape, flattened); ``TypeError`` naming ``caller`` otherwise."""
    a = backend.to_numpy(ids) if hasattr(ids, "__array_namespace__") else np.asarray(ids)
    a = a.reshape(-1) if flatten else a
    if a.ndim == 1 and a.size == 0:
        return a.astype(np.int64)  # np.asarray([]) is float64
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise TypeError(f"text: {caller} needs a 1-D array of integer ids, got {a.dtype} with shape {a.shape}")
    return a


def as_ids(text_or_ids, caller: str) -> np.ndarray:
    """A str encoded (characters outside the vocabulary -> ``UNK_ID``), or 1-D integer ids as they are."""
    if isinstance(text_or_ids, str):
        return encode(text_or_ids)
    return host_ids(text_or_ids, caller)


class CharTokenizer:
    """The demo's 97-character vocabulary as a tokenizer: what ``minilora.pretrained_gpt`` reads.

        tok = CharTokenizer()              # CharTokenizer("strict"): unknown characters raise
        ids = tok.encode("def f(x):")      # int64 (T,), ids in [0, 97)
        tok.decode(ids) == "def f(x):"

    Typographic punctuation folds to ASCII and a tab to four spaces (so ``len(ids)`` may exceed
    ``len(text)``); with ``errors="replace"`` (the default) any other character outside the
    vocabulary becomes ``UNK`` = "\\ufffd" (id ``unk_id`` = 96).
    """

    vocab = VOCAB
    unk_id = UNK_ID

    def __init__(self, errors: str = "replace"):
        if errors not in ERRORS:
            raise ValueError(f"CharTokenizer: errors must be one of {ERRORS}, got {errors!r}")
        self.errors = errors

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def __len__(self) -> int:
        return len(VOCAB)

    def encode(self, text: str) -> np.ndarray:
        return encode(text, self.errors)

    def decode(self, ids) -> str:
        return decode(ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(errors={self.errors!r})  # V = {len(VOCAB)}"


def prose_text() -> str:
    """Every help topic of ``pydoc_data.topics``, sorted by topic name, blank-line separated."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics))


def python_text(modules=PYTHON_MODULES) -> str:
    """The source of ``modules`` (importable pure-Python modules), blank-line separated."""
    parts = []
    for name in modules:
        try:
            parts.append(inspect.getsource(importlib.import_module(name)))
        except (ImportError, OSError, TypeError) as e:
            raise RuntimeError(f"text: cannot read the source of the standard-library module {name!r}: {e}") from e
    return "\n\n".join(parts)


CORPORA = {"prose": prose_text, "python": python_text}


@functools.lru_cache(maxsize=None)
def _encoded(name: str) -> np.ndarray:
    if name not in CORPORA:
        raise ValueError(f"text: unknown corpus {name!r}; corpora are {sorted(CORPORA)}")
    ids = encode(CORPORA[name]())
    ids.setflags(write=False)  # shared by every caller: read-only
    return ids


def load_corpus(name: str, val_fraction: float = 0.1):
    """``(train_ids, val_ids)``, int64 NumPy arrays: the first and the last ``val_fraction`` of the text."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"text: val_fraction must lie in (0, 1), got {val_fraction!r}")
    ids = _encoded(name)
    n_train = int(round(len(ids) * (1.0 - val_fraction)))
    return ids[:n_train], ids[n_train:]


def batches(ids, batch_size: int, T: int, seed=0, device="cpu"):
    """Endless random windows: yields ``(x, y)``, both (batch_size, T) int64 on ``device``, y = x shifted by one.

    ``ids`` is a 1-D array of ids or a str (encoded first). Window starts are drawn uniformly
    by a NumPy generator seeded with ``seed``.
    """
    ids = as_ids(ids, "batches")
    if len(ids) < T + 1:
        raise ValueError(f"text: a window needs T + 1 = {T + 1} ids, the corpus has {len(ids)}")
    gen = backend.rng(seed)
    offsets = np.arange(T + 1)
    while True:
        starts = gen.integers(0, len(ids) - T, size=batch_size)  # last start: len − T − 1
        w = ids[starts[:, None] + offsets]  # (batch_size, T + 1), one gather
        yield backend.from_numpy(w[:, :-1], device), backend.from_numpy(w[:, 1:], device)


def windows(ids, T: int, max_windows: int | None = None, device="cpu"):
    """Consecutive non-overlapping windows ``(x, y)`` of shape (N, T) covering ``ids``: a fixed eval set.

    ``ids`` is a 1-D array of ids or a str; with ``max_windows`` the N windows are spread
    evenly over the whole text.
    """
    ids = as_ids(ids, "windows")
    n = (len(ids) - 1) // T
    if n < 1:
        raise ValueError(f"text: a window needs T + 1 = {T + 1} ids, the text has {len(ids)}")
    starts = np.arange(n) * T
    if max_windows is not None and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(np.int64)]
    w = ids[starts[:, None] + np.arange(T + 1)]
    return backend.from_numpy(w[:, :-1], device), backend.from_numpy(w[:, 1:], device)
