"""V2 tensor datatypes and their little-endian numpy equivalents."""

from __future__ import annotations

import numpy as np

# BYTES is absent on purpose: its elements are variable-length and are handled apart.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
KNOWN = frozenset(NUMPY_DTYPES) | {BYTES}

# The names Triton's model configuration uses for the same types.
CONFIG_NAMES = {"FP32": "TYPE_FP32", BYTES: "TYPE_STRING"}

