"""V2 request bodies in, V2 response bodies out: JSON tensors and the binary tensor data extension.

With the extension, a body is the JSON header (its length in `Inference-Header-Content-Length`)
followed by each binary input's bytes, in input order; `binary_data_size` says how many belong to
each. BYTES elements are a 4-byte little-endian length followed by the bytes. Every size a client
states is checked against what is really there before anything is allocated from it.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from batchserve.server.v2.datatypes import BYTES, KNOWN, NUMPY_DTYPES
from batchserve.server.v2.wire import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
    decode_json,
    int_parameter,
)
from batchserve.serving.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIM = 2**31 - 1
_LENGTH = struct.Struct("<I")
# JSON data of a numeric tensor, by numpy kind: decoded straight into typed elements.
_FLAT_LISTS: dict[str, Any] = {"b": list[bool], "f": list[float]}
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
    text = raw.strip()
    if not text.isdigit():
        raise InvalidRequest(f"{HEADER_LENGTH} must be a non-negative integer, not {raw!r}")
    length = int(text)
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
        shape = _shape(item)
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
            tensors.append(_from_binary(item, shape, binary[offset:offset + size]))
            offset += size
        elif item.has_json_data:
            tensors.append(_from_json(item, shape))
        else:
            raise InvalidRequest(f"{where} has no data: give 'data' or a binary_data_size parameter")
    if offset != len(binary):
        raise InvalidRequest(
            f"the body carries {len(binary)} bytes after the JSON header but binary_data_size values add up to {offset}"
        )
    return DecodedRequest(request, tensors)


def _shape(item: RequestInput) -> tuple[int, ...]:
    if item.datatype not in KNOWN:
        raise InvalidRequest(f"input {item.name!r}: unknown datatype {item.datatype!r}")
    for dim in item.shape:
        if not 0 <= dim <= MAX_DIM:
            raise InvalidRequest(f"input {item.name!r}: shape {item.shape} has a dimension outside 0..{MAX_DIM}")
    return tuple(item.shape)


def _describe(item: RequestInput) -> str:
    return f"input {item.name!r} ({item.datatype} {list(item.shape)})"


def _from_binary(item: RequestInput, shape: tuple[int, ...], data: memoryview) -> Tensor:
    count = math.prod(shape)
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


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for v in value:
            _flatten(v, out)
    else:
        out.append(value)


def _from_json(item: RequestInput, shape: tuple[int, ...]) -> Tensor:
    count = math.prod(shape)
    what = _describe(item)
    raw = bytes(item.data)
    if item.datatype == BYTES:
        flat: list[Any] = []
        _flatten(decode_json(raw, Any, f"data of {what}"), flat)
        if not all(isinstance(v, str) for v in flat):
            raise InvalidRequest(f"{what}: JSON data elements must be strings")
        if len(flat) != count:
            raise InvalidRequest(f"{what}: data holds {len(flat)} elements but the shape says {count}")
        return Tensor(item.name, BYTES, shape, [v.encode("utf-8") for v in flat], from_json=True)
    dtype = NUMPY_DTYPES[item.datatype]
    try:
        # Flat data (what clients send) decodes straight into a typed list; nested data is allowed too.
        values: Any = msgspec.json.decode(raw, type=_FLAT_LISTS.get(dtype.kind, list[int]))
    except msgspec.ValidationError:
        values = decode_json(raw, Any, f"data of {what}")
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
