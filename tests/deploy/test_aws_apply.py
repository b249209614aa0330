"""`batchserve deploy aws` end to end against moto's server: create, status, update, destroy, and its errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.aws.stack import failure_report, format_event, is_missing_stack_error, is_no_update_error
from batchserve.deploy.cli import main
from tests.deploy.conftest import AMI_PARAMETER, REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:1.0"
# moto's CloudFormation cannot create secrets: the stacks read an existing database URL secret.
DATABASE_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:batchserve/db-AbCdEf"
# Service Quotas has no local server, and the image is in no registry: tests/deploy/test_aws_preflight.py.
APPLY = ("--insecure-http", "--skip-preflight", "--database-url-secret", DATABASE_SECRET_ARN)


def deploy(local_aws, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "aws",
        "--region",
        REGION,
        "--endpoint-url",
        local_aws.endpoint_url,
        "--poll-interval",
        "0.05",
        "--stack-name",
        "bs-e2e",
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def group(local_aws) -> dict:
    client = boto3.client("autoscaling", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    groups = client.describe_auto_scaling_groups(AutoScalingGroupNames=["bs-e2e-asg"])["AutoScalingGroups"]
    return groups[0] if groups else {}


def test_create_status_update_destroy(local_aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create = deploy(
        local_aws,
        tmp_path,
        "--image",
        IMAGE,
        "--min",
        "1",
        "--max",
        "4",
        "--instance-type",
        "g5.xlarge",
        "--param",
        f"AmiParameter={AMI_PARAMETER}",
        *APPLY,
    )
    assert main(create) == 0
    out = capsys.readouterr().out
    assert "validated: cfn-lint found no problems" in out
    assert "aws cloudformation deploy --region us-east-1 --stack-name bs-e2e" in out  # the equivalent command
    assert "network: default VPC vpc-" in out and "(zones offering g5.xlarge)" in out  # no --vpc-id: looked up
    # The default VPC has a subnet in every zone; g5.xlarge is not offered in us-east-1e (moto's offerings).
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    zones = {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets()["Subnets"]}
    chosen = {zones[s] for s in group(local_aws)["VPCZoneIdentifier"].split(",")}
    assert "us-east-1e" in zones.values() and chosen == {
        "us-east-1a",
        "us-east-1b",
        "us-east-1c",
        "us-east-1d",
        "us-east-1f",
    }
    assert "stack bs-e2e: CREATE_COMPLETE" in out
    assert "CREATE_COMPLETE" in out and "AWS::CloudFormation::Stack" in out  # progress events were printed
    assert "AutoScalingGroupName   bs-e2e-asg" in out
    rendered = json.loads((tmp_path / "out" / "parameters.json").read_text())
    assert {"ParameterKey": "ImageUri", "ParameterValue": IMAGE} in rendered
    assert (group(local_aws)["MinSize"], group(local_aws)["MaxSize"]) == (1, 4)

    assert main(deploy(local_aws, tmp_path, "--status")) == 0
    out = capsys.readouterr().out
    assert "stack bs-e2e: CREATE_COMPLETE" in out
    assert "capacity: desired 1 (min 1, max 4)" in out
    assert "load balancer targets:" in out

    # An update that names only the sizes keeps every other deployed value (the instance type here).
    # The AMI parameter is repeated because moto resolves an SSM-typed parameter's default eagerly.
    update = deploy(
        local_aws,
        tmp_path,
        "--image",
        IMAGE,
        "--min",
        "0",
        "--max",
        "2",
        "--param",
        f"AmiParameter={AMI_PARAMETER}",
        "--skip-preflight",
    )
    assert main(update) == 0  # no --insecure-http: an update keeps what the creation chose
    out = capsys.readouterr().out
    assert "updating stack bs-e2e" in out and "stack bs-e2e: UPDATE_COMPLETE" in out
    assert "network: kept as deployed" in out
    assert (group(local_aws)["MinSize"], group(local_aws)["MaxSize"]) == (0, 2)
    cf = boto3.client("cloudformation", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    deployed = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in cf.describe_stacks(StackName="bs-e2e")["Stacks"][0]["Parameters"]
    }
    assert deployed["InstanceType"] == "g5.xlarge" and deployed["MaxSize"] == "2"

    assert main(deploy(local_aws, tmp_path, "--destroy")) == 0
    out = capsys.readouterr().out
    assert "stack bs-e2e deleted" in out
    assert "was kept with its objects" in out  # the bucket outlives the stack
    assert group(local_aws) == {}
    assert main(deploy(local_aws, tmp_path, "--status")) == 1
    assert "no stack bs-e2e in us-east-1" in capsys.readouterr().out
    assert main(deploy(local_aws, tmp_path, "--destroy")) == 0  # nothing left: still fine
    assert "nothing to delete" in capsys.readouterr().out


def test_explicit_network_is_used_as_given(local_aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate("ab")
    ]
    argv = deploy(
        local_aws,
        tmp_path,
        "--image",
        IMAGE,
        "--vpc-id",
        vpc,
        "--subnet-ids",
        ",".join(subnets),
        "--param",
        f"AmiParameter={AMI_PARAMETER}",
        "--skip-validation",
        *APPLY,
    )
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "default VPC" not in out and "validated" not in out
    assert sorted(group(local_aws)["VPCZoneIdentifier"].split(",")) == sorted(subnets)

    # A new image alone: the update keeps the custom network, never the default VPC's.
    new_image = IMAGE.replace(":1.0", ":1.1")
    update = deploy(
        local_aws,
        tmp_path,
        "--image",
        new_image,
        "--param",
        f"AmiParameter={AMI_PARAMETER}",
        "--skip-validation",
        "--skip-preflight",
    )
    assert main(update) == 0
    out = capsys.readouterr().out
    assert "stack bs-e2e: UPDATE_COMPLETE" in out
    assert f"network: kept as deployed: VPC {vpc}" in out and "default VPC" not in out
    cf = boto3.client("cloudformation", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    deployed = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in cf.describe_stacks(StackName="bs-e2e")["Stacks"][0]["Parameters"]
    }
    # (moto reads a list parameter back as its Python repr; CloudFormation as "a,b")
    assert deployed["VpcId"] == vpc and sorted(re.findall(r"subnet-[0-9a-f]+", deployed["SubnetIds"])) == sorted(
        subnets
    )
    assert deployed["ImageUri"] == new_image and deployed["DatabaseUrlSecretArn"] == DATABASE_SECRET_ARN
    assert sorted(group(local_aws)["VPCZoneIdentifier"].split(",")) == sorted(subnets)


def test_missing_credentials_name_the_ways_to_provide_them(
    local_aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(deploy(local_aws, tmp_path, "--image", IMAGE, "--insecure-http")) == 1
    err = capsys.readouterr().err
    assert "no AWS credentials found" in err
    assert "AWS_ACCESS_KEY_ID" in err and "AWS_PROFILE" in err
    assert not (tmp_path / "out").exists()  # nothing rendered before the credentials were known


def test_usage_errors_exit_2_before_any_call(aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No endpoint and no server: these must fail before anything is sent anywhere.
    cases = [
        (["aws", "--region", "moon-1", "--image", IMAGE, "--dry-run"], "unknown AWS region 'moon-1'"),
        (["aws", "--region", REGION, "--dry-run"], "--image is required"),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--min", "5", "--max", "2"],
            "MinSize 5 is above MaxSize 2",
        ),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--instance-type", "p4d.24xlarge"],
            "is not one of",
        ),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--param", "Colour=blue"],
            "unknown template parameter 'Colour'",
        ),
        (["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--param", "novalue"], "--param takes KEY=VALUE"),
        (["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--vpc-id", "vpc-0abc"], "go together"),
        (["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--param", "AllowedCidr=everyone"], "IPv4 CIDR"),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--instance-types", "g6.xlarge,,g5.xlarge"],
            "without empty entries",
        ),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--instance-types", "g6.xlarge,g6.xlarge"],
            "lists g6.xlarge twice",
        ),
        (
            [
                "aws",
                "--region",
                REGION,
                "--image",
                IMAGE,
                "--dry-run",
                "--instance-types",
                "g6.xlarge,g5.xlarge,g4dn.xlarge,g6e.xlarge",
            ],
            "at most 3 types",
        ),
        (
            ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--instance-types", "g6.xlarge,p4d.24xlarge"],
            "InstanceType2='p4d.24xlarge'",
        ),
        (
            [
                "aws",
                "--region",
                REGION,
                "--image",
                IMAGE,
                "--dry-run",
                "--instance-types",
                "g6.xlarge",
                "--instance-type",
                "g5.xlarge",
            ],
            "not both",
        ),
        (
            [
                "aws",
                "--region",
                REGION,
                "--image",
                IMAGE,
                "--dry-run",
                "--instance-types",
                "g6.xlarge,g5.xlarge",
                "--param",
                "WarmPoolSize=2",
            ],
            "A warm pool (WarmPoolSize) needs a single instance type",
        ),
        (["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--preflight-only"], "--preflight-only checks"),
    ]
    for argv, message in cases:
        assert main([*argv, "--insecure-http", "--out", str(tmp_path / "out")]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists()


def test_https_is_the_default_and_plain_http_is_asked_for(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--out", str(tmp_path / "out")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--certificate-arn" in err and "--insecure-http" in err
    both = [*base, "--certificate-arn", "arn:aws:acm:us-east-1:123456789012:certificate/a", "--insecure-http"]
    with pytest.raises(SystemExit):  # argparse: not allowed with argument
        main(both)
    capsys.readouterr()
    assert main([*base, "--certificate-arn", "certificate/a"]) == 2
    assert "must be empty or an ACM certificate ARN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main([*base, "--certificate-arn", "arn:aws:acm:us-east-1:123456789012:certificate/a"]) == 0
    capsys.readouterr()
    rendered = cfn_yaml.loads((tmp_path / "out" / "template.yaml").read_text())
    assert rendered["Parameters"]["CertificateArn"]["Default"] == "arn:aws:acm:us-east-1:123456789012:certificate/a"
    assert main([*base, "--insecure-http"]) == 0
    assert "CertificateArn=" in capsys.readouterr().out  # said on purpose, in the parameters sent


def test_dry_run_renders_and_validates_without_credentials(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    argv = [
        "aws",
        "--region",
        "eu-west-1",
        "--image",
        IMAGE,
        "--dry-run",
        "--min",
        "0",
        "--out",
        str(tmp_path),
        "--instance-types",
        "g6.xlarge,g5.2xlarge",
        "--insecure-http",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing applied" in out
    assert "--parameter-overrides ImageUri=" in out and "MinSize=0" in out
    assert "InstanceType=g6.xlarge InstanceType2=g5.2xlarge InstanceType3=" in out
    assert "a creation takes VpcId and SubnetIds from the region's default VPC" in out
    # What the preflight would check, without calling anything.
    assert "EC2 quota L-DB2E81BA (Running On-Demand G and VT instances) in eu-west-1 >= 20 x" in out
    assert f"image {IMAGE} exists in ECR" in out
    rendered = (tmp_path / "template.yaml").read_text()
    assert "Default: 0" in rendered  # the deployment's value became the parameter default


def test_no_update_and_missing_stack_errors_are_recognised() -> None:
    def error(message: str) -> ClientError:
        return ClientError({"Error": {"Code": "ValidationError", "Message": message}}, "UpdateStack")

    assert is_no_update_error(error("No updates are to be performed."))
    assert not is_no_update_error(error("Template format error"))
    assert is_missing_stack_error(error("Stack with id bs does not exist"))
    assert not is_missing_stack_error(ClientError({"Error": {"Code": "Throttling", "Message": "does not exist"}}, "X"))


def test_failed_events_show_their_reason() -> None:
    line = format_event(
        {
            "Timestamp": datetime(2025, 1, 1, 12, 0, 5, tzinfo=UTC),
            "ResourceStatus": "CREATE_FAILED",
            "ResourceType": "AWS::AutoScaling::AutoScalingGroup",
            "LogicalResourceId": "AutoScalingGroup",
            "ResourceStatusReason": "You have requested more vCPU capacity than your current vCPU limit",
        }
    )
    assert line.startswith("12:00:05  CREATE_FAILED")
    assert "AutoScalingGroup  (You have requested more vCPU capacity" in line


def test_failure_report_lists_each_failed_resource_with_its_reason() -> None:
    failures = [
        {
            "LogicalResourceId": "AutoScalingGroup",
            "ResourceType": "AWS::AutoScaling::AutoScalingGroup",
            "ResourceStatus": "CREATE_FAILED",
            "ResourceStatusReason": "You have requested more vCPU capacity",
        },
        {
            "LogicalResourceId": "WarmPool",
            "ResourceType": "AWS::AutoScaling::WarmPool",
            "ResourceStatus": "CREATE_FAILED",
            "ResourceStatusReason": None,
        },
    ]
    report = failure_report(
        "stack creation",
        "bs",
        {"StackStatus": "ROLLBACK_COMPLETE", "StackStatusReason": "The following resource(s) failed to create"},
        failures,
    )
    assert report.splitlines() == [
        "stack creation failed: stack bs is ROLLBACK_COMPLETE",
        "  reason: The following resource(s) failed to create",
        "  AutoScalingGroup (AWS::AutoScaling::AutoScalingGroup): CREATE_FAILED: You have requested more vCPU capacity",
        "  WarmPool (AWS::AutoScaling::WarmPool): CREATE_FAILED: no reason given",
    ]
