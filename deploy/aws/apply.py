"""`batchserve deploy aws` after rendering: apply, report status, destroy. Each returns an exit status."""

from __future__ import annotations

from collections import Counter
from typing import Any, TextIO

from batchserve.deploy.aws.session import AwsContext, aws_errors
from batchserve.deploy.aws.stack import StackOperations, deployed_parameters, is_healthy, outputs_of
from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import RenderedStack


def _print_outputs(stack: dict[str, Any], out: TextIO) -> None:
    for key, value in outputs_of(stack).items():
        print(f"  {key:<22} {value}", file=out)


def capacity_lines(context: AwsContext, group_name: str) -> list[str]:
    """The Auto Scaling group's size and its instances, and what the load balancer thinks of them."""
    autoscaling, elbv2 = context.client("autoscaling"), context.client("elbv2")
    with aws_errors(f"describing Auto Scaling group {group_name}"):
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    if not groups:
        return [f"Auto Scaling group {group_name}: not found"]
    group = groups[0]
    states = Counter(i["LifecycleState"] for i in group.get("Instances", []))
    summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no instances"
    lines = [
        f"capacity: desired {group['DesiredCapacity']} (min {group['MinSize']}, max {group['MaxSize']}): {summary}"
    ]
    for instance in group.get("Instances", []):
        lines.append(
            f"  {instance['InstanceId']}  {instance.get('InstanceType', '?'):<12} "
            f"{instance.get('AvailabilityZone', '?'):<12} {instance['LifecycleState']:<12} "
            f"{instance.get('HealthStatus', '?')}"
        )
    for arn in group.get("TargetGroupARNs", []):
        with aws_errors("describing target health"):
            health = elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        counts = Counter(h["TargetHealth"]["State"] for h in health)
        lines.append(
            "load balancer targets: "
            + (
                ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                or "none registered (the ALB answers 503)"
            )
        )
    return lines


def apply(
    context: AwsContext, rendered: RenderedStack, out: TextIO, *, poll_interval_s: float, timeout_s: float
) -> int:
    ops = StackOperations(context, rendered.stack_name, out, poll_interval_s=poll_interval_s, timeout_s=timeout_s)
    stack = ops.deploy(rendered)
    print(f"stack {rendered.stack_name}: {stack.get('StackStatus')}", file=out)
    _print_outputs(stack, out)
    return 0


def status(context: AwsContext, stack_name: str, out: TextIO) -> int:
    """0 when the stack is in a settled, healthy state; 1 when missing or failed."""
    ops = StackOperations(context, stack_name, out)
    stack = ops.describe()
    if stack is None:
        print(f"no stack {stack_name} in {context.region}", file=out)
        return 1
    print(f"stack {stack_name}: {stack['StackStatus']}", file=out)
    if stack.get("StackStatusReason"):
        print(f"  reason: {stack['StackStatusReason']}", file=out)
    _print_outputs(stack, out)
    # One group in direct mode; the workers' and the web tier's in queue mode.
    groups = [value for key, value in outputs_of(stack).items() if key.endswith("AutoScalingGroupName")]
    for group in groups:
        if len(groups) > 1:
            print(f"group {group}:", file=out)
        for line in capacity_lines(context, group):
            print(line, file=out)
    in_progress = stack["StackStatus"].endswith("_IN_PROGRESS") and "ROLLBACK" not in stack["StackStatus"]
    return 0 if is_healthy(stack) or in_progress else 1


def stack_databases(context: AwsContext, stack_name: str) -> list[dict[str, Any]]:
    """The RDS instances the stack created, as RDS describes them."""
    cloudformation, rds = context.client("cloudformation"), context.client("rds")
    with aws_errors(f"listing the resources of stack {stack_name}"):
        pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name)
        ids = [
            r["PhysicalResourceId"]
            for page in pages
            for r in page["StackResourceSummaries"]
            if r["ResourceType"] == "AWS::RDS::DBInstance"
            and r.get("PhysicalResourceId")
            and r.get("ResourceStatus") != "DELETE_COMPLETE"
        ]
    databases = []
    for identifier in ids:
        with aws_errors(f"describing database {identifier}"):
            databases.extend(rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"])
    return databases


def _refuse_protected(stack: dict[str, Any], databases: list[dict[str, Any]]) -> None:
    """A protected database would fail the deletion halfway (DELETE_FAILED, the rest of the stack
    gone, the stack no longer updatable): refuse before anything is deleted."""
    protected = [d["DBInstanceIdentifier"] for d in databases if d.get("DeletionProtection")]
    if not protected:
        return
    name = stack["StackName"]
    image = deployed_parameters(stack).get("ImageUri", "IMAGE")
    raise UsageError(
        f"stack {name}'s database {', '.join(protected)} has deletion protection, so deleting the stack would fail "
        f"halfway. Turn it off first: `batchserve deploy aws --stack-name {name} --image {image} "
        "--param DatabaseDeletionProtection=false`, then --destroy again; the database then leaves a final snapshot "
        "(its events and API keys) behind"
    )


def destroy(context: AwsContext, stack_name: str, out: TextIO, *, poll_interval_s: float, timeout_s: float) -> int:
    ops = StackOperations(context, stack_name, out, poll_interval_s=poll_interval_s, timeout_s=timeout_s)
    existing = ops.describe()
    databases = stack_databases(context, stack_name) if existing is not None else []
    if existing is not None:
        _refuse_protected(existing, databases)
    stack = ops.destroy()
    if stack is not None:
        print(f"stack {stack_name} deleted", file=out)
        buckets = [value for key, value in outputs_of(stack).items() if key.endswith("BucketName")]
        for bucket in buckets:
            print(
                f"bucket {bucket} was kept with its objects; remove it with: aws s3 rb s3://{bucket} --force", file=out
            )
        for database in databases:
            identifier = database["DBInstanceIdentifier"]
            print(
                f"database {identifier} left its final snapshot; list it with: aws rds describe-db-snapshots "
                f"--region {context.region} --db-instance-identifier {identifier} --snapshot-type manual",
                file=out,
            )
            print(
                "  its password stays in the stack's database secret (kept; restore the snapshot with "
                "`aws rds restore-db-instance-from-db-snapshot`)",
                file=out,
            )
    return 0
