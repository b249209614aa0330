"""POST /v1/classify through the real app: answers, and every kind of bad input."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from tests.server.conftest import jpeg_bytes, png_bytes


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge size: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


async def test_raw_jpeg_gets_ranked_predictions(make_client, chelsea: bytes) -> None:
    async with make_client() as client:
        response = await client.post("/v1/classify?top_k=3", content=chelsea, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["model_version"] == 1
    assert len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert body["batch_size"] >= 1
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] >= 0
    assert response.headers["x-request-id"] == body["request_id"]


async def test_format_is_sniffed_without_content_type_and_request_id_is_echoed(make_client) -> None:
    async with make_client() as client:
        response = await client.post("/v1/classify", content=png_bytes(), headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200, response.text
    assert response.json()["request_id"] == "abc-123"
    assert response.headers["x-request-id"] == "abc-123"


async def test_multipart_answers_in_upload_order_and_isolates_bad_files(make_client, chelsea: bytes) -> None:
    files = [
        ("image", ("cat.jpg", chelsea, "image/jpeg")),
        ("image", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")),
        ("image", ("blue.png", png_bytes(), "image/png")),
    ]
    async with make_client() as client:
        response = await client.post("/v1/classify", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["cat.jpg", "broken.jpg", "blue.png"]
    assert "predictions" in results[0] and "predictions" in results[2]
    assert results[1]["error"]["code"] == "invalid_image"
    assert results[0]["batch_size"] >= 2  # both good files rode one batch


async def test_multipart_with_only_bad_files_takes_the_first_errors_status(make_client) -> None:
    files = [("image", ("a.txt", b"hello", "text/plain")), ("image", ("b.jpg", b"junk", "image/jpeg"))]
    async with make_client() as client:
        response = await client.post("/v1/classify", files=files)
    assert response.status_code == 415
    assert [r["error"]["code"] for r in response.json()["results"]] == ["unsupported_media_type", "invalid_image"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "image/jpeg", 400, "invalid_request"),
        (b"\x00" * 1000, "image/jpeg", 400, "invalid_image"),
        (b"GIF89a" + b"\x00" * 20, "image/gif", 400, "invalid_image"),
        (jpeg_bytes()[:200], "image/jpeg", 400, "invalid_image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, "unsupported_media_type"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b'{"image": "x"}', "application/json", 415, "unsupported_media_type"),
        (b"<html><script>alert(1)</script></html>", None, 400, "invalid_image"),
        (png_header_claiming(100_000, 100_000), "image/png", 413, "payload_too_large"),
    ],
)
async def test_bad_bodies_get_a_named_4xx(
    make_client, body: bytes, content_type: str | None, status: int, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with make_client() as client:
        response = await client.post("/v1/classify", content=body, headers=headers)
    assert_error(response, status, code)


async def test_malformed_multipart_is_invalid_request(make_client) -> None:
    async with make_client() as client:
        no_boundary = await client.post(
            "/v1/classify", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
        )
        torn = await client.post(
            "/v1/classify",
            content=b'--XYZ\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc',
            headers={"Content-Type": "multipart/form-data; boundary=XYZ"},
        )
        no_image_field = await client.post("/v1/classify", files=[("photo", ("a.jpg", jpeg_bytes(), "image/jpeg"))])
        text_field = await client.post("/v1/classify", data={"image": "not a file"},
                                       files=[("other", ("a.jpg", b"x", "image/jpeg"))])
    for response in (no_boundary, torn, no_image_field, text_field):
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("invalid_request", "invalid_parameter")
    assert "photo" in no_image_field.json()["error"]["message"]


async def test_oversized_body_is_413_without_reading_it_all(make_client) -> None:
    async with make_client(max_body_bytes=10_000) as client:
        response = await client.post("/v1/classify", content=b"\xff\xd8" + b"\x00" * 20_000,
                                     headers={"Content-Type": "image/jpeg"})
    assert_error(response, 413, "payload_too_large")


async def test_too_many_files_is_rejected(make_client) -> None:
    files = [("image", (f"{i}.png", png_bytes(), "image/png")) for i in range(4)]
    async with make_client(max_images_per_request=3) as client:
        response = await client.post("/v1/classify", files=files)
    assert response.status_code == 400
    assert "too many files" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "query",
    ["top_k=0", "top_k=abc", "top_k=1001", "timeout_ms=-5", "timeout_ms=soon", "version=0", "version=x"],
)
async def test_bad_parameters_are_422(make_client, query: str) -> None:
    async with make_client() as client:
        response = await client.post(
            f"/v1/classify?{query}", content=png_bytes(), headers={"Content-Type": "image/png"}
        )
    assert_error(response, 422, "invalid_parameter")


async def test_bad_timeout_header_is_422(make_client) -> None:
    async with make_client() as client:
        response = await client.post("/v1/classify", content=png_bytes(),
                                     headers={"Content-Type": "image/png", "X-Request-Timeout-Ms": "later"})
    assert_error(response, 422, "invalid_parameter")


async def test_unknown_model_or_version_is_404(make_client) -> None:
    async with make_client() as client:
        missing = await client.post("/v1/classify?model=resnet9000", content=png_bytes())
        bad_version = await client.post("/v1/classify?model=tiny&version=7", content=png_bytes())
    assert "tiny" in assert_error(missing, 404, "model_not_found")["error"]["message"]
    assert_error(bad_version, 404, "model_not_found")


async def test_unknown_routes_and_methods_answer_json(make_client) -> None:
    async with make_client() as client:
        not_found = await client.get("/v1/nothing-here")
        wrong_method = await client.get("/v1/classify")
    assert_error(not_found, 404, "not_found")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert not_found.headers.get("x-request-id")


async def test_models_listing_and_health(make_client) -> None:
    async with make_client() as client:
        models = (await client.get("/v1/models")).json()
        one = await client.get("/v1/models/tiny")
        missing = await client.get("/v1/models/none")
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert [m["name"] for m in models["models"]] == ["tiny"]
    assert models["models"][0]["execution_providers"] == ["CPUExecutionProvider"]
    assert models["models"][0]["batching"]["max_batch_size"] >= 1
    assert one.json()["versions"][0]["version"] == 1
    assert_error(missing, 404, "model_not_found")
    assert health.status_code == 200 and ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_concurrent_requests_form_batches_and_each_gets_its_own_answer(make_client) -> None:
    """64 clients at once on a slow simulated device: batches grow past 1, answers don't mix."""
    colors = [(i * 4 % 256, 255 - i * 3 % 256, (i * 37) % 256) for i in range(64)]
    images = [png_bytes(c, (32, 32)) for c in colors]
    async with make_client(models=(), simulate_model="30+1", max_queue_size=256) as client:
        alone = [(await client.post("/v1/classify?top_k=1", content=img)).json() for img in images[:8]]
        responses = await asyncio.gather(*(client.post("/v1/classify?top_k=1", content=img) for img in images))
        histogram = client.app_state.serving.registry.find("simulated").batcher.stats.batch_size_histogram
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert max(b["batch_size"] for b in bodies) > 1
    assert max(histogram) > 1
    for expected, got in zip(alone, bodies[:8], strict=True):
        assert got["predictions"][0]["class_id"] == expected["predictions"][0]["class_id"]
    assert len({b["request_id"] for b in bodies}) == 64


async def test_queue_overflow_gives_503_with_retry_after_and_never_500(make_client) -> None:
    async with make_client(models=(), simulate_model="200+0", max_queue_size=4, max_batch_size=2,
                           max_inflight_batches=1) as client:
        responses = await asyncio.gather(*(client.post("/v1/classify", content=png_bytes()) for _ in range(24)))
    statuses = [r.status_code for r in responses]
    assert 500 not in statuses
    assert set(statuses) <= {200, 503}
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, statuses
    assert all(r.json()["error"]["code"] == "queue_full" for r in rejected)
    assert all(int(r.headers["retry-after"]) >= 1 for r in rejected)


async def test_deadline_exceeded_is_504_and_the_request_is_never_computed(make_client) -> None:
    async with make_client(models=(), simulate_model="300+0", max_inflight_batches=1, max_batch_size=1) as client:
        batcher = client.app_state.serving.registry.find("simulated").batcher
        slow = asyncio.create_task(client.post("/v1/classify", content=png_bytes()))
        async with asyncio.timeout(10):
            while batcher.stats.inflight_batches == 0:  # the device is busy from here on
                await asyncio.sleep(0.005)
        hurried = await client.post("/v1/classify?timeout_ms=50", content=png_bytes())
        assert (await slow).status_code == 200
        computed = batcher.stats.samples_total
    assert_error(hurried, 504, "deadline_exceeded")
    assert computed == 1


async def test_openapi_schema_is_generated_and_documents_classify(make_client) -> None:
    async with make_client() as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    paths = response.json()["paths"]
    assert "post" in paths["/v1/classify"]
    assert "/v1/models" in paths and "/healthz" in paths
