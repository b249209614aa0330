"""deploy/aws/maintenance_template.yaml: the Fargate task that runs `batchserve` against a deployed
stack's database (scheduled `db backup`, one-off `keys create`), fed by that stack's outputs."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.validate import lint_cloudformation
from tests.deploy.conftest import REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

TEMPLATE = cfn_yaml.TEMPLATE_PATH.with_name("maintenance_template.yaml")
STACKS = ("template.yaml", "queue_template.yaml", "web_template.yaml")
SECRET = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:rds!batchserve-AbCdEf"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(TEMPLATE)


def test_it_lints_clean() -> None:
    assert lint_cloudformation(TEMPLATE, regions=[REGION, "eu-west-1"]) == []


@pytest.mark.parametrize("stack", STACKS)
def test_every_deployed_stack_outputs_what_it_takes(template: dict[str, Any], stack: str) -> None:
    outputs = cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(stack))["Outputs"]
    assert {"SubnetIds", "MaintenanceSecurityGroupId", "DatabaseSecretArn", "DatabaseEndpoint"} <= set(outputs)
    assert {"SubnetIds", "MaintenanceSecurityGroupId", "DatabaseSecretArn", "DatabaseEndpoint"} <= set(
        template["Parameters"]
    )
    # The database admits the maintenance group only where the stack creates the database.
    ingress = cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(stack))["Resources"]["DatabaseSecurityGroup"][
        "Properties"
    ]["SecurityGroupIngress"]
    assert {"Ref": "MaintenanceSecurityGroup"} in [r["SourceSecurityGroupId"] for r in ingress]


def test_the_schedule_runs_db_backup_with_no_instance(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    target = resources["BackupSchedule"]["Properties"]["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    ecs = target["EcsParameters"]
    assert (ecs["TaskDefinitionArn"], ecs["LaunchType"]) == ({"Ref": "TaskDefinition"}, "FARGATE")
    network = ecs["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["SecurityGroups"] == [{"Ref": "MaintenanceSecurityGroupId"}]
    (container,) = resources["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["Command"] == ["batchserve", "db", "backup", "--to", {"Fn::Sub": "s3://${BackupBucket}/backups/"}]
    # The scheduler may start that task on that cluster, and hand it its two roles; nothing more.
    statements = resources["SchedulerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert [(s["Action"], s["Resource"]) for s in statements] == [
        ("ecs:RunTask", {"Ref": "TaskDefinition"}),
        ("iam:PassRole", [{"Fn::GetAtt": ["ExecutionRole", "Arn"]}, {"Fn::GetAtt": ["TaskRole", "Arn"]}]),
    ]
    task = resources["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert {s["Sid"]: s["Resource"] for s in task} == {
        "Backups": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BackupBucket}/backups/*"},
        "ListBackups": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BackupBucket}"},
    }


def test_on_moto_the_task_reads_the_rds_password_and_nothing_else_from_the_secret(local_aws: Any) -> None:
    url = local_aws.endpoint_url
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    group = ec2.create_security_group(GroupName="maintenance", Description="m", VpcId=vpc)["GroupId"]
    host = "bs-db.abc123.us-east-1.rds.amazonaws.com"
    cf = boto3.client("cloudformation", region_name=REGION, endpoint_url=url)
    values = {
        "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:5",
        "SubnetIds": ",".join(subnets[:2]),
        "MaintenanceSecurityGroupId": group,
        "DatabaseSecretArn": SECRET,
        "DatabaseEndpoint": host,
        "BackupBucket": "bs-backups",
    }
    cf.create_stack(
        StackName="bs-maint",
        TemplateBody=TEMPLATE.read_text(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
    )
    assert cf.describe_stacks(StackName="bs-maint")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    outputs = {
        o["OutputKey"]: o["OutputValue"] for o in cf.describe_stacks(StackName="bs-maint")["Stacks"][0]["Outputs"]
    }
    ecs = boto3.client("ecs", region_name=REGION, endpoint_url=url)
    (container,) = ecs.describe_task_definition(taskDefinition=outputs["TaskDefinitionArn"])["taskDefinition"][
        "containerDefinitions"
    ]
    environment = {e["name"]: e["value"] for e in container["environment"]}
    # The URL without its password; PostgreSQL clients take PGPASSWORD from the environment.
    assert environment["BATCHSERVE_DATABASE_URL"] == f"postgresql://batchserve@{host}:5432/batchserve?sslmode=require"
    assert [(s["name"], s["valueFrom"]) for s in container["secrets"]] == [("PGPASSWORD", f"{SECRET}:password::")]
    assert container["command"] == ["batchserve", "db", "backup", "--to", "s3://bs-backups/backups/"]


@pytest.mark.parametrize(("stack", "bucket"), [("template.yaml", "Bucket"), ("queue_template.yaml", "OutputBucket")])
def test_the_stacks_bucket_is_the_backups_default_target(template: dict[str, Any], stack: str, bucket: str) -> None:
    # The stack's bucket keeps backups/ for a while, says so in an output, and the scheduled task
    # writes exactly there: the output is what `BackupBucket` and `db backup --to` are given.
    deployed = cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(stack))
    assert deployed["Outputs"]["BackupLocation"]["Value"] == {"Fn::Sub": f"s3://${{{bucket}}}/backups/"}
    rules = deployed["Resources"][bucket]["Properties"]["LifecycleConfiguration"]["Rules"]
    (expiry,) = [r for r in rules if r.get("Prefix") == "backups/"]
    assert expiry["Status"] == "Enabled" and expiry["ExpirationInDays"] == {"Ref": "BackupObjectRetentionDays"}
    (container,) = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["Command"][-1] == {"Fn::Sub": "s3://${BackupBucket}/backups/"}
