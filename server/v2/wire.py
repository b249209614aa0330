"""The JSON objects of a V2 inference request and response, as msgspec Structs.

Tensor `data` stays raw JSON at first: only once the datatype and shape are known can it be
decoded into the right element type without building a generic Python tree for large tensors.
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchserve.serving.errors import InvalidRequest


class RequestInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: msgspec.Raw = msgspec.Raw()

    @property
    def has_json_data(self) -> bool:
        return len(self.data) > 0 and bytes(self.data) != b"null"


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class InferenceRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: str | None = None
    outputs: list[RequestOutput] | None = None
    parameters: dict[str, Any] = {}


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


def int_parameter(parameters: dict[str, Any], key: str, where: str) -> int | None:
    """An integer parameter, or None when absent. JSON booleans are not integers here."""
    if key not in parameters:
        return None
    value = parameters[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{where}: parameter {key!r} must be an integer, not {value!r}")
    return value


def bool_parameter(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    if key not in parameters:
        return None
    value = parameters[key]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}: parameter {key!r} must be true or false, not {value!r}")
    return value
