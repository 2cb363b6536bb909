"""The safetensors file format, read and written with NumPy alone (no ``safetensors`` package).

A file is three parts, nothing else::

    [ n : 8 bytes, unsigned little-endian ][ header : n bytes of UTF-8 JSON ][ data : raw bytes ]

The header maps each tensor name to ``{"dtype": "F32", "shape": [r, d_in],
"data_offsets": [begin, end]}`` (offsets into *data*, end exclusive), plus an optional
``"__metadata__"`` object of string -> string. Tensor bytes are little-endian, row-major (C order).
The header may be padded with trailing spaces (writers pad it so the data starts 8-byte aligned).

Reading trusts nothing: the header length must fit the file, the JSON must be an object without
duplicate keys, every dtype must be known, every shape a list of non-negative ints whose element
count × item size equals its byte span, and the spans must tile the data exactly — sorted, starting
at 0, each beginning where the previous one ends (no gap, no overlap), the last ending at the end of
the file (no truncation, no trailing bytes). Every error is a ``SafetensorsError`` naming the file
and, where there is one, the tensor.

This module works on the host: it imports NumPy directly because it converts bytes, not math;
``minilora.adapters`` moves the arrays to the model's device through ``minilora.backend``.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import numpy as np

# safetensors dtype tag -> NumPy dtype (always little-endian on disk)
DTYPES = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
# bfloat16 has no NumPy dtype: it is read as float32 (exact: bf16 is float32's top 16 bits).
BF16 = "BF16"
ITEMSIZE = {**{k: v.itemsize for k, v in DTYPES.items()}, BF16: 2}

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit too


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file (the message names the file and tensor)."""


def dtype_tag(a: np.ndarray) -> str:
    """'F32', 'I64', ... for a NumPy array; raises for dtypes safetensors cannot store."""
    for tag, ref in DTYPES.items():
        if (a.dtype.kind, a.dtype.itemsize) == (ref.kind, ref.itemsize):
            return tag
    raise SafetensorsError(f"safetensors cannot store dtype {a.dtype}")


# ----------------------------------------------------------------------------- write


def serialize(tensors: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` ({name: NumPy array}) and ``metadata``."""
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise SafetensorsError("__metadata__ must map str to str")
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__" or not name:
            raise SafetensorsError(f"invalid tensor name {name!r}")
        a = tensors[name]
        if not isinstance(a, np.ndarray):
            raise SafetensorsError(f"tensor {name!r}: expected a NumPy array, got {type(a).__name__}")
        tag = dtype_tag(a)
        raw = np.ascontiguousarray(a, dtype=DTYPES[tag]).tobytes()  # little-endian, C order
        header[name] = {"dtype": tag, "shape": [int(s) for s in a.shape],
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # pad so the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, flush, fsync, rename.

    A reader sees the old file or the new one, never a mix.
    """
    path = os.fspath(path)
    tmp = stage(path, data)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def stage(path, data: bytes) -> str:
    """Write ``data`` to a fresh temporary file next to ``path`` (flushed and fsynced); return its name.

    On any failure the temporary file is removed and the error re-raised; ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return tmp


def write_bytes(f, data: bytes) -> None:
    """``f.write(data)`` in chunks (a seam: tests make it fail midway to simulate a crash)."""
    view = memoryview(data)
    step = 1 << 20
    for i in range(0, len(view), step):
        f.write(view[i : i + step])


def fsync_dir(directory: str) -> None:
    """Make a rename durable: fsync the directory entry (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(tensors: dict, path, metadata: dict | None = None) -> int:
    """Write ``tensors`` and ``metadata`` to ``path`` atomically; returns the file size in bytes."""
    data = serialize(tensors, metadata)
    write_atomic(path, data)
    return len(data)


# ----------------------------------------------------------------------------- read


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_header(data: bytes, name: str = "<bytes>"):
    """Validate the header of a safetensors file held in ``data``.

    Returns ``(entries, metadata, data_start)`` where ``entries`` is ``{tensor: (tag, shape,
    begin, end)}`` with offsets relative to ``data_start``. Raises ``SafetensorsError``.
    """
    where = f"{name}"
    if len(data) < 8:
        raise SafetensorsError(f"{where}: file is {len(data)} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise SafetensorsError(f"{where}: header length {n} exceeds the {MAX_HEADER}-byte limit (corrupted?)")
    if 8 + n > len(data):
        raise SafetensorsError(
            f"{where}: header length {n} runs past the end of the {len(data)}-byte file (truncated or corrupted)"
        )
    raw = data[8 : 8 + n]
    if not raw.startswith(b"{"):
        raise SafetensorsError(f"{where}: header does not start with '{{' (corrupted)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"{where}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: header must be a JSON object")

    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise SafetensorsError(f"{where}: __metadata__ must be an object of string -> string")

    entries = {}
    for key, info in header.items():
        at = f"{where}, tensor {key!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{at}: entry must have exactly dtype, shape and data_offsets, got {info!r}")
        tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if tag not in ITEMSIZE:
            raise SafetensorsError(f"{at}: unknown dtype {tag!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise SafetensorsError(f"{at}: shape must be a list of non-negative ints, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise SafetensorsError(f"{at}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        count = 1
        for s in shape:
            count *= s
        if count * ITEMSIZE[tag] != offsets[1] - offsets[0]:
            raise SafetensorsError(
                f"{at}: shape {shape} of {tag} needs {count * ITEMSIZE[tag]} bytes but data_offsets "
                f"{offsets} span {offsets[1] - offsets[0]}"
            )
        entries[key] = (tag, tuple(shape), offsets[0], offsets[1])

    # The spans must tile [0, len(data area)) exactly.
    size = len(data) - 8 - n
    expected = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != expected:
            kind = "overlaps the previous tensor" if begin < expected else "leaves a gap before it"
            raise SafetensorsError(f"{where}, tensor {key!r}: data_offsets [{begin}, {end}] {kind} (expected begin {expected})")
        if end > size:
            raise SafetensorsError(
                f"{where}, tensor {key!r}: data ends at byte {end} but the data area holds only {size} "
                "bytes (file truncated)"
            )
        expected = end
    if expected != size:
        raise SafetensorsError(f"{where}: {size - expected} unexpected trailing bytes after the last tensor")
    return entries, metadata, 8 + n


def _decode(data, tag, shape, begin, end) -> np.ndarray:
    if tag == BF16:  # widen to float32 exactly: bf16 bits are float32's high half
        half = np.frombuffer(data, dtype="<u2", count=(end - begin) // 2, offset=begin)
        return (half.astype("<u4") << 16).view("<f4").reshape(shape).astype(np.float32)
    dt = DTYPES[tag]
    a = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin)
    return a.reshape(shape).astype(dt.newbyteorder("="), copy=True)  # native order, owned, writable


def deserialize(data: bytes, name: str = "<bytes>"):
    """``(tensors, metadata)`` from the bytes of a safetensors file; validates everything first."""
    entries, metadata, start = parse_header(data, name)
    body = memoryview(data)[start:]
    tensors = {k: _decode(body, tag, shape, b, e) for k, (tag, shape, b, e) in entries.items()}
    return tensors, (metadata or {})


def load_file(path):
    """``(tensors, metadata)`` from a safetensors file: {name: NumPy array}, {str: str}."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read ({e.strerror or e})") from None
    return deserialize(data, path)


def read_header(path):
    """``({tensor: (dtype tag, shape)}, metadata)`` without decoding any tensor (still validated)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    entries, metadata, _ = parse_header(data, path)
    return {k: (tag, shape) for k, (tag, shape, _, _) in entries.items()}, (metadata or {})
