"""ggml's block quantisations Q8_0 and Q4_1, dequantised with NumPy; and a weight kept 4-bit.

A quantised row of ``cols`` weights is ``cols / 32`` blocks laid end to end; each block holds 32
consecutive weights of the row and its own scale. The bytes of one block (little-endian)::

    Q8_0, 34 bytes = 8.5 bits a weight           w_k = d · q_k            (q_k int8)

      0    2                                          34
      [ d  ][ q_0 ][ q_1 ][ q_2 ] ...        [ q_31 ]
       f16    i8     i8     i8                 i8

    Q4_1, 20 bytes = 5 bits a weight             w_k = d · q_k + m        (q_k in 0..15)

      0    2    4                                     20
      [ d  ][ m  ][ b_0 ][ b_1 ] ...         [ b_15 ]
       f16   f16    u8     u8                  u8
                    b_j = q_j | q_{j+16} << 4:  low nibble  = element j       (0..15)
                                                high nibble = element j + 16  (16..31)

That is llama.cpp's ``block_q8_0`` / ``block_q4_1`` (``ggml-common.h``) and its reference
``dequantize_row_q4_1``: ``y[j] = (x & 0x0F)·d + m``, ``y[j + 16] = (x >> 4)·d + m``. Note the
nibble order: a byte does *not* hold two neighbours, it holds element j and element j + 16.

Every function takes the raw bytes as ``gguf.GGUFReader`` gives them (a uint8 array, normally of
shape ``(rows, bytes_per_row)``) and the weight's shape in minilora's orientation ``(rows, cols)``
= ``(d_out, d_in)``; arithmetic is float32 (the scales widened from float16 exactly), in the order
of the equations above, so the results equal ``gguf.quants.dequantize`` bit for bit.

``Q4_1Weight`` keeps a frozen weight in its 4-bit form — 0.625 bytes a weight instead of float32's
4, 6.4× less — and multiplies by it a block of output rows at a time, so the float32 matrix W̃
never exists whole (QLoRA's idea, with ggml's Q4_1 in place of NF4): ``matmul_t(x) = x W̃ᵀ`` for the
forward, ``rmatmul(dout) = dout W̃`` for the backward (a frozen W still passes dx back).

This module works on the host: it converts bytes, so it imports NumPy directly (as
``minilora.safetensors`` does).
"""
from __future__ import annotations

import numpy as np

QK = 32  # weights per block, both formats (ggml's QK8_0 = QK4_1 = 32)
Q8_0_BYTES = 2 + QK  # d (float16), then 32 int8 q
Q4_1_BYTES = 2 + 2 + QK // 2  # d, m (float16), then 16 bytes of two nibbles each
BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "Q8_0": Q8_0_BYTES / QK, "Q4_1": Q4_1_BYTES / QK}


def _blocks(raw, shape, block_bytes: int, kind: str) -> np.ndarray:
    """``raw`` as a ``(rows, n_blocks, block_bytes)`` uint8 view, after checking it fits ``shape``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or shape[-1] % QK:
        raise ValueError(f"{kind}: a row must be a whole number of {QK}-weight blocks, got shape {shape}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"{kind}: expected the raw bytes as a uint8 array, got dtype {raw.dtype}")
    n_blocks = shape[-1] // QK  # blocks per row
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if raw.size != rows * n_blocks * block_bytes:
        raise ValueError(
            f"{kind}: shape {shape} needs {rows} × {n_blocks} blocks × {block_bytes} bytes = "
            f"{rows * n_blocks * block_bytes} bytes, got {raw.size}"
        )
    return np.ascontiguousarray(raw).reshape(rows, n_blocks, block_bytes)


def _f16(two_bytes: np.ndarray) -> np.ndarray:
    """``(..., 2)`` uint8 -> ``(..., 1)`` float32: the little-endian float16 they hold, widened (exact)."""
    return np.ascontiguousarray(two_bytes).view("<f2").astype(np.float32)


def dequantize_q8_0(raw, shape) -> np.ndarray:
    """Q8_0 bytes -> float32 weights of ``shape``:  w_k = d · q_k  (d float16, q_k int8).

    Inputs:  raw    uint8, rows · (cols/32) · 34 bytes (e.g. ``(rows, cols/32 · 34)``)
             shape  (rows, cols), cols a multiple of 32
    Returns: (rows, cols) float32
    """
    blocks = _blocks(raw, shape, Q8_0_BYTES, "Q8_0")  # (rows, n_blocks, 34)
    d = _f16(blocks[..., :2])  # (rows, n_blocks, 1)
    q = blocks[..., 2:].view(np.int8).astype(np.float32)  # (rows, n_blocks, 32)
    return (d * q).reshape(shape)


def q4_1_parts(raw, shape):
    """Split Q4_1 bytes into ``(d, m, nibbles)``, the file's own bytes, nothing widened.

    Returns: d, m     (rows, n_blocks) float16: each block's scale and minimum
             nibbles  (rows, n_blocks, 16) uint8: byte j = q_j | q_{j+16} << 4
    """
    blocks = _blocks(raw, shape, Q4_1_BYTES, "Q4_1")  # (rows, n_blocks, 20)
    d = np.ascontiguousarray(blocks[..., 0:2]).view("<f2")[..., 0]  # (rows, n_blocks)
    m = np.ascontiguousarray(blocks[..., 2:4]).view("<f2")[..., 0]  # (rows, n_blocks)
    nibbles = np.ascontiguousarray(blocks[..., 4:])  # (rows, n_blocks, 16)
    return d, m, nibbles


def dequantize_q4_1_parts(d, m, nibbles) -> np.ndarray:
    """``(d, m, nibbles)`` of ``rows`` rows -> ``(rows, n_blocks · 32)`` float32:  w_k = d · q_k + m."""
    low = nibbles & 0x0F  # elements 0..15 of each block      (rows, n_blocks, 16)
    high = nibbles >> 4  # elements 16..31                    (rows, n_blocks, 16)
    q = np.concatenate([low, high], axis=-1).astype(np.float32)  # (rows, n_blocks, 32)
    d = d.astype(np.float32)[..., None]  # (rows, n_blocks, 1)
    m = m.astype(np.float32)[..., None]  # (rows, n_blocks, 1)
    w = d * q + m  # (rows, n_blocks, 32)
    return w.reshape(w.shape[0], -1)  # (rows, cols)


def dequantize_q4_1(raw, shape) -> np.ndarray:
    """Q4_1 bytes -> float32 weights of ``shape``:  w_k = d · q_k + m  (q_k a nibble, 0..15).

    Inputs:  raw    uint8, rows · (cols/32) · 20 bytes (e.g. ``(rows, cols/32 · 20)``)
             shape  (rows, cols), cols a multiple of 32
    Returns: (rows, cols) float32
    """
    return dequantize_q4_1_parts(*q4_1_parts(raw, shape)).reshape(shape)


def _dequantize_f32(raw, shape) -> np.ndarray:
    return np.asarray(raw).view("<f4").reshape(shape).astype(np.float32)  # a copy, native order


def _dequantize_f16(raw, shape) -> np.ndarray:
    return np.asarray(raw).view("<f2").reshape(shape).astype(np.float32)


# ggml type name -> the function that turns its raw data into float32 (rows, cols)
DEQUANTIZE = {"F32": _dequantize_f32, "F16": _dequantize_f16, "Q8_0": dequantize_q8_0, "Q4_1": dequantize_q4_1}


def dequantize(kind: str, raw, shape) -> np.ndarray:
    """Float32 weights of ``shape`` from ``raw`` data of ggml type ``kind`` ('F32', 'Q4_1', ...)."""
    if kind not in DEQUANTIZE:
        raise ValueError(f"unknown quantisation type {kind!r}: minilora dequantises {', '.join(DEQUANTIZE)}")
    return DEQUANTIZE[kind](raw, shape)


class Q4_1Weight:
    """A frozen ``(d_out, d_in)`` weight W̃ kept in Q4_1 form; products computed a row block at a time.

        matmul_t(x)    = x W̃ᵀ     x (..., d_in)  -> (..., d_out)   the forward
        rmatmul(dout)  = dout W̃   dout (..., d_out) -> (..., d_in) the backward's dx

    Each product dequantises ``block_rows`` rows of W̃, multiplies, and moves on: the whole float32
    W̃ never exists (the scratch is a few ``(block_rows, d_in)`` float32 arrays, ≈ 4.5 measured). Memory held: ``nbytes`` =
    d_out · d_in · 5/8 bytes (20 bytes a block of 32) against 4 · d_out · d_in for float32.

    Fields (read-only arrays, the file's bytes):
        d, m     (d_out, n_blocks) float16   scale and minimum of each block, n_blocks = d_in / 32
        nibbles  (d_out, n_blocks, 16) uint8 two 4-bit codes a byte (element j low, j + 16 high)
    """

    block_rows = 256  # rows of W̃ dequantised at once (an instance may set its own)

    def __init__(self, d, m, nibbles):
        d, m, nibbles = np.asarray(d, "<f2"), np.asarray(m, "<f2"), np.asarray(nibbles, np.uint8)
        if d.ndim != 2 or m.shape != d.shape or nibbles.shape != (*d.shape, QK // 2):
            raise ValueError(
                f"Q4_1Weight: d, m must be (d_out, n_blocks) and nibbles (d_out, n_blocks, {QK // 2}); "
                f"got {d.shape}, {m.shape}, {nibbles.shape}"
            )
        d, m, nibbles = d.view(), m.view(), nibbles.view()  # views: the caller's arrays stay writable
        for a in (d, m, nibbles):
            a.setflags(write=False)  # frozen
        self.d, self.m, self.nibbles = d, m, nibbles

    @classmethod
    def from_raw(cls, raw, shape) -> "Q4_1Weight":
        """The weight held by Q4_1 bytes ``raw`` of ``shape`` (rows, cols); copies the bytes out."""
        if len(tuple(shape)) != 2:
            raise ValueError(f"Q4_1Weight: a weight is 2-D (d_out, d_in), got shape {tuple(shape)}")
        return cls(*(a.copy() for a in q4_1_parts(raw, shape)))

    @property
    def shape(self) -> tuple:
        return (self.d.shape[0], self.d.shape[1] * QK)

    @property
    def nbytes(self) -> int:
        """Bytes held: 20 a block of 32 weights (float32 would hold 128)."""
        return self.d.nbytes + self.m.nbytes + self.nibbles.nbytes

    def __repr__(self) -> str:
        return f"Q4_1Weight(shape={self.shape}, nbytes={self.nbytes})"

    def dequantize(self, rows=slice(None)) -> np.ndarray:
        """W̃[rows] as float32, ``(n_rows, d_in)``: only those rows are dequantised."""
        return dequantize_q4_1_parts(self.d[rows], self.m[rows], self.nibbles[rows])

    def take(self, index) -> "Q4_1Weight":
        """The weight whose rows are W̃[index] (a row permutation or selection), still 4-bit."""
        return Q4_1Weight(self.d[index], self.m[index], self.nibbles[index])

    def _row_blocks(self):
        d_out = self.shape[0]
        for r0 in range(0, d_out, self.block_rows):
            yield slice(r0, min(r0 + self.block_rows, d_out))

    def matmul_t(self, x) -> np.ndarray:
        """y = x W̃ᵀ, one block of output rows (of W̃) at a time.

        Inputs:  x  (..., d_in)
        Returns: y  (..., d_out), dtype of x promoted with float32
        """
        d_out, d_in = self.shape
        if x.shape[-1] != d_in:
            raise ValueError(f"Q4_1Weight.matmul_t: x has {x.shape[-1]} features, W̃ is {self.shape}")
        dtype = np.result_type(x.dtype, np.float32)
        y = np.empty((*x.shape[:-1], d_out), dtype)  # (..., d_out)
        for rows in self._row_blocks():
            W_rows = self.dequantize(rows).astype(dtype, copy=False)  # (n_rows, d_in)
            y[..., rows] = x @ W_rows.T  # (..., n_rows)
        return y

    def rmatmul(self, dout) -> np.ndarray:
        """dx = dout W̃, summed over blocks of W̃'s rows (dout's columns).

        Inputs:  dout  (..., d_out)
        Returns: dx    (..., d_in), dtype of dout promoted with float32
        """
        d_out, d_in = self.shape
        if dout.shape[-1] != d_out:
            raise ValueError(f"Q4_1Weight.rmatmul: dout has {dout.shape[-1]} features, W̃ is {self.shape}")
        dtype = np.result_type(dout.dtype, np.float32)
        dx = np.zeros((*dout.shape[:-1], d_in), dtype)  # (..., d_in)
        for rows in self._row_blocks():
            W_rows = self.dequantize(rows).astype(dtype, copy=False)  # (n_rows, d_in)
            dx += dout[..., rows] @ W_rows  # (..., d_in)
        return dx
