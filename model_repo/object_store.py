"""Reading and writing a repository in S3 or Google Cloud Storage, through one blocking boto3 client.

Every call blocks: callers run them in a worker thread (the registry uses `asyncio.to_thread`),
never on an event loop.

s3:// uses AWS's standard chains: credentials from the environment, the shared files, a profile
or the instance/task role; the endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (MinIO,
a local moto) unless `--model-repo-endpoint-url` gives one.

gs:// goes through the same client to Cloud Storage's S3-compatible XML API at
https://storage.googleapis.com rather than through the google-cloud-storage client. Why: the
repository needs three calls (list, get, put) that the XML API serves alike for both
clouds, so one code path, one set of error translations and one test server (moto) cover both,
and no new dependency comes in (google-cloud-storage and its gRPC/protobuf stack are not among
batchserve's dependencies). Credentials, in order:
  1. an HMAC key in BATCHSERVE_GCS_HMAC_ACCESS_ID and BATCHSERVE_GCS_HMAC_SECRET (Cloud Storage's
     interoperability keys; requests are signed with SigV4 as for S3);
  2. Google application default credentials through google-auth (installed with the `deploy`
     extra): GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, or the metadata server of Cloud
     Run, GKE and Compute Engine. Their OAuth2 access token goes in `Authorization: Bearer`, which
     the XML API accepts in place of a signature.
AWS credentials are never used for gs://: they must not be sent to Google.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from batchserve.model_repo.errors import ObjectStoreError
from batchserve.model_repo.location import ObjectStoreLocation

log = logging.getLogger("batchserve.model_repo")

GCS_ENDPOINT = "https://storage.googleapis.com"
GCS_HMAC_ID_ENV = "BATCHSERVE_GCS_HMAC_ACCESS_ID"
GCS_HMAC_SECRET_ENV = "BATCHSERVE_GCS_HMAC_SECRET"
GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
CHUNK_BYTES = 1 << 20
_MISSING_BUCKET = {"NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


@dataclass(frozen=True)
class RemoteObject:
    """One object of the repository: its path relative to the repository, ETag and size."""

    path: str
    etag: str
    size: int


class ObjectStore:
    """The objects of one repository location. `endpoint_url` overrides the scheme's endpoint."""

    def __init__(self, location: ObjectStoreLocation, endpoint_url: str | None = None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.location = location
        self.endpoint_url = endpoint_url
        with self._translated("connect to"):
            try:
                self._client: Any = _make_client(location.scheme, endpoint_url, environ)
            except ValueError as exc:  # botocore's word for an endpoint it cannot use
                raise ObjectStoreError(f"cannot use the endpoint {endpoint_url!r} for {location}: {exc}") from None

    @property
    def client(self) -> Any:
        """The blocking boto3 S3 client (gs:// mapped onto Cloud Storage's XML API), for calls this
        class does not wrap, such as the event store backups' multipart uploads."""
        return self._client

    def list(self, under: str = "") -> dict[str, RemoteObject]:
        """The repository's objects whose relative path starts with `under`, by relative path.
        Folder placeholders (keys ending in '/') are left out."""
        prefix = self.location.key_prefix
        found: dict[str, RemoteObject] = {}
        with self._translated("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix + under)
            for page in pages:
                for item in page.get("Contents", []):
                    relative = str(item["Key"])[len(prefix):]
                    if relative and not relative.endswith("/"):
                        found[relative] = RemoteObject(relative, _etag(item.get("ETag")), int(item.get("Size", 0)))
        return found

    def download(self, relative: str, destination: Path) -> RemoteObject:
        """Write one object to `destination`; its ETag and size as the store sent them."""
        with self._translated(f"download {relative!r} from"):
            answer = self._client.get_object(Bucket=self.location.bucket, Key=self.location.key(relative))
            body = answer["Body"]
            try:
                with destination.open("wb") as out:
                    shutil.copyfileobj(body, out, CHUNK_BYTES)
            finally:
                body.close()
        return RemoteObject(relative, _etag(answer.get("ETag")), destination.stat().st_size)

    def upload(self, source: Path, relative: str) -> None:
        with self._translated(f"upload {relative!r} to"), source.open("rb") as data:
            # One PUT, not a multipart upload: the object's ETag stays the MD5 of its bytes (on S3
            # and on Cloud Storage), which lets a push skip files the bucket already has.
            self._client.put_object(Bucket=self.location.bucket, Key=self.location.key(relative), Body=data)

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """boto3's and the file system's exceptions as ObjectStoreError, with a sentence."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreError(self.describe_failure(action, exc)) from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot {action} {self.location}: {exc}") from exc

    def describe_failure(self, action: str, exc: Exception) -> str:
        where = f"{self.location}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING_BUCKET and action == "list":
                return f"bucket {self.location.bucket!r} does not exist (model repository {where})"
            if code in _DENIED or status == 403:
                return (f"access denied: cannot {action} {where} ({code or status}); "
                        f"check the credentials and that they may read the bucket {self.location.bucket!r}")
            return f"cannot {action} {where}: {code or status}: {error.get('Message') or exc}"
        if isinstance(exc, NoCredentialsError):
            return f"cannot {action} {where}: no credentials found ({_credential_hint(self.location.scheme)})"
        if isinstance(exc, EndpointConnectionError):
            return f"cannot {action} {where}: cannot reach the object store: {exc}"
        return f"cannot {action} {where}: {exc}"


def _etag(raw: object) -> str:
    return str(raw or "").strip('"')


def _credential_hint(scheme: str) -> str:
    if scheme == "gs":
        return (f"set {GCS_HMAC_ID_ENV} and {GCS_HMAC_SECRET_ENV} to an HMAC key, or provide Google "
                "application default credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
                "application-default login`, or a service account on Google Cloud)")
    return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or task role"


def _base_config() -> Config:
    return Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 5, "mode": "standard"})


def _make_client(scheme: str, endpoint_url: str | None, environ: Mapping[str, str]) -> Any:
    session = boto3.session.Session()
    if scheme == "s3":
        return session.client("s3", endpoint_url=endpoint_url or None, config=_base_config())
    # Cloud Storage's XML API: path-style URLs, any region name, and no flexible checksums (its
    # S3 compatibility does not take boto3's aws-chunked uploads with trailing checksums).
    config = _base_config().merge(Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                         response_checksum_validation="when_required"))
    endpoint = endpoint_url or GCS_ENDPOINT
    key_id, secret = environ.get(GCS_HMAC_ID_ENV), environ.get(GCS_HMAC_SECRET_ENV)
    if key_id and secret:
        return session.client("s3", endpoint_url=endpoint, region_name="auto", aws_access_key_id=key_id,
                              aws_secret_access_key=secret, config=config)
    if key_id or secret:
        raise ObjectStoreError(f"set both {GCS_HMAC_ID_ENV} and {GCS_HMAC_SECRET_ENV}, or neither")
    bearer = _google_bearer()
    client = session.client("s3", endpoint_url=endpoint, region_name="auto",
                            config=config.merge(Config(signature_version=botocore.UNSIGNED)))
    client.meta.events.register("before-sign.s3", _add_bearer(bearer))
    return client


def _google_bearer() -> Callable[[], str]:
    """A function returning a fresh access token from Google's application default credentials."""
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
    except ImportError:
        raise ObjectStoreError(
            "gs:// needs credentials: install google-auth (pip install 'batchserve[deploy]') to use Google "
            f"application default credentials, or set {GCS_HMAC_ID_ENV} and {GCS_HMAC_SECRET_ENV}") from None
    try:
        credentials, _project = google.auth.default(scopes=[GCS_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ObjectStoreError(f"gs:// found no credentials: {exc}; {_credential_hint('gs')}") from None
    lock = threading.Lock()

    def token() -> str:
        with lock:
            if not credentials.valid:
                credentials.refresh(google.auth.transport.requests.Request())
            return str(credentials.token)

    return token


def _add_bearer(token: Callable[[], str]) -> Callable[..., None]:
    def add(request: Any, **_: Any) -> None:
        request.headers["Authorization"] = f"Bearer {token()}"

    return add

