"""The JSON objects of a V2 inference request and response, as msgspec Structs.

Tensor `data` stays raw JSON at first: only once the datatype and shape are known can it be
decoded into the right element type without building a generic Python tree for large tensors.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from batchserve.serving.errors import InvalidRequest

MAX_RANK = 8
"""Dimensions a tensor may have: this server's inputs have 1 to 4; the bound stops a shape of tens
of thousands of dimensions from costing anything before it is refused."""
MAX_DIM = 2**31 - 1

Dim = Annotated[int, msgspec.Meta(ge=0, le=MAX_DIM)]
Shape = Annotated[list[Dim], msgspec.Meta(max_length=MAX_RANK)]
# The protocol's parameter values are strings, numbers and booleans; typing them so means a
# parameter cannot carry a nested structure to walk.
ParameterValue = str | int | float | bool | None
Parameters = dict[str, ParameterValue]


class RequestInput(msgspec.Struct):
    name: str
    shape: Shape
    datatype: str
    parameters: Parameters = {}
    data: msgspec.Raw = msgspec.Raw()

    @property
    def has_json_data(self) -> bool:
        return len(self.data) > 0 and bytes(self.data) != b"null"


class RequestOutput(msgspec.Struct):
    name: str
    parameters: Parameters = {}


class InferenceRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: str | None = None
    outputs: list[RequestOutput] | None = None
    parameters: Parameters = {}


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[ResponseOutput]
    id: str | None = None


class RepositoryIndexRequest(msgspec.Struct):
    ready: bool = False


class RepositoryActionRequest(msgspec.Struct):
    parameters: dict[str, Any] = {}


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode_json(raw: bytes | memoryview, into: Any, what: str) -> Any:
    """Decode `raw` as `into`, turning every malformed or mistyped body into a 400 that says where."""
    decoder = _decoders.get(into)
    if decoder is None:
        decoder = _decoders[into] = msgspec.json.Decoder(into)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit; the input is hostile
        raise InvalidRequest(f"{what} nests JSON arrays or objects too deeply") from None


def int_parameter(parameters: Parameters, key: str, where: str) -> int | None:
    """An integer parameter, or None when absent. JSON booleans are not integers here."""
    if key not in parameters:
        return None
    value = parameters[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{where}: parameter {key!r} must be an integer, not {value!r}")
    return value


def bool_parameter(parameters: Parameters, key: str, where: str) -> bool | None:
    if key not in parameters:
        return None
    value = parameters[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: parameter {key!r} must be true or false, not {value!r}")
    return value
