"""Render a cloud profile with one deployment's values into an output folder.

AWS: `template.yaml` (the packaged template, with every value given here as its parameter's default,
so the file alone redeploys the same thing) and `parameters.json` (CloudFormation's parameter-file
shape). Values are checked against the template's own declarations (AllowedValues, MinValue,
AllowedPattern, ...) before anything is written, so a bad flag is a usage error, not a failed stack.

Google Cloud: `service.yaml`, the Knative service with name, image, region, scale bounds, API-key
mode, its own service account, the Cloud SQL connection and Secret Manager references (never
secret values) filled in.

Each rendering also knows the exact command that applies it, which `batchserve deploy` prints.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.errors import UsageError
from batchserve.deploy.gcp import names as gcp_names

SERVICE_TEMPLATE = Path(__file__).parent / "gcp" / "service.yaml"
CAPABILITIES = ("CAPABILITY_IAM",)
INLINE_TEMPLATE_LIMIT = 51_200  # CloudFormation's limit for a template body sent inline
AUTH_MODES = ("required", "off")  # `batchserve serve --auth`
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_SERVICE_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$")
_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")  # Secret Manager's secret ids


# ---------------------------------------------------------------- AWS


@dataclass(frozen=True)
class AwsProfile:
    """One deployment's choices; `parameters` are template parameter values (ImageUri included)."""

    region: str
    stack_name: str = "batchserve"
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedStack:
    stack_name: str
    region: str
    template_path: Path
    parameters_path: Path
    template_body: str
    parameters: dict[str, str]
    # Every declared parameter's default in the rendered template, as CloudFormation reports
    # values (strings); None for parameters without one.
    defaults: dict[str, str | None] = field(default_factory=dict)

    def deploy_command(self) -> list[str]:
        """The AWS CLI command equivalent to what `batchserve deploy aws` does through boto3."""
        command = [
            "aws",
            "cloudformation",
            "deploy",
            "--region",
            self.region,
            "--stack-name",
            self.stack_name,
            "--template-file",
            str(self.template_path),
            "--capabilities",
            *CAPABILITIES,
            "--no-fail-on-empty-changeset",
        ]
        if self.parameters:
            command += ["--parameter-overrides", *(f"{k}={v}" for k, v in self.parameters.items())]
        return command


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_parameter(name: str, value: str, spec: Mapping[str, Any]) -> str | None:
    """Why `value` would be refused by CloudFormation for this parameter declaration, or None."""
    kind = str(spec.get("Type", "String"))
    if kind == "Number":
        number = _number(value)
        if number is None:
            return f"{name}={value!r} is not a number"
        if "MinValue" in spec and number < float(spec["MinValue"]):
            return f"{name}={value} is below its minimum {spec['MinValue']}"
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            return f"{name}={value} is above its maximum {spec['MaxValue']}"
    if kind == "AWS::EC2::VPC::Id" and not re.fullmatch(r"vpc-[0-9a-f]+", value):
        return f"{name}={value!r} is not a VPC id (vpc-...)"
    if kind == "List<AWS::EC2::Subnet::Id>":
        ids = value.split(",")
        if not all(re.fullmatch(r"subnet-[0-9a-f]+", s) for s in ids):
            return f"{name}={value!r} is not a comma-separated list of subnet ids (subnet-...)"
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(v) for v in allowed]:
        return f"{name}={value!r} is not one of: {', '.join(str(v) for v in allowed)}"
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(str(pattern), value):
        hint = spec.get("ConstraintDescription", f"pattern {pattern}")
        return f"{name}={value!r}: {hint}"
    return None


def check_parameters(template: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    declared: Mapping[str, Any] = template.get("Parameters", {})
    problems = []
    for name, value in values.items():
        if name not in declared:
            problems.append(f"unknown template parameter {name!r}; the template has: {', '.join(declared)}")
            continue
        problem = check_parameter(name, value, declared[name])
        if problem:
            problems.append(problem)
    if problems:
        return problems

    def effective(name: str) -> float | None:
        raw = values.get(name, declared.get(name, {}).get("Default", ""))
        return _number(str(raw)) if str(raw) != "" else None

    low, high, desired = effective("MinSize"), effective("MaxSize"), effective("DesiredCapacity")
    if low is not None and high is not None and low > high:
        problems.append(f"MinSize {low:g} is above MaxSize {high:g}")
    elif desired is not None and low is not None and high is not None and not low <= desired <= high:
        problems.append(f"DesiredCapacity {desired:g} is outside MinSize..MaxSize ({low:g}..{high:g})")
    return problems + check_rules(template, values)


class _Undecidable(Exception):
    """A rule uses a function this check does not evaluate; CloudFormation will."""


def check_rules(template: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    """The template's Rules evaluated as CloudFormation would before creating anything: the
    AssertDescription of each assertion the values (or the declared defaults) break."""
    declared: Mapping[str, Any] = template.get("Parameters", {})

    def value(name: str) -> str:
        if name in values:
            return str(values[name])
        if name in declared and "Default" in declared[name]:
            return str(declared[name]["Default"])
        raise _Undecidable(name)

    def evaluate(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((function, argument),) = node.items()
            if function == "Ref":
                return value(str(argument))
            if function == "Fn::Equals":
                left, right = (evaluate(a) for a in argument)
                return str(left) == str(right)
            if function == "Fn::Not":
                return not evaluate(argument[0])
            if function == "Fn::Or":
                return any(evaluate(a) for a in argument)
            if function == "Fn::And":
                return all(evaluate(a) for a in argument)
            raise _Undecidable(function)
        if isinstance(node, (str, int, float, bool)):
            return node
        raise _Undecidable(repr(node))

    problems = []
    for name, rule in template.get("Rules", {}).items():
        try:
            if "RuleCondition" in rule and not evaluate(rule["RuleCondition"]):
                continue
            for assertion in rule.get("Assertions", []):
                if not evaluate(assertion["Assert"]):
                    problems.append(str(assertion.get("AssertDescription", f"rule {name} is not met")))
        except _Undecidable:
            continue
    return problems


def render_aws(profile: AwsProfile, out_dir: Path, template: Mapping[str, Any] | None = None,
               source_name: str = "template.yaml") -> RenderedStack:
    """The stack's template (the packaged `source_name` unless `template` is given) with this
    deployment's values as its parameter defaults, and its parameters file, written to `out_dir`."""
    if not _NAME.match(profile.stack_name):
        raise UsageError(
            f"stack name {profile.stack_name!r} must start with a letter and hold only letters, "
            "digits and hyphens (at most 128)"
        )
    source = copy.deepcopy(dict(template) if template is not None else cfn_yaml.load())
    values = {k: str(v) for k, v in profile.parameters.items()}
    problems = check_parameters(source, values)
    if problems:
        raise UsageError("; ".join(problems))
    declared = source["Parameters"]
    for name, value in values.items():
        number = _number(value) if declared[name].get("Type") == "Number" else None
        declared[name]["Default"] = int(number) if number is not None and number.is_integer() else value

    out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Rendered by `batchserve deploy aws` from deploy/aws/{source_name}; this deployment's values\n"
        "# are the parameter defaults. Edit the packaged template, not this file.\n"
    )
    body = header + cfn_yaml.dumps(source)
    if len(body.encode()) > INLINE_TEMPLATE_LIMIT:
        # The same template in YAML's flow style, one line: the indentation and the boot scripts'
        # line breaks cost what pushes a large template past what CloudFormation takes inline.
        compact = "# Compact form: as block YAML it would exceed the 51200-byte inline limit.\n"
        body = header + compact + cfn_yaml.dumps_compact(source)
    if len(body.encode()) > INLINE_TEMPLATE_LIMIT:
        # Larger ones must come from S3.
        raise UsageError(f"the rendered template is {len(body.encode())} bytes, above the 51200 inline limit")
    template_path = out_dir / "template.yaml"
    template_path.write_text(body, encoding="utf-8")
    parameters_path = out_dir / "parameters.json"
    parameters_path.write_text(
        json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()], indent=2) + "\n",
        encoding="utf-8",
    )
    defaults = {name: None if "Default" not in spec else str(spec["Default"]) for name, spec in declared.items()}
    return RenderedStack(profile.stack_name, profile.region, template_path, parameters_path, body, values, defaults)


# ---------------------------------------------------------------- Google Cloud


@dataclass(frozen=True)
class GcpProfile:
    image: str
    region: str
    service_name: str = "batchserve"
    min_instances: int = 0
    max_instances: int = 20
    project: str | None = None
    concurrency: int | None = None
    database_url_secret: str | None = None  # Secret Manager secret holding the PostgreSQL URL
    allow_unauthenticated: bool = False
    auth: str = "required"  # BATCHSERVE_AUTH
    admin_key_secret: str | None = None  # Secret Manager secret holding BATCHSERVE_ADMIN_KEY
    events: bool = True  # False: BATCHSERVE_EVENTS=false (a backend whose web tier records events)
    # The runtime identity: an id (made in `project`) or an e-mail; default NAME-run in `project`.
    service_account: str | None = None
    # PROJECT:REGION:INSTANCE, reached through Cloud Run's Cloud SQL connection (a unix socket under
    # /cloudsql/); the database URL in `database_url_secret` names that socket.
    cloudsql_instance: str | None = None
    model_repo: str | None = None  # BATCHSERVE_MODEL_REPO, e.g. gs://BUCKET/PREFIX (default: the image's)


@dataclass(frozen=True)
class RenderedService:
    service_name: str
    region: str
    project: str | None
    path: Path
    document: dict[str, Any]
    allow_unauthenticated: bool
    service_account: str | None = None  # the e-mail the revision runs as
    notes: tuple[str, ...] = ()  # what the deployment will lack, said before it is applied

    def _scope(self) -> list[str]:
        return ["--region", self.region] + (["--project", self.project] if self.project else [])

    def commands(self) -> list[list[str]]:
        """The gcloud commands that apply this rendering, in order."""
        commands = [["gcloud", "run", "services", "replace", str(self.path), *self._scope()]]
        if self.allow_unauthenticated:
            commands.append(
                [
                    "gcloud",
                    "run",
                    "services",
                    "add-iam-policy-binding",
                    self.service_name,
                    *self._scope(),
                    "--member=allUsers",
                    "--role=roles/run.invoker",
                ]
            )
        return commands

    def describe_command(self) -> list[str]:
        return ["gcloud", "run", "services", "describe", self.service_name, *self._scope()]

    def delete_command(self) -> list[str]:
        return ["gcloud", "run", "services", "delete", self.service_name, *self._scope(), "--quiet"]


def service_commands(service_name: str, region: str, project: str | None) -> RenderedService:
    """Commands about an existing service (status, destroy) need no rendering, only its coordinates."""
    return RenderedService(service_name, region, project, Path("service.yaml"), {}, False)


def render_gcp(profile: GcpProfile, out_dir: Path) -> RenderedService:
    if not _SERVICE_NAME.match(profile.service_name):
        raise UsageError(
            f"service name {profile.service_name!r} must be lower-case letters, digits and hyphens, "
            "start with a letter, end with a letter or digit, at most 49 characters"
        )
    if not 0 <= profile.min_instances <= profile.max_instances or profile.max_instances < 1:
        raise UsageError(
            f"need 0 <= --min <= --max and --max >= 1, got --min {profile.min_instances} --max {profile.max_instances}"
        )
    if profile.concurrency is not None and not 1 <= profile.concurrency <= 1000:
        raise UsageError(f"--concurrency must be 1..1000 (Cloud Run's range), got {profile.concurrency}")
    if not profile.image.strip():
        raise UsageError("--image must name the image built from Dockerfile.gpu")
    _check_access(profile)
    account, _ = gcp_names.service_account(profile.service_account, profile.service_name, profile.project)
    notes = _check_data(profile)

    service = yaml.safe_load(SERVICE_TEMPLATE.read_text(encoding="utf-8"))
    service["metadata"]["name"] = profile.service_name
    # gcloud reads the region from this label too; keeping both equal avoids its conflict error.
    service["metadata"].setdefault("labels", {})["cloud.googleapis.com/location"] = profile.region
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    annotations["autoscaling.knative.dev/minScale"] = str(profile.min_instances)
    annotations["autoscaling.knative.dev/maxScale"] = str(profile.max_instances)
    if profile.cloudsql_instance:
        annotations["run.googleapis.com/cloudsql-instances"] = profile.cloudsql_instance
    if profile.concurrency is not None:
        template["spec"]["containerConcurrency"] = profile.concurrency
    # Not the Compute Engine default account (Editor on the project): one that holds only the grants
    # deploy/gcp/identity.py gives it.
    template["spec"]["serviceAccountName"] = account
    container = template["spec"]["containers"][0]
    container["image"] = profile.image
    env = container.setdefault("env", [])
    _set_env(env, "BATCHSERVE_AUTH", profile.auth)
    if not profile.events:
        _set_env(env, "BATCHSERVE_EVENTS", "false")
    if profile.model_repo:
        _set_env(env, "BATCHSERVE_MODEL_REPO", profile.model_repo)
    # Secrets travel as references: Cloud Run reads the value when an instance starts, and
    # neither this file nor the revision holds it.
    for name, secret in (
        ("BATCHSERVE_DATABASE_URL", profile.database_url_secret),
        ("BATCHSERVE_ADMIN_KEY", profile.admin_key_secret),
    ):
        if secret:
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": "latest"}}})

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "service.yaml"
    path.write_text(
        "# Rendered by `batchserve deploy gcp` from deploy/gcp/service.yaml.\n"
        + yaml.safe_dump(service, sort_keys=False, width=120),
        encoding="utf-8",
    )
    return RenderedService(
        profile.service_name, profile.region, profile.project, path.resolve(), service, profile.allow_unauthenticated,
        account, tuple(notes),
    )


def _check_data(profile: GcpProfile) -> list[str]:
    """Where events and models come from; refuses what cannot work, returns what only may surprise."""
    notes = []
    if profile.cloudsql_instance:
        _, sql_region, _ = gcp_names.cloudsql_connection(profile.cloudsql_instance)
        if not profile.database_url_secret:
            raise UsageError(
                "--cloudsql-instance needs --database-url-secret SECRET: a Secret Manager secret holding "
                f"postgresql://USER:PASSWORD@/DATABASE?host=/cloudsql/{profile.cloudsql_instance}"
            )
        if sql_region != profile.region:
            notes.append(f"the Cloud SQL instance is in {sql_region}, the service in {profile.region}: every event "
                         "batch crosses regions (latency, and traffic billed between regions)")
    if profile.events and not profile.database_url_secret:
        notes.append("events go to a SQLite file on Cloud Run's in-memory filesystem and vanish with each "
                     "instance: pass --database-url-secret (with --cloudsql-instance for Cloud SQL), or --no-events")
    repo = profile.model_repo
    if repo is not None and not (repo.startswith(("gs://", "file://", "/")) and len(repo) > 5):
        raise UsageError(f"--model-repo on Cloud Run takes gs://BUCKET[/PREFIX] (read with the service's own "
                         f"account) or a path inside the image, got {repo!r}")
    return notes


def _check_access(profile: GcpProfile) -> None:
    """Who may call the service: refuse what would leave it open, or closed to everyone."""
    if profile.auth not in AUTH_MODES:
        raise UsageError(f"--auth must be one of {', '.join(AUTH_MODES)}, got {profile.auth!r}")
    for flag, secret in (("--database-url-secret", profile.database_url_secret),
                         ("--admin-key-secret", profile.admin_key_secret)):
        if secret is not None and not _SECRET_ID.match(secret):
            raise UsageError(
                f"{flag} takes a Secret Manager secret name (letters, digits, '_' and '-', at most 255), "
                f"got {secret!r}"
            )
    if profile.auth == "off" and profile.allow_unauthenticated:
        raise UsageError(
            "--auth off with --allow-unauthenticated would let anyone on the internet use the GPU: keep "
            "--auth required (with --admin-key-secret or --database-url-secret), or drop "
            "--allow-unauthenticated so that Cloud Run's IAM checks callers"
        )
    if profile.auth == "required" and not (profile.admin_key_secret or profile.database_url_secret):
        raise UsageError(
            "--auth required (the default) needs a key the service can check: --admin-key-secret SECRET (a "
            "Secret Manager secret holding the bootstrap key) or --database-url-secret SECRET (keys from "
            "`batchserve keys create` in that database); or --auth off behind Cloud Run's IAM"
        )


def _set_env(env: list[dict[str, Any]], name: str, value: str) -> None:
    """Set `name` to a plain value, replacing the packaged entry when there is one."""
    for item in env:
        if item.get("name") == name:
            item.clear()
            item.update(name=name, value=value)
            return
    env.append({"name": name, "value": value})


def shell(command: list[str]) -> str:
    return shlex.join(command)
