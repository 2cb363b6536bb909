"""A GPT on text: its loss over a text and generation from a string prompt.

The characters are ``minilora.data.text``'s (``CharTokenizer``): the demo's vocabulary. Used by
the GPT demo and by a user's own script (docs/own_text.md); exported from ``minilora``.
"""
from __future__ import annotations

from . import backend, checks
from .data import text
from .functional.losses import softmax_cross_entropy_forward
from .nn.transformer import GPT


def evaluate(model, x, y, batch: int = 64) -> float:
    """Mean next-character cross-entropy (nats) of ``model`` over the windows ``x``, ``y`` (N, T),
    in eval mode (the model's train/eval mode is restored afterwards)."""
    total, n = 0.0, x.shape[0]
    with model.evaluating():
        for i in range(0, n, batch):
            loss, _ = softmax_cross_entropy_forward(model.forward(x[i:i + batch]), y[i:i + batch])
            total += float(loss) * min(batch, n - i)
    return total / n


def text_loss(model, text_or_ids, batch: int = 64) -> float:
    """Mean next-character loss of the GPT ``model`` on a text, in nats per character (eval mode).

    ``text_or_ids`` is a str (encoded with the demo's vocabulary, ``CharTokenizer``: characters
    outside it count as UNK) or 1-D integer ids. Every character after the first is predicted
    exactly once: the text is cut into consecutive windows of n_ctx characters, run ``batch``
    windows at a time, and one shorter last window; each character is predicted from those
    before it in its window.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"text_loss: model must be a GPT, got {type(model).__name__}")
    checks.positive_int("text_loss", "batch", batch)
    ids = text.as_ids(text_or_ids, "text_loss")
    if len(ids) < 2:
        raise ValueError(f"text_loss: a text needs at least 2 characters (one to predict), got {len(ids)}")
    T, n_targets = model.config.n_ctx, len(ids) - 1
    n_full = n_targets // T  # windows of T targets; the last n_targets - n_full·T come after
    total = 0.0
    if n_full:
        x, y = text.windows(ids[:n_full * T + 1], T, device=model.device)  # (n_full, T)
        total += evaluate(model, x, y, batch) * n_full * T
    tail = ids[n_full * T:]
    if len(tail) > 1:
        x, y = text.windows(tail, len(tail) - 1, device=model.device)  # (1, len(tail) - 1)
        total += evaluate(model, x, y) * (len(tail) - 1)
    return total / n_targets


def generate_text(model, prompt: str, n_new: int, temperature: float = 0.8, top_k: int | None = None,
                  seed=0) -> str:
    """``prompt`` followed by ``n_new`` characters sampled from the GPT ``model`` (``GPT.generate``:
    softmax(logits / temperature), restricted to the ``top_k`` likeliest when given; temperature 0
    is greedy; the same ``seed`` gives the same text on every backend).

    The prompt comes back as the model read it (``CharTokenizer``: punctuation folded to ASCII,
    unknown characters as UNK).
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"generate_text: prompt must be a non-empty str, got {prompt!r:.60}")
    ids = backend.from_numpy(text.encode(prompt)[None, :], model.device)  # (1, T0)
    return text.decode(model.generate(ids, n_new, temperature=temperature, seed=seed, top_k=top_k))
