"""Model repositories in object storage, against moto's S3 server in its own process: URL parsing,
the local mirror's sync, `batchserve models push`, and a running server that picks up a pushed
version on `models load` and refuses a corrupt one while the old version keeps serving."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchserve.cli import main
from batchserve.jobs.options import WORKER_OPTIONS, worker_settings
from batchserve.loadtest.server_process import ServerProcess, free_port
from batchserve.model_repo.errors import ModelLoadError, ObjectStoreError
from batchserve.model_repo.location import ObjectStoreLocation, parse_object_store_url, parse_repository
from batchserve.model_repo.object_store import GCS_HMAC_ID_ENV, GCS_HMAC_SECRET_ENV, ObjectStore
from batchserve.model_repo.push import push_model
from batchserve.model_repo.sync import RepositoryCache, is_safe_relative
from batchserve.serving.config import ServingConfig
from batchserve.serving.registry import ModelRegistry
from tests.jobs.conftest import start_moto, stop
from tests.jobs.queue_helpers import new_bucket, point_aws_at, s3_client
from tests.server.conftest import jpeg_bytes

ADMIN_KEY = "object-store-admin"
TINY_FILES = ["tiny/1/model.onnx", "tiny/config.toml", "tiny/labels.txt"]


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def aws_environment(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's endpoint and credentials for this process and the ones it starts; nothing else of AWS."""
    point_aws_at(moto_s3, monkeypatch, GCS_HMAC_ID_ENV, GCS_HMAC_SECRET_ENV, "BATCHSERVE_MODEL_REPO_ENDPOINT_URL")


@pytest.fixture
def s3(moto_s3: str) -> Any:
    return s3_client(moto_s3)


@pytest.fixture
def bucket(s3: Any) -> str:
    return new_bucket(s3, "models")


@pytest.fixture
def local_repo(built_models: Path, tmp_path: Path) -> Path:
    """A repository with the tiny model's config and labels, its built graph as versions 1 and 2."""
    repo = tmp_path / "local-repo"
    (repo / "tiny").mkdir(parents=True)
    for name in ("config.toml", "labels.txt"):
        shutil.copy(built_models / "tiny" / name, repo / "tiny" / name)
    for version in (1, 2):
        (repo / "tiny" / str(version)).mkdir()
        shutil.copy(built_models / "tiny" / "1" / "model.onnx", repo / "tiny" / str(version) / "model.onnx")
    return repo


def quiet(_line: str) -> None:
    return None


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


# ---- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("/srv/models", Path("/srv/models")),
    ("relative/models", Path("relative/models")),
    ("file:///srv/models", Path("/srv/models")),
    ("file://localhost/srv/my%20models", Path("/srv/my models")),
    ("s3://bucket-1/team/repo/", ObjectStoreLocation("s3", "bucket-1", "team/repo")),
    ("S3://bucket-1", ObjectStoreLocation("s3", "bucket-1", "")),
    ("gs://my_bucket/repo", ObjectStoreLocation("gs", "my_bucket", "repo")),
])
def test_repository_urls_parse(raw: str, expected: object) -> None:
    assert parse_repository(raw) == expected


@pytest.mark.parametrize(("raw", "message"), [
    ("s3://", "names no bucket"),
    ("s3:///repo", "names no bucket"),
    ("ftp://x", "unsupported model repository 'ftp://x'"),
    ("s3://Bad_Bucket/repo", "not a valid bucket name"),
    ("s3://bucket/a/../b", "'..'"),
    ("file://otherhost/x", "not the host 'otherhost'"),
    ("", "empty"),
])
def test_bad_repository_urls_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_repository(raw)


def test_location_keys_and_cache_folders_never_collide(tmp_path: Path) -> None:
    repo, nested = parse_object_store_url("s3://bkt/repo"), parse_object_store_url("s3://bkt/repo/repository")
    assert repo.key("tiny/config.toml") == "repo/tiny/config.toml"
    assert parse_object_store_url("s3://bkt").key("tiny/config.toml") == "tiny/config.toml"
    assert str(repo) == "s3://bkt/repo" and str(parse_object_store_url("gs://bkt/")) == "gs://bkt"
    assert repo.cache_dir(tmp_path).parent == nested.cache_dir(tmp_path).parent  # siblings, never nested
    assert repo.cache_dir(tmp_path) != nested.cache_dir(tmp_path)
    assert [is_safe_relative(p) for p in ("tiny/1/model.onnx", "../x", "tiny//x", "tiny/./x", "a\\b")] == \
        [True, False, False, False, False]


def test_bad_urls_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (["serve", "--model-repo", "ftp://x"], ["worker", "--model-repo", "s3://"],
                 ["models", "push", "tiny", "--to", "/tmp/repo"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
    err = capsys.readouterr().err
    assert "unsupported model repository 'ftp://x'" in err
    assert "'s3://' names no bucket" in err
    assert "'/tmp/repo' is not an object store URL" in err
    monkeypatch.setenv("BATCHSERVE_MODEL_REPO", "gs://")
    assert main(["serve"]) == 2
    assert "BATCHSERVE_MODEL_REPO='gs://'" in capsys.readouterr().err


def test_the_worker_reads_the_same_repository_settings(tmp_path: Path) -> None:
    by_name = {option.name: option for option in WORKER_OPTIONS}
    assert {"model_repo", "model_cache_dir", "model_repo_endpoint_url"} <= set(by_name)
    settings = worker_settings(argparse_namespace(model_repo=by_name["model_repo"].parse("s3://bkt/repo"),
                                                  model_cache_dir=tmp_path), environ={})
    assert settings.serving.remote_repository == ObjectStoreLocation("s3", "bkt", "repo")
    assert settings.serving.repository_dir.is_relative_to(tmp_path)


def argparse_namespace(**values: Any) -> Any:
    import argparse

    return argparse.Namespace(**{option.name: None for option in WORKER_OPTIONS} | values)


# ---- sync and push -------------------------------------------------------------------------------


def test_sync_downloads_only_what_changed_and_deletes_what_is_gone(
        local_repo: Path, bucket: str, s3: Any, tmp_path: Path) -> None:
    target = parse_object_store_url(f"s3://{bucket}/repo")
    pushed = push_model(local_repo, "tiny", target, versions=[1], progress=quiet)
    assert sorted(pushed.uploaded) == TINY_FILES and keys(s3, bucket) == [f"repo/{k}" for k in TINY_FILES]
    s3.put_object(Bucket=bucket, Key="repo/other/config.toml", Body=b'name = "other"\n')

    cache = RepositoryCache(target, tmp_path / "cache")
    first = cache.sync()
    assert sorted(first.downloaded) == sorted([*TINY_FILES, "other/config.toml"]) and first.unchanged == 0
    mirrored = cache.directory / "tiny" / "1" / "model.onnx"
    assert mirrored.read_bytes() == (local_repo / "tiny" / "1" / "model.onnx").read_bytes()
    stamp = mirrored.stat().st_mtime_ns

    again = cache.sync()
    assert again.downloaded == () and again.deleted == () and again.unchanged == 4
    assert mirrored.stat().st_mtime_ns == stamp

    # One changed file comes down alone; a one-model sync leaves the other model's folder alone.
    s3.put_object(Bucket=bucket, Key="repo/tiny/labels.txt", Body=b"changed\n" * 1000)
    s3.delete_object(Bucket=bucket, Key="repo/other/config.toml")
    scoped = cache.sync("tiny")
    assert scoped.downloaded == ("tiny/labels.txt",) and scoped.deleted == () and scoped.unchanged == 2
    assert (cache.directory / "other" / "config.toml").exists()

    s3.delete_object(Bucket=bucket, Key="repo/tiny/1/model.onnx")
    whole = cache.sync()
    assert whole.downloaded == () and whole.deleted == ("other/config.toml", "tiny/1/model.onnx")
    assert not (cache.directory / "tiny" / "1").exists() and not (cache.directory / "other").exists()
    # A lost local file is fetched again although the index knows it.
    (cache.directory / "tiny" / "config.toml").unlink()
    assert cache.sync().downloaded == ("tiny/config.toml",)


def test_a_missing_bucket_is_named(tmp_path: Path) -> None:
    cache = RepositoryCache(parse_object_store_url("s3://no-such-bucket-here/repo"), tmp_path)
    with pytest.raises(ObjectStoreError, match="bucket 'no-such-bucket-here' does not exist"):
        cache.sync()


def test_push_refuses_a_version_that_fails_its_checks(local_repo: Path, bucket: str, s3: Any) -> None:
    target = parse_object_store_url(f"s3://{bucket}/repo")
    (local_repo / "tiny" / "2" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match=r"cannot load model file .*tiny/2/model.onnx"):
        push_model(local_repo, "tiny", target, progress=quiet)
    with pytest.raises(ModelLoadError, match="no built version 7"):
        push_model(local_repo, "tiny", target, versions=[7], progress=quiet)
    (local_repo / "tiny" / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ModelLoadError, match="has 2 labels but the model has 1000 classes"):
        push_model(local_repo, "tiny", target, versions=[1], progress=quiet)
    assert keys(s3, bucket) == []


def test_a_second_push_uploads_nothing(local_repo: Path, bucket: str) -> None:
    target = parse_object_store_url(f"s3://{bucket}")
    assert len(push_model(local_repo, "tiny", target, progress=quiet).uploaded) == 4
    again = push_model(local_repo, "tiny", target, progress=quiet)
    assert again.uploaded == () and len(again.unchanged) == 4


def test_gs_goes_through_the_xml_api_with_an_hmac_key(
        local_repo: Path, bucket: str, moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS's own credentials are never used for gs://: with only them set, there is no HMAC key.
    monkeypatch.setenv(GCS_HMAC_ID_ENV, "GOOG1EXAMPLE")
    with pytest.raises(ObjectStoreError, match=f"set both {GCS_HMAC_ID_ENV} and {GCS_HMAC_SECRET_ENV}"):
        RepositoryCache(parse_object_store_url(f"gs://{bucket}/repo"), tmp_path, endpoint_url=moto_s3).sync()
    monkeypatch.setenv(GCS_HMAC_SECRET_ENV, "secret")
    target = parse_object_store_url(f"gs://{bucket}/repo")
    push_model(local_repo, "tiny", target, versions=[1], endpoint_url=moto_s3, progress=quiet)
    cache = RepositoryCache(target, tmp_path, endpoint_url=moto_s3)
    assert sorted(cache.sync().downloaded) == TINY_FILES
    assert cache.store._client.meta.endpoint_url == moto_s3


def test_gs_without_an_hmac_key_sends_the_application_default_token(
        bucket: str, moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Google's default credentials cannot be found here; a real google-auth credentials object with a
    fixed token stands in for what google.auth.default() finds on Cloud Run."""
    import google.auth
    from google.oauth2.credentials import Credentials

    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (Credentials(token="adc-token"), "project"))
    store = ObjectStore(parse_object_store_url(f"gs://{bucket}/repo"), moto_s3)
    sent: list[Any] = []
    store._client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.headers))
    assert store.list() == {}
    assert [h["Authorization"] for h in sent] == [b"Bearer adc-token"]
    assert all("X-Amz-Date" not in h and "x-amz-date" not in h for h in sent)


# ---- serving -------------------------------------------------------------------------------------


async def test_the_registry_checks_labels_against_the_graph(local_repo: Path) -> None:
    config = local_repo / "tiny" / "config.toml"
    config.write_text(config.read_text().replace("classes = 1000", "classes = 3"))
    (local_repo / "tiny" / "labels.txt").write_text("a\nb\nc\n")
    registry = ModelRegistry(ServingConfig(model_repo=local_repo, models=("tiny",)))
    with pytest.raises(ModelLoadError, match=r"outputs 1000 classes but .*labels.txt has 3 labels"):
        await registry.load_configured()
    assert registry.names() == []


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`batchserve models ARGS` run in this process (in a thread: the commands block), and what it printed."""
    rc = await asyncio.to_thread(main, ["models", *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


async def classify_version(client: httpx.AsyncClient, image: bytes) -> int:
    response = await client.post("/v1/classify?model=tiny&top_k=1", content=image,
                                 headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    return int(response.json()["model_version"])


@pytest.mark.slow
async def test_a_running_server_serves_a_pushed_version_and_refuses_a_corrupt_one(
        local_repo: Path, bucket: str, s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"s3://{bucket}/repo"
    push_model(local_repo, "tiny", parse_object_store_url(url), versions=[1], progress=quiet)
    server = ServerProcess("--model-repo", url, "--model-cache-dir", str(tmp_path / "cache"), "--models", "tiny",
                           "--model-control", "explicit", "--admin-key", ADMIN_KEY, "--no-events", cwd=tmp_path)
    image = jpeg_bytes(size=(64, 48))
    with server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            assert await classify_version(client, image) == 1

            rc, out = await cli(capsys, "push", "tiny", "--to", url, "--version", "2", "--model-repo", str(local_repo))
            assert rc == 0 and f"pushed tiny (versions 2) to {url}: 1 file(s) uploaded, 2 already there" in out, out
            rc, out = await cli(capsys, "load", "tiny", "--url", server.url, "--api-key", ADMIN_KEY)
            assert rc == 0 and "versions: 2" in out, out
            assert await classify_version(client, image) == 2
            # Only the new graph came down: config and labels were unchanged.
            assert f"synced {url}/tiny: 1 downloaded, 0 deleted, 3 unchanged" in server.log()

            # A corrupt upload: the load fails with the reason (the message `models load` prints) and
            # version 2 goes on answering.
            s3.put_object(Bucket=bucket, Key="repo/tiny/3/model.onnx", Body=b"\x00garbage, not a graph" * 64)
            refused = await client.post("/v2/repository/models/tiny/load", headers={"X-API-Key": ADMIN_KEY})
            assert refused.status_code == 503, refused.text
            message = refused.json()["error"]
            assert f"tiny v3 from {url} was not loaded: cannot load model file" in message, message
            assert message.endswith("still serving v2"), message
            assert await classify_version(client, image) == 2
            assert (await client.get("/v2/models/tiny/versions/2/ready")).status_code == 200


async def test_a_missing_bucket_fails_the_start_naming_the_bucket(tmp_path: Path) -> None:
    config = ServingConfig(model_repo=parse_repository("s3://absent-bucket-for-test/repo"), model_cache_dir=tmp_path)
    registry = ModelRegistry(config)
    with pytest.raises(ObjectStoreError, match="bucket 'absent-bucket-for-test' does not exist"):
        await registry.load_configured()  # what the server awaits before it becomes ready
    assert registry.names() == []


def test_push_of_an_unknown_model_exits_1(local_repo: Path, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "push", "nope", "--to", f"s3://{bucket}/r", "--model-repo", str(local_repo)]) == 1
    assert "batchserve models push: there is no model 'nope' in" in capsys.readouterr().err
