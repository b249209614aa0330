"""A web tier (`--backend remote`) in front of real upstreams answers as direct mode does: the same
predictions, per-file answers and errors, the deadline passed on, one event per image here, and
/v1/models saying what the upstreams serve."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchserve.server.remote.errors import DEADLINE
from tests.remote.conftest import UPSTREAM_KEY, Cluster

pytestmark = pytest.mark.slow
REAL = "efficientnet_lite0"


def classify(url: str, body: bytes, content_type: str | None = "image/jpeg", **params: Any) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return httpx.post(f"{url}/v1/classify", params={"model": REAL, **params}, content=body, headers=headers,
                      timeout=60)


def same_predictions(web: list[dict[str, Any]], direct: list[dict[str, Any]]) -> None:
    assert [(p["class_id"], p["label"]) for p in web] == [(p["class_id"], p["label"]) for p in direct]
    assert [p["score"] for p in web] == pytest.approx([p["score"] for p in direct], rel=1e-5, abs=1e-7)


def test_photos_get_the_answers_direct_mode_gives(cluster: Cluster, images_dir: Path, manifest: dict) -> None:
    for name, expected in manifest.items():
        photo = (images_dir / name).read_bytes()
        web, direct = classify(cluster.web.url, photo), classify(cluster.real.url, photo)
        assert web.status_code == direct.status_code == 200, web.text
        answer, reference = web.json(), direct.json()
        assert set(answer) == set(reference)
        assert (answer["model"], answer["model_version"]) == (reference["model"], reference["model_version"])
        same_predictions(answer["predictions"], reference["predictions"])
        ranked = [p["class_id"] for p in answer["predictions"]]
        if "top1_any_of" in expected:
            assert ranked[0] in expected["top1_any_of"], (name, ranked)
        else:
            assert set(ranked[:2]) & set(expected["top2_any_of"]), (name, ranked)
        assert answer["timing_ms"]["inference"] > 0 and answer["batch_size"] >= 1


def _files(images_dir: Path, chelsea: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", ("cat.jpg", chelsea, "image/jpeg")),
            ("image", ("notes.txt", b"not an image", "text/plain")),
            ("image", ("cut.jpg", chelsea[:2000], "image/jpeg")),
            ("image", ("coffee.jpg", (images_dir / "coffee.jpg").read_bytes(), "image/jpeg"))]


def test_multipart_answers_each_file_as_direct_mode(cluster: Cluster, images_dir: Path, chelsea: bytes) -> None:
    files = _files(images_dir, chelsea)
    web = httpx.post(f"{cluster.web.url}/v1/classify", params={"model": REAL, "top_k": 3}, files=files, timeout=60)
    direct = httpx.post(f"{cluster.real.url}/v1/classify", params={"model": REAL, "top_k": 3}, files=files,
                        timeout=60)
    assert web.status_code == direct.status_code == 200
    ours, theirs = web.json()["results"], direct.json()["results"]
    assert [e["filename"] for e in ours] == ["cat.jpg", "notes.txt", "cut.jpg", "coffee.jpg"]
    for entry, reference in zip(ours, theirs, strict=True):
        assert set(entry) == set(reference)
        if "error" in reference:
            assert entry["error"] == reference["error"]
        else:
            same_predictions(entry["predictions"], reference["predictions"])
            assert len(entry["predictions"]) == 3
    assert [e.get("error", {}).get("code") for e in ours] == [None, "unsupported_media_type", "invalid_image", None]

    # Every file failed: the first error's status, with each file's error, as direct mode answers.
    failing = files[1:3]
    web = httpx.post(f"{cluster.web.url}/v1/classify", params={"model": REAL}, files=failing, timeout=60)
    direct = httpx.post(f"{cluster.real.url}/v1/classify", params={"model": REAL}, files=failing, timeout=60)
    assert web.status_code == direct.status_code == 415
    assert [e["error"] for e in web.json()["results"]] == [e["error"] for e in direct.json()["results"]]


@pytest.mark.parametrize(("params", "body", "content_type", "status", "code", "same_message"), [
    ({"model": "no_such_model"}, b"x", "image/jpeg", 404, "model_not_found", False),  # lists other models
    ({"version": "9"}, b"x", "image/jpeg", 404, "model_not_found", False),
    ({"top_k": "0"}, b"x", "image/jpeg", 422, "invalid_parameter", True),
    ({"top_k": "1001"}, b"x", "image/jpeg", 422, "invalid_parameter", True),
    ({"timeout_ms": "-5"}, b"x", "image/jpeg", 422, "invalid_parameter", True),
    ({}, b"", "image/jpeg", 400, "invalid_request", True),
    ({}, b"hello", "text/plain", 415, "unsupported_media_type", True),
    ({}, b"GIF89a not really", "image/gif", 400, "invalid_image", True),
    ({}, "chelsea-cut", "image/jpeg", 400, "invalid_image", True),  # refused by the upstream's decoder
])
def test_client_errors_are_direct_modes(cluster: Cluster, chelsea: bytes, params: dict[str, str], body: Any,
                                        content_type: str, status: int, code: str, same_message: bool) -> None:
    data = chelsea[:3000] if body == "chelsea-cut" else body
    web = classify(cluster.web.url, data, content_type, **params)
    direct = classify(cluster.real.url, data, content_type, **params)
    assert web.status_code == direct.status_code == status, web.text
    assert web.json()["error"]["code"] == direct.json()["error"]["code"] == code
    if same_message:
        assert web.json()["error"]["message"] == direct.json()["error"]["message"]


def test_the_deadline_travels_to_the_upstream(cluster: Cluster, chelsea: bytes) -> None:
    """The upstream drops the work when the request's deadline passes: its own 504 comes back (the
    real model has no default deadline, so only the passed-on X-Request-Timeout-Ms can cause it)."""
    blocker = [("image", (f"{i}.jpg", chelsea, "image/jpeg")) for i in range(24)]

    async def run() -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(timeout=60) as client:
            busy = asyncio.create_task(client.post(f"{cluster.real.url}/v1/classify", params={"model": REAL},
                                                   files=blocker))

            async def blocker_admitted() -> bool:  # its 24 images are ahead of ours in the upstream
                text = (await client.get(f"{cluster.real.url}/metrics")).text
                return "batchserve_admission_inflight_requests 1.0" in text or busy.done()

            while not await blocker_admitted():
                await asyncio.sleep(0.01)
            assert not busy.done(), "the blocker finished before the late request could follow it"
            started = time.monotonic()
            # 20 ms: less than the 24 images ahead of it take on any CPU, more than forwarding needs.
            late = await client.post(f"{cluster.web.url}/v1/classify", params={"model": REAL, "timeout_ms": 20},
                                     content=chelsea, headers={"Content-Type": "image/jpeg"})
            elapsed = time.monotonic() - started
            assert (await busy).status_code == 200
            return late, elapsed

    late, elapsed = asyncio.run(run())
    assert late.status_code == 504, late.text
    error = late.json()["error"]
    assert error["code"] == "deadline_exceeded"
    assert error["message"] != DEADLINE.message  # the upstream's words, not this side's backstop
    assert elapsed < 2.0


def _rows(db: Path, request_ids: set[str]) -> list[tuple[str, int, str | None]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT request_id, status, error_code FROM api_event_fact").fetchall()
    return sorted((r, s, e) for r, s, e in rows if r in request_ids)


def test_the_web_tier_records_one_event_per_image(cluster: Cluster, images_dir: Path, chelsea: bytes) -> None:
    multi, single = uuid.uuid4().hex, uuid.uuid4().hex
    files = _files(images_dir, chelsea)[:3]
    assert httpx.post(f"{cluster.web.url}/v1/classify", params={"model": REAL}, files=files,
                      headers={"X-Request-ID": multi}, timeout=60).status_code == 200
    assert httpx.post(f"{cluster.web.url}/v1/classify", params={"model": REAL}, content=chelsea,
                      headers={"X-Request-ID": single, "Content-Type": "image/jpeg"}, timeout=60).status_code == 200
    expected = sorted([(multi, 200, None), (multi, 415, "unsupported_media_type"), (multi, 400, "invalid_image"),
                       (single, 200, None)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(_rows(cluster.web_events, {multi, single})) < len(expected):
        time.sleep(0.1)
    assert _rows(cluster.web_events, {multi, single}) == expected
    assert not list(Path(cluster.real.cwd).glob("*.sqlite3"))  # the upstream records nothing


def test_models_are_what_the_upstreams_serve(cluster: Cluster) -> None:
    listing = httpx.get(f"{cluster.web.url}/v1/models", timeout=10).json()
    models = {(m["name"], m["version"]): m for m in listing["models"]}
    assert set(models) == {(REAL, 1), ("simulated", 1)}
    assert models[(REAL, 1)]["upstreams"] == [{"url": cluster.real.url, "ready": True}]
    assert models[("simulated", 1)]["upstreams"] == [{"url": s.url, "ready": True}
                                                     for s in (cluster.fast_a, cluster.fast_b, cluster.tight)]
    upstream = httpx.get(f"{cluster.real.url}/v1/models/{REAL}", timeout=10).json()["versions"][0]
    ours = httpx.get(f"{cluster.web.url}/v1/models/{REAL}", timeout=10).json()["versions"][0]
    for key in ("description", "classes", "execution_providers", "input", "output"):
        assert ours[key] == upstream[key], key
    learned = {k for k in upstream["batching"] if k.startswith("batch_cost")}  # as of the last listing
    assert {k: v for k, v in ours["batching"].items() if k not in learned} == \
        {k: v for k, v in upstream["batching"].items() if k not in learned}
    assert listing["default_model"] == REAL  # the first upstream's default
    metadata = httpx.get(f"{cluster.web.url}/v2/models/{REAL}", timeout=10)
    assert metadata.status_code == 200 and metadata.json()["outputs"][0]["shape"] == [-1, 1000]
    index = httpx.post(f"{cluster.web.url}/v2/repository/index", timeout=10).json()
    assert {(row["name"], row["state"]) for row in index} == {(REAL, "READY"), ("simulated", "READY")}


def test_v2_inference_is_refused_with_the_reason(cluster: Cluster) -> None:
    answer = httpx.post(f"{cluster.web.url}/v2/models/simulated/infer", json={"inputs": []}, timeout=10)
    assert answer.status_code == 501
    assert "upstream" in answer.json()["error"]


def _served(server_url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    entry = httpx.get(f"{server_url}/v1/models/simulated", headers=headers, timeout=10).json()["versions"][0]
    return int(entry["stats"]["requests_total"])


def test_the_upstream_key_is_sent_and_a_wrong_one_is_said_plainly(cluster: Cluster, chelsea: bytes) -> None:
    locked = cluster.fast_b  # under --auth required: nothing passes without the key
    assert httpx.post(f"{locked.url}/v1/classify", content=chelsea, timeout=30).status_code == 401
    before = _served(locked.url, UPSTREAM_KEY)
    for _ in range(6):  # idle upstreams take turns: the locked one gets some of these
        answer = httpx.post(f"{cluster.web.url}/v1/classify", params={"model": "simulated"}, content=chelsea,
                            headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200, answer.text
    assert _served(locked.url, UPSTREAM_KEY) > before

    wrong = cluster.web_wrong_key
    readiness = httpx.get(f"{wrong.url}/readyz", timeout=10)
    assert readiness.status_code == 503 and readiness.json()["status"] == "backend_unavailable"
    refused = httpx.post(f"{wrong.url}/v1/classify", content=chelsea, headers={"Content-Type": "image/jpeg"},
                         timeout=30)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    error = refused.json()["error"]
    assert error["code"] == "upstream_unavailable" and "--upstream-api-key" in error["message"]
    assert "refuses this server's --upstream-api-key" in wrong.log()
