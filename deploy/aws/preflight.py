"""Checks `batchserve deploy aws` makes before it applies a stack, so that what would fail minutes
into a stack operation (or silently, as instances that never launch) fails first, with its fix.

* The EC2 quota "Running On-Demand G and VT instances" (Service Quotas, code L-DB2E81BA), counted in
  vCPUs, against what the GPU group may run at its largest: MaxSize instances of the largest type
  it may launch (vCPUs from ec2 DescribeInstanceTypes). A new account's quota is often 0.
* The image, when it lives in ECR: ec2 instances would pull a tag nobody pushed and be replaced
  over and over (ecr DescribeImages).

Each check passes, fails (with the console page or command that fixes it), or cannot be made
(missing permission, no such quota in the partition): then it is reported and the deploy goes on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GPU_QUOTA_CODE = "L-DB2E81BA"
GPU_QUOTA_NAME = "Running On-Demand G and VT instances"
_GPU_FAMILY = re.compile(r"^(g|vt)\d", re.IGNORECASE)
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)

# (service, region) -> a boto3 client; a Stubber-wrapped one in tests.
ClientFactory = Callable[[str, str], Any]


@dataclass(frozen=True)
class PreflightPlan:
    """What one deployment needs: the GPU group's instance types and most instances, its images."""

    region: str
    gpu_types: tuple[str, ...]
    max_size: int
    images: tuple[str, ...]

    def describe(self) -> list[str]:
        """What would be checked, for a dry run (no credentials, no calls)."""
        lines = []
        if self.gpu_types:
            lines.append(
                f"EC2 quota {GPU_QUOTA_CODE} ({GPU_QUOTA_NAME}) in {self.region} >= {self.max_size} x the vCPUs "
                f"of the largest of {', '.join(self.gpu_types)} (ec2 DescribeInstanceTypes)"
            )
        for image in self.images:
            if ecr_reference(image):
                lines.append(f"image {image} exists in ECR (ecr DescribeImages)")
            else:
                lines.append(f"image {image}: not in ECR, not checked")
        return lines


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "failed" or "unchecked"
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.name}: {self.message}"


def plan_for(mode: str, region: str, values: Mapping[str, str]) -> PreflightPlan:
    """The plan of a rendering, from its effective parameter values (given, deployed or default)."""
    images = tuple(v for v in (values.get("ImageUri", ""), values.get("WebImageUri", "")) if v)
    if mode == "remote":  # a CPU web tier: no GPU quota involved
        return PreflightPlan(region, (), 0, images)
    types = tuple(t for t in (values.get(k, "") for k in ("InstanceType", "InstanceType2", "InstanceType3")) if t)
    return PreflightPlan(region, tuple(t for t in types if _GPU_FAMILY.match(t)), int(values.get("MaxSize", 0)), images)


def quota_console_url(region: str) -> str:
    return f"https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{GPU_QUOTA_CODE}"


def quota_increase_command(region: str, vcpus: int) -> str:
    return (
        f"aws service-quotas request-service-quota-increase --region {region} --service-code ec2 "
        f"--quota-code {GPU_QUOTA_CODE} --desired-value {vcpus}"
    )


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _gpu_quota(clients: ClientFactory, region: str) -> float:
    """The applied quota, or AWS's default where none is applied to this account."""
    from botocore.exceptions import ClientError

    quotas = clients("service-quotas", region)
    try:
        return float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=GPU_QUOTA_CODE)["Quota"]["Value"])
    except ClientError as exc:
        if _code(exc) != "NoSuchResourceException":
            raise
    return float(quotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=GPU_QUOTA_CODE)["Quota"]["Value"])


def check_gpu_quota(clients: ClientFactory, plan: PreflightPlan) -> Check | None:
    if not plan.gpu_types:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    name = f"{GPU_QUOTA_NAME} quota"
    try:
        described = clients("ec2", plan.region).describe_instance_types(InstanceTypes=list(plan.gpu_types))
        vcpus = {t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in described["InstanceTypes"]}
        quota = _gpu_quota(clients, plan.region)
    except (ClientError, BotoCoreError) as exc:
        return Check(name, "unchecked", f"could not be read ({exc}); check it at {quota_console_url(plan.region)}")
    largest = max(plan.gpu_types, key=lambda t: vcpus.get(t, 0))
    per_instance = vcpus.get(largest, 0)
    needed = plan.max_size * per_instance
    summary = f"{quota:g} vCPUs in {plan.region}; MaxSize {plan.max_size} x {per_instance} vCPUs ({largest}) = {needed}"
    if quota >= needed:
        return Check(name, "ok", summary)
    fits = math.floor(quota / per_instance) if per_instance else 0
    smaller = f", or deploy with --max {fits}" if fits >= 1 else ""
    return Check(
        name,
        "failed",
        f"{summary}: the group could not reach MaxSize (instances beyond the quota fail to launch). Request "
        f"{needed} vCPUs at {quota_console_url(plan.region)} or with `{quota_increase_command(plan.region, needed)}`"
        f" (approval takes hours to days){smaller}",
    )


def ecr_reference(image: str) -> dict[str, str] | None:
    match = _ECR_IMAGE.match(image)
    return {k: v for k, v in match.groupdict().items() if v is not None} if match else None


def check_image(clients: ClientFactory, image: str) -> Check:
    from botocore.exceptions import BotoCoreError, ClientError

    name = f"image {image}"
    reference = ecr_reference(image)
    if reference is None:
        return Check(name, "unchecked", "not an ECR image; the instances pull it as it is (it must be public)")
    region, repository = reference["region"], reference["repository"]
    image_id = (
        {"imageDigest": reference["digest"]} if "digest" in reference else {"imageTag": reference.get("tag", "latest")}
    )
    try:
        clients("ecr", region).describe_images(
            registryId=reference["account"], repositoryName=repository, imageIds=[image_id]
        )
    except ClientError as exc:
        code = _code(exc)
        if code == "RepositoryNotFoundException":
            return Check(
                name,
                "failed",
                f"ECR has no repository {repository} in {region} (account {reference['account']}): create it with "
                f"`aws ecr create-repository --region {region} --repository-name {repository}`, then push the image "
                "(docs/deploy-aws.md: `docker push`, or `batchserve deploy aws --remote-build` without Docker)",
            )
        if code == "ImageNotFoundException":
            return Check(
                name,
                "failed",
                f"repository {repository} holds no {next(iter(image_id.values()))}: push it with `docker push {image}` "
                f"or build it remotely with `batchserve deploy aws --remote-build --image {image}`; "
                f"`aws ecr list-images --region {region} --repository-name {repository}` lists what is there",
            )
        return Check(name, "unchecked", f"could not be read ({code or exc})")
    except BotoCoreError as exc:
        return Check(name, "unchecked", f"could not be read ({exc})")
    return Check(name, "ok", f"found in ECR ({region})")


def run_preflight(clients: ClientFactory, plan: PreflightPlan) -> list[Check]:
    checks = [check_gpu_quota(clients, plan)]
    checks += [check_image(clients, image) for image in plan.images]
    return [c for c in checks if c is not None]


def failures(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == "failed"]
