"""The "pages on AWS, CNN on Cloud Run" split, as the two deploy commands configure it, run here as two
processes: the backend with the environment `deploy gcp` renders (its Secret Manager references
resolved), the web tier with the environment and command the AWS boot script writes (reading Secrets
Manager on moto with the real AWS CLI). The same key sits in both secret stores; nothing else
connects them. The web tier's events go to PostgreSQL, as every AWS profile's do (a fresh schema of
the local server here, an RDS instance on AWS), its URL read from Secrets Manager at boot."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
import yaml

from batchserve.deploy.cli import main
from batchserve.loadtest.server_process import ServerProcess
from tests.deploy.web_boot import AWS_CLI, run_boot
from tests.events.event_helpers import scratch_schema

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

BACKEND_KEY = "bsk_" + "b" * 43  # in both clouds' secret stores
CLIENT_KEY = "bsk_" + "c" * 43  # the web tier's own bootstrap key, for its operator


def cloud_run_env(service: dict, secret_manager: dict[str, str]) -> dict[str, str]:
    """The container's environment as Cloud Run sets it: plain values, and secrets' latest versions."""
    env = {}
    for item in service["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["key"] == "latest"
            env[item["name"]] = secret_manager[ref["name"]]
    return env


POSTGRES_URL = os.environ.get("BATCHSERVE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
EVENT_USERS = "SELECT u.user_name FROM api_event_fact e JOIN user_dim u USING (user_key)"


async def _event_users(url: str) -> list[str]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return [str(r[0]) for r in await connection.fetch(EVENT_USERS)]
    except asyncpg.UndefinedTableError:  # the server has not migrated the schema yet
        return []
    finally:
        await connection.close()


@pytest.fixture
def events_database() -> Iterator[str]:
    """A URL of the local PostgreSQL whose connections live in a fresh schema, dropped afterwards."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_schema(POSTGRES_URL, "split_test"))
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"no PostgreSQL at {POSTGRES_URL.split('@')[-1]} ({exc}); `make services` starts one")
        yield url


def events_in(folder: Path) -> list[str]:
    """Users of the classification events recorded in a server's SQLite store (none when it has none)."""
    path = folder / "batchserve-events.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT u.user_name FROM api_event_fact e JOIN user_dim u USING (user_key)").fetchall()
        except sqlite3.OperationalError:  # no events table: nothing was ever recorded there
            return []
    return [str(r[0]) for r in rows]


@pytest.mark.skipif(AWS_CLI is None, reason="the AWS CLI (which the boot script reads secrets with) is not installed")
def test_the_two_renderings_serve_together_with_one_key_in_both_secret_stores(
        built_models: Path, local_aws: Any, tmp_path: Path, chelsea: bytes, events_database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Cloud Run: `batchserve deploy gcp` exactly as docs/deploy.md gives it.
    assert main(["gcp", "--image", "us-east4-docker.pkg.dev/p/images/batchserve:1", "--region", "us-east4",
                 "--service-name", "batchserve-backend", "--project", "shop-project", "--admin-key-secret",
                 "batchserve-backend-key",
                 "--no-events", "--allow-unauthenticated", "--dry-run", "--out", str(tmp_path / "gcp")]) == 0
    capsys.readouterr()
    backend_env = cloud_run_env(yaml.safe_load((tmp_path / "gcp" / "service.yaml").read_text()),
                                {"batchserve-backend-key": BACKEND_KEY})
    backend_env["BATCHSERVE_MODELS"] = "tiny"  # the image's model, swapped for the small one built here
    backend_env.pop("BATCHSERVE_REQUIRE_GPU", None)  # the GPU the rendering asks for is not on this machine

    backend = ServerProcess(env=backend_env, cwd=tmp_path / "backend")
    # AWS: the boot script, with the backend's URL as `--backend-url` gives it (plain HTTP here, TLS on
    # Cloud Run), writes the environment file and the command the container runs.
    secrets_manager = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=local_aws.endpoint_url)
    secrets_manager.create_secret(Name="batchserve/backend-key", SecretString=BACKEND_KEY)
    admin_arn = secrets_manager.create_secret(Name="batchserve/web-admin-key", SecretString=CLIENT_KEY)["ARN"]
    database_arn = secrets_manager.create_secret(Name="batchserve/web-db", SecretString=events_database)["ARN"]
    boot = run_boot(tmp_path / "aws", local_aws.endpoint_url, ImageUri="ghcr.io/example/batchserve:1",
                    BackendUrl=backend.url, BackendKeySecret="batchserve/backend-key", Models="tiny",
                    AdminKeySecretArn=admin_arn, DatabaseSecret=database_arn)
    assert boot.returncode == 0, boot.log
    command = boot.command()
    assert command[:2] == ["batchserve", "serve"]
    web = ServerProcess(*command[2:], env=boot.settings(), cwd=tmp_path / "web")

    with ExitStack() as running, ThreadPoolExecutor(2) as starting:
        running.callback(backend.stop)
        running.callback(web.stop)  # stopped first
        for started in [starting.submit(backend.start), starting.submit(web.start)]:
            started.result()  # ready: the web tier's once the backend, checked with the key, is in rotation

        refused = httpx.post(f"{backend.url}/v1/classify", content=chelsea, timeout=30)
        assert refused.status_code == 401  # the backend takes no request without the key
        assert httpx.post(f"{web.url}/v1/classify", content=chelsea, timeout=30).status_code == 401
        answer = httpx.post(f"{web.url}/v1/classify", content=chelsea, timeout=30,
                            headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"]
        assert httpx.get(f"{web.url}/", timeout=30).status_code == 200  # the pages are the web tier's

        def web_events() -> list[str]:
            return asyncio.run(_event_users(events_database))

        deadline = time.monotonic() + 20
        while len(web_events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # The tier that faces the client records the events (the refusal too), naming each caller,
        # in the database its boot script read from Secrets Manager...
        assert sorted(web_events()) == ["admin-key", "anonymous"]
        assert events_in(tmp_path / "web") == []  # ...not in a SQLite file that dies with the instance
    # ...and the backend none, not even of the request it refused.
    assert events_in(tmp_path / "backend") == []
