"""The real EfficientNet-Lite0 behind a real server process, over real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from batchserve.loadtest.server_process import ServerProcess

pytestmark = pytest.mark.slow


def top_ids(body: dict) -> list[int]:
    return [p["class_id"] for p in body["predictions"]]


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg", "rocket.jpg"])
def test_photos_get_their_expected_classes(real_server: ServerProcess, images_dir, manifest, name: str) -> None:
    expected = manifest[name]
    response = httpx.post(f"{real_server.url}/v1/classify", content=(images_dir / name).read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 200, response.text
    ids = top_ids(response.json())
    if "top1_any_of" in expected:
        assert ids[0] in expected["top1_any_of"], ids
    if "top2_any_of" in expected:
        assert set(ids[:2]) & set(expected["top2_any_of"]), ids


def test_multipart_batch_of_three_photos(real_server: ServerProcess, images_dir, manifest) -> None:
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    files = [("image", (n, (images_dir / n).read_bytes(), "image/jpeg")) for n in names]
    response = httpx.post(f"{real_server.url}/v1/classify?top_k=2", files=files, timeout=30)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == names
    assert results[0]["predictions"][0]["class_id"] in manifest["chelsea.jpg"]["top1_any_of"]
    assert results[1]["predictions"][0]["class_id"] in manifest["coffee.jpg"]["top1_any_of"]
    assert all(r["batch_size"] >= 3 for r in results)


def test_concurrent_clients_each_get_their_own_photo_answered(real_server: ServerProcess, images_dir, manifest) -> None:
    names = ["chelsea.jpg", "coffee.jpg"] * 16
    photos = {n: (images_dir / n).read_bytes() for n in set(names)}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=real_server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/classify", content=photos[n]) for n in names))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    for name, response in zip(names, responses, strict=True):
        assert top_ids(response.json())[0] in manifest[name]["top1_any_of"]
    assert max(r.json()["batch_size"] for r in responses) > 1
