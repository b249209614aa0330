"""`batchserve deploy aws` after rendering: apply, report status, destroy. Each returns an exit status."""

from __future__ import annotations

from collections import Counter
from typing import Any, TextIO

from batchserve.deploy.aws.session import AwsContext, aws_errors
from batchserve.deploy.aws.stack import StackOperations, is_healthy, outputs_of
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


def destroy(context: AwsContext, stack_name: str, out: TextIO, *, poll_interval_s: float, timeout_s: float) -> int:
    ops = StackOperations(context, stack_name, out, poll_interval_s=poll_interval_s, timeout_s=timeout_s)
    stack = ops.destroy()
    if stack is not None:
        print(f"stack {stack_name} deleted", file=out)
        buckets = [value for key, value in outputs_of(stack).items() if key.endswith("BucketName")]
        for bucket in buckets:
            print(
                f"bucket {bucket} was kept with its objects; remove it with: aws s3 rb s3://{bucket} --force", file=out
            )
    return 0
