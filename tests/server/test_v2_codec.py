"""The V2 body codec: JSON and binary tensors in, responses out, and every way a body can lie."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http import InferResult
from tritonclient.utils import serialize_byte_tensor

from batchserve.server.v2.codec import (
    OutputTensor,
    decode_content,
    decode_request,
    encode_response,
    join_bytes_elements,
    split_bytes_elements,
)
from batchserve.serving.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def fp32_input(shape: list[int], size: int, name: str = "input") -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}


def test_binary_fp32_and_bytes_inputs_decode_in_order() -> None:
    tensor = np.arange(6, dtype=np.float32).reshape(2, 3)
    elements = [b"first", b"", b"\x00\xffbinary"]
    packed = serialize_byte_tensor(np.array(elements, dtype=object)).item()  # the real client's packing
    body, length = binary_body(
        {"id": "r1", "inputs": [fp32_input([2, 3], tensor.nbytes),
                                {"name": "image", "datatype": "BYTES", "shape": [3],
                                 "parameters": {"binary_data_size": len(packed)}}]},
        tensor.tobytes(), packed,
    )
    decoded = decode_request(body, length)
    assert decoded.request.id == "r1"
    first, second = decoded.inputs
    assert first.shape == (2, 3) and np.array_equal(first.values, tensor) and not first.from_json
    assert second.values == elements and second.count == 3


def test_json_tensors_may_be_flat_or_nested() -> None:
    body = json.dumps({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, 3, 4]},
        {"name": "b", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
        {"name": "c", "datatype": "BYTES", "shape": [2], "data": ["x", "ü"]},
    ]}).encode()
    a, b, c = decode_request(body, None).inputs
    assert a.values.dtype == np.float32 and a.values.tolist() == [[1.0, 2.5], [3.0, 4.0]]
    assert b.values.dtype == np.int64 and b.values.tolist() == [[1, 2], [3, 4]]
    assert c.values == [b"x", "ü".encode()] and c.from_json


BAD_BODIES = [
    pytest.param(b"not json", None, "not valid JSON", id="non-json-header"),
    pytest.param(b'{"inputs": []}', None, "no inputs", id="no-inputs"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "has no data",
                 id="no-data"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', None,
                 "unknown datatype", id="unknown-datatype"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None,
                 "Expected `int` >= 0 - at `\\$.inputs\\[0\\].shape\\[0\\]`", id="negative-dim"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [true], "data": [1]}]}', None,
                 "invalid inference request", id="bool-dim"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}', None,
                 "holds 2 elements but the shape says 3", id="json-count-mismatch"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1], [2, 3]]}]}', None,
                 "not a regular array", id="ragged"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}', None,
                 "not a regular array", id="int-overflow"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [5]}]}', None,
                 "Expected `str`, got `int`", id="bytes-json-not-string"),
    pytest.param(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
                 b'"parameters": {"binary_data_size": 4}}]}\x00\x00\x80\x3f', None,
                 "needs the Inference-Header-Content-Length header", id="binary-without-header-length"),
]


@pytest.mark.parametrize(("body", "length", "message"), BAD_BODIES)
def test_malformed_json_bodies_are_400(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(body, length)


@pytest.mark.parametrize(
    ("size", "payload", "message"),
    [
        pytest.param(8, b"\x00" * 4, "add up to at least 8", id="size-beyond-body"),
        pytest.param(8, b"\x00" * 12, "add up to 8", id="unclaimed-bytes"),
        pytest.param(-4, b"", "must be >= 0", id="negative-size"),
        pytest.param(2**62, b"\x00" * 4, "add up to at least", id="huge-size"),
        pytest.param(True, b"\x00" * 4, "must be an integer", id="boolean-size"),
        pytest.param(4, b"\x00" * 4, "needs 8 bytes", id="size-disagrees-with-shape"),
    ],
)
def test_binary_sizes_that_do_not_add_up_are_400(size: object, payload: bytes, message: str) -> None:
    body, length = binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                            "parameters": {"binary_data_size": size}}]}, payload)
    with pytest.raises(InvalidRequest, match=message):
        decode_request(body, length)


@pytest.mark.parametrize("length", ["abc", "-3", "0", "99999", " 1e3"])
def test_bad_header_length_is_400(length: str) -> None:
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        decode_request(b'{"inputs": []}', length)


def test_both_json_data_and_binary_size_is_400() -> None:
    body, length = binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0],
                                            "parameters": {"binary_data_size": 4}}]}, b"\x00" * 4)
    with pytest.raises(InvalidRequest, match="both JSON data and binary_data_size"):
        decode_request(body, length)


@pytest.mark.parametrize(
    ("blob", "count", "message"),
    [
        pytest.param(struct.pack("<I", 10) + b"short", 1, "claims 10 bytes", id="element-overruns"),
        pytest.param(
            struct.pack("<I", 1) + b"a" + b"\x01\x00", 2, "inside an element's 4-byte length", id="cut-prefix"
        ),
        pytest.param(struct.pack("<I", 0) * 3, 2, "more than the 2 elements", id="too-many"),
        pytest.param(struct.pack("<I", 1) + b"a", 2, "holds 1 elements but its shape says 2", id="too-few"),
    ],
)
def test_bytes_elements_that_lie_are_400(blob: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        split_bytes_elements(blob, count, "input 'image'")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8), st.data())
def test_bytes_elements_round_trip_and_any_truncation_is_a_clean_400(elements: list[bytes], data) -> None:
    packed = join_bytes_elements(elements)
    assert split_bytes_elements(packed, len(elements), "x") == elements
    cut = data.draw(st.integers(min_value=0, max_value=len(packed) - 1))
    with pytest.raises(InvalidRequest):
        split_bytes_elements(packed[:cut], len(elements), "x")


def test_response_with_binary_outputs_parses_with_the_real_client() -> None:
    logits = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    strings = [b"0.9:1:cat", b"0.1:0:dog", b"0.8:3:car", b"0.2:4:bus"]
    body, headers, media_type = encode_response("m", "3", "req-9", [
        OutputTensor("logits", "FP32", [2, 5], logits, binary=True),
        OutputTensor("probabilities", "BYTES", [2, 2], strings, binary=True),
        OutputTensor("extra", "FP32", [2, 5], logits, binary=False),
    ])
    assert media_type == "application/octet-stream"
    result = InferResult.from_response_body(body, header_length=int(headers["Inference-Header-Content-Length"]))
    np.testing.assert_array_equal(result.as_numpy("logits").reshape(2, 5), logits)
    assert result.as_numpy("probabilities").reshape(-1).tolist() == strings
    np.testing.assert_allclose(result.as_numpy("extra").reshape(2, 5), logits)
    response = result.get_response()
    assert response["model_name"] == "m" and response["model_version"] == "3" and response["id"] == "req-9"


def test_all_json_response_has_no_header_length() -> None:
    body, headers, media_type = encode_response("m", "1", None, [
        OutputTensor("labels", "BYTES", [1, 1], [b"1.000000:2:x"], binary=False),
    ])
    assert headers == {} and media_type == "application/json"
    assert json.loads(body) == {"model_name": "m", "model_version": "1",
                                "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [1, 1],
                                             "data": ["1.000000:2:x"]}]}


def test_content_encodings_inflate_within_the_limit() -> None:
    payload = b'{"inputs": []}' * 10
    assert decode_content(gzip.compress(payload), "gzip", 1000) == payload
    assert decode_content(zlib.compress(payload), "deflate", 1000) == payload
    assert decode_content(payload, None, 1000) == payload
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(b"\x00" * 100_000), "gzip", 1000)  # a 100 kB bomb in ~100 bytes
    with pytest.raises(InvalidRequest, match="not valid gzip"):
        decode_content(b"plainly not gzip", "gzip", 1000)
    with pytest.raises(InvalidRequest, match="truncated"):
        decode_content(gzip.compress(payload)[:-10], "gzip", 1000)
    with pytest.raises(UnsupportedMediaType):
        decode_content(payload, "br", 1000)
