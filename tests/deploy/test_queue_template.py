"""deploy/aws/queue_template.yaml (queue mode: web tier, SQS + S3, GPU workers): lint-clean, the
backlog-per-worker scaling and the wake-from-zero alarm, least-privilege roles checked with moto's
IAM policy evaluator on the stack moto creates, and `batchserve deploy aws --mode queue`."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.cli import main
from batchserve.deploy.render import AwsProfile, render_aws
from batchserve.jobs.options import WORKER_OPTIONS
from batchserve.server.options import OPTIONS as SERVE_OPTIONS
from tests.deploy.cfn_resolve import StackScope, coerce_to_api
from tests.deploy.conftest import AMI_PARAMETER, REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

TEMPLATE = cfn_yaml.TEMPLATE_PATH.with_name("queue_template.yaml")
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:2"
ACCOUNT = "123456789012"
STACK, NAME = "bs-q", "shop"
DATABASE_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:batchserve/db-AbCdEf"


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(TEMPLATE)


def resources_of(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def metric_stats(metrics: list[dict]) -> dict[str, dict]:
    return {m["Id"]: m["MetricStat"] for m in metrics if "MetricStat" in m}


# ---------------------------------------------------------------- lint


def test_dry_run_with_every_option_renders_a_lint_clean_queue_stack(
        aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["aws", "--mode", "queue", "--region", "eu-west-1", "--image", IMAGE, "--dry-run", "--min", "0",
            "--stack-name", "shop", "--out", str(tmp_path),
            "--param", "WarmPoolSize=2", "--param", "CertificateArn=arn:aws:acm:eu-west-1:123456789012:certificate/a",
            "--param", "DatabaseUrlSecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            "--param", "AdminKeySecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:admin",
            "--param", "InputBucketName=shop-images-eu", "--param", "WebImageUri=example.org/batchserve:cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validated: cfn-lint found no problems" in out  # cfn-lint ran on the rendered file, in eu-west-1
    assert "dry run: nothing applied" in out
    rendered = json.loads((tmp_path / "parameters.json").read_text())
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in rendered}
    assert parameters["QueueName"] == "shop"  # the stack name, by default
    body = (tmp_path / "template.yaml").read_text()
    # Too large as block YAML for CloudFormation's inline limit: the same template in flow style.
    assert "# Compact form" in body and len(body.encode()) <= 51_200
    assert cfn_yaml.loads(body)["Resources"]["BacklogScalingPolicy"]["Type"] == "AWS::AutoScaling::ScalingPolicy"


def test_queue_names_are_checked_before_rendering(
        aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["aws", "--region", REGION, "--image", IMAGE, "--dry-run", "--insecure-http",
              "--out", str(tmp_path / "out")]
    cases = [
        (["--mode", "queue", "--stack-name", "Shop"], "pass --queue-name NAME"),
        (["--mode", "queue", "--queue-name", "Shop_1"], "QueueName='Shop_1': must be 1-38 lower-case"),
        (["--queue-name", "shop"], "--queue-name goes with --mode queue"),
        (["--mode", "queue", "--param", "InputBucketName=No_Such"], "valid S3 bucket name"),
    ]
    for extra, message in cases:
        assert main([*common, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- structure


def test_workers_track_the_backlog_per_in_service_worker(template: dict) -> None:
    resources = template["Resources"]
    policy = resources["BacklogScalingPolicy"]["Properties"]
    assert (policy["AutoScalingGroupName"], policy["PolicyType"]) == ({"Ref": "WorkerGroup"}, "TargetTrackingScaling")
    tracking = policy["TargetTrackingConfiguration"]
    assert tracking["TargetValue"] == {"Ref": "BacklogPerInstance"}
    metrics = tracking["CustomizedMetricSpecification"]["Metrics"]
    returned = [m for m in metrics if m.get("ReturnData", True)]
    assert len(returned) == 1 and returned[0]["Expression"].replace(" ", "") == "waiting/workers"
    stats = metric_stats(metrics)
    assert stats["waiting"]["Metric"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["RequestsQueue", "QueueName"]}}]}
    assert stats["workers"]["Metric"] == {
        "Namespace": "AWS/AutoScaling", "MetricName": "GroupInServiceInstances",
        "Dimensions": [{"Name": "AutoScalingGroupName", "Value": {"Ref": "WorkerGroup"}}]}
    assert resources["RequestsQueue"]["Properties"]["QueueName"] == {"Fn::Sub": "${QueueName}-requests"}
    # The default is the derivation the description shows: 10 s accepted x 200 images/s per worker.
    backlog = template["Parameters"]["BacklogPerInstance"]
    assert backlog["Default"] == 10 * 200 == 2000
    assert all(fact in backlog["Description"] for fact in ("10 s", "200 images/s", "docs/deploy.md"))


def test_an_alarm_on_waiting_messages_wakes_the_group_from_zero_and_idleness_returns_it(template: dict) -> None:
    resources = template["Resources"]
    wake, alarm = resources["WakePolicy"], resources["WakeAlarm"]
    assert wake["Condition"] == alarm["Condition"] == "ScaleToZero"
    assert template["Conditions"]["ScaleToZero"] == {"Fn::Equals": [{"Ref": "MinSize"}, 0]}
    assert (wake["Properties"]["PolicyType"], wake["Properties"]["AdjustmentType"]) == ("StepScaling",
                                                                                        "ChangeInCapacity")
    assert wake["Properties"]["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    props = alarm["Properties"]
    assert props["AlarmActions"] == [{"Ref": "WakePolicy"}]
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    stats = metric_stats(props["Metrics"])
    assert stats["waiting"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert stats["waiting"]["Metric"]["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["RequestsQueue", "QueueName"]}
    assert stats["desired"]["Metric"]["MetricName"] == "GroupDesiredCapacity"
    # Only while the group is at zero: once a worker is wanted, target tracking decides.
    (expression,) = [m["Expression"] for m in props["Metrics"] if m.get("ReturnData")]
    assert re.fullmatch(r"IF\(FILL\(desired, 0\) == 0, FILL\(waiting, 0\), 0\)", expression)

    idle, to_zero = resources["IdleAlarm"]["Properties"], resources["ScaleToZeroPolicy"]["Properties"]
    assert idle["AlarmActions"] == [{"Ref": "ScaleToZeroPolicy"}]
    assert to_zero["AdjustmentType"] == "ExactCapacity" and to_zero["StepAdjustments"][0]["ScalingAdjustment"] == 0
    idle_metrics = {s["Metric"]["MetricName"] for s in metric_stats(idle["Metrics"]).values()}
    assert idle_metrics == {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"}
    assert idle["TreatMissingData"] == "breaching"


def test_queues_and_buckets_follow_queue_mode_conventions(template: dict) -> None:
    resources = template["Resources"]
    assert resources["RequestsQueue"]["Properties"]["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}, "maxReceiveCount": 3}
    assert resources["DeadLetterQueue"]["Properties"]["QueueName"] == {"Fn::Sub": "${QueueName}-requests-dlq"}
    assert resources["ResponsesQueue"]["Properties"]["QueueName"] == {"Fn::Sub": "${QueueName}-responses"}
    for logical_id, suffix in (("InputBucket", "input"), ("OutputBucket", "output")):
        bucket = resources[logical_id]
        props = bucket["Properties"]
        assert props["BucketName"]["Fn::If"][2] == {"Fn::Sub": f"${{QueueName}}-{suffix}"}
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert bucket["DeletionPolicy"] == "Retain"
    rules = resources["OutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    sync = next(r for r in rules if r.get("Prefix") == "sync/")
    assert sync["ExpirationInDays"] == {"Ref": "SyncResultsDays"}
    assert template["Parameters"]["QueueName"]["AllowedPattern"] == "^[a-z0-9][a-z0-9-]{0,37}$"


def user_data(template: dict, launch_template: str) -> str:
    sub = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"][
        "Fn::Sub"]
    return str(sub[0])


def test_launch_templates_run_the_two_tiers(template: dict, tmp_path: Path) -> None:
    worker, web = user_data(template, "WorkerLaunchTemplate"), user_data(template, "WebLaunchTemplate")
    assert 'batchserve worker --queue-name "$QUEUE_NAME" --scale-in-protection' in worker
    assert "--gpus all" in worker and "-p 80" not in worker  # nothing reaches a worker
    assert "ASG_NAME='${AWS::StackName}-workers'" in worker and "BATCHSERVE_AUTOSCALING_GROUP=$ASG_NAME" in worker
    assert 'batchserve serve --backend queue --queue-name "$QUEUE_NAME"' in web
    assert "--gpus" not in web and "BATCHSERVE_AUTH=required" in web
    # Every setting the boot scripts write is one the command reads (a misspelt one would be ignored),
    # but BATCHSERVE_REQUIRE_GPU, which `batchserve serve` reads and the worker does not read yet: the
    # GPU tier asks for it so that a worker that learns it fails without CUDA instead of crawling on CPU.
    assert set(re.findall(r"BATCHSERVE_[A-Z_]+", worker)) - {"BATCHSERVE_REQUIRE_GPU"} <= {
        o.env for o in WORKER_OPTIONS}
    assert set(re.findall(r"BATCHSERVE_[A-Z_]+", web)) <= {o.env for o in SERVE_OPTIONS}
    data = template["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                       "HttpPutResponseHopLimit": 2, "InstanceMetadataTags": "enabled"}
    assert template["Resources"]["WorkerGroup"]["Properties"]["AutoScalingGroupName"] == {
        "Fn::Sub": "${AWS::StackName}-workers"}

    values = {"AWS::Region": "us-east-1", "AWS::StackName": "s", "ImageUri": IMAGE, "WebImage": IMAGE,
              "QueueName": "shop", "DatabaseSecret": DATABASE_SECRET_ARN, "AdminKeySecretArn": "",
              "Models": "efficientnet_lite0",
              "LogGroup": "/batchserve/s", "InputBucket": "shop-input", "OutputBucket": "shop-output"}
    for name, script in (("worker", worker), ("web", web)):
        substituted = re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: values[m.group(1)], script).replace("${!", "${")
        assert "${" not in re.sub(r"\$\{(IMAGE%%/\*|BASH_REMATCH\[1\])\}", "", substituted), name
        path = tmp_path / f"{name}.sh"
        path.write_text(substituted)
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (name, result.stderr)


# ---------------------------------------------------------------- on moto


class QueueStackScope(StackScope):
    def get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "QueueName":  # a queue's physical id is its URL
            return self.physical_ids[logical_id].rsplit("/", 1)[1]
        return super().get_att(logical_id, attribute)


def _create(local_aws: Any, tmp_path: Path, **overrides: str) -> tuple[dict[str, Any], QueueStackScope]:
    url = local_aws.endpoint_url
    clients = {name: boto3.client(name, region_name=REGION, endpoint_url=url)
               for name in ("cloudformation", "ec2", "autoscaling", "cloudwatch", "iam")}
    ec2 = clients["ec2"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
    # moto's CloudFormation cannot create secrets: the stack reads an existing database URL secret.
    values = {"ImageUri": IMAGE, "QueueName": NAME, "VpcId": vpc, "SubnetIds": ",".join(subnets[:2]),
              "AmiParameter": AMI_PARAMETER, "WebAmiParameter": AMI_PARAMETER,
              "DatabaseUrlSecretArn": DATABASE_SECRET_ARN, **overrides}
    rendered = render_aws(AwsProfile(region=REGION, stack_name=STACK, parameters=values), tmp_path,
                          cfn_yaml.load(TEMPLATE))
    cf = clients["cloudformation"]
    cf.create_stack(StackName=STACK, TemplateBody=rendered.template_body, Capabilities=["CAPABILITY_IAM"],
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()])
    assert cf.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    summaries = cf.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    template = cfn_yaml.loads(rendered.template_body)
    scope = QueueStackScope(
        template,
        {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()} | values,
        {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries if r.get("LogicalResourceId")},
        {"AWS::Region": REGION, "AWS::StackName": STACK, "AWS::Partition": "aws", "AWS::AccountId": ACCOUNT},
    )
    return clients, scope


def role_policy(clients: dict[str, Any], scope: StackScope, role: str, name: str) -> IAMPolicy:
    document = clients["iam"].get_role_policy(RoleName=scope.physical_ids[role], PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):  # moto's CloudFormation keeps an inline policy as the repr of a dict
        document = ast.literal_eval(document)
    return IAMPolicy(json.dumps(document))


def test_stack_creates_queues_buckets_both_groups_and_least_privilege_roles(local_aws: Any, tmp_path: Path) -> None:
    clients, scope = _create(local_aws, tmp_path)
    groups = {g["AutoScalingGroupName"]: g for g in clients["autoscaling"].describe_auto_scaling_groups()[
        "AutoScalingGroups"]}
    worker_asg, web_asg = groups[f"{STACK}-workers"], groups[f"{STACK}-web"]
    assert (worker_asg["MinSize"], worker_asg["MaxSize"], worker_asg["Instances"]) == (0, 20, [])
    assert (web_asg["MinSize"], web_asg["MaxSize"], web_asg["HealthCheckType"]) == (1, 20, "ELB")
    assert worker_asg.get("TargetGroupARNs", []) == [] and len(web_asg["TargetGroupARNs"]) == 1
    version = clients["ec2"].describe_launch_template_versions(
        LaunchTemplateId=worker_asg["LaunchTemplate"]["LaunchTemplateId"])["LaunchTemplateVersions"][0][
        "LaunchTemplateData"]
    script = base64.b64decode(version["UserData"]).decode()
    assert "QUEUE_NAME='shop'" in script and f"ASG_NAME='{STACK}-workers'" in script
    assert "INPUT_BUCKET='shop-input'" in script and "BATCHSERVE_INPUT_BUCKET=$INPUT_BUCKET" in script

    sqs_client = boto3.client("sqs", region_name=REGION, endpoint_url=local_aws.endpoint_url)
    url = sqs_client.get_queue_url(QueueName="shop-requests")["QueueUrl"]
    attributes = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":shop-requests-dlq") and int(redrive["maxReceiveCount"]) == 3
    assert sqs_client.get_queue_url(QueueName="shop-responses")["QueueUrl"]
    buckets = {b["Name"] for b in boto3.client("s3", region_name=REGION, endpoint_url=local_aws.endpoint_url)
               .list_buckets()["Buckets"]}
    assert {"shop-input", "shop-output"} <= buckets
    assert scope.physical_ids["WorkerGroup"] == f"{STACK}-workers"

    # Least privilege, judged by moto's IAM policy evaluator on the roles as created.
    worker = role_policy(clients, scope, "WorkerRole", "batchserve-worker")
    web = role_policy(clients, scope, "WebRole", "batchserve-web")
    sqs = f"arn:aws:sqs:{REGION}:{ACCOUNT}"
    requests, responses, dlq, reply = (f"{sqs}:shop-requests", f"{sqs}:shop-responses", f"{sqs}:shop-requests-dlq",
                                       f"{sqs}:shop-reply-0f3a")
    upload, result = "arn:aws:s3:::shop-input/uploads/a.jpg", "arn:aws:s3:::shop-output/sync/a.json"
    manifest, index = "arn:aws:s3:::shop-output/j1/job.json", "arn:aws:s3:::shop-output/_index/k/0001-j1"
    input_bucket, output_bucket = "arn:aws:s3:::shop-input", "arn:aws:s3:::shop-output"
    groups_arn = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:1-2-3:autoScalingGroupName"
    own_group_arn, web_group_arn = f"{groups_arn}/{STACK}-workers", f"{groups_arn}/{STACK}-web"

    def allowed(policy: IAMPolicy, action: str, resource: str) -> bool:
        return policy.is_action_permitted(action, resource) == PermissionResult.PERMITTED

    for action, resource in [("s3:GetObject", upload), ("s3:PutObject", result), ("s3:GetObject", manifest),
                             ("s3:ListBucket", input_bucket), ("s3:ListBucket", output_bucket),
                             ("sqs:ReceiveMessage", requests), ("sqs:DeleteMessage", requests),
                             ("sqs:ChangeMessageVisibility", requests), ("sqs:ReceiveMessage", dlq),
                             ("sqs:DeleteMessage", dlq), ("sqs:SendMessage", responses), ("sqs:SendMessage", reply),
                             ("autoscaling:SetInstanceProtection", own_group_arn),
                             ("autoscaling:CompleteLifecycleAction", own_group_arn)]:
        assert allowed(worker, action, resource), ("worker", action, resource)
    for action, resource in [("s3:PutObject", upload), ("s3:ListBucket", input_bucket), ("s3:GetObject", result),
                             ("s3:ListBucket", output_bucket), ("s3:PutObject", manifest), ("s3:PutObject", index),
                             ("sqs:SendMessage", requests), ("sqs:CreateQueue", reply), ("sqs:ReceiveMessage", reply),
                             ("sqs:DeleteMessage", reply), ("sqs:DeleteQueue", reply)]:
        assert allowed(web, action, resource), ("web", action, resource)

    for action, resource in [("s3:PutObject", upload), ("s3:DeleteObject", result), ("sqs:SendMessage", requests),
                             ("sqs:ReceiveMessage", responses), ("sqs:SendMessage", dlq),
                             ("sqs:CreateQueue", reply), ("sqs:DeleteQueue", requests),
                             ("autoscaling:SetInstanceProtection", web_group_arn),
                             ("autoscaling:SetDesiredCapacity", own_group_arn)]:
        assert not allowed(worker, action, resource), ("worker", action, resource)
    for action, resource in [("sqs:ReceiveMessage", requests), ("sqs:DeleteMessage", requests),
                             ("sqs:ReceiveMessage", responses), ("sqs:ReceiveMessage", dlq),
                             ("sqs:CreateQueue", f"{sqs}:other-reply-1"), ("sqs:DeleteQueue", requests),
                             ("s3:GetObject", upload), ("s3:PutObject", result), ("s3:DeleteObject", manifest),
                             ("autoscaling:SetInstanceProtection", own_group_arn)]:
        assert not allowed(web, action, resource), ("web", action, resource)

    # No wildcard actions, no statement on every resource.
    for policy in (worker, web):
        for statement in policy._policy_json["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all("*" not in a for a in actions) and statement["Resource"] != "*", statement


def test_scaling_policies_and_alarms_resolve_to_the_queue_and_the_worker_group(
        local_aws: Any, tmp_path: Path) -> None:
    clients, scope = _create(local_aws, tmp_path)
    autoscaling, cloudwatch = clients["autoscaling"], clients["cloudwatch"]
    # moto's CloudFormation skips policies and alarms: create them from the template's own properties.
    for kind in ("AWS::AutoScaling::ScalingPolicy", "AWS::CloudWatch::Alarm"):
        for logical_id, resource in resources_of(scope.template, kind).items():
            if "Condition" in resource and not scope.condition(resource["Condition"]):
                continue
            props = scope.evaluate(resource["Properties"])
            if kind == "AWS::CloudWatch::Alarm":
                cloudwatch.put_metric_alarm(
                    **coerce_to_api(cloudwatch, "PutMetricAlarm", {"AlarmName": logical_id, **props}))
                continue
            autoscaling.put_scaling_policy(
                **coerce_to_api(autoscaling, "PutScalingPolicy", {"PolicyName": logical_id, **props}))
            scope.physical_ids[logical_id] = autoscaling.describe_policies(
                AutoScalingGroupName=props["AutoScalingGroupName"], PolicyNames=[logical_id])["ScalingPolicies"][0][
                "PolicyARN"]

    workers = {p["PolicyName"]: p for p in autoscaling.describe_policies(
        AutoScalingGroupName=f"{STACK}-workers")["ScalingPolicies"]}
    assert set(workers) == {"BacklogScalingPolicy", "WakePolicy", "ScaleToZeroPolicy"}  # MinSize 0 by default
    tracking = workers["BacklogScalingPolicy"]["TargetTrackingConfiguration"]
    assert tracking["TargetValue"] == 2000.0
    dimensions = {m["Id"]: m["MetricStat"]["Metric"]["Dimensions"]
                  for m in tracking["CustomizedMetricSpecification"]["Metrics"] if "MetricStat" in m}
    assert dimensions == {"waiting": [{"Name": "QueueName", "Value": "shop-requests"}],
                          "workers": [{"Name": "AutoScalingGroupName", "Value": f"{STACK}-workers"}]}
    web = autoscaling.describe_policies(AutoScalingGroupName=f"{STACK}-web")["ScalingPolicies"]
    assert [p["TargetTrackingConfiguration"]["PredefinedMetricSpecification"]["PredefinedMetricType"]
            for p in web] == ["ALBRequestCountPerTarget"]

    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert alarms["WakeAlarm"]["AlarmActions"] == [workers["WakePolicy"]["PolicyARN"]]
    assert alarms["IdleAlarm"]["AlarmActions"] == [workers["ScaleToZeroPolicy"]["PolicyARN"]]
    wake_dimensions = [m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
                       for m in alarms["WakeAlarm"]["Metrics"] if "MetricStat" in m]
    assert sorted(wake_dimensions) == sorted(["shop-requests", f"{STACK}-workers"])


def test_deploy_aws_mode_queue_creates_reports_and_destroys_the_stack(
        local_aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["aws", "--mode", "queue", "--region", REGION, "--endpoint-url", local_aws.endpoint_url,
            "--poll-interval", "0.05", "--stack-name", STACK, "--queue-name", NAME, "--out", str(tmp_path / "out")]
    create = [*base, "--image", IMAGE, "--max", "6", "--param", f"AmiParameter={AMI_PARAMETER}",
              "--param", f"WebAmiParameter={AMI_PARAMETER}", "--skip-validation", "--insecure-http",
              "--skip-preflight", "--database-url-secret", DATABASE_SECRET_ARN]
    assert main(create) == 0
    out = capsys.readouterr().out
    assert f"stack {STACK}: CREATE_COMPLETE" in out
    assert f"AutoScalingGroupName   {STACK}-workers" in out and "InputBucketName" in out

    status = [a for a in base if a not in ("--queue-name", NAME, "--mode", "queue")] + ["--status"]
    assert main(status) == 0
    out = capsys.readouterr().out
    assert f"group {STACK}-workers:" in out and "capacity: desired 0 (min 0, max 6)" in out
    assert f"group {STACK}-web:" in out and "capacity: desired 1 (min 1, max 20)" in out

    assert main([*status[:-1], "--destroy"]) == 0
    out = capsys.readouterr().out
    assert "bucket shop-input was kept" in out and "bucket shop-output was kept" in out
