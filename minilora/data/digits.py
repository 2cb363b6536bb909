"""Handwritten digits (scikit-learn's copy of the UCI set: 1,797 images of 8×8 pixels, 0–16).

Domains for adaptation are exact pixel permutations of the same images, so nothing is
interpolated: ``"upright"`` (the originals), ``"rotated"`` (90° counter-clockwise),
``"mirrored"`` (left–right flip), ``"inverted"`` (16 − pixel).
scikit-learn is needed only here (``pip install 'minilora[demo]'``); the library never imports it.
"""
from __future__ import annotations

import numpy as np

DOMAINS = ("upright", "rotated", "mirrored", "inverted")


def _transform(images: np.ndarray, domain: str) -> np.ndarray:
    if domain == "upright":
        return images
    if domain == "rotated":
        return np.rot90(images, k=1, axes=(1, 2))
    if domain == "mirrored":
        return images[:, :, ::-1]
    if domain == "inverted":
        return 16.0 - images
    raise ValueError(f"digits: unknown domain {domain!r}; choose from {DOMAINS}")


def load_digits(domain: str = "upright", dtype: str = "float32", test_fraction: float = 0.3, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)`` as NumPy arrays for one domain.

    x: (N, 64) pixels scaled to [0, 1] then standardised with the *upright* training split's
    mean and std (so every domain sees the base model's preprocessing); y: (N,) int64 labels.
    The split is the same for every domain (fixed by ``seed``).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the digits demo needs scikit-learn: pip install 'minilora[demo]'"
        ) from e
    data = _sk_load()
    images = data.images.astype(np.float64)  # (1797, 8, 8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    upright = images.reshape(len(y), 64) / 16.0
    mean, std = upright[train].mean(0), upright[train].std(0) + 1e-2
    x = (_transform(images, domain).reshape(len(y), 64) / 16.0 - mean) / std
    x = x.astype(dtype)
    return x[train], y[train], x[test], y[test]


def batches(x, y, batch_size: int, seed: int = 0):
    """Endless shuffled mini-batches ``(x_b, y_b)`` of arrays on ``x``'s backend.

    The shuffle is drawn by a seeded NumPy generator, so every backend sees the same batches.
    """
    from .. import backend

    gen = np.random.default_rng(seed)
    xp = backend.namespace(x, y)
    n = int(y.shape[0])
    while True:
        order = backend.from_numpy(gen.permutation(n), xp)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield xp.take(x, idx, axis=0), xp.take(y, idx, axis=0)
