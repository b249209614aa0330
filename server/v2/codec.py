"""V2 request bodies in, V2 response bodies out: JSON tensors and the binary tensor data extension.

With the extension, a body is the JSON header (its length in `Inference-Header-Content-Length`)
followed by each binary input's bytes, in input order; `binary_data_size` says how many belong to
each. BYTES elements are a 4-byte little-endian length followed by the bytes. Every size a client
states is checked against what is really there before anything is allocated from it, and a
shape's element count is compared with the bytes that carry its data (each element takes at least
one) before any arithmetic on it can grow: no request makes the server build large integers.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
import numpy as np

from batchserve.server.client_numbers import ascii_int, header_value
from batchserve.server.v2.datatypes import BYTES, KNOWN, NUMPY_DTYPES
from batchserve.server.v2.wire import (
    MAX_RANK,
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
    decode_json,
    int_parameter,
)
from batchserve.serving.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_DIGITS = 20
_LENGTH = struct.Struct("<I")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Tensor:
    """One decoded input: numeric tensors as an ndarray of `shape`, BYTES as flat element bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]
    from_json: bool  # JSON cannot carry raw bytes, so BYTES elements sent in JSON are text

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class DecodedRequest:
    request: InferenceRequest
    inputs: list[Tensor]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's Content-Encoding (tritonclient can gzip or deflate its requests), never
    inflating past `limit` bytes: a small compressed body must not become a memory bomb."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: use gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if coding == "gzip" else 0))
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the request body is not valid {coding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"the decompressed request body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidRequest(f"the {coding} request body is truncated")
    return data


def header_length(raw: str | None, body_size: int) -> int | None:
    """The JSON header's length from `Inference-Header-Content-Length`; None: the body is all JSON."""
    if raw is None:
        return None
    length = ascii_int(header_value(raw), HEADER_LENGTH_DIGITS)
    if length is None:
        raise InvalidRequest(f"{HEADER_LENGTH} must be a non-negative integer in ASCII digits, not {raw[:40]!r}")
    if length == 0 or length > body_size:
        raise InvalidRequest(f"{HEADER_LENGTH} is {length} but the request body has {body_size} bytes")
    return length


def decode_request(body: bytes, header_length_value: str | None) -> DecodedRequest:
    length = header_length(header_length_value, len(body))
    view = memoryview(body)
    header = view if length is None else view[:length]
    binary = view[len(header):]
    try:
        request = decode_json(header, InferenceRequest, "inference request")
    except InvalidRequest as exc:
        if length is None and "trailing characters" in exc.message:
            raise InvalidRequest(
                f"{exc.message}; a body that carries binary tensor data needs the {HEADER_LENGTH} header"
            ) from None
        raise
    if not request.inputs:
        raise InvalidRequest("the inference request has no inputs")
    offset = 0
    tensors = []
    for item in request.inputs:
        where = f"input {item.name!r}"
        _check_datatype(item)
        size = int_parameter(item.parameters, "binary_data_size", where)
        if size is not None:
            if length is None:
                raise InvalidRequest(f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header")
            if item.has_json_data:
                raise InvalidRequest(f"{where} has both JSON data and binary_data_size; send one")
            if size < 0:
                raise InvalidRequest(f"{where}: binary_data_size must be >= 0, not {size}")
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"binary_data_size values add up to at least {offset + size} bytes, but the body carries "
                    f"{len(binary)} bytes after the {length}-byte JSON header"
                )
            tensors.append(_from_binary(item, binary[offset:offset + size], len(body)))
            offset += size
        elif item.has_json_data:
            tensors.append(_from_json(item, len(body)))
        else:
            raise InvalidRequest(f"{where} has no data: give 'data' or a binary_data_size parameter")
    if offset != len(binary):
        raise InvalidRequest(
            f"the body carries {len(binary)} bytes after the JSON header but binary_data_size values add up to {offset}"
        )
    return DecodedRequest(request, tensors)


def _check_datatype(item: RequestInput) -> None:
    if item.datatype not in KNOWN:
        raise InvalidRequest(f"input {item.name!r}: unknown datatype {item.datatype[:40]!r}")


def element_count(shape: Sequence[int], body_size: int, what: str) -> int:
    """The product of `shape`, refused as soon as it passes `body_size`: every element takes at least
    one byte of the body (in JSON or binary), so a larger count is a lie, and the product never
    grows into a large integer."""
    if len(shape) > MAX_RANK:
        raise InvalidRequest(f"{what}: a shape has at most {MAX_RANK} dimensions, not {len(shape)}")
    if 0 in shape:
        return 0
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"{what}: shape dimensions must be >= 0")
        count *= dim
        if count > body_size:
            raise InvalidRequest(
                f"{what}: the shape declares more elements than the {body_size}-byte request body can carry"
            )
    return count


def _describe(item: RequestInput) -> str:
    return f"input {item.name!r} ({item.datatype} {list(item.shape)})"


def _from_binary(item: RequestInput, data: memoryview, body_size: int) -> Tensor:
    shape = tuple(item.shape)
    count = element_count(shape, body_size, _describe(item))
    if item.datatype == BYTES:
        return Tensor(item.name, BYTES, shape, split_bytes_elements(data, count, _describe(item)), from_json=False)
    dtype = NUMPY_DTYPES[item.datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidRequest(
            f"{_describe(item)} needs {count * dtype.itemsize} bytes of binary data, "
            f"but binary_data_size is {len(data)}"
        )
    # A copy: the array outlives the request body, and an aligned buffer is faster to batch.
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return Tensor(item.name, item.datatype, shape, array, from_json=False)


def split_bytes_elements(data: memoryview | bytes, count: int, what: str) -> list[bytes]:
    """BYTES binary data: each element is a 4-byte little-endian length, then that many bytes."""
    view = memoryview(data)
    items: list[bytes] = []
    pos = 0
    while pos < len(view):
        if len(items) == count:
            raise InvalidRequest(f"{what}: binary data holds more than the {count} elements its shape says")
        if pos + 4 > len(view):
            raise InvalidRequest(f"{what}: binary data ends inside an element's 4-byte length prefix")
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidRequest(
                f"{what}: element {len(items)} claims {size} bytes but only {len(view) - pos} remain"
            )
        items.append(bytes(view[pos:pos + size]))
        pos += size
    if len(items) != count:
        raise InvalidRequest(f"{what}: binary data holds {len(items)} elements but its shape says {count}")
    return items


# JSON element type of a numeric tensor, by numpy kind.
_ELEMENT_TYPES: dict[str, type] = {"b": bool, "f": float, "i": int, "u": int}
# The opening brackets (and JSON whitespace) before the first element, up to one past MAX_RANK.
_LEADING_BRACKETS = re.compile(rb"[ \t\r\n]*(?:\[[ \t\r\n]*){0,%d}" % (MAX_RANK + 1))


def _nesting(raw: bytes) -> int:
    """How deeply `data` nests arrays, read from its leading brackets (the path to the first
    element); counting stops past MAX_RANK, so a body of brackets costs nothing to refuse."""
    match = _LEADING_BRACKETS.match(raw)
    return match.group().count(b"[") if match else 0


@cache
def _nested_list(element: type, depth: int) -> Any:
    """list[element] nested `depth` times: msgspec checks the structure and types while decoding."""
    kind: Any = element
    for _ in range(depth):
        kind = list[kind]
    return kind


def _from_json(item: RequestInput, body_size: int) -> Tensor:
    """Data flat (as clients send it) or nested as deeply as the shape at most, never deeper."""
    shape = tuple(item.shape)
    what = _describe(item)
    count = element_count(shape, body_size, what)
    raw = bytes(item.data)
    depth = _nesting(raw)
    if depth == 0:
        raise InvalidRequest(f"{what}: data must be a JSON array")
    if depth > max(1, len(shape)):
        raise InvalidRequest(f"{what}: data nests arrays deeper than its {len(shape)}-dimensional shape")
    if item.datatype == BYTES:
        values: Any = decode_json(raw, _nested_list(str, depth), f"data of {what}")
        for _ in range(depth - 1):
            values = [v for inner in values for v in inner]
        if len(values) != count:
            raise InvalidRequest(f"{what}: data holds {len(values)} elements but the shape says {count}")
        return Tensor(item.name, BYTES, shape, [v.encode("utf-8") for v in values], from_json=True)
    dtype = NUMPY_DTYPES[item.datatype]
    values = decode_json(raw, _nested_list(_ELEMENT_TYPES[dtype.kind], depth), f"data of {what}")
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{what}: data is not a regular array of {item.datatype} values ({exc})") from None
    if array.size != count:
        raise InvalidRequest(f"{what}: data holds {array.size} elements but the shape says {count}")
    return Tensor(item.name, item.datatype, shape, array.reshape(shape), from_json=True)


def join_bytes_elements(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def encode_response(
    model_name: str, model_version: str, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, dict[str, str], str]:
    """(body, extra headers, media type). Binary outputs follow the JSON header in output order."""
    described = []
    blobs: list[bytes] = []
    for out in outputs:
        values = out.values
        if out.binary:
            blob = (join_bytes_elements(values) if isinstance(values, list)
                    else np.ascontiguousarray(values, dtype=NUMPY_DTYPES[out.datatype]).tobytes())
            blobs.append(blob)
            described.append(
                ResponseOutput(out.name, out.datatype, out.shape, parameters={"binary_data_size": len(blob)})
            )
        elif isinstance(values, list):  # BYTES
            data = [v.decode("utf-8", "replace") for v in values]
            described.append(ResponseOutput(out.name, out.datatype, out.shape, data=data))
        else:
            described.append(
                ResponseOutput(out.name, out.datatype, out.shape, data=np.asarray(out.values).ravel().tolist())
            )
    header = _encoder.encode(InferenceResponse(model_name, model_version, described, id=request_id))
    if not blobs:
        return header, {}, "application/json"
    return b"".join([header, *blobs]), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"
