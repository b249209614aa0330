"""A local AWS (moto's server on 127.0.0.1) and the environment that points boto3 at it, offline."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REGION = "us-east-1"
AMI_PARAMETER = "/batchserve-test/gpu-ami"


@dataclass(frozen=True)
class LocalAws:
    endpoint_url: str

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalAws]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield LocalAws(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Fake credentials and no way to find real ones (files, profiles, instance metadata)."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def local_aws(moto_server: LocalAws, aws_env: None) -> Iterator[LocalAws]:
    """A fresh, empty local AWS with a GPU AMI published under AMI_PARAMETER."""
    import boto3

    moto_server.reset()
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_server.endpoint_url)
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=moto_server.endpoint_url)
    ami = ec2.register_image(Name="batchserve-test-gpu-ami")["ImageId"]
    ssm.put_parameter(Name=AMI_PARAMETER, Value=ami, Type="String")
    yield moto_server
    moto_server.reset()
