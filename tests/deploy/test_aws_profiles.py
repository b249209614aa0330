"""What every AWS profile (deploy/aws/template.yaml, queue_template.yaml, web_template.yaml) promises,
checked on each template where it applies: a bounded warm pool, the group waiting for the listener
that forwards, instance types tried in order, the GPU requirement, least privilege and IMDS reach,
boot scripts that run no part of a parameter, an ALB that closes idle connections before the
server does, JSON logs, an events database that keeps its data, and a cfn-lint that knows it all."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.aws.session import AwsContext
from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import AwsProfile, render_aws
from batchserve.jobs.options import WORKER_OPTIONS
from batchserve.server.config import LoggingConfig, ServerConfig
from batchserve.server.lifecycle import uvicorn_config
from batchserve.server.options import OPTIONS as SERVE_OPTIONS
from tests.deploy.cfn_resolve import StackScope
from tests.deploy.conftest import REGION

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

TEMPLATES = ("template.yaml", "queue_template.yaml", "web_template.yaml")
GPU_GROUPS = {"template.yaml": "AutoScalingGroup", "queue_template.yaml": "WorkerGroup"}
LAUNCH_TEMPLATES = {  # (template, launch template) -> what runs there
    ("template.yaml", "LaunchTemplate"): "gpu-server",
    ("queue_template.yaml", "WorkerLaunchTemplate"): "gpu-worker",
    ("queue_template.yaml", "WebLaunchTemplate"): "queue-web",
    ("web_template.yaml", "LaunchTemplate"): "remote-web",
}
# The web tiers' groups, which the load balancer's listener feeds.
SERVED_GROUPS = {
    "template.yaml": "AutoScalingGroup",
    "queue_template.yaml": "WebGroup",
    "web_template.yaml": "AutoScalingGroup",
}
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:5"
INJECTION = "x'; rm -rf / #"
# The cfn-lint release these templates were linted with, which knows every property they use (older
# ones may not know the newer properties and report them, or pass what AWS now refuses).
CFN_LINT_CHECKED = Version("1.58")


def load(name: str) -> dict[str, Any]:
    return cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(name))


def user_data(template: dict[str, Any], launch_template: str) -> tuple[str, dict[str, Any]]:
    """The boot script and its Fn::Sub variables."""
    data = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    return str(script), dict(variables)


class LogicalScope(StackScope):
    """Each resource's Ref is its logical id, and its attributes `Logical.Attribute`."""

    def get_att(self, logical_id: str, attribute: str) -> str:
        return f"{logical_id}.{attribute}"


def scope(template: dict[str, Any], **values: str) -> StackScope:
    """Conditions and intrinsics resolved for these parameter values (defaults for the rest)."""
    parameters = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()} | values
    return LogicalScope(
        template,
        parameters,
        {k: k for k in template["Resources"]},
        {"AWS::Region": REGION, "AWS::StackName": "s", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"},
    )


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return sorted(action if isinstance(action, list) else [action])


def role_actions(template: dict[str, Any], role: str) -> dict[str, list[str]]:
    """Sid -> actions of every statement that applies to `role` (its inline policy and the AWS::IAM::Policy
    resources naming it)."""
    found = {}
    for policy in template["Resources"][role]["Properties"].get("Policies", []):
        found.update({s["Sid"]: actions_of(s) for s in policy["PolicyDocument"]["Statement"]})
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"]["Roles"]:
            found.update({s["Sid"]: actions_of(s) for s in resource["Properties"]["PolicyDocument"]["Statement"]})
    return found


# ---------------------------------------------------------------- 1. warm pool


@pytest.mark.parametrize("name", sorted(GPU_GROUPS))
def test_the_warm_pool_holds_exactly_its_size(name: str) -> None:
    template = load(name)
    pool = template["Resources"]["WarmPool"]
    assert pool["Properties"]["AutoScalingGroupName"] == {"Ref": GPU_GROUPS[name]}
    # Without MaxGroupPreparedCapacity the pool holds MaxSize - desired (19 GPU instances at 20 and 1).
    assert pool["Properties"]["MinSize"] == pool["Properties"]["MaxGroupPreparedCapacity"] == {"Ref": "WarmPoolSize"}
    assert pool["Condition"] == "HasWarmPool" and template["Parameters"]["WarmPoolSize"]["Default"] == 0


# ---------------------------------------------------------------- 3. the listener the group waits for


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("certificate", ["", "arn:aws:acm:us-east-1:123456789012:certificate/a"])
def test_the_group_waits_for_the_listener_that_forwards_to_its_target_group(name: str, certificate: str) -> None:
    template = load(name)
    resources = template["Resources"]
    stack = scope(template, CertificateArn=certificate)
    group = resources[SERVED_GROUPS[name]]
    (prerequisites,) = [group["DependsOn"]] if isinstance(group["DependsOn"], str) else group["DependsOn"]
    assert resources[prerequisites]["Type"] == "AWS::CloudFormation::WaitConditionHandle"
    listener = stack.evaluate(resources[prerequisites]["Metadata"])["ForwardingListener"]
    assert listener == ("HttpsListener" if certificate else "HttpListener")
    # That listener exists under these values and forwards to the group's target group; the other one
    # (with a certificate: HTTP) only redirects.
    assert stack.condition(resources[listener].get("Condition", "HasCertificate")) == bool(certificate)
    (action,) = stack.evaluate(resources[listener]["Properties"]["DefaultActions"])
    assert action == {"Type": "forward", "TargetGroupArn": "TargetGroup"}
    assert stack.evaluate(group["Properties"]["TargetGroupARNs"]) == ["TargetGroup"]
    if certificate:
        (http,) = stack.evaluate(resources["HttpListener"]["Properties"]["DefaultActions"])
        assert http["Type"] == "redirect"


# ---------------------------------------------------------------- 4. instance types in order


@pytest.mark.parametrize("name", sorted(GPU_GROUPS))
def test_several_instance_types_make_a_prioritised_mixed_instances_policy(name: str) -> None:
    template = load(name)
    group = template["Resources"][GPU_GROUPS[name]]["Properties"]
    launch_template = group["LaunchTemplate"]["Fn::If"][2]["LaunchTemplateId"]["Ref"]

    single = scope(template, InstanceType="g6.xlarge").evaluate(group)
    assert "MixedInstancesPolicy" not in single and single["LaunchTemplate"]["LaunchTemplateId"] == launch_template

    mixed = scope(template, InstanceType="g6.xlarge", InstanceType2="g5.xlarge", InstanceType3="g4dn.xlarge")
    policy = mixed.evaluate(group)
    assert "LaunchTemplate" not in policy  # the two are exclusive
    spec = policy["MixedInstancesPolicy"]
    assert spec["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"] == launch_template
    assert spec["LaunchTemplate"]["Overrides"] == [
        {"InstanceType": t} for t in ("g6.xlarge", "g5.xlarge", "g4dn.xlarge")
    ]
    # On-demand only, the first type with capacity in the order given.
    assert spec["InstancesDistribution"] == {
        "OnDemandAllocationStrategy": "prioritized",
        "OnDemandBaseCapacity": 0,
        "OnDemandPercentageAboveBaseCapacity": 100,
    }
    two = scope(template, InstanceType="g6.xlarge", InstanceType2="g5.xlarge").evaluate(group)
    assert len(two["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]) == 2


@pytest.mark.parametrize("name", sorted(GPU_GROUPS))
def test_the_template_rules_refuse_what_auto_scaling_would(name: str, tmp_path: Path) -> None:
    template = load(name)
    base = {"ImageUri": IMAGE, "QueueName": "shop"} if name == "queue_template.yaml" else {"ImageUri": IMAGE}
    cases = [
        ({"InstanceType2": "g5.xlarge", "WarmPoolSize": "2"}, "needs a single instance type"),
        ({"InstanceType3": "g5.xlarge"}, "InstanceType3 goes with InstanceType2"),
        ({"InstanceType2": "p4d.24xlarge"}, "one of the InstanceType values"),
    ]
    for values, message in cases:
        with pytest.raises(UsageError, match=message):
            render_aws(AwsProfile(REGION, parameters=base | values), tmp_path / "out", template)
    render_aws(AwsProfile(REGION, parameters=base | {"WarmPoolSize": "2"}), tmp_path / "out", template)


def test_default_subnets_are_those_of_zones_offering_one_of_the_types(local_aws: Any) -> None:
    context = AwsContext(REGION, local_aws.endpoint_url)
    all_zones = {f"{REGION}{z}" for z in "abcdef"}  # moto's default VPC: a default subnet in each
    ec2 = context.client("ec2")

    def zones(subnets: list[str]) -> set[str]:
        return {s["AvailabilityZone"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]}

    _, every = context.default_network()
    assert zones(every) == all_zones
    # moto's offerings: g6e.xlarge in 1a-1d, g5.xlarge in 1a-1d and 1f, c6i.large everywhere but 1e.
    _, large_gpu = context.default_network([["g6e.xlarge"]])
    assert zones(large_gpu) == all_zones - {f"{REGION}e", f"{REGION}f"}
    _, either = context.default_network([["g6e.xlarge", "g5.xlarge"]])
    assert zones(either) == all_zones - {f"{REGION}e"}
    _, both_tiers = context.default_network([["g6e.xlarge"], ["c6i.large"]])
    assert zones(both_tiers) == all_zones - {f"{REGION}e", f"{REGION}f"}
    # A type offered in one zone alone leaves the load balancer a zone short: an error naming the rest.
    with pytest.raises(UsageError, match=r"only 1 Availability Zone.*p6-b200\.48xlarge.*us-east-1a"):
        context.default_network([["p6-b200.48xlarge"]])


# ---------------------------------------------------------------- 5-7. what each tier runs with


def settings(script: str) -> dict[str, str]:
    """BATCHSERVE_* settings the boot script writes to the container's environment file."""
    return dict(re.findall(r'echo "?(BATCHSERVE_[A-Z_]+)=([^"\n]*)"?', script))


@pytest.mark.parametrize(("name", "launch_template"), sorted(LAUNCH_TEMPLATES))
def test_gpu_tiers_require_the_gpu_and_cpu_tiers_do_not(name: str, launch_template: str) -> None:
    tier = LAUNCH_TEMPLATES[(name, launch_template)]
    script, _ = user_data(load(name), launch_template)
    written = settings(script)
    if tier.startswith("gpu"):
        assert written["BATCHSERVE_REQUIRE_GPU"] == "true" and "--gpus all" in script
    else:  # `serve --require-gpu` refuses a queue or remote backend: its models run elsewhere
        assert "BATCHSERVE_REQUIRE_GPU" not in written and "--require-gpu" not in script and "--gpus" not in script
    assert "BATCHSERVE_REQUIRE_GPU" in {o.env for o in SERVE_OPTIONS}  # what `batchserve serve` reads


@pytest.mark.parametrize(("name", "launch_template"), sorted(LAUNCH_TEMPLATES))
def test_every_tier_logs_json_keeps_its_journal_on_the_instance_and_reads_its_database(
    name: str, launch_template: str
) -> None:
    tier = LAUNCH_TEMPLATES[(name, launch_template)]
    script, variables = user_data(load(name), launch_template)
    written = settings(script)
    assert written["BATCHSERVE_LOG_FORMAT"] == "json"
    assert "json" in get_args(get_type_hints(LoggingConfig)["log_format"])  # what --log-format takes
    # The spill journal survives the container: an instance directory, mounted where the server keeps it.
    assert "JOURNAL=/var/lib/batchserve/journal" in script and written["BATCHSERVE_JOURNAL_DIR"] == "$JOURNAL"
    assert '-v "$JOURNAL:$JOURNAL"' in script and 'install -d -o 10001 -g 10001 -m 0700 "$JOURNAL"' in script
    assert written["BATCHSERVE_DATABASE_URL"] == "$DATABASE_URL" and 'database_url "$DATABASE_SECRET"' in script
    assert variables["DatabaseSecret"] == {
        "Fn::If": ["CreateDatabase", {"Ref": "DatabaseSecret"}, {"Ref": "DatabaseUrlSecretArn"}]
    }
    known = {o.env for o in (WORKER_OPTIONS if tier == "gpu-worker" else SERVE_OPTIONS)}
    assert {"BATCHSERVE_JOURNAL_DIR", "BATCHSERVE_LOG_FORMAT", "BATCHSERVE_DATABASE_URL"} <= known
    if tier != "gpu-worker":  # every HTTP tier requires API keys
        assert written["BATCHSERVE_AUTH"] == "required"


def test_every_boot_script_reads_the_database_secret_the_same_way() -> None:
    """One way to turn the secret into BATCHSERVE_DATABASE_URL (run against Secrets Manager on moto in
    test_web_template.py), so every tier understands both a URL and the stack's RDS secret."""
    functions = set()
    for name, launch_template in LAUNCH_TEMPLATES:
        script, _ = user_data(load(name), launch_template)
        functions.add(re.search(r"\nsecret\(\) \{.*?\n\}\n.*?\ndatabase_url\(\) \{.*?\n\}\n", script, re.S).group(0))
    assert len(functions) == 1


# ---------------------------------------------------------------- 6. privilege


@pytest.mark.parametrize(("name", "launch_template"), sorted(LAUNCH_TEMPLATES))
def test_only_tiers_whose_code_calls_aws_reach_the_instance_metadata(name: str, launch_template: str) -> None:
    tier = LAUNCH_TEMPLATES[(name, launch_template)]
    data = load(name)["Resources"][launch_template]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # The queue tiers' code calls S3 and SQS (the worker Auto Scaling too) from inside the container;
    # the others' does not: their secrets are read by the host's boot script, one hop away.
    expected = 2 if tier in ("gpu-worker", "queue-web") else 1
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == expected
    script, _ = user_data(load(name), launch_template)
    assert "aws secretsmanager get-secret-value" in script  # on the host, before the container starts


def test_each_role_is_granted_what_its_tier_calls_and_nothing_else() -> None:
    host = {
        "ContainerLogs": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "DatabaseUrl": ["secretsmanager:GetSecretValue"],
    }
    direct = role_actions(load("template.yaml"), "InstanceRole")
    assert direct == host | {
        "LaunchHook": ["autoscaling:CompleteLifecycleAction"],
        "AdminKey": ["secretsmanager:GetSecretValue"],
    }
    remote = role_actions(load("web_template.yaml"), "InstanceRole")
    assert remote == host | {
        "BackendKey": ["secretsmanager:GetSecretValue"],
        "AdminKey": ["secretsmanager:GetSecretValue"],
    }
    queue = load("queue_template.yaml")
    worker, web = role_actions(queue, "WorkerRole"), role_actions(queue, "WebRole")
    assert set(worker) == set(host) | {
        "ReadImages",
        "TellMissingObjects",
        "Results",
        "TakeRequests",
        "TakeDeadLetters",
        "Answer",
        "OwnGroup",
    }
    assert set(web) == set(host) | {
        "AdminKey",
        "StoreUploads",
        "CheckInputBucket",
        "ReadResults",
        "ListResults",
        "WriteJobRecords",
        "SendRequests",
        "OwnReplyQueue",
    }
    for name in TEMPLATES:
        for resource in load(name)["Resources"].values():
            if resource["Type"] == "AWS::IAM::Role":
                assert resource["Properties"]["ManagedPolicyArns"] == [
                    {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"}
                ]
    every = [a for t in (direct, remote, worker, web) for actions in t.values() for a in actions]
    assert "cloudwatch:PutMetricData" not in every and "logs:DescribeLogStreams" not in every


def parameters_in(script: str, variables: dict[str, Any], template: dict[str, Any]) -> set[str]:
    """Template parameters whose values enter the boot script, directly or through a Sub variable."""
    names = set(re.findall(r"\$\{([A-Za-z0-9]+)\}", script))
    found = {n for n in names if n in template["Parameters"]}
    for name in names & set(variables):
        found |= set(re.findall(r"'Ref': '([A-Za-z0-9]+)'", repr(variables[name]))) & set(template["Parameters"])
    return found


@pytest.mark.parametrize(("name", "launch_template"), sorted(LAUNCH_TEMPLATES))
def test_no_parameter_value_can_run_as_shell(name: str, launch_template: str, tmp_path: Path) -> None:
    template = load(name)
    script, variables = user_data(template, launch_template)
    entering = parameters_in(script, variables, template)
    assert {"ImageUri", "Models"} <= entering
    # Every value lands once, single-quoted, in an assignment: nothing in it is expanded...
    for substitution in re.findall(r"\$\{[A-Za-z0-9:]+\}", script):
        lines = [line.strip() for line in script.splitlines() if substitution in line]
        assert all(re.fullmatch(rf"[A-Z_]+='{re.escape(substitution)}(-[a-z]+)?'", line) for line in lines), lines
    # ...and no value holds a quote: each parameter's pattern refuses one, so CloudFormation and the
    # rendering refuse `'; rm -rf /` before any instance boots.
    base = {"ImageUri": IMAGE, "QueueName": "shop", "BackendUrl": "https://b.example.org", "BackendKeySecretName": "k"}
    base = {k: v for k, v in base.items() if k in template["Parameters"]}
    for parameter in sorted(entering):
        spec = template["Parameters"][parameter]
        if "AllowedValues" in spec:
            assert all("'" not in str(v) for v in spec["AllowedValues"]), parameter
            continue
        assert not re.fullmatch(str(spec["AllowedPattern"]), INJECTION), parameter
        with pytest.raises(UsageError, match=parameter):
            render_aws(AwsProfile(REGION, parameters=base | {parameter: INJECTION}), tmp_path / "out", template)
    assert not (tmp_path / "out").exists()


def test_single_quoting_leaves_expansions_inert(tmp_path: Path) -> None:
    """The quoting alone, for what a pattern lets through: `$(...)`, backticks and `;` stay text."""
    marker = tmp_path / "ran"
    value = f"$(touch {marker})`touch {marker}`;touch {marker}"
    script, _ = user_data(load("template.yaml"), "LaunchTemplate")
    assignment = next(line.strip() for line in script.splitlines() if "${Models}" in line)
    probe = tmp_path / "probe.sh"
    probe.write_text(assignment.replace("${Models}", value) + '\nprintf %s "$MODELS"\n')
    result = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == value and not marker.exists()


# ---------------------------------------------------------------- idle connections


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_load_balancer_closes_idle_connections_before_the_server_does(name: str) -> None:
    template = load(name)
    attributes = {
        a["Key"]: a["Value"] for a in template["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    idle_s = int(attributes["idle_timeout.timeout_seconds"])
    keep_alive_s = uvicorn_config(ServerConfig(), app=None).timeout_keep_alive  # type: ignore[arg-type]
    assert idle_s < keep_alive_s
    # A web tier's own wait for its backend ends (504 from the server) before the ALB would cut it.
    for (template_name, launch_template), _ in LAUNCH_TEMPLATES.items():
        if template_name == name:
            waits = {
                k: v
                for k, v in settings(user_data(template, launch_template)[0]).items()
                if k in ("BATCHSERVE_QUEUE_TIMEOUT_MS", "BATCHSERVE_UPSTREAM_TIMEOUT_MS")
            }
            assert all(int(v) < idle_s * 1000 for v in waits.values()), waits


# ---------------------------------------------------------------- 9. the events database


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_stack_creates_a_private_backed_up_database_unless_one_is_named(name: str) -> None:
    template = load(name)
    resources, parameters = template["Resources"], template["Parameters"]
    assert template["Conditions"]["CreateDatabase"] == {"Fn::Equals": [{"Ref": "DatabaseUrlSecretArn"}, ""]}
    database = resources["Database"]
    props = database["Properties"]
    assert (database["Condition"], database["DeletionPolicy"], database["UpdateReplacePolicy"]) == (
        "CreateDatabase",
        "Snapshot",
        "Snapshot",
    )
    assert (props["Engine"], props["PubliclyAccessible"], props["StorageEncrypted"]) == ("postgres", False, True)
    assert props["BackupRetentionPeriod"] == {"Ref": "DatabaseBackupRetentionDays"}
    assert parameters["DatabaseBackupRetentionDays"]["MinValue"] >= 7
    assert props["DeletionProtection"] == {"Ref": "DatabaseDeletionProtection"}
    assert parameters["DatabaseDeletionProtection"]["Default"] == "true"
    assert resources["DatabaseSubnetGroup"]["Properties"]["SubnetIds"] == {"Ref": "SubnetIds"}
    assert props["VPCSecurityGroups"] == [{"Ref": "DatabaseSecurityGroup"}]
    # PostgreSQL from the tiers' own security groups and the maintenance tasks', from no address range.
    ingress = resources["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert all((r["FromPort"], r["ToPort"]) == (5432, 5432) and "CidrIp" not in r for r in ingress)
    tiers = {r["SourceSecurityGroupId"]["Ref"] for r in ingress}
    launching = {
        lt["Ref"]
        for (t, lt_name) in LAUNCH_TEMPLATES
        if t == name
        for lt in resources[lt_name]["Properties"]["LaunchTemplateData"]["SecurityGroupIds"]
    }
    assert tiers == launching | {"MaintenanceSecurityGroup"}
    # The password is generated into a secret RDS completes with host and port, read at boot (never a
    # managed master secret: it rotates every 7 days under containers that read it once).
    assert "ManageMasterUserPassword" not in props
    assert props["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    }
    generated = resources["DatabaseSecret"]["Properties"]["GenerateSecretString"]
    assert generated["ExcludePunctuation"] is True and generated["PasswordLength"] >= 32
    assert resources["DatabaseSecretAttachment"]["Properties"]["TargetId"] == {"Ref": "Database"}
    handle = next(r for r in resources.values() if r["Type"] == "AWS::CloudFormation::WaitConditionHandle")
    assert scope(template).evaluate(handle["Metadata"])["Database"] == "DatabaseSecretAttachment"
    assert template["Outputs"]["DatabaseSecretArn"]["Value"] == {
        "Fn::If": ["CreateDatabase", {"Ref": "DatabaseSecret"}, {"Ref": "DatabaseUrlSecretArn"}]
    }


# ---------------------------------------------------------------- 8. cfn-lint


def test_the_required_cfn_lint_is_installed_and_knows_every_property_used() -> None:
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in ("dev", "deploy"):
        (requirement,) = [Requirement(r) for r in extras[extra] if Requirement(r).name == "cfn-lint"]
        assert requirement.specifier.contains(version("cfn-lint")), (extra, str(requirement))
        (floor,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert floor >= CFN_LINT_CHECKED, f"{extra}: {requirement} admits versions not checked against the templates"
    for name in TEMPLATES:
        for logical_id, resource in load(name)["Resources"].items():
            schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region=REGION, resource_type=resource["Type"])
            unknown = set(resource.get("Properties", {})) - set(schema.schema["properties"])
            assert not unknown, (name, logical_id, unknown)
