"""NVIDIA's own Triton HTTP client against a real server process with the real EfficientNet-Lite0:
what it reads (health, metadata, config) and what it sends (JSON and binary tensors, BYTES images,
classification outputs) must work unmodified."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from batchserve.loadtest.server_process import ServerProcess
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def client(real_server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{real_server.port}", network_timeout=60.0)


@pytest.fixture(scope="module")
def cat_ids(manifest) -> set[int]:
    return set(manifest["chelsea.jpg"]["top1_any_of"])


def top_class(classification: bytes | str) -> tuple[float, int, str]:
    text = classification.decode() if isinstance(classification, bytes) else classification
    value, index, label = text.split(":", 2)
    return float(value), int(index), label


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "batchserve"
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(server["extensions"])
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]} in meta["inputs"]
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] >= 1 and config["output"][0]["dims"] == [1000]
    index = client.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_fp32_tensor(client: triton.InferenceServerClient, chelsea: bytes, cat_ids: set[int],
                                  binary: bool) -> None:
    batch = prepare_image(chelsea, PreprocessConfig()).tensor[None]
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=5),
               triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id="fp32-" + str(binary))
    top5 = result.as_numpy("probabilities").reshape(5)
    score, index, label = top_class(top5[0])
    assert index in cat_ids and 0 < score <= 1 and label
    logits = result.as_numpy("logits")
    assert logits.shape == (1, 1000) and int(np.argmax(logits)) == index
    assert result.get_response()["id"] == "fp32-" + str(binary)


def test_encoded_jpeg_as_bytes_binary(client: triton.InferenceServerClient, chelsea: bytes, images_dir,
                                      cat_ids: set[int]) -> None:
    coffee = (images_dir / "coffee.jpg").read_bytes()
    images = triton.InferInput("image", [2], "BYTES")
    images.set_data_from_numpy(np.array([chelsea, coffee], dtype=object), binary_data=True)
    result = client.infer(MODEL, [images], outputs=[triton.InferRequestedOutput("logits", class_count=5)])
    rows = result.as_numpy("logits").reshape(2, 5)
    assert top_class(rows[0][0])[1] in cat_ids
    assert top_class(rows[1][0])[1] == 967  # espresso
    values = [top_class(item)[0] for item in rows[0]]
    assert values == sorted(values, reverse=True)


def test_encoded_jpeg_as_base64_json(client: triton.InferenceServerClient, chelsea: bytes, cat_ids: set[int]) -> None:
    images = triton.InferInput("image", [1], "BYTES")
    images.set_data_from_numpy(np.array([base64.b64encode(chelsea)], dtype=object), binary_data=False)
    result = client.infer(MODEL, [images], outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=False, class_count=5)])
    assert top_class(result.as_numpy("probabilities").reshape(5)[0])[1] in cat_ids


def test_no_outputs_named_returns_all_of_them(client: triton.InferenceServerClient, chelsea: bytes,
                                              cat_ids: set[int]) -> None:
    images = triton.InferInput("image", [1], "BYTES")
    images.set_data_from_numpy(np.array([chelsea], dtype=object))
    result = client.infer(MODEL, [images])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 1000) and abs(float(probabilities.sum()) - 1.0) < 1e-3
    assert int(np.argmax(result.as_numpy("logits"))) in cat_ids


def test_client_sees_server_errors_as_exceptions(client: triton.InferenceServerClient) -> None:
    wrong = triton.InferInput("input", [1, 3, 100, 100], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[N,3,224,224\]"):
        client.infer(MODEL, [wrong])


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"this is not json", {}),
        (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": 100}}]}).encode() + b"\x05\x00\x00\x00ab",
         "header"),
        (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": -7}}]}).encode(), "header"),
    ],
    ids=["not-json", "sizes-do-not-add-up", "negative-size"],
)
def test_malformed_requests_get_a_clean_400(real_server: ServerProcess, body: bytes, headers) -> None:
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
    response = httpx.post(f"{real_server.url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and error
    assert httpx.get(f"{real_server.url}/v2/health/ready", timeout=10).status_code == 200
