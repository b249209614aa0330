"""Rendering the AWS profile: values checked against the template's declarations, then baked in as defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import AwsProfile, check_parameter, render_aws

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:3"


def test_given_values_become_defaults_and_the_rest_is_untouched(tmp_path: Path) -> None:
    values = {"ImageUri": IMAGE, "MinSize": "0", "InstanceType": "g6e.xlarge", "SubnetIds": "subnet-0a,subnet-0b"}
    rendered = render_aws(AwsProfile(region="us-east-1", stack_name="bs", parameters=values), tmp_path)
    packaged, written = cfn_yaml.load(), cfn_yaml.loads(rendered.template_path.read_text())
    for name, spec in written["Parameters"].items():
        expected = dict(packaged["Parameters"][name])
        if name in values:
            expected["Default"] = 0 if name == "MinSize" else values[name]
        assert spec == expected, name
    assert written["Resources"] == packaged["Resources"]
    assert json.loads(rendered.parameters_path.read_text()) == [
        {"ParameterKey": k, "ParameterValue": v} for k, v in values.items()
    ]
    assert rendered.defaults["MinSize"] == "0" and rendered.defaults["MaxSize"] == "20"
    assert rendered.defaults["VpcId"] is None  # no default: must always be passed


def test_rendered_template_fits_the_inline_limit(tmp_path: Path) -> None:
    rendered = render_aws(AwsProfile(region="us-east-1", parameters={"ImageUri": IMAGE}), tmp_path)
    assert len(rendered.template_body.encode()) < 51_200
    assert rendered.template_body.startswith("# Rendered by `batchserve deploy aws`")


def test_deploy_command_is_the_aws_cli_equivalent(tmp_path: Path) -> None:
    rendered = render_aws(
        AwsProfile(region="eu-west-1", stack_name="prod", parameters={"ImageUri": IMAGE, "MaxSize": "8"}), tmp_path
    )
    assert rendered.deploy_command() == [
        "aws",
        "cloudformation",
        "deploy",
        "--region",
        "eu-west-1",
        "--stack-name",
        "prod",
        "--template-file",
        str(tmp_path / "template.yaml"),
        "--capabilities",
        "CAPABILITY_IAM",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides",
        f"ImageUri={IMAGE}",
        "MaxSize=8",
    ]


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("MinSize", "-1", "below its minimum 0"),
        ("MaxSize", "500", "above its maximum 100"),
        ("MaxSize", "many", "not a number"),
        ("InstanceType", "t3.micro", "is not one of"),
        ("VpcId", "my-vpc", "not a VPC id"),
        ("SubnetIds", "subnet-0a,public", "not a comma-separated list of subnet ids"),
        ("AllowedCidr", "10.0.0.0", "IPv4 CIDR"),
        ("DesiredCapacity", "two", "empty or a whole number"),
        ("LogRetentionDays", "10", "is not one of"),
    ],
)
def test_each_declaration_is_enforced(name: str, value: str, problem: str) -> None:
    spec = cfn_yaml.load()["Parameters"][name]
    assert problem in (check_parameter(name, value, spec) or "")


def test_valid_values_pass() -> None:
    declared = cfn_yaml.load()["Parameters"]
    for name, value in {
        "MinSize": "0",
        "MaxSize": "100",
        "InstanceType": "g4dn.xlarge",
        "VpcId": "vpc-0abc123",
        "SubnetIds": "subnet-0a,subnet-1b",
        "AllowedCidr": "203.0.113.0/24",
        "DesiredCapacity": "",
        "LogRetentionDays": "14",
        "ImageUri": IMAGE,
    }.items():
        assert check_parameter(name, value, declared[name]) is None, name


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"MinSize": "3", "MaxSize": "2"}, "MinSize 3 is above MaxSize 2"),
        ({"MinSize": "30"}, "MinSize 30 is above MaxSize 20"),  # against the default MaxSize
        ({"DesiredCapacity": "40"}, "DesiredCapacity 40 is outside MinSize..MaxSize (1..20)"),
        ({"Nonsense": "1"}, "unknown template parameter 'Nonsense'"),
    ],
)
def test_inconsistent_values_are_usage_errors_and_nothing_is_written(
    tmp_path: Path, values: dict, problem: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(problem)):
        render_aws(AwsProfile(region="us-east-1", parameters={"ImageUri": IMAGE, **values}), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stack_names_follow_cloudformation_rules(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="stack name"):
        render_aws(AwsProfile(region="us-east-1", stack_name="1st_stack", parameters={"ImageUri": IMAGE}), tmp_path)


def test_short_form_tags_load_as_long_form() -> None:
    template = cfn_yaml.loads("""
A: !Ref Thing
B: !GetAtt LoadBalancer.DNSName
C: !Sub "${AWS::StackName}-x"
D: !If [Cond, !Ref X, !Ref AWS::NoValue]
E: !Join [",", [a, b]]
""")
    assert template == {
        "A": {"Ref": "Thing"},
        "B": {"Fn::GetAtt": ["LoadBalancer", "DNSName"]},
        "C": {"Fn::Sub": "${AWS::StackName}-x"},
        "D": {"Fn::If": ["Cond", {"Ref": "X"}, {"Ref": "AWS::NoValue"}]},
        "E": {"Fn::Join": [",", ["a", "b"]]},
    }
    assert cfn_yaml.loads(cfn_yaml.dumps(template)) == template
