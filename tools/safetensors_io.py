"""Small self-contained reader/writer for the safetensors container.

Layout: an unsigned 64-bit little-endian header size N, N bytes of UTF-8 JSON, then the raw
tensor bytes. The JSON maps tensor names to {"dtype", "shape", "data_offsets"} (offsets counted
from the first byte after the header) and may hold "__metadata__", a map of strings to strings.

Only the dtypes this project needs are supported: F32, I32, I64, U8 (all little-endian).
The writer pads the header with spaces so that the data section starts on an 8-byte boundary and
replaces the target atomically (temp file + rename). The readers take regular files only and check
every bound before touching the data.
"""

import json
import os
import stat
import struct
import tempfile

import numpy as np

DTYPES = {
    "F32": np.dtype("<f4"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """Raised for any malformed or inconsistent file."""


def _tag_for(arr):
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    for tag, ref in DTYPES.items():
        if dt == ref:
            return tag
    raise SafetensorsError(f"unsupported dtype {arr.dtype} (allowed: F32, I32, I64, U8)")


def _to_numpy(value):
    # Accept numpy arrays and torch tensors without importing torch here.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().contiguous().numpy()
    return np.asarray(value)


def serialize(tensors, metadata=None):
    """Return the bytes of a safetensors file.

    tensors: ordered mapping name -> array (numpy or torch); written in the given order.
    metadata: optional mapping of str -> str.
    """
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SafetensorsError("metadata keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name, value in tensors.items():
        if name == "__metadata__":
            raise SafetensorsError("'__metadata__' is reserved")
        arr = _to_numpy(value)
        tag = _tag_for(arr)
        raw = np.ascontiguousarray(arr, dtype=DTYPES[tag]).tobytes(order="C")
        header[name] = {
            "dtype": tag,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    pad = (-(8 + len(text))) % 8
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def atomic_write(path, write):
    """Calls write(f) on a binary temp file in the folder of `path`, then renames it to `path`, so
    readers never see a half-written file; on any failure the temp file is removed and `path` is
    left as it was. The temp name ends in .tmp, so "*.safetensors" listings skip it."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder} of {path} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates 0600; give the file the mode open() would have given it
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            fd = None
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        os.unlink(tmp)
        raise


def save_file(path, tensors, metadata=None):
    data = serialize(tensors, metadata)
    atomic_write(path, lambda f: f.write(data))


def _header_length(head8, file_size):
    """The header length N of a file of file_size bytes starting with head8, bounds-checked."""
    if len(head8) < 8:
        raise SafetensorsError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(head8[:8]))
    if n > file_size - 8:
        raise SafetensorsError(f"header length {n} larger than the file ({file_size} bytes)")
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {n} is unreasonably large")
    return n


def _parse_header(text):
    """The header JSON -> (tensor entries dict, metadata dict of strings)."""
    try:
        header = json.loads(bytes(text).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    return header, metadata


def deserialize(buf):
    """Parse bytes; return (tensors: dict name -> numpy array, metadata: dict)."""
    buf = memoryview(buf)
    n = _header_length(buf[:8], len(buf))
    header, metadata = _parse_header(buf[8:8 + n])
    data = buf[8 + n:]
    spans = []
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise SafetensorsError(f"{name}: entry is not an object")
        tag = info.get("dtype")
        if tag not in DTYPES:
            raise SafetensorsError(f"{name}: unsupported dtype {tag!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise SafetensorsError(f"{name}: bad shape {shape!r}")
        offs = info.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise SafetensorsError(f"{name}: bad data_offsets {offs!r}")
        begin, end = offs
        if not (0 <= begin <= end <= len(data)):
            raise SafetensorsError(f"{name}: data_offsets {offs} outside the data section ({len(data)} bytes)")
        count = 1
        for s in shape:
            count *= s
        if end - begin != count * DTYPES[tag].itemsize:
            raise SafetensorsError(f"{name}: data_offsets {offs} inconsistent with shape {shape} and dtype {tag}")
        spans.append((begin, end, name))
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[tag]).reshape(shape).copy()
        tensors[name] = arr
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(f"tensors {n0} and {n1} overlap")
    return tensors, metadata


def open_regular(path):
    """A binary file object for a regular file; FIFOs, devices and folders are refused.

    O_NONBLOCK: opening a FIFO does not wait for a writer (and /dev/zero would never end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SafetensorsError(f"{path}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path):
    """All bytes of a regular file (see open_regular)."""
    with open_regular(path) as f:
        return f.read()


def load_file(path):
    try:
        return deserialize(read_bytes(path))
    except SafetensorsError as e:
        raise SafetensorsError(e if str(e).startswith(f"{path}:") else f"{path}: {e}") from None


def read_header(path):
    """Return (raw header dict including __metadata__, header length) without reading the data."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            n = _header_length(f.read(8), size)
            header, metadata = _parse_header(f.read(n))
        except SafetensorsError as e:
            raise SafetensorsError(f"{path}: {e}") from None
    if metadata:
        header["__metadata__"] = metadata
    return header, n
