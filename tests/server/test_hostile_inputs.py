"""Requests built to hurt the parsers: huge or deeply nested V2 shapes and data, numbers written with
Unicode digits or as nan/inf, and formats the server does not decode. Each gets a 4xx that names
the problem, the server keeps answering, and every classification request leaves one event."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from tests.server.conftest import png_bytes
from tests.server.twin_apps import Request, chunk, events, twins

INFER = "/v2/models/tiny/infer"
SUPERSCRIPT_ONE = "\u00b9"  # isdigit() is true, int() refuses it; one byte (0xb9) in a latin-1 header


def infer_body(shape: list[int], data: object = None, parameters: dict | None = None) -> bytes:
    tensor: dict = {"name": "image", "datatype": "BYTES", "shape": shape}
    if data is not None:
        tensor["data"] = data
    if parameters is not None:
        tensor["parameters"] = parameters
    return json.dumps({"inputs": [tensor]}).encode()


def header(name: str, value: str) -> list[tuple[bytes, bytes]]:
    """A raw header as a client can send it, in any latin-1 byte."""
    return [(name.encode(), value.encode("latin-1"))]


def tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "TIFF")
    return buffer.getvalue()


AVIF_HEADER = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64

V2_HOSTILE = [
    pytest.param(infer_body([2] * 50_000, ["a"]), {}, "shape", id="fifty-thousand-dims-json"),
    pytest.param(infer_body([2] * 30_000, parameters={"binary_data_size": 5}) + b"\x01\x00\x00\x00a",
                 "binary", "shape", id="thirty-thousand-dims-binary"),
    pytest.param(infer_body([1] * 9, ["a"]), {}, "length <= 8", id="nine-dims"),
    pytest.param(infer_body([2**31 - 1] * 8, ["a"]), {}, "more elements than", id="count-beyond-the-body"),
    pytest.param(infer_body([-1], ["a"]), {}, ">= 0", id="negative-dim"),
    pytest.param(infer_body([2**31], ["a"]), {}, "<= 2147483647", id="dim-beyond-int32"),
    pytest.param(infer_body([1], None).replace(b'"shape": [1]', b'"shape": [1], "data": ' + b"[" * 5000 + b'"a"'
                                               + b"]" * 5000), {}, "deep", id="bytes-data-nested-5000-deep"),
    pytest.param(infer_body([1], [["a"]]), {}, "deeper than", id="bytes-data-deeper-than-shape"),
    pytest.param(infer_body([1], ["a"], parameters={"x": [[[[1]]]]}), {}, "parameters", id="nested-parameter"),
    pytest.param(json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}],
                             "parameters": {"timeout": 10**400}}).encode(), {}, "'timeout'",
                 id="timeout-beyond-float"),
    pytest.param(infer_body([1], ["a"]), header("Inference-Header-Content-Length", SUPERSCRIPT_ONE),
                 "Inference-Header-Content-Length", id="superscript-header-length"),
    pytest.param(infer_body([1], ["a"]), header("Inference-Header-Content-Length", "9" * 5000),
                 "Inference-Header-Content-Length", id="five-thousand-digit-header-length"),
]


@pytest.mark.parametrize(("body", "headers", "message"), V2_HOSTILE)
async def test_hostile_v2_request_is_a_named_400(make_client, body: bytes, headers, message: str) -> None:
    if headers == "binary":
        headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
    async with make_client() as client:
        response = await client.post(INFER, content=body, headers=headers)
        still_serving = await client.get("/v2/health/ready")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error
    assert still_serving.status_code == 200


@pytest.mark.parametrize("suffix", ["", "/ready", "/config", "/infer"])
@pytest.mark.parametrize("version", [SUPERSCRIPT_ONE, "\u0661", "0", "2147483648", "1" * 5000, "+1", "1_0"])
async def test_a_model_version_must_be_ascii_digits_in_range(make_client, version: str, suffix: str) -> None:
    path = f"/v2/models/tiny/versions/{version}{suffix}"
    async with make_client() as client:
        response = await (client.post(path, content=infer_body([1], ["a"])) if suffix == "/infer"
                          else client.get(path))
    assert response.status_code == 400, response.text
    assert "model version must be a positive integer" in response.json()["error"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", SUPERSCRIPT_ONE, "0", "-5", "1_000", " "])
async def test_timeouts_must_be_finite_positive_ascii_numbers(make_client, value: str) -> None:
    raw_png = {"Content-Type": "image/png"}
    async with make_client() as client:
        v1_header = await client.post("/v1/classify", content=png_bytes(),
                                      headers=[*raw_png.items(), *header("X-Request-Timeout-Ms", value)])
        v1_query = await client.post("/v1/classify", params={"timeout_ms": value}, content=png_bytes(),
                                     headers=raw_png)
        v2_header = await client.post(INFER, content=infer_body([1], ["AAAA"]),
                                      headers=header("X-Request-Timeout-Ms", value))
    for response in (v1_header, v1_query):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_parameter"
    assert v2_header.status_code == 422, v2_header.text
    assert "X-Request-Timeout-Ms" in v2_header.json()["error"]


async def test_a_well_formed_timeout_is_still_accepted(make_client) -> None:
    async with make_client() as client:
        for value in ("250", "0.5e3", "1500.25"):
            response = await client.post("/v1/classify", params={"timeout_ms": value}, content=png_bytes(),
                                         headers={"Content-Type": "image/png", "X-Request-Timeout-Ms": value})
            assert response.status_code == 200, response.text


async def test_every_refused_classification_leaves_one_event(make_client, tmp_path: Path) -> None:
    """Parameters are checked inside the route, so a refusal by value is recorded like any other."""
    events = tmp_path / "refused.sqlite3"
    queries = {"top-k-zero": "top_k=0", "top-k-superscript": f"top_k={SUPERSCRIPT_ONE}",
               "version-text": "version=x", "timeout-nan": "timeout_ms=nan", "top-k-too-large": "top_k=1001"}
    async with make_client(events=True, events_path=events, events_flush_interval_ms=20) as client:
        for request_id, query in queries.items():
            response = await client.post(f"/v1/classify?{query}", content=png_bytes(),
                                         headers={"Content-Type": "image/png", "X-Request-ID": request_id})
            assert response.status_code == 422, response.text
        v2 = await client.post(f"/v2/models/tiny/versions/{SUPERSCRIPT_ONE}/infer", content=infer_body([1], ["a"]),
                               headers={"X-Request-ID": "v2-version"})
        assert v2.status_code == 400
    with sqlite3.connect(events) as db:
        rows = db.execute("SELECT request_id, route, status, error_code FROM api_event_fact").fetchall()
    by_id = {row[0]: row[1:] for row in rows}
    assert len(rows) == len(by_id) == len(queries) + 1
    for request_id in queries:
        assert by_id[request_id] == ("v1", 422, "invalid_parameter")
    assert by_id["v2-version"] == ("v2", 400, "invalid_request")


ACCEPTED = "image/jpeg, image/png, image/webp, image/gif, image/bmp"


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        pytest.param(tiff_bytes(), "image/tiff", "image/tiff", id="tiff-declared"),
        pytest.param(tiff_bytes(), None, "TIFF", id="tiff-sniffed"),
        pytest.param(tiff_bytes(), "image/png", "TIFF", id="tiff-labelled-png"),
        pytest.param(AVIF_HEADER, "image/avif", "image/avif", id="avif-declared"),
        pytest.param(AVIF_HEADER, "application/octet-stream", "AVIF", id="avif-sniffed"),
    ],
)
async def test_formats_outside_the_accepted_list_are_415(
    make_client, body: bytes, content_type: str | None, named: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with make_client() as client:
        v1 = await client.post("/v1/classify", content=body, headers=headers)
        v2 = await client.post(INFER, content=infer_body([1], [base64.b64encode(body).decode()]))
    assert v1.status_code == 415, v1.text
    error = v1.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert named in error["message"] and ACCEPTED in error["message"]
    assert v2.status_code == 415, v2.text
    assert ACCEPTED in v2.json()["error"]


def sixteen_bit_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("I;16", (width, height), bytes(width * height * 2)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_a_small_sixteen_bit_png_declaring_many_pixels_is_classified_or_refused_by_the_cap(
    make_client,
) -> None:
    within = sixteen_bit_png(5000, 4000)  # 20 Mpx of 16-bit samples in a few kilobytes
    beyond = sixteen_bit_png(7000, 6000)  # 42 Mpx: over the 40 Mpx cap, refused from the header
    assert len(within) < 100_000 and len(beyond) < 100_000
    async with make_client() as client:
        ok = await client.post("/v1/classify", content=within, headers={"Content-Type": "image/png"})
        too_large = await client.post("/v1/classify", content=beyond, headers={"Content-Type": "image/png"})
    assert ok.status_code == 200, ok.text
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"]["code"] == "payload_too_large"


async def test_a_client_that_hangs_up_in_the_middle_of_a_multipart_form_is_a_400(
    built_models: Path, tmp_path: Path,
) -> None:
    """As with a raw body: a client that leaves is no server error (no 500 in logs, metrics or events)."""
    form = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png_bytes())
    left = Request("multipart-client-left", b"", [(b"content-type", b"multipart/form-data; boundary=XyZ")], None,
                   [chunk(form[: len(form) // 2], more=True)])
    async with twins(tmp_path, model_repo=built_models, models=("tiny",)) as apps:
        answer, _ = await apps.both(left)
    assert answer.status == 400, answer.body
    assert b"disconnected before the request body was complete" in answer.body
    assert [(row[0], row[4], row[5]) for row in events(apps.folders[0])] == [
        ("multipart-client-left", 400, "invalid_request")]
