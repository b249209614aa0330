"""deploy/aws/template.yaml: lint-clean, the promised structure, and a real creation on moto."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.render import AwsProfile, render_aws
from batchserve.deploy.validate import lint_cloudformation
from batchserve.server.options import OPTIONS as SERVE_OPTIONS
from tests.deploy.cfn_resolve import StackScope, coerce_to_api
from tests.deploy.conftest import AMI_PARAMETER, REGION

DATABASE_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:batchserve/db-AbCdEf"

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

TEMPLATE = cfn_yaml.TEMPLATE_PATH
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load()


def resources_of(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def statements(template: dict) -> list[dict]:
    found = []
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                found += policy["PolicyDocument"]["Statement"]
        if resource["Type"] == "AWS::IAM::Policy":
            found += resource["Properties"]["PolicyDocument"]["Statement"]
    return found


# ---------------------------------------------------------------- lint


def test_cfn_lint_binary_reports_nothing() -> None:
    result = subprocess.run([str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_rendered_template_lints_clean_in_another_region(tmp_path: Path) -> None:
    rendered = render_aws(
        AwsProfile(
            region="eu-west-1",
            parameters={
                "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/batchserve:1",
                "MinSize": "0",
                "WarmPoolSize": "2",
                "CertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
            },
        ),
        tmp_path,
    )
    assert lint_cloudformation(rendered.template_path, regions=["eu-west-1"]) == []


def test_lint_reports_a_broken_template(tmp_path: Path, template: dict) -> None:
    broken = cfn_yaml.load()
    broken["Resources"]["TargetGroup"]["Properties"]["HealthCheckPathh"] = "/readyz"
    path = tmp_path / "broken.yaml"
    path.write_text(cfn_yaml.dumps(broken))
    findings = lint_cloudformation(path)
    assert any("HealthCheckPathh" in f.message for f in findings), findings


# ---------------------------------------------------------------- structure


def test_instance_types_are_gpu_families_only(template: dict) -> None:
    spec = template["Parameters"]["InstanceType"]
    assert spec["Default"] in spec["AllowedValues"]
    assert {t.split(".")[0] for t in spec["AllowedValues"]} == {"g4dn", "g5", "g6", "g6e"}


def test_ami_comes_from_the_deep_learning_base_ami_parameter(template: dict) -> None:
    spec = template["Parameters"]["AmiParameter"]
    assert spec["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert (
        spec["Default"] == "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    )


def test_launch_template_requires_imdsv2_out_of_the_containers_reach(template: dict) -> None:
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # The server calls no AWS API: only the host (boot script, log driver) gets the role's credentials.
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True


def test_load_balancer_checks_readiness_and_drains_within_the_grace(template: dict) -> None:
    group = template["Resources"]["TargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == "/readyz"
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    # The server drains in 8 s; the ALB must wait at least that, not the default 300 s.
    assert 8 <= int(attributes["deregistration_delay.timeout_seconds"]) <= 30


def test_auto_scaling_group_uses_elb_health_and_instance_refresh(template: dict) -> None:
    group = template["Resources"]["AutoScalingGroup"]
    props = group["Properties"]
    assert props["HealthCheckType"] == "ELB"
    assert props["HealthCheckGracePeriod"] >= 300
    assert props["MetricsCollection"] == [{"Granularity": "1Minute"}]
    assert group["UpdatePolicy"]["AutoScalingInstanceRefresh"]["Strategy"] == "Rolling"
    assert "AutoScalingRollingUpdate" not in group["UpdatePolicy"]  # the two are mutually exclusive
    assert template["Parameters"]["MinSize"]["MinValue"] == 0  # scale to zero allowed
    assert (template["Parameters"]["MinSize"]["Default"], template["Parameters"]["MaxSize"]["Default"]) == (1, 20)


def test_warm_pool_and_https_are_optional(template: dict) -> None:
    assert template["Resources"]["WarmPool"]["Condition"] == "HasWarmPool"
    assert template["Resources"]["WarmPool"]["Properties"]["PoolState"] == "Stopped"
    assert template["Resources"]["HttpsListener"]["Condition"] == "HasCertificate"
    # A database always: the stack's own RDS instance, or the one a secret names.
    assert "Condition" not in template["Resources"]["DatabaseSecretPolicy"]
    assert template["Resources"]["Database"]["Condition"] == "CreateDatabase"


def test_scaling_follows_requests_per_instance_and_queue_depth(template: dict) -> None:
    policies = resources_of(template, "AWS::AutoScaling::ScalingPolicy")
    requests = policies["RequestCountScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
    assert requests["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ALBRequestCountPerTarget"
    assert requests["TargetValue"] == {"Ref": "TargetRequestsPerInstance"}
    queue = policies["QueueDepthScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
    metric = queue["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"]) == ("Batchserve", "QueueDepth", "Average")
    assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": "AutoScalingGroup"}}]


def test_instance_role_is_least_privilege(template: dict) -> None:
    role = template["Resources"]["InstanceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"}
    ]
    by_sid = {s["Sid"]: s for s in statements(template)}
    # What the host does, and nothing the server does not: its queue-depth metric travels in its logs
    # (EMF), and it touches no bucket, so neither PutMetricData nor S3 is granted.
    actions = {
        sid: sorted(s["Action"] if isinstance(s["Action"], list) else [s["Action"]]) for sid, s in by_sid.items()
    }
    assert actions == {
        "ContainerLogs": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "LaunchHook": ["autoscaling:CompleteLifecycleAction"],
        "DatabaseUrl": ["secretsmanager:GetSecretValue"],
        "AdminKey": ["secretsmanager:GetSecretValue"],
    }
    assert by_sid["DatabaseUrl"]["Resource"] == {
        "Fn::If": ["CreateDatabase", {"Ref": "DatabaseSecret"}, {"Ref": "DatabaseUrlSecretArn"}]
    }
    assert by_sid["AdminKey"]["Resource"] == {"Ref": "AdminKeySecretArn"}
    assert all(s.get("Resource") != "*" for s in statements(template))


def test_bucket_is_private_encrypted_and_expires_objects(template: dict) -> None:
    bucket = template["Resources"]["Bucket"]
    props = bucket["Properties"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    backups = next(r for r in props["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "backups/")
    assert backups["ExpirationInDays"] == {"Ref": "BackupObjectRetentionDays"}
    assert bucket["DeletionPolicy"] == "Retain"


def test_instances_accept_traffic_from_the_load_balancer_only(template: dict) -> None:
    rules = template["Resources"]["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rules and all(r["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"} for r in rules)
    assert all("CidrIp" not in r for r in rules)
    alb_rules = template["Resources"]["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert all(r["CidrIp"] == {"Ref": "AllowedCidr"} for r in alb_rules)


def user_data_script(template: dict) -> str:
    return template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"][
        "Fn::Sub"
    ][0]


def test_user_data_runs_the_image_on_the_gpu_with_the_server_config(template: dict) -> None:
    script = user_data_script(template)
    for needle in (
        "IMAGE='${ImageUri}'",
        "--gpus all",
        "-p 80:8000",
        "--restart unless-stopped",
        "--log-driver awslogs",
        "LOG_GROUP='${LogGroup}'",
        'awslogs-group="$LOG_GROUP"',
        "BATCHSERVE_CLOUDWATCH_EMF=1",
        "BATCHSERVE_ASG_NAME=$ASG_NAME",
        "BATCHSERVE_PORT=8000",
        "BATCHSERVE_AUTH=required",
        "BATCHSERVE_DATABASE_URL=$DATABASE_URL",
        "aws secretsmanager get-secret-value",
        "aws ecr get-login-password",
        "complete-lifecycle-action",
        '"$IMAGE" batchserve serve\n',
    ):
        assert needle in script, needle
    names = set(re.findall(r"BATCHSERVE_[A-Z_]+", script))
    assert names <= {o.env for o in SERVE_OPTIONS}  # a misspelt setting would be ignored
    # The group name the instances report under is the one the group gets.
    assert "ASG_NAME='${AWS::StackName}-asg'" in script
    assert template["Resources"]["AutoScalingGroup"]["Properties"]["AutoScalingGroupName"] == {
        "Fn::Sub": "${AWS::StackName}-asg"
    }


def test_user_data_is_valid_bash_once_substituted(template: dict, tmp_path: Path) -> None:
    script = user_data_script(template)
    values = {
        "AWS::Region": "us-east-1",
        "ImageUri": "1.dkr.ecr.us-east-1.amazonaws.com/b:1",
        "AWS::StackName": "s",
        "DatabaseSecret": "arn:aws:secretsmanager:us-east-1:1:secret:db",
        "AdminKeySecretArn": "",
        "Models": "efficientnet_lite0",
        "LogGroup": "/batchserve/s",
    }
    substituted = re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: values[m.group(1)], script).replace("${!", "${")
    assert "${" not in re.sub(r"\$\{(IMAGE%%/\*|BASH_REMATCH\[1\])\}", "", substituted)
    path = tmp_path / "user-data.sh"
    path.write_text(substituted)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- moto


def _create(local_aws, tmp_path: Path, **overrides: str) -> tuple[dict, dict, StackScope]:
    """Create the rendered stack on moto; returns (clients, resources by logical id, resolver scope)."""
    url = local_aws.endpoint_url
    clients = {
        name: boto3.client(name, region_name=REGION, endpoint_url=url)
        for name in ("cloudformation", "ec2", "autoscaling", "elbv2", "cloudwatch")
    }
    ec2 = clients["ec2"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][
        :2
    ]
    values = {
        "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:7",
        "VpcId": vpc,
        "SubnetIds": ",".join(subnets),
        "AmiParameter": AMI_PARAMETER,
        "InstanceType": "g6.xlarge",
        # moto's CloudFormation cannot create secrets: the stack reads an existing database URL secret.
        "DatabaseUrlSecretArn": DATABASE_SECRET_ARN,
        **overrides,
    }
    # Rendering makes the given values the defaults; moto resolves the AMI parameter's default eagerly.
    rendered = render_aws(AwsProfile(region=REGION, stack_name="bs-test", parameters=values), tmp_path)
    cf = clients["cloudformation"]
    cf.create_stack(
        StackName="bs-test",
        TemplateBody=rendered.template_body,
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
    )
    assert cf.describe_stacks(StackName="bs-test")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    summaries = cf.list_stack_resources(StackName="bs-test")["StackResourceSummaries"]
    created = {r["LogicalResourceId"]: r for r in summaries if r.get("LogicalResourceId")}
    template = cfn_yaml.loads(rendered.template_body)
    parameters = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()} | values
    scope = StackScope(
        template,
        parameters,
        {k: r["PhysicalResourceId"] for k, r in created.items()},
        {"AWS::Region": REGION, "AWS::StackName": "bs-test", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"},
    )
    return clients, created, scope


def test_stack_creates_the_group_launch_template_and_load_balancer(local_aws, tmp_path: Path) -> None:
    clients, created, _ = _create(local_aws, tmp_path)
    group = clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=["bs-test-asg"])[
        "AutoScalingGroups"
    ][0]
    assert (group["MinSize"], group["MaxSize"], group["HealthCheckType"]) == (1, 20, "ELB")
    assert group["HealthCheckGracePeriod"] >= 300
    version = clients["ec2"].describe_launch_template_versions(
        LaunchTemplateId=group["LaunchTemplate"]["LaunchTemplateId"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert version["InstanceType"] == "g6.xlarge"
    assert version["MetadataOptions"]["HttpTokens"] == "required"
    user_data = base64.b64decode(version["UserData"]).decode()
    assert "IMAGE='123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:7'" in user_data
    assert "--gpus all" in user_data and "ASG_NAME='bs-test-asg'" in user_data
    assert f"DATABASE_SECRET='{DATABASE_SECRET_ARN}'" in user_data

    elbv2 = clients["elbv2"]
    target_group = elbv2.describe_target_groups(TargetGroupArns=group["TargetGroupARNs"])["TargetGroups"][0]
    assert target_group["HealthCheckPath"] == "/readyz"
    balancer_arn = created["LoadBalancer"]["PhysicalResourceId"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=balancer_arn)["Listeners"]
    assert [(listener["Port"], listener["DefaultActions"][0]["Type"]) for listener in listeners] == [(80, "forward")]
    assert listeners[0]["DefaultActions"][0]["TargetGroupArn"] == target_group["TargetGroupArn"]
    outputs = {
        o["OutputKey"] for o in clients["cloudformation"].describe_stacks(StackName="bs-test")["Stacks"][0]["Outputs"]
    }
    assert {"LoadBalancerDNS", "URL", "AutoScalingGroupName", "BucketName"} <= outputs
    assert "HttpsListener" not in created and "WarmPool" not in created  # conditions off by default


def test_several_instance_types_launch_through_a_mixed_instances_policy(local_aws, tmp_path: Path) -> None:
    clients, _, _ = _create(local_aws, tmp_path, InstanceType2="g5.xlarge", InstanceType3="g4dn.xlarge")
    group = clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=["bs-test-asg"])[
        "AutoScalingGroups"
    ][0]
    assert "LaunchTemplate" not in group
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == [
        "g6.xlarge",
        "g5.xlarge",
        "g4dn.xlarge",
    ]
    assert policy["InstancesDistribution"]["OnDemandAllocationStrategy"] == "prioritized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100


def test_scaling_policies_and_alarms_from_the_template_are_accepted(local_aws, tmp_path: Path) -> None:
    clients, _, scope = _create(local_aws, tmp_path, MinSize="0")
    autoscaling, cloudwatch = clients["autoscaling"], clients["cloudwatch"]
    template = scope.template
    # Policies first (alarms name their ARNs), each only when its condition holds, as CloudFormation does.
    for kind in ("AWS::AutoScaling::ScalingPolicy", "AWS::CloudWatch::Alarm"):
        for logical_id, resource in resources_of(template, kind).items():
            if "Condition" in resource and not scope.condition(resource["Condition"]):
                continue
            props = scope.evaluate(resource["Properties"])
            if kind == "AWS::CloudWatch::Alarm":
                cloudwatch.put_metric_alarm(
                    **coerce_to_api(cloudwatch, "PutMetricAlarm", {"AlarmName": logical_id, **props})
                )
                scope.physical_ids[logical_id] = logical_id
                continue
            autoscaling.put_scaling_policy(
                **coerce_to_api(autoscaling, "PutScalingPolicy", {"PolicyName": logical_id, **props})
            )
            # Read the ARN back: moto's PutScalingPolicy answer spells its key differently from AWS.
            policy = autoscaling.describe_policies(
                AutoScalingGroupName=props["AutoScalingGroupName"], PolicyNames=[logical_id]
            )["ScalingPolicies"][0]
            scope.physical_ids[logical_id] = policy["PolicyARN"]

    policies = {
        p["PolicyName"]: p for p in autoscaling.describe_policies(AutoScalingGroupName="bs-test-asg")["ScalingPolicies"]
    }
    assert set(policies) == {
        "RequestCountScalingPolicy",
        "QueueDepthScalingPolicy",
        "ScaleFromZeroPolicy",
        "ScaleToZeroPolicy",
    }
    requests = policies["RequestCountScalingPolicy"]["TargetTrackingConfiguration"]
    label = requests["PredefinedMetricSpecification"]["ResourceLabel"]
    assert re.fullmatch(r"app/[^/]+/[^/]+/targetgroup/[^/]+/[^/]+", label), label
    assert requests["TargetValue"] == float(scope.parameters["TargetRequestsPerInstance"])
    queue = policies["QueueDepthScalingPolicy"]["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
    assert queue["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": "bs-test-asg"}]
    assert policies["ScaleToZeroPolicy"]["StepAdjustments"][0]["ScalingAdjustment"] == 0

    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert alarms["ScaleFromZeroAlarm"]["AlarmActions"] == [policies["ScaleFromZeroPolicy"]["PolicyARN"]]
    assert alarms["IdleAlarm"]["AlarmActions"] == [policies["ScaleToZeroPolicy"]["PolicyARN"]]
    assert alarms["IdleAlarm"]["EvaluationPeriods"] == int(scope.parameters["IdleMinutesBeforeZero"])
    assert alarms["IdleAlarm"]["TreatMissingData"] == "breaching"
