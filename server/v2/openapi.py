"""How /schema describes the V2 inference route: a JSON inference request, or its JSON header
followed by binary tensor data; a JSON answer, or the same with binary outputs appended.

The handler reads its body itself (either form, possibly compressed), so Litestar cannot infer any
of this from its signature; the shapes here are the ones `wire` and `codec` enforce.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)

from batchserve.server.v2.datatypes import KNOWN
from batchserve.server.v2.wire import MAX_DIM, MAX_RANK

_STRING = Schema(type=OpenAPIType.STRING)
_PARAMETERS = Schema(
    type=OpenAPIType.OBJECT,
    additional_properties=Schema(type=[OpenAPIType.STRING, OpenAPIType.NUMBER, OpenAPIType.BOOLEAN, OpenAPIType.NULL]),
    description="protocol parameters: binary_data_size (input), binary_data_output and timeout in microseconds "
                "(request), classification and binary_data (output)",
)
_SHAPE = Schema(
    type=OpenAPIType.ARRAY, max_items=MAX_RANK,
    items=Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_DIM),
)
_INPUT = Schema(
    type=OpenAPIType.OBJECT,
    required=["name", "shape", "datatype"],
    properties={
        "name": Schema(type=OpenAPIType.STRING, description="'input' (FP32 [N,3,224,224]) or 'image' (BYTES [N])"),
        "shape": _SHAPE,
        "datatype": Schema(type=OpenAPIType.STRING, enum=sorted(KNOWN)),
        "parameters": _PARAMETERS,
        "data": Schema(
            type=OpenAPIType.ARRAY, items=Schema(),
            description="the elements, flat in row-major order or nested at most as deep as the shape; "
                        "'image' elements sent as JSON are base64 strings",
        ),
    },
)
_REQUESTED_OUTPUT = Schema(
    type=OpenAPIType.OBJECT, required=["name"], properties={"name": _STRING, "parameters": _PARAMETERS},
)
INFERENCE_REQUEST = Schema(
    type=OpenAPIType.OBJECT,
    required=["inputs"],
    properties={
        "id": _STRING,
        "inputs": Schema(type=OpenAPIType.ARRAY, items=_INPUT, min_items=1),
        "outputs": Schema(type=OpenAPIType.ARRAY, items=_REQUESTED_OUTPUT),
        "parameters": _PARAMETERS,
    },
)
_OUTPUT = Schema(
    type=OpenAPIType.OBJECT,
    required=["name", "datatype", "shape"],
    properties={
        "name": _STRING, "datatype": _STRING,
        "shape": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.INTEGER)),
        "parameters": Schema(type=OpenAPIType.OBJECT),
        "data": Schema(type=OpenAPIType.ARRAY, items=Schema()),
    },
)
INFERENCE_RESPONSE = Schema(
    type=OpenAPIType.OBJECT,
    required=["model_name", "model_version", "outputs"],
    properties={
        "model_name": _STRING, "model_version": _STRING, "id": _STRING,
        "outputs": Schema(type=OpenAPIType.ARRAY, items=_OUTPUT),
    },
)
_WITH_BINARY = Schema(
    type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY,
    description="the JSON header (its length in Inference-Header-Content-Length), then each binary tensor's "
                "bytes in order, sized by its binary_data_size parameter",
)


def infer_request_body() -> RequestBody:
    return RequestBody(
        required=True,
        content={
            "application/json": OpenAPIMediaType(schema=INFERENCE_REQUEST),
            "application/octet-stream": OpenAPIMediaType(schema=_WITH_BINARY),
        },
        description="An inference request; with the binary tensor data extension, its JSON header followed by "
                    "the tensors' bytes. Content-Encoding gzip or deflate is accepted.",
    )


def infer_success() -> OpenAPIResponse:
    return OpenAPIResponse(
        description="The outputs; when any is binary, the JSON header then their bytes",
        content={
            "application/json": OpenAPIMediaType(schema=INFERENCE_RESPONSE),
            "application/octet-stream": OpenAPIMediaType(schema=_WITH_BINARY),
        },
        headers={"Inference-Header-Content-Length": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING, pattern="^[0-9]+$"),
            description="length of the JSON header, when binary outputs follow it",
        )},
    )


@dataclass
class InferOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = infer_request_body()
        if self.responses is not None:
            self.responses["200"] = infer_success()
