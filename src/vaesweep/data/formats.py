"""The IDX file format (MNIST, Fashion-MNIST): bytes, raw or gzipped, to numpy arrays.

Knows nothing of datasets, directories or checksums (``download.py``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type codes -> numpy dtypes (multi-byte types are big-endian).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """Returns the file's content, gunzipped when it starts with the gzip magic bytes."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def parse_idx(data: bytes, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parses IDX bytes (magic 0x0000, type code, ndim, big-endian uint32 dims, payload)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{source}: not an IDX file: magic number {data[:4].hex() or '(empty)'}, "
            f"expected 0000<type><ndim> (e.g. 00000803 for uint8 images)"
        )
    code, found_ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02X}, expected one of {allowed}")
    if ndim is not None and found_ndim != ndim:
        raise ValueError(f"{source}: IDX file has {found_ndim} dimensions, expected {ndim}")
    header = 4 + 4 * found_ndim
    if len(data) < header:
        raise ValueError(
            f"{source}: truncated IDX header: {len(data)} bytes, expected {header} "
            f"for {found_ndim} dimensions"
        )
    dims = struct.unpack(f">{found_ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise ValueError(
            f"{source}: IDX payload has {found} bytes, expected {expected} "
            f"(dims {dims} x {dtype.itemsize} byte(s)): the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file, raw or gzipped; returns an array of the stored dtype and dims."""
    path = Path(path)
    return parse_idx(read_bytes(path), source=str(path), ndim=ndim)
