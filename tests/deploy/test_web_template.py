"""deploy/aws/web_template.yaml and `batchserve deploy aws --backend-url`: a CPU-only web tier that
forwards to a remote backend with a key read from Secrets Manager at boot. Lint, structure, the boot
script run with the real AWS CLI on moto, the stack on moto with its IAM grant, and the CLI end to end."""

from __future__ import annotations

import ast
import base64
import json
import re
import stat
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.cli import main
from batchserve.deploy.render import AwsProfile, render_aws
from batchserve.server.options import OPTIONS as SERVE_OPTIONS
from tests.deploy.cfn_resolve import StackScope, coerce_to_api
from tests.deploy.conftest import AMI_PARAMETER, REGION
from tests.deploy.web_boot import (
    AWS_CLI,
    BACKEND,
    DATABASE_SECRET_ARN,
    IMAGE,
    SECRET_ARN,
    TEMPLATE,
    run_boot,
    substituted,
    user_data,
)

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(TEMPLATE)


# ---------------------------------------------------------------- rendering and lint


def test_dry_run_with_every_option_renders_a_lint_clean_web_tier(
        aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["aws", "--region", "eu-west-1", "--image", IMAGE, "--dry-run", "--stack-name", "shop-web",
            "--backend-url", f"{BACKEND},https://batchserve-backend-2.example.org",
            "--backend-key-secret-arn", SECRET_ARN.replace(REGION, "eu-west-1"),
            "--min", "2", "--max", "6", "--instance-type", "c7i.large", "--out", str(tmp_path),
            "--database-url-secret", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            "--param", "AdminKeySecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:admin",
            "--param", "CertificateArn=arn:aws:acm:eu-west-1:123456789012:certificate/a"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validated: cfn-lint found no problems" in out  # cfn-lint ran on the rendered file, in eu-west-1
    assert "dry run: nothing applied" in out
    parameters = {p["ParameterKey"]: p["ParameterValue"]
                  for p in json.loads((tmp_path / "parameters.json").read_text())}
    assert parameters["BackendUrl"] == f"{BACKEND},https://batchserve-backend-2.example.org"
    assert parameters["BackendKeySecretArn"].endswith(":secret:batchserve/backend-key-AbCdEf")
    assert (parameters["MinSize"], parameters["MaxSize"], parameters["InstanceType"]) == ("2", "6", "c7i.large")
    body = (tmp_path / "template.yaml").read_text()
    assert body.startswith("# Rendered by `batchserve deploy aws` from deploy/aws/web_template.yaml")


@pytest.mark.parametrize(("extra", "message"), [
    (["--backend-url", BACKEND], "the backend requires a key"),
    (["--backend-url", "http://10.0.0.5:8000", "--backend-key-secret", "k"], "must be one or more https://"),
    (["--backend-url", f"{BACKEND} ,https://b", "--backend-key-secret", "k"], "must be one or more https://"),
    (["--backend-url", f"{BACKEND}?key=bsk_1", "--backend-key-secret", "k"], "without query or credentials"),
    (["--backend-url", "https://user:bsk_1@backend.example.org", "--backend-key-secret", "k"],
     "without query or credentials"),
    (["--backend-url", f"{BACKEND},{BACKEND}/", "--backend-key-secret", "k"], f"lists {BACKEND} twice"),
    (["--mode", "queue", "--backend-url", BACKEND, "--backend-key-secret", "k"], "does not go with --mode queue"),
    (["--mode", "remote"], "--mode remote needs --backend-url"),
    (["--backend-key-secret", "k"], "go with --backend-url"),
    (["--backend-url", BACKEND, "--backend-key-secret-arn", "batchserve/key"], "a Secrets Manager secret ARN"),
    (["--backend-url", BACKEND, "--backend-key-secret", "k", "--param", f"BackendKeySecretArn={SECRET_ARN}"],
     "name the backend's key secret once"),
    (["--backend-url", BACKEND, "--backend-key-secret", "k", "--instance-type", "g5.xlarge"],
     "InstanceType='g5.xlarge' is not one of"),
    (["--backend-url", BACKEND, "--backend-key-secret", "k", "--min", "0"], "MinSize=0 is below its minimum 1"),
    (["--backend-url", BACKEND, "--backend-key-secret", "k", "--queue-name", "shop"],
     "--queue-name goes with --mode queue"),
])
def test_backend_flags_are_usage_errors_before_anything_is_written(
        aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    argv = ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--insecure-http", "--out", str(tmp_path / "out"),
            *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_secret_flag_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["aws", "--region", REGION, "--image", IMAGE, "--backend-url", BACKEND, "--backend-key-secret", "k",
              "--backend-key-secret-arn", SECRET_ARN])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- structure


def test_the_web_tier_has_no_gpu(template: dict) -> None:
    types = template["Parameters"]["InstanceType"]["AllowedValues"]
    assert template["Parameters"]["InstanceType"]["Default"] == "c6i.large"
    # No accelerated families (g*, p*, inf*, trn*, dl*): CPU instances only.
    assert not [t for t in types if re.match(r"^(g|p|inf|trn|dl)\d", t)], types
    assert "al2023" in template["Parameters"]["AmiParameter"]["Default"]
    script = user_data(template)
    assert "--gpus" not in script and "nvidia" not in script.lower()
    kinds = [r["Type"] for r in template["Resources"].values()]
    assert kinds.count("AWS::AutoScaling::AutoScalingGroup") == 1 and "AWS::S3::Bucket" not in kinds


def test_health_follows_this_tier_not_the_backend_and_scaling_follows_requests(template: dict) -> None:
    resources = template["Resources"]
    assert resources["TargetGroup"]["Properties"]["HealthCheckPath"] == "/healthz"
    group = resources["AutoScalingGroup"]["Properties"]
    assert (group["HealthCheckType"], group["MinSize"], group["MaxSize"]) == ("ELB", {"Ref": "MinSize"},
                                                                               {"Ref": "MaxSize"})
    assert (template["Parameters"]["MinSize"]["Default"], template["Parameters"]["MaxSize"]["Default"]) == (1, 20)
    assert template["Parameters"]["MinSize"]["MinValue"] == 1
    tracking = resources["RequestCountScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ALBRequestCountPerTarget"
    assert tracking["TargetValue"] == {"Ref": "TargetRequestsPerInstance"}
    attributes = {a["Key"]: a["Value"] for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    # The tier's own wait for the backend is answered (504) before the load balancer gives up on it.
    assert "echo BATCHSERVE_UPSTREAM_TIMEOUT_MS=20000" in user_data(template)
    assert int(attributes["idle_timeout.timeout_seconds"]) * 1000 > 20000


def test_no_parameter_or_output_can_hold_a_key(template: dict) -> None:
    # Keys reach the instances only through secrets: every parameter that names a key names a secret.
    for name in template["Parameters"]:
        if "Key" in name:
            assert name.endswith(("SecretArn", "SecretName")), name
    assert not [o for o in template["Outputs"] if "Key" in o]


def test_user_data_runs_the_remote_backend_with_settings_the_server_reads(template: dict, tmp_path: Path) -> None:
    script = user_data(template)
    assert 'batchserve serve --backend remote --upstream "$BACKEND_URL"' in script
    assert "BATCHSERVE_AUTH=required" in script
    names = set(re.findall(r"BATCHSERVE_[A-Z_]+", script))
    assert "BATCHSERVE_UPSTREAM_API_KEY" in names
    assert names <= {o.env for o in SERVE_OPTIONS}  # a misspelt setting would be ignored
    path = tmp_path / "user-data.sh"
    path.write_text(substituted(script))
    assert "${" not in re.sub(r"\$\{(IMAGE%%/\*|BASH_REMATCH\[1\])\}", "", path.read_text())
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the boot script, run


needs_aws_cli = pytest.mark.skipif(AWS_CLI is None, reason="the AWS CLI is not installed")


def secret(local_aws: Any, name: str, **value: Any) -> str:
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    return str(client.create_secret(Name=name, **value)["ARN"])


@needs_aws_cli
def test_boot_reads_the_backend_key_into_a_root_only_file_and_starts_the_remote_backend(
        local_aws: Any, tmp_path: Path) -> None:
    key = "bsk_" + "k" * 43
    key_arn = secret(local_aws, "batchserve/backend-key", SecretString=key)
    database_arn = secret(local_aws, "batchserve/db", SecretString="postgresql://h/db")
    boot = run_boot(tmp_path, local_aws.endpoint_url, BackendKeySecret=key_arn, DatabaseSecret=database_arn)
    assert boot.returncode == 0, boot.log
    settings = boot.settings()
    assert settings["BATCHSERVE_UPSTREAM_API_KEY"] == key  # the whole value, no trailing newline
    assert settings["BATCHSERVE_DATABASE_URL"] == "postgresql://h/db"  # events to this tier's own database
    assert settings["BATCHSERVE_AUTH"] == "required"
    assert stat.S_IMODE(boot.env_file.stat().st_mode) == 0o600
    assert "login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com" in boot.calls
    (run,) = boot.docker_runs()
    assert f"--env-file {boot.env_file}" in run
    # The events journal lives on the instance, mounted where the server is told to keep it.
    assert f"-v {boot.journal}:{boot.journal}" in run and settings["BATCHSERVE_JOURNAL_DIR"] == str(boot.journal)
    assert boot.journal.is_dir()
    assert boot.command() == ["batchserve", "serve", "--backend", "remote", "--upstream", BACKEND]
    assert key not in boot.calls and key not in boot.log  # only in the env file


@needs_aws_cli
def test_boot_turns_the_stacks_rds_secret_into_a_database_url(local_aws: Any, tmp_path: Path) -> None:
    """The stack's own database secret is RDS's JSON (SecretTargetAttachment adds host, port and dbname);
    a password with URL delimiters must survive the trip into the URL."""
    key_arn = secret(local_aws, "batchserve/backend-key", SecretString="bsk_" + "k" * 43)
    rds = {"username": "batchserve", "password": "p@ss/w:rd?#", "engine": "postgres", "port": 5432,
           "host": "bs.abc123.us-east-1.rds.amazonaws.com", "dbname": "batchserve", "dbInstanceIdentifier": "bs"}
    database_arn = secret(local_aws, "batchserve/rds", SecretString=json.dumps(rds))
    boot = run_boot(tmp_path, local_aws.endpoint_url, BackendKeySecret=key_arn, DatabaseSecret=database_arn)
    assert boot.returncode == 0, boot.log
    url = boot.settings()["BATCHSERVE_DATABASE_URL"]
    assert url == ("postgresql://batchserve:p%40ss%2Fw%3Ard%3F%23@bs.abc123.us-east-1.rds.amazonaws.com:5432/"
                   "batchserve?sslmode=require")
    parsed = urllib.parse.urlsplit(url)
    assert urllib.parse.unquote(parsed.password or "") == rds["password"] and parsed.hostname == rds["host"]


@needs_aws_cli
def test_boot_stops_before_the_server_when_the_database_secret_cannot_be_read(
        local_aws: Any, tmp_path: Path) -> None:
    key_arn = secret(local_aws, "batchserve/backend-key", SecretString="bsk_" + "k" * 43)
    boot = run_boot(tmp_path, local_aws.endpoint_url, BackendKeySecret=key_arn, DatabaseSecret="batchserve/no-db")
    assert boot.returncode != 0 and "ResourceNotFoundException" in boot.log
    assert boot.docker_runs() == []  # no server that would keep its events nowhere


@needs_aws_cli
def test_boot_stops_before_the_server_when_the_key_cannot_be_read(local_aws: Any, tmp_path: Path) -> None:
    boot = run_boot(tmp_path, local_aws.endpoint_url, ImageUri="ghcr.io/example/batchserve:3",
                    BackendKeySecret="batchserve/no-such-key")
    assert boot.returncode != 0
    assert "ResourceNotFoundException" in boot.log
    assert boot.docker_runs() == []  # no server without its key
    assert not boot.env_file.exists()


@needs_aws_cli
def test_boot_refuses_a_secret_without_a_string(local_aws: Any, tmp_path: Path) -> None:
    secret(local_aws, "batchserve/binary-key", SecretBinary=b"bsk_")
    boot = run_boot(tmp_path, local_aws.endpoint_url, ImageUri="ghcr.io/example/batchserve:3",
                    BackendKeySecret="batchserve/binary-key")  # by name, as --backend-key-secret gives it
    assert boot.returncode != 0 and "holds no SecretString" in boot.log
    assert boot.docker_runs() == []


# ---------------------------------------------------------------- on moto


def iam_allows(document: dict[str, Any], action: str, resource: str) -> bool:
    """Whether an Allow statement covers action on resource, with IAM's wildcards ('*' any run, '?' one
    character), which moto's own evaluator does not implement for '?'."""
    def matches(pattern: str, value: str) -> bool:
        return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None

    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and any(matches(a, action) for a in actions) and any(
                matches(r, resource) for r in resources):
            return True
    return False


def role_document(local_aws: Any, stack: str) -> dict[str, Any]:
    cf = boto3.client("cloudformation", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    role = cf.describe_stack_resource(StackName=stack, LogicalResourceId="InstanceRole")["StackResourceDetail"][
        "PhysicalResourceId"]
    document = iam.get_role_policy(RoleName=role, PolicyName="batchserve-web")["PolicyDocument"]
    if isinstance(document, str):  # moto's CloudFormation keeps an inline policy as the repr of a dict
        document = ast.literal_eval(document)
    return dict(document)


def test_stack_on_moto_reads_the_key_by_arn_and_scales_on_requests(local_aws: Any, tmp_path: Path) -> None:
    url = local_aws.endpoint_url
    clients = {name: boto3.client(name, region_name=REGION, endpoint_url=url)
               for name in ("cloudformation", "ec2", "autoscaling", "elbv2", "secretsmanager")}
    key = "bsk_" + "s" * 43
    arn = clients["secretsmanager"].create_secret(Name="batchserve/backend-key", SecretString=key)["ARN"]
    ec2 = clients["ec2"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    # moto's CloudFormation cannot create secrets: the stack reads an existing database URL secret.
    values = {"ImageUri": IMAGE, "BackendUrl": BACKEND, "BackendKeySecretArn": arn, "VpcId": vpc,
              "SubnetIds": ",".join(subnets[:2]), "AmiParameter": AMI_PARAMETER,
              "DatabaseUrlSecretArn": DATABASE_SECRET_ARN}
    rendered = render_aws(AwsProfile(region=REGION, stack_name="bs-web", parameters=values), tmp_path,
                          cfn_yaml.load(TEMPLATE), source_name="web_template.yaml")
    assert key not in rendered.template_body
    cf = clients["cloudformation"]
    cf.create_stack(StackName="bs-web", TemplateBody=rendered.template_body, Capabilities=["CAPABILITY_IAM"],
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()])
    stack = cf.describe_stacks(StackName="bs-web")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["BackendUrl"] == BACKEND and outputs["AutoScalingGroupName"] == "bs-web-web"

    group = clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=["bs-web-web"])[
        "AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["HealthCheckType"]) == (1, 20, "ELB")
    data = clients["ec2"].describe_launch_template_versions(
        LaunchTemplateId=group["LaunchTemplate"]["LaunchTemplateId"])["LaunchTemplateVersions"][0][
        "LaunchTemplateData"]
    assert data["InstanceType"] == "c6i.large"
    script = base64.b64decode(data["UserData"]).decode()
    assert f"BACKEND_KEY_SECRET='{arn}'" in script and f"BACKEND_URL='{BACKEND}'" in script
    assert f"DATABASE_SECRET='{DATABASE_SECRET_ARN}'" in script
    assert key not in script  # the key is read at boot, never carried in the user data
    target_group = clients["elbv2"].describe_target_groups(TargetGroupArns=group["TargetGroupARNs"])[
        "TargetGroups"][0]
    assert target_group["HealthCheckPath"] == "/healthz"

    document = role_document(local_aws, "bs-web")
    assert iam_allows(document, "secretsmanager:GetSecretValue", arn)
    other = arn.replace("batchserve/backend-key", "batchserve/other-key")
    assert not iam_allows(document, "secretsmanager:GetSecretValue", other)
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in a for a in actions) and statement["Resource"] != "*", statement

    # moto's CloudFormation skips scaling policies: create the one policy from the template's own properties.
    summaries = cf.list_stack_resources(StackName="bs-web")["StackResourceSummaries"]
    template = cfn_yaml.loads(rendered.template_body)
    scope = StackScope(template, {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()} | values,
                       {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries},
                       {"AWS::Region": REGION, "AWS::StackName": "bs-web", "AWS::Partition": "aws",
                        "AWS::AccountId": ACCOUNT})
    autoscaling = clients["autoscaling"]
    props = scope.evaluate(template["Resources"]["RequestCountScalingPolicy"]["Properties"])
    autoscaling.put_scaling_policy(**coerce_to_api(autoscaling, "PutScalingPolicy",
                                                   {"PolicyName": "RequestCountScalingPolicy", **props}))
    (policy,) = autoscaling.describe_policies(AutoScalingGroupName="bs-web-web")["ScalingPolicies"]
    tracking = policy["TargetTrackingConfiguration"]
    assert tracking["TargetValue"] == 7200.0
    label = tracking["PredefinedMetricSpecification"]["ResourceLabel"]
    assert re.fullmatch(r"app/[^/]+/[^/]+/targetgroup/[^/]+/[^/]+", label), label


def test_deploy_aws_backend_url_creates_reports_and_destroys_the_web_tier(
        local_aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["aws", "--region", REGION, "--endpoint-url", local_aws.endpoint_url, "--poll-interval", "0.05",
            "--stack-name", "bs-split"]
    create = [*base, "--image", IMAGE, "--backend-url", BACKEND, "--backend-key-secret", "batchserve/backend-key",
              "--max", "5", "--param", f"AmiParameter={AMI_PARAMETER}", "--out", str(tmp_path / "out"),
              "--insecure-http", "--skip-preflight", "--database-url-secret", DATABASE_SECRET_ARN]
    assert main(create) == 0
    out = capsys.readouterr().out
    assert "validated: cfn-lint found no problems" in out  # the key-by-name rendering, linted
    assert "stack bs-split: CREATE_COMPLETE" in out
    assert "AutoScalingGroupName   bs-split-web" in out and f"BackendUrl             {BACKEND}" in out

    # By name, the grant covers the secret's ARN (the name, '-' and six characters) and nothing longer.
    document = role_document(local_aws, "bs-split")
    prefix = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batchserve/backend-key"
    assert iam_allows(document, "secretsmanager:GetSecretValue", f"{prefix}-AbCdEf")
    assert not iam_allows(document, "secretsmanager:GetSecretValue", f"{prefix}-old-AbCdEf")
    assert not iam_allows(document, "secretsmanager:GetSecretValue", f"{prefix}2-AbCdEf")

    assert main([*base, "--status"]) == 0
    out = capsys.readouterr().out
    assert "capacity: desired 1 (min 1, max 5)" in out and "load balancer targets:" in out
    assert main([*base, "--destroy"]) == 0
    out = capsys.readouterr().out
    assert "stack bs-split deleted" in out and "bucket" not in out  # this tier keeps no data of its own
