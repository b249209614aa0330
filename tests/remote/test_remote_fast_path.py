"""A web tier's fast path for raw-body POST /v1/classify forwards and answers exactly as its
Litestar route does: two web tiers in this process, one with the fast path and one without, in
front of the same real upstreams, get the same requests (twin_apps.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.remote.conftest import UPSTREAM_KEY, Cluster
from tests.server.twin_apps import Request, events, http_metrics, twins

pytestmark = pytest.mark.slow
IMAGE = [(b"content-type", b"image/jpeg")]


async def test_forwarded_requests_get_the_route_s_answers(cluster: Cluster, tmp_path: Path, chelsea: bytes) -> None:
    upstreams = (cluster.real.url, cluster.fast_a.url, cluster.fast_b.url, cluster.tight.url)
    requests = [
        Request("a-photo", b"model=efficientnet_lite0&top_k=3", IMAGE, chelsea),
        Request("b-simulated", b"model=simulated", IMAGE, chelsea),
        Request("c-with-deadline", b"model=efficientnet_lite0&timeout_ms=30000", IMAGE, chelsea),
        Request("d-unknown-model", b"model=nope", IMAGE, chelsea),
        Request("e-version-not-served", b"model=simulated&version=7", IMAGE, chelsea),
        Request("f-bad-top-k", b"model=simulated&top_k=-1", IMAGE, chelsea),
        Request("g-refused-here", b"model=simulated", [(b"content-type", b"image/tiff")], chelsea),
        Request("h-not-an-image", b"model=efficientnet_lite0", [], b"\xff\xd8\xff" + bytes(64)),
        Request("i-empty", b"model=simulated", IMAGE, b""),
    ]
    async with twins(tmp_path, backend="remote", upstream=upstreams, upstream_api_key=UPSTREAM_KEY,
                     upstream_check_interval_s=0.2) as apps:
        answers = [await apps.both(request) for request in requests]
        assert http_metrics(apps.fast) == http_metrics(apps.general)
    assert all(took_fast_path for _, took_fast_path in answers)
    assert [answer.status for answer, _ in answers] == [200, 200, 200, 404, 404, 422, 415, 400, 400]
    recorded = events(apps.folders[0])
    assert [row[0] for row in recorded] == [r.request_id for r in requests]
    assert recorded == events(apps.folders[1])
