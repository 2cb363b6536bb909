"""minilora.safetensors: exact round trips, agreement with the reference package both ways, and a
clear error (naming file and tensor) for every kind of malformed file."""
import json
import struct

import numpy as np
import pytest

from minilora import safetensors as st

reference = pytest.importorskip("safetensors.numpy")


def sample():
    g = np.random.default_rng(0)
    return {
        "w": g.standard_normal((3, 5)).astype(np.float32),
        "h": g.standard_normal((4,)).astype(np.float16),
        "d": g.standard_normal((2, 2, 2)),
        "i": g.integers(-9, 9, size=(6,)).astype(np.int64),
        "u": g.integers(0, 255, size=(3,)).astype(np.uint8),
        "flag": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 7), dtype=np.float32),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32),
    }


def same(a, b):
    """Bitwise equal (NaN == NaN), same dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_round_trip_bitwise(tmp_path):
    t = sample()
    st.save_file(t, tmp_path / "x.safetensors", {"note": "hi"})
    back, meta = st.load_file(tmp_path / "x.safetensors")
    assert meta == {"note": "hi"}
    assert set(back) == set(t)
    for k in t:
        assert same(back[k], t[k]), k


def test_reference_reads_ours(tmp_path):
    t = sample()
    st.save_file(t, tmp_path / "ours.safetensors", {"format": "pt"})
    back = reference.load_file(str(tmp_path / "ours.safetensors"))
    assert set(back) == set(t)
    for k in t:
        assert same(np.asarray(back[k]), t[k]), k
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ours.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}


def test_we_read_reference(tmp_path):
    t = sample()
    reference.save_file(t, str(tmp_path / "ref.safetensors"), metadata={"a": "b"})
    back, meta = st.load_file(tmp_path / "ref.safetensors")
    assert meta == {"a": "b"}
    for k in t:
        assert same(back[k], t[k]), k


def test_bf16_widens_exactly_to_float32():
    x = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (x.view(np.uint32) >> 16).astype("<u2")  # truncate to bf16
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    data = struct.pack("<Q", len(header)) + header + bits.tobytes()
    back, _ = st.deserialize(data)
    expect = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back["x"].dtype == np.float32 and same(back["x"], expect)


def test_header_is_padded_to_8_bytes():
    data = st.serialize({"a": np.ones(3, np.float32)})
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0


# ----------------------------------------------------------------------------- malformed files


def build(header: dict, body: bytes, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
BODY = np.arange(3, dtype=np.float32).tobytes()


def test_good_builder_is_valid():
    t, _ = st.deserialize(build(GOOD, BODY), "f.safetensors")
    assert t["a"].tolist() == [0.0, 1.0] and t["b"].tolist() == [2.0]


@pytest.mark.parametrize(
    "case, data, fragment",
    [
        ("too short", b"\x01\x00", "too short"),
        ("header past end", struct.pack("<Q", 1000) + b"{}", "runs past the end"),
        ("huge header", struct.pack("<Q", 2**62) + b"{}", "exceeds"),
        ("not json", build(None, b"", b"{nope"), "not valid JSON"),
        ("not object", build(None, b"", b"[1]"), "start with"),
        ("duplicate key", build(None, BODY[:8],
                                b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'), "duplicate"),
        ("unknown dtype", build({"a": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}}, b"xx"), "unknown dtype"),
        ("bad shape", build({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"xxxx"), "shape"),
        ("span mismatch", build({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, BODY[:8]), "needs 12 bytes"),
        ("overlap", build({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, BODY), "overlaps"),
        ("gap", build({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, BODY[:8]), "gap"),
        ("truncated", build(GOOD, BODY[:10]), "truncated"),
        ("trailing bytes", build(GOOD, BODY + b"\x00\x00"), "trailing"),
        ("missing field", build({"a": {"dtype": "F32", "shape": [2]}}, BODY[:8]), "exactly dtype"),
        ("bad metadata", build({"__metadata__": {"k": 1}, **GOOD}, BODY), "__metadata__"),
        ("reversed offsets", build({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b""), "data_offsets"),
    ],
)
def test_malformed_raises_naming_file(case, data, fragment):
    with pytest.raises(st.SafetensorsError) as e:
        st.deserialize(data, "bad.safetensors")
    msg = str(e.value)
    assert "bad.safetensors" in msg and fragment in msg, msg


def test_error_names_the_tensor():
    data = build({"layer.weight": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, BODY[:8])
    with pytest.raises(st.SafetensorsError, match="'layer.weight'"):
        st.deserialize(data, "f")


def test_every_truncation_of_a_real_file_is_caught(tmp_path):
    data = st.serialize(sample(), {"m": "x"})
    for cut in range(0, len(data), 7):
        with pytest.raises(st.SafetensorsError):
            st.deserialize(data[:cut], "cut")


def test_unstorable_dtype_refused():
    with pytest.raises(st.SafetensorsError, match="cannot store"):
        st.serialize({"c": np.zeros(2, np.complex64)})


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    st.save_file({"a": np.ones(4, np.float32)}, path)
    before = path.read_bytes()

    def half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(st, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        st.save_file({"a": np.zeros(1000, np.float32)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
