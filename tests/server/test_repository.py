"""Triton's repository extension and model control: index, load, unload, authorisation, version
policies, and the rule that a retired version finishes the requests that hold it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from batchserve.model_repo.build import build_model
from batchserve.server.options import build_config
from batchserve.serving.config import ServingConfig
from batchserve.serving.knobs import KnobOverrides
from batchserve.serving.leases import lease_scope
from batchserve.serving.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "model_repo" / "models" / "tiny" / "config.toml"
ADMIN_KEY = "s3cret-admin-key"


def set_policy(repo: Path, policy: str) -> None:
    """Rewrite tiny's [versions] table, e.g. 'policy = "specific"\\nspecific = [1]'."""
    config = repo / "tiny" / "config.toml"
    text = config.read_text()
    head = text.split("[versions]")[0]
    config.write_text(head + "[versions]\n" + policy + "\n")


@pytest.fixture
def two_versions(tmp_path: Path) -> Path:
    """A repository holding tiny versions 1 and 2."""
    repo = tmp_path / "repo"
    (repo / "tiny").mkdir(parents=True)
    shutil.copy(TINY_CONFIG, repo / "tiny" / "config.toml")
    for version in (1, 2):
        build_model("tiny", repo, version=version, progress=lambda _msg: None)
    return repo


async def test_index_lists_loaded_and_unloaded_models(make_client) -> None:
    async with make_client() as client:
        everything = (await client.post("/v2/repository/index")).json()
        ready_only = (await client.post("/v2/repository/index", json={"ready": True})).json()
        bad = await client.post("/v2/repository/index", content=b"{not json")
    rows = {(r["name"], r["version"]): r["state"] for r in everything}
    assert rows[("tiny", "1")] == "READY"
    assert rows[("efficientnet_lite0", "1")] == "UNAVAILABLE"
    assert [(r["name"], r["state"]) for r in ready_only] == [("tiny", "READY")]
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)


async def test_control_routes_are_off_by_default(make_client) -> None:
    async with make_client() as client:
        for action in ("load", "unload"):
            response = await client.post(f"/v2/repository/models/tiny/{action}")
            assert response.status_code == 403
            assert response.json() == {"error": "model control is disabled; start with --model-control explicit"}
        assert (await client.get("/v2/models/tiny/ready")).status_code == 200


def test_model_control_refuses_to_start_without_an_admin_key() -> None:
    with pytest.raises(ValueError, match="--model-control explicit needs an admin key"):
        build_config({"model_control": "explicit"})


async def test_model_control_needs_the_admin_key_whatever_auth_says(make_client) -> None:
    async with make_client(model_control="explicit", admin_key=ADMIN_KEY) as client:
        missing = await client.post("/v2/repository/models/tiny/load")
        wrong = await client.post("/v2/repository/models/tiny/load", headers={"X-Admin-Key": "guess"})
        alias = await client.post("/v2/repository/models/tiny/load", headers={"X-Admin-Key": ADMIN_KEY})
        bearer = await client.post("/v2/repository/models/tiny/unload",
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        # What tritonclient sends: an empty body, `{}`, or parameters.
        api_key = await client.post("/v2/repository/models/tiny/load", content=b"{}",
                                    headers={"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"})
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert alias.status_code == 200 and alias.json() == {"name": "tiny", "versions": ["1"], "state": "READY"}
    assert bearer.status_code == 200 and bearer.json()["state"] == "UNAVAILABLE"
    assert api_key.status_code == 200


async def test_unload_then_load_again(make_client, chelsea: bytes) -> None:
    async with make_client(model_control="explicit", admin_key=ADMIN_KEY) as client:
        client.headers["X-Admin-Key"] = ADMIN_KEY
        before = client.app_state.serving.registry.find("tiny")
        reload = await client.post("/v2/repository/models/tiny/load")
        assert reload.status_code == 200
        assert client.app_state.serving.registry.find("tiny") is before  # unchanged files: the warm version stays
        assert (await client.post("/v2/repository/models/tiny/unload")).status_code == 200
        assert (await client.get("/v2/models/tiny")).status_code == 404
        assert (await client.post("/v1/classify?model=tiny", content=chelsea)).status_code == 404
        assert (await client.get("/v2/health/ready")).status_code == 503
        index = (await client.post("/v2/repository/index")).json()
        assert {"name": "tiny", "version": "1", "state": "UNAVAILABLE", "reason": ""} in index
        assert (await client.post("/v2/repository/models/tiny/unload")).status_code == 404
        assert (await client.post("/v2/repository/models/nope/load")).status_code == 404
        assert (await client.post("/v2/repository/models/tiny/load",
                                  json={"parameters": {"config": "{}"}})).status_code == 400
        assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.post("/v1/classify?model=tiny", content=chelsea)).status_code == 200
        await client.app_state.serving.registry.wait_retired(timeout=30)
        assert before.batcher.closing


async def test_version_policy_decides_what_a_load_serves(make_client, two_versions: Path) -> None:
    async with make_client(model_repo=two_versions, model_control="explicit", admin_key=ADMIN_KEY) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        registry = client.app_state.serving.registry
        assert registry.versions("tiny") == [2]  # policy "latest 1"
        set_policy(two_versions, 'policy = "specific"\nspecific = [1]')
        assert (await client.post("/v2/repository/models/tiny/load")).json()["versions"] == ["1"]
        assert registry.versions("tiny") == [1]
        set_policy(two_versions, 'policy = "latest"\nlatest = 2')
        assert (await client.post("/v2/repository/models/tiny/load")).json()["versions"] == ["1", "2"]
        meta = (await client.get("/v2/models/tiny")).json()
        assert meta["versions"] == ["1", "2"]
        assert (await client.get("/v2/models/tiny/versions/1/ready")).status_code == 200
        config = (await client.get("/v2/models/tiny/config")).json()
        assert config["version_policy"] == {"latest": {"num_versions": 2}}


async def test_a_retired_version_finishes_the_requests_that_hold_it(two_versions: Path) -> None:
    registry = ModelRegistry(ServingConfig(model_repo=two_versions))
    await registry.load("tiny")
    looked_up = asyncio.Event()
    resume = asyncio.Event()
    answers: list[int] = []

    async def request() -> None:
        # As a route does: resolve the model first, read/decode for a while, then submit.
        with lease_scope():
            model = registry.lease("tiny")
            looked_up.set()
            await resume.wait()
            outcome = await model.batcher.submit([np.zeros((3, 224, 224), np.float32)])
            answers.append(model.version)
            assert len(outcome.results) == 1

    in_flight = asyncio.create_task(request())
    await looked_up.wait()
    old = registry.find("tiny")
    set_policy(two_versions, 'policy = "specific"\nspecific = [1]')
    await registry.load("tiny")
    assert registry.find("tiny").version == 1
    assert old.version == 2 and old.leases.count == 1
    assert not await registry.wait_retired(timeout=0.2)  # still held: version 2 stays open
    assert not old.batcher.closing
    resume.set()
    await in_flight
    assert answers == [2]
    assert await registry.wait_retired(timeout=30)
    assert old.batcher.closing and old.leases.count == 0
    await registry.close(timeout=10)


@pytest.mark.parametrize(("slots", "single_threaded_twin"), [(1, False), (2, True)])
async def test_a_model_whose_batches_can_overlap_runs_them_single_threaded(
        two_versions: Path, slots: int, single_threaded_twin: bool) -> None:
    """On a CPU, two execution slots give the runner a single-threaded session for overlapping
    batches; one slot never overlaps, so it costs no second session."""
    knobs = KnobOverrides({"max_inflight_batches": slots, "intra_op_threads": 2})
    registry = ModelRegistry(ServingConfig(model_repo=two_versions, knobs=knobs))
    await registry.load("tiny")
    try:
        model = registry.find("tiny")
        assert model.batching.max_inflight_batches == slots
        assert model.runner is not None and model.runner.overlapping_single_threaded is single_threaded_twin
        outcome = await model.batcher.submit([np.zeros((3, 224, 224), np.float32)] * 3)
        assert len(outcome.results) == 3
    finally:
        await registry.close(timeout=10)
