"""Models brought with `batchserve models add`, served by a real server process: an NCHW model with a
dynamic batch, an NHWC, BGR, 160-pixel model with a fixed batch of 1, and a graph ending in Softmax
answer the expected classes over /v1/classify and V2 infer (encoded images and tensors in the
model's own layout), and V2 metadata describes them as they are."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from batchserve.cli import main
from batchserve.loadtest.server_process import ServerProcess
from tests.model_repo.byo_graphs import CHELSEA, COFFEE, ROCKET, channel_mean_classifier, labels_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("byo")
    repo = str(root / "repo")
    rgb = str(labels_file(root / "rgb.txt"))
    bgr = str(labels_file(root / "bgr.txt", ("blue", "green", "red")))  # the model's channel order
    nchw = str(channel_mean_classifier(root / "nchw.onnx"))
    nhwc = str(channel_mean_classifier(root / "nhwc.onnx", shape=(1, 160, 160, 3), layout="NHWC"))
    softmax = str(channel_mean_classifier(root / "softmax.onnx", softmax=True))
    for args in (
        ["colours", "--onnx", nchw, "--labels", rgb],
        ["caffe", "--onnx", nhwc, "--labels", bgr, "--channel-order", "BGR", "--mean", "0", "--std", "1"],
        ["probs", "--onnx", softmax, "--labels", rgb],
    ):
        assert main(["models", "add", *args, "--model-repo", repo]) == 0
    with ServerProcess("--model-repo", repo, "--models", "colours,caffe,probs", "--no-events", cwd=root) as running:
        yield running


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def classify(client: httpx.Client, model: str, image: Path) -> dict:
    response = client.post(f"/v1/classify?model={model}&top_k=3", content=image.read_bytes(),
                           headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", ["colours", "caffe", "probs"])
def test_v1_classify_answers_the_photos_colours(client: httpx.Client, model: str) -> None:
    for image, colour in ((CHELSEA, "red"), (ROCKET, "blue"), (COFFEE, "red")):
        answer = classify(client, model, image)
        assert answer["model"] == model and answer["predictions"][0]["label"] == colour, answer
        assert sum(p["score"] for p in answer["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_a_fixed_batch_of_one_serves_many_images(client: httpx.Client) -> None:
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in (CHELSEA, ROCKET, COFFEE)]
    response = client.post("/v1/classify?model=caffe&top_k=1", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["predictions"][0]["label"] for r in results] == ["red", "blue", "red"]
    assert {r["batch_size"] for r in results} == {1}


def test_v2_metadata_and_config_describe_the_nhwc_model(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/caffe").json()
    assert metadata["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": [-1, 160, 160, 3]}
    assert [o["name"] for o in metadata["outputs"]] == ["scores", "probabilities"]
    config = client.get("/v2/models/caffe/config").json()
    assert config["max_batch_size"] == 1
    assert config["input"][0]["format"] == "FORMAT_NHWC" and config["input"][0]["dims"] == [160, 160, 3]
    assert client.get("/v2/models/colours/config").json()["input"][0]["format"] == "FORMAT_NCHW"


def infer(client: httpx.Client, model: str, inputs: list[dict], outputs: list[dict] | None = None) -> httpx.Response:
    body: dict = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    return client.post(f"/v2/models/{model}/infer", json=body)


@pytest.mark.parametrize("model", ["colours", "caffe"])
def test_v2_infer_with_encoded_images(client: httpx.Client, model: str) -> None:
    image = {"name": "image", "datatype": "BYTES", "shape": [1],
             "data": [base64.b64encode(ROCKET.read_bytes()).decode()]}
    response = infer(client, model, [image], [{"name": "probabilities", "parameters": {"classification": 1}}])
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"][0].endswith(":blue")


def test_v2_infer_takes_tensors_in_the_models_own_layout(client: httpx.Client) -> None:
    tensor = np.zeros((1, 160, 160, 3), np.float32)
    tensor[..., 2] = 5.0  # the last channel of an NHWC tensor: red, for a BGR model
    inputs = [{"name": "pixels", "datatype": "FP32", "shape": [1, 160, 160, 3], "data": tensor.ravel().tolist()}]
    response = infer(client, "caffe", inputs, [{"name": "scores", "parameters": {"classification": 1}}])
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["5.000000:2:red"]
    channels_first = [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 160, 160],
                       "data": tensor.transpose(0, 3, 1, 2).ravel().tolist()}]
    refused = infer(client, "caffe", channels_first)
    assert refused.status_code == 400 and "[N,160,160,3]" in refused.json()["error"]


def test_v2_outputs_of_a_softmax_graph_are_its_probabilities(client: httpx.Client) -> None:
    image = {"name": "image", "datatype": "BYTES", "shape": [1],
             "data": [base64.b64encode(CHELSEA.read_bytes()).decode()]}
    response = infer(client, "probs", [image])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert sum(outputs["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert outputs["scores"] == pytest.approx(outputs["probabilities"], abs=1e-6)
    assert outputs["probabilities"] == pytest.approx(
        [p["score"] for p in sorted(classify(client, "probs", CHELSEA)["predictions"], key=lambda p: p["class_id"])],
        abs=1e-5,
    )
