"""`batchserve deploy aws` before and around applying: the preflight's decisions (the GPU vCPU quota
with botocore's Stubber, since no local server implements Service Quotas for EC2; the image in ECR on
moto's server), `--preflight-only`, the refusal to delete a stack whose database is protected, and
`--remote-build`'s buildspec run with stand-ins for docker and the AWS CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from batchserve.deploy.aws import preflight
from batchserve.deploy.aws.apply import destroy
from batchserve.deploy.aws.build import BUILDSPEC
from batchserve.deploy.aws.session import AwsContext
from batchserve.deploy.cli import main
from batchserve.deploy.errors import UsageError
from tests.deploy.conftest import AMI_PARAMETER, REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

ACCOUNT = "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/batchserve:5"
REPOSITORY_ROOT = Path(__file__).parents[2]


class Stubs:
    """Clients answering from queued responses, by (service, region), as preflight's client factory."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], Any] = {}
        self.stubbers: dict[tuple[str, str], Stubber] = {}

    def __call__(self, service: str, region: str) -> Any:
        return self.clients[(service, region)]

    def stub(self, service: str, region: str = REGION) -> Stubber:
        if (service, region) not in self.stubbers:
            client = boto3.client(service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
            self.clients[(service, region)] = client
            self.stubbers[(service, region)] = Stubber(client)
            self.stubbers[(service, region)].activate()
        return self.stubbers[(service, region)]

    def assert_all_answered(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    made = Stubs()
    yield made
    made.assert_all_answered()


def instance_types(stubs: Stubs, vcpus: dict[str, int]) -> None:
    stubs.stub("ec2").add_response(
        "describe_instance_types",
        {"InstanceTypes": [{"InstanceType": t, "VCpuInfo": {"DefaultVCpus": n}} for t, n in vcpus.items()]},
        {"InstanceTypes": list(vcpus)},
    )


def quota(stubs: Stubs, value: float) -> None:
    stubs.stub("service-quotas").add_response(
        "get_service_quota",
        {"Quota": {"QuotaCode": preflight.GPU_QUOTA_CODE, "Value": value}},
        {"ServiceCode": "ec2", "QuotaCode": preflight.GPU_QUOTA_CODE},
    )


def plan(*types: str, max_size: int = 20, images: tuple[str, ...] = ()) -> preflight.PreflightPlan:
    return preflight.PreflightPlan(REGION, types, max_size, images)


# ---------------------------------------------------------------- the GPU quota


def test_a_quota_that_covers_max_size_times_the_largest_type_passes(stubs: Stubs) -> None:
    instance_types(stubs, {"g6.xlarge": 4, "g5.2xlarge": 8})
    quota(stubs, 160.0)
    check = preflight.check_gpu_quota(stubs, plan("g6.xlarge", "g5.2xlarge"))
    assert check is not None and check.status == "ok"
    assert "160 vCPUs in us-east-1; MaxSize 20 x 8 vCPUs (g5.2xlarge) = 160" in check.message


def test_a_short_quota_fails_with_the_console_page_the_command_and_the_size_that_fits(stubs: Stubs) -> None:
    instance_types(stubs, {"g6.xlarge": 4})
    quota(stubs, 8.0)
    check = preflight.check_gpu_quota(stubs, plan("g6.xlarge", max_size=8))
    assert check is not None and check.status == "failed"
    assert "8 vCPUs in us-east-1; MaxSize 8 x 4 vCPUs (g6.xlarge) = 32" in check.message
    assert "https://us-east-1.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-DB2E81BA" in check.message
    assert (
        "aws service-quotas request-service-quota-increase --region us-east-1 --service-code ec2 "
        "--quota-code L-DB2E81BA --desired-value 32"
    ) in check.message
    assert "or deploy with --max 2" in check.message


def test_a_zero_quota_offers_no_smaller_group(stubs: Stubs) -> None:
    instance_types(stubs, {"g4dn.xlarge": 4})
    quota(stubs, 0.0)
    check = preflight.check_gpu_quota(stubs, plan("g4dn.xlarge", max_size=1))
    assert check is not None and check.status == "failed" and "--max" not in check.message
    assert preflight.failures([check]) == [check]


def test_without_an_applied_quota_the_default_one_counts(stubs: Stubs) -> None:
    instance_types(stubs, {"g6.xlarge": 4})
    quotas = stubs.stub("service-quotas")
    quotas.add_client_error("get_service_quota", "NoSuchResourceException", "no applied quota")
    quotas.add_response(
        "get_aws_default_service_quota",
        {"Quota": {"QuotaCode": preflight.GPU_QUOTA_CODE, "Value": 64.0}},
        {"ServiceCode": "ec2", "QuotaCode": preflight.GPU_QUOTA_CODE},
    )
    check = preflight.check_gpu_quota(stubs, plan("g6.xlarge", max_size=16))
    assert check is not None and check.status == "ok"


def test_a_quota_that_cannot_be_read_is_reported_not_fatal(stubs: Stubs) -> None:
    instance_types(stubs, {"g6.xlarge": 4})
    stubs.stub("service-quotas").add_client_error("get_service_quota", "AccessDeniedException", "not allowed")
    checks = preflight.run_preflight(stubs, plan("g6.xlarge"))
    assert [c.status for c in checks] == ["unchecked"] and preflight.failures(checks) == []
    assert "AccessDeniedException" in checks[0].message and "servicequotas" in checks[0].message


def test_a_cpu_web_tier_needs_no_gpu_quota(stubs: Stubs) -> None:
    built = preflight.plan_for("remote", REGION, {"InstanceType": "c6i.large", "MaxSize": "20", "ImageUri": "a/b:1"})
    assert built.gpu_types == () and preflight.check_gpu_quota(stubs, built) is None  # no call made
    queue = preflight.plan_for(
        "queue",
        REGION,
        {
            "InstanceType": "g6.xlarge",
            "InstanceType2": "g5.xlarge",
            "InstanceType3": "",
            "MaxSize": "6",
            "ImageUri": IMAGE,
            "WebImageUri": "ghcr.io/example/web:1",
        },
    )
    assert (queue.gpu_types, queue.max_size, queue.images) == (
        ("g6.xlarge", "g5.xlarge"),
        6,
        (IMAGE, "ghcr.io/example/web:1"),
    )


# ---------------------------------------------------------------- the image, on moto's ECR


def push(local_aws: Any, repository: str, tag: str) -> str:
    ecr = boto3.client("ecr", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": "sha256:" + "c" * 64,
        },
        "layers": [],
    }
    image = ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    return str(image["image"]["imageId"]["imageDigest"])


def test_the_image_is_looked_up_in_its_ecr_repository(local_aws: Any) -> None:
    context = AwsContext(REGION, local_aws.endpoint_url)
    digest = push(local_aws, "batchserve", "5")
    assert preflight.check_image(context.client_in, IMAGE).status == "ok"
    by_digest = IMAGE.replace(":5", f"@{digest}")
    assert preflight.check_image(context.client_in, by_digest).status == "ok"

    missing_tag = preflight.check_image(context.client_in, IMAGE.replace(":5", ":6"))
    assert missing_tag.status == "failed"
    assert "holds no 6" in missing_tag.message and f"docker push {IMAGE.replace(':5', ':6')}" in missing_tag.message
    assert "--remote-build" in missing_tag.message

    missing_repository = preflight.check_image(context.client_in, IMAGE.replace("/batchserve:", "/other:"))
    assert missing_repository.status == "failed"
    assert "aws ecr create-repository --region us-east-1 --repository-name other" in missing_repository.message

    elsewhere = preflight.check_image(context.client_in, "ghcr.io/example/batchserve:5")
    assert elsewhere.status == "unchecked" and "not an ECR image" in elsewhere.message


def test_preflight_only_stops_before_anything_is_applied(
    local_aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The remote web tier: no GPU quota, only the image (which nobody pushed).
    argv = [
        "aws",
        "--region",
        REGION,
        "--endpoint-url",
        local_aws.endpoint_url,
        "--stack-name",
        "bs-pre",
        "--image",
        IMAGE,
        "--backend-url",
        "https://backend.example.org",
        "--backend-key-secret",
        "k",
        "--param",
        f"AmiParameter={AMI_PARAMETER}",
        "--skip-validation",
        "--preflight-only",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"failed: image {IMAGE}: ECR has no repository batchserve" in captured.out
    assert "preflight: 1 check(s) failed" in captured.err and "nothing was applied" in captured.err

    push(local_aws, "batchserve", "5")
    assert main(argv) == 0
    assert "preflight passed; nothing applied (--preflight-only)" in capsys.readouterr().out
    cloudformation = boto3.client("cloudformation", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    assert cloudformation.list_stacks()["StackSummaries"] == []


# ---------------------------------------------------------------- --destroy and the database


def test_destroy_refuses_a_stack_whose_database_is_protected(tmp_path: Path) -> None:
    context = AwsContext(REGION)
    stubs = Stubs()
    cloudformation, rds = stubs.stub("cloudformation"), stubs.stub("rds")
    context._clients.update({"cloudformation": stubs("cloudformation", REGION), "rds": stubs("rds", REGION)})
    stack = {
        "StackName": "shop",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/shop/1",
        "StackStatus": "CREATE_COMPLETE",
        "CreationTime": "2026-01-01T00:00:00Z",
        "Parameters": [{"ParameterKey": "ImageUri", "ParameterValue": IMAGE}],
    }
    cloudformation.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "shop"})
    cloudformation.add_response(
        "list_stack_resources",
        {
            "StackResourceSummaries": [
                {
                    "LogicalResourceId": "Database",
                    "PhysicalResourceId": "shop-database-1",
                    "ResourceType": "AWS::RDS::DBInstance",
                    "ResourceStatus": "CREATE_COMPLETE",
                    "LastUpdatedTimestamp": "2026-01-01T00:00:00Z",
                },
            ]
        },
        {"StackName": "shop"},
    )
    rds.add_response(
        "describe_db_instances",
        {"DBInstances": [{"DBInstanceIdentifier": "shop-database-1", "DeletionProtection": True}]},
        {"DBInstanceIdentifier": "shop-database-1"},
    )
    with pytest.raises(UsageError) as refused:
        destroy(context, "shop", io.StringIO(), poll_interval_s=0, timeout_s=1)
    message = str(refused.value)
    assert "shop-database-1 has deletion protection" in message
    assert f"batchserve deploy aws --stack-name shop --image {IMAGE} --param DatabaseDeletionProtection=false" in (
        message
    )
    assert "final snapshot" in message
    stubs.assert_all_answered()  # and nothing else was called: no delete_stack


# ---------------------------------------------------------------- --remote-build


def test_remote_build_renders_a_buildspec_that_builds_for_amd64_and_pushes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build"
    assert main(["aws", "--region", REGION, "--remote-build", "--image", IMAGE, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"aws codebuild start-build --region us-east-1 --project-name batchserve-image --buildspec-override "
        f"file://{out / 'buildspec.yaml'}" in printed
    )
    assert "privilegedMode=true" in printed and "aws/codebuild/standard:7.0" in printed
    spec = yaml.safe_load((out / "buildspec.yaml").read_text())
    assert spec["env"]["variables"] == {"IMAGE_URI": IMAGE, "DOCKERFILE": "Dockerfile.gpu"}
    assert (REPOSITORY_ROOT / spec["env"]["variables"]["DOCKERFILE"]).is_file()

    # Its commands, run in one shell as CodeBuild runs them, with docker and aws recording their calls.
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, body in {
        "docker": 'printf "docker %s\\n" "$*" >> "$CALLS"; [ "$1" != login ] || cat > /dev/null',
        "aws": 'printf "aws %s\\n" "$*" >> "$CALLS"; echo password',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IXUSR)
    commands = [c for phase in ("pre_build", "build", "post_build") for c in spec["phases"][phase]["commands"]]
    script = "set -e\n" + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in spec["env"]["variables"].items())
    result = subprocess.run(
        ["sh", "-c", script + "\n".join(commands)],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(log)},
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    # The two ends of the login pipe run at once, so they log in either order.
    assert sorted(calls[:2]) == [
        "aws ecr get-login-password --region us-east-1",
        f"docker login --username AWS --password-stdin {ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com",
    ]
    assert calls[2:] == [
        f"docker build --platform linux/amd64 -f Dockerfile.gpu -t {IMAGE} .",
        f"docker push {IMAGE}",
        f"docker image inspect --format {{{{index .RepoDigests 0}}}} {IMAGE}",
    ]
    assert yaml.safe_load(BUILDSPEC.read_text())["env"]["variables"]["IMAGE_URI"] == ""  # the packaged one


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("ghcr.io/example/batchserve:5", "--image must be ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG"),
        (f"{IMAGE.split(':')[0]}@sha256:{'a' * 64}", "give --image a tag, not a digest"),
    ],
)
def test_remote_build_needs_an_ecr_tag(
    image: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["aws", "--region", REGION, "--remote-build", "--image", image, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
