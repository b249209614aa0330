"""The V2 REST routes through the real app (tiny model): metadata, inference in every input and
output form, shared batching with /v1, events, and hostile bodies."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image
from tests.server.conftest import jpeg_bytes, png_bytes

INFER = "/v2/models/tiny/infer"


def image_input(*images: bytes, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    else:
        encoded = [base64.b64encode(i) for i in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=object), binary_data=False)
    return tensor


def tensor_input(batch: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def output(name: str, *, classes: int = 0, binary: bool = True) -> triton.InferRequestedOutput:
    return triton.InferRequestedOutput(name, binary_data=binary, class_count=classes)


async def infer(client, inputs, outputs=None, path: str = INFER, **kwargs):
    """Build the body as tritonclient does, post it, parse the answer as tritonclient does."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("inference-header-content-length")
    return triton.InferenceServerClient.parse_response_body(response.content, header_length=length and int(length))


def prepared(image: bytes) -> np.ndarray:
    return prepare_image(image, PreprocessConfig()).tensor


async def test_server_and_model_metadata(make_client) -> None:
    async with make_client() as client:
        server = (await client.get("/v2")).json()
        assert server["name"] == "batchserve"
        assert {"binary_tensor_data", "classification", "model_repository"} <= set(server["extensions"])
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        meta = (await client.get("/v2/models/tiny")).json()
        assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {
            ("input", "FP32", (-1, 3, 224, 224)), ("image", "BYTES", (-1,))}
        assert {(o["name"], tuple(o["shape"])) for o in meta["outputs"]} == {
            ("logits", (-1, 1000)), ("probabilities", (-1, 1000))}
        assert (await client.get("/v2/models/tiny/versions/1")).json() == meta
        assert (await client.get("/v2/models/tiny/versions/1/ready")).status_code == 200
        config = (await client.get("/v2/models/tiny/config")).json()
        assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [3, 224, 224]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope", 404, "'nope' is not loaded"),
        ("/v2/models/tiny/versions/7", 404, "version 7"),
        ("/v2/models/tiny/versions/abc/ready", 400, "positive integer"),
        ("/v2/models/tiny/versions/0", 400, "positive integer"),
        ("/v2/nowhere", 404, ""),
    ],
)
async def test_v2_errors_are_a_plain_error_string(make_client, path: str, status: int, message: str) -> None:
    async with make_client() as client:
        response = await client.get(path)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and message in body["error"]


async def test_image_bytes_binary_and_json_give_the_same_classification(make_client, chelsea: bytes) -> None:
    async with make_client() as client:
        binary = await infer(client, [image_input(chelsea, png_bytes())], [output("probabilities", classes=5)])
        as_json = await infer(client, [image_input(chelsea, png_bytes(), binary=False)],
                              [output("probabilities", classes=5, binary=False)])
    rows = binary.as_numpy("probabilities").reshape(2, 5)
    # The client hands back binary BYTES as bytes and JSON ones as str: the same strings either way.
    assert [[s.decode() for s in row] for row in rows] == as_json.as_numpy("probabilities").reshape(2, 5).tolist()
    for row in rows:
        parts = [item.decode().split(":", 2) for item in row]
        scores = [float(value) for value, _, _ in parts]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(label for _, _, label in parts)
    assert binary.get_response()["model_version"] == "1"


async def test_preprocessed_tensor_matches_the_server_side_decode(make_client, chelsea: bytes) -> None:
    batch = np.stack([prepared(chelsea), prepared(jpeg_bytes())])
    async with make_client() as client:
        from_tensor = await infer(client, [tensor_input(batch)], [output("logits")])
        from_json_tensor = await infer(
            client, [tensor_input(batch[:1], binary=False)], [output("logits", binary=False)]
        )
        from_images = await infer(client, [image_input(chelsea, jpeg_bytes())], [output("logits")])
    logits = from_tensor.as_numpy("logits").reshape(2, 1000)
    np.testing.assert_allclose(logits, from_images.as_numpy("logits").reshape(2, 1000), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_json_tensor.as_numpy("logits").reshape(1, 1000), logits[:1], rtol=1e-5, atol=1e-5)


async def test_no_outputs_named_returns_every_output_and_they_agree(make_client, chelsea: bytes) -> None:
    async with make_client() as client:
        result = await infer(client, [image_input(chelsea)])  # tritonclient then asks for binary outputs
        top = await infer(client, [image_input(chelsea)], [output("logits", classes=3, binary=False)])
        v1 = (await client.post("/v1/classify?top_k=1", content=chelsea)).json()
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["logits", "probabilities"]
    logits = result.as_numpy("logits").reshape(1000)
    probs = result.as_numpy("probabilities").reshape(1000)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    best = int(np.argmax(logits))
    assert int(np.argmax(probs)) == best == v1["predictions"][0]["class_id"]
    assert probs[best] == pytest.approx(v1["predictions"][0]["score"], rel=1e-4)
    value, index, label = top.as_numpy("logits").reshape(3)[0].split(":", 2)  # JSON BYTES come back as str
    assert int(index) == best and label == v1["predictions"][0]["label"]
    assert float(value) == pytest.approx(float(logits[best]), abs=1e-5)
    assert len(value.split(".")[1]) == 6  # std::to_string's six decimals, as Triton prints values


async def test_v1_and_v2_requests_ride_the_same_batch(make_client, chelsea: bytes) -> None:
    # A batch waits up to 5 s to fill, and two samples fill it: the one v1 and the one v2 request.
    async with make_client(max_batch_size=2, max_queue_delay_ms=5000.0) as client:
        v1, _ = await asyncio.gather(
            client.post("/v1/classify", content=chelsea),
            infer(client, [tensor_input(prepared(chelsea)[None])], [output("logits")]),
        )
        stats = client.app_state.serving.registry.find("tiny").batcher.stats
    assert v1.status_code == 200 and v1.json()["batch_size"] == 2
    assert stats.batch_size_histogram == {2: 1}


async def test_request_timeout_parameter_and_gzip_body(make_client, chelsea: bytes) -> None:
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [image_input(chelsea)], outputs=[output("probabilities", classes=1)], timeout=30_000_000)
    async with make_client() as client:
        response = await client.post(INFER, content=gzip.compress(body), headers={
            "Content-Encoding": "gzip", "Inference-Header-Content-Length": str(json_size)})
    assert response.status_code == 200, response.text


def _json_request(inputs: list[dict], outputs: list[dict] | None = None, **parameters) -> bytes:
    body: dict = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def _image_json(*elements: str, shape: list[int] | None = None) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": shape or [len(elements)], "data": list(elements)}


GOOD_IMAGE = base64.b64encode(png_bytes()).decode()
NAN_TENSOR = np.full((1, 3, 224, 224), np.nan, dtype=np.float32)

HOSTILE = [
    pytest.param(b"{", {}, "not valid JSON", id="non-json"),
    pytest.param(_json_request([{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}]),
                 {}, "must have shape [N,3,224,224]", id="wrong-shape"),
    pytest.param(_json_request([{"name": "input", "datatype": "INT32", "shape": [1, 3, 224, 224],
                                 "parameters": {"binary_data_size": 602112}}]), "binary:602112",
                 "must be FP32", id="datatype-mismatch"),
    pytest.param(_json_request([{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]), {},
                 "must be BYTES", id="image-not-bytes"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE), {"name": "input", "datatype": "FP32", "shape": [1],
                                                          "data": [0.0]}]), {}, "exactly one input", id="two-inputs"),
    pytest.param(_json_request([{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}]), {},
                 "has no input 'pixels'", id="unknown-input"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], [{"name": "scores"}]), {}, "has no output 'scores'",
                 id="unknown-output"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], [{"name": "logits"}, {"name": "logits"}]), {},
                 "requested twice", id="duplicate-output"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], [{"name": "logits", "parameters": {"classification": 0}}]),
                 {}, "between 1 and 1000", id="classification-zero"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], [{"name": "logits", "parameters": {"classification": "5"}}]),
                 {}, "must be an integer", id="classification-string"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], [{"name": "logits", "parameters": {"binary_data": 1}}]),
                 {}, "must be true or false", id="binary-data-not-bool"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)], timeout=-5), {}, "positive number of microseconds",
                 id="negative-timeout"),
    pytest.param(_json_request([_image_json("@@not base64@@")]), {}, "not base64", id="bad-base64"),
    pytest.param(_json_request([_image_json("")]), {}, "element 0 is empty", id="empty-image"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE, GOOD_IMAGE, GOOD_IMAGE)]), {}, "at most 2", id="too-many"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE, GOOD_IMAGE, shape=[1, 2])]), {}, "shape [N]", id="image-shape"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE, base64.b64encode(b"GIF89a junk").decode())]), {},
                 "image 1:", id="undecodable-image"),
    pytest.param(_json_request([{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                 "parameters": {"binary_data_size": NAN_TENSOR.nbytes}}]), "binary-nan",
                 "NaN or infinite", id="nan-tensor"),
    pytest.param(_json_request([_image_json(GOOD_IMAGE)]), {"Inference-Header-Content-Length": "twelve"},
                 "Inference-Header-Content-Length", id="garbage-header-length"),
]


@pytest.mark.parametrize(("body", "headers", "message"), HOSTILE)
async def test_hostile_requests_get_a_clean_400(make_client, body: bytes, headers, message: str) -> None:
    if headers == "binary-nan":
        headers = {"Inference-Header-Content-Length": str(len(body))}
        body += NAN_TENSOR.tobytes()
    elif isinstance(headers, str):  # "binary:N": N zero bytes follow the JSON header
        size = int(headers.split(":")[1])
        headers = {"Inference-Header-Content-Length": str(len(body))}
        body += b"\x00" * size
    async with make_client(max_images_per_request=2) as client:
        response = await client.post(INFER, content=body, headers=headers)
        still_serving = await client.get("/v2/health/ready")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error
    assert still_serving.status_code == 200


async def test_body_over_the_size_cap_is_413(make_client) -> None:
    async with make_client(max_body_bytes=4096) as client:
        response = await client.post(INFER, content=_json_request([_image_json("A" * 8000)]))
    assert response.status_code == 413
    assert isinstance(response.json()["error"], str)


async def test_draining_server_refuses_inference_with_503(make_client, chelsea: bytes) -> None:
    async with make_client() as client:
        client.app_state.lifecycle.draining = client.app_state.lifecycle.refusing = True
        response = await client.post(INFER, content=_json_request([_image_json(GOOD_IMAGE)]))
        ready = await client.get("/v2/health/ready")
    assert response.status_code == 503 and ready.status_code == 503


async def test_every_v2_sample_is_an_event(make_client, tmp_path: Path, chelsea: bytes) -> None:
    events = tmp_path / "v2-events.sqlite3"
    async with make_client(events=True, events_path=events, events_flush_interval_ms=20) as client:
        ok = await client.post(INFER, content=_json_request([_image_json(GOOD_IMAGE, GOOD_IMAGE)]),
                               headers={"X-Request-ID": "v2-images"})
        body, size = triton.InferenceServerClient.generate_request_body(
            [tensor_input(np.stack([prepared(chelsea)] * 3))])
        tensors = await client.post(INFER, content=body, headers={"X-Request-ID": "v2-tensors",
                                                                   "Inference-Header-Content-Length": str(size)})
        bad = await client.post(INFER, content=_json_request([_image_json(GOOD_IMAGE, "AAAA")]),
                                headers={"X-Request-ID": "v2-bad"})
    assert (ok.status_code, tensors.status_code, bad.status_code) == (200, 200, 400)
    with sqlite3.connect(events) as db:
        rows = db.execute("SELECT request_id, route, status, image_key IS NOT NULL, class_key IS NOT NULL, batch_size "
                          "FROM api_event_fact ORDER BY request_id").fetchall()
    by_request: dict[str, list] = {}
    for request_id, *rest in rows:
        by_request.setdefault(request_id, []).append(tuple(rest))
    assert by_request["v2-images"] == [("v2", 200, 1, 1, 2)] * 2
    assert len(by_request["v2-tensors"]) == 3
    assert all(r[:4] == ("v2", 200, 0, 1) for r in by_request["v2-tensors"])
    assert by_request["v2-bad"] == [("v2", 400, 1, 0, None)]  # only the image that failed to decode


async def test_the_simulated_accelerator_is_served_over_v2_too(make_client) -> None:
    async with make_client(simulate_model="1+0") as client:
        meta = (await client.get("/v2/models/simulated")).json()
        result = await infer(client, [image_input(png_bytes())], [output("logits", classes=1)],
                             path="/v2/models/simulated/infer")
    assert meta["platform"] == "batchserve_simulated"
    assert result.as_numpy("logits").shape == (1, 1)
