"""Create, update, inspect and delete the batchserve CloudFormation stack, printing its progress.

CloudFormation works asynchronously: every call here starts an operation and then follows the
stack's event stream until the stack leaves its *_IN_PROGRESS state. Events are printed as they
arrive; when the operation fails, the failed resources and CloudFormation's reasons are printed
again together, because they are what someone fixing the deployment needs to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from batchserve.deploy.aws.session import AwsContext, aws_errors, error_code, error_message
from batchserve.deploy.errors import DeployError
from batchserve.deploy.render import CAPABILITIES, RenderedStack

# A failed first creation leaves a stack that can only be deleted; it holds no resources.
_DEAD_ON_ARRIVAL = {"ROLLBACK_COMPLETE"}
_HEALTHY = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}


def is_no_update_error(exc: BaseException) -> bool:
    """update_stack's way of saying the stack already matches: a ValidationError with this text."""
    return error_code(exc) == "ValidationError" and "No updates are to be performed" in error_message(exc)


def is_missing_stack_error(exc: BaseException) -> bool:
    return error_code(exc) == "ValidationError" and "does not exist" in error_message(exc)


def format_event(event: dict[str, Any]) -> str:
    stamp = event["Timestamp"].strftime("%H:%M:%S") if hasattr(event.get("Timestamp"), "strftime") else "--:--:--"
    line = (
        f"{stamp}  {event.get('ResourceStatus', '?'):<28} {event.get('ResourceType', ''):<44} "
        f"{event.get('LogicalResourceId', '')}"
    )
    reason = event.get("ResourceStatusReason")
    return f"{line}  ({reason})" if reason and reason != "User Initiated" else line


def failure_report(action: str, stack_name: str, stack: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """The stack's final state and every failed resource with CloudFormation's reason, oldest first."""
    lines = [f"{action} failed: stack {stack_name} is {stack.get('StackStatus', '?')}"]
    if stack.get("StackStatusReason"):
        lines.append(f"  reason: {stack['StackStatusReason']}")
    for event in failures:
        lines.append(
            f"  {event.get('LogicalResourceId')} ({event.get('ResourceType')}): "
            f"{event.get('ResourceStatus')}: {event.get('ResourceStatusReason') or 'no reason given'}"
        )
    return "\n".join(lines)


@dataclass
class EventWatcher:
    """Yields a stack's events once each, oldest first, starting after the ones that already existed."""

    cloudformation: Any
    stack_id: str
    seen: set[str] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def prime(self) -> None:
        self.seen.update(e["EventId"] for e in self._newest_first())

    def _newest_first(self):
        pages = self.cloudformation.get_paginator("describe_stack_events").paginate(StackName=self.stack_id)
        for page in pages:
            yield from page["StackEvents"]

    def poll(self) -> list[dict[str, Any]]:
        fresh = []
        for event in self._newest_first():
            if event["EventId"] in self.seen:
                break  # everything older was reported already
            fresh.append(event)
        fresh.reverse()
        for event in fresh:
            self.seen.add(event["EventId"])
            if str(event.get("ResourceStatus", "")).endswith("FAILED"):
                self.failures.append(event)
        return fresh


class StackOperations:
    def __init__(
        self,
        context: AwsContext,
        stack_name: str,
        out: TextIO,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.context = context
        self.stack_name = stack_name
        self.out = out
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.cloudformation = context.client("cloudformation")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def describe(self, stack: str | None = None) -> dict[str, Any] | None:
        """The stack by name (or id), or None when there is none."""
        from botocore.exceptions import ClientError

        with aws_errors(f"describing stack {stack or self.stack_name}"):
            try:
                return self.cloudformation.describe_stacks(StackName=stack or self.stack_name)["Stacks"][0]
            except ClientError as exc:
                if is_missing_stack_error(exc):
                    return None
                raise

    # ------------------------------------------------------------ waiting

    def _wait(self, stack_id: str, watcher: EventWatcher, success: set[str], action: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            with aws_errors(f"following {action}"):
                for event in watcher.poll():
                    self.say(format_event(event))
            stack = self.describe(stack_id)
            status = stack["StackStatus"] if stack else "DELETE_COMPLETE"
            if not status.endswith("_IN_PROGRESS"):
                break
            if time.monotonic() > deadline:
                raise DeployError(
                    f"{action} still {status} after {self.timeout_s:.0f} s; CloudFormation carries on: "
                    f"follow it with `batchserve deploy aws --status --stack-name {self.stack_name}`"
                )
            self.sleep(self.poll_interval_s)
        if status in success:
            return stack or {}
        raise DeployError(failure_report(action, self.stack_name, stack or {"StackStatus": status}, watcher.failures))

    # ------------------------------------------------------------ operations

    def deploy(self, rendered: RenderedStack) -> dict[str, Any]:
        """Create the stack, or update it; returns the stack as described at the end."""
        existing = self.describe()
        if existing and existing["StackStatus"] in _DEAD_ON_ARRIVAL:
            self.say(f"stack {self.stack_name} is {existing['StackStatus']} (its creation failed); deleting it first")
            self.destroy()
            existing = None
        if existing and existing["StackStatus"].endswith("_IN_PROGRESS"):
            raise DeployError(
                f"stack {self.stack_name} is busy ({existing['StackStatus']}); wait for it, e.g. with --status"
            )
        parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in rendered.parameters.items()]
        common = {
            "StackName": self.stack_name,
            "TemplateBody": rendered.template_body,
            "Capabilities": list(CAPABILITIES),
        }
        if existing is None:
            with aws_errors(f"creating stack {self.stack_name}"):
                stack_id = self.cloudformation.create_stack(
                    **common, Parameters=parameters, Tags=[{"Key": "app", "Value": "batchserve"}]
                )["StackId"]
            self.say(f"creating stack {self.stack_name} ({stack_id})")
            watcher = EventWatcher(self.cloudformation, stack_id)
            return self._wait(stack_id, watcher, {"CREATE_COMPLETE"}, "stack creation")
        return self._update(existing, rendered, common, parameters)

    def _update(
        self,
        existing: dict[str, Any],
        rendered: RenderedStack,
        common: dict[str, Any],
        parameters: list[dict[str, Any]],
    ) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        stack_id = existing["StackId"]
        given = {p["ParameterKey"] for p in parameters}
        declared = rendered.defaults
        # What this run does not set keeps its deployed value, as `aws cloudformation deploy` does: by
        # UsePreviousValue, which also keeps NoEcho values (read back masked) and lists, even where the
        # rendered default differs (the network of a stack created in a custom VPC). A value equal to
        # the rendered default needs no mention: an omitted parameter takes its default. Parameters the
        # template no longer declares are dropped.
        kept = [
            {"ParameterKey": key, "UsePreviousValue": True}
            for key, value in ((p["ParameterKey"], p.get("ParameterValue", "")) for p in existing.get("Parameters", []))
            if key not in given and key in declared and value != declared[key]
        ]
        watcher = EventWatcher(self.cloudformation, stack_id)
        with aws_errors(f"reading events of stack {self.stack_name}"):
            watcher.prime()
        with aws_errors(f"updating stack {self.stack_name}"):
            try:
                self.cloudformation.update_stack(**common, Parameters=parameters + kept)
            except ClientError as exc:
                if is_no_update_error(exc):
                    self.say(f"stack {self.stack_name} is up to date: nothing to change")
                    return existing
                raise
        self.say(f"updating stack {self.stack_name}")
        return self._wait(stack_id, watcher, {"UPDATE_COMPLETE"}, "stack update")

    def destroy(self) -> dict[str, Any] | None:
        """Delete the stack and wait; returns the stack as it was, or None when there was none."""
        existing = self.describe()
        if existing is None:
            self.say(f"no stack {self.stack_name} in {self.context.region}: nothing to delete")
            return None
        stack_id = existing["StackId"]
        watcher = EventWatcher(self.cloudformation, stack_id)
        with aws_errors(f"deleting stack {self.stack_name}"):
            watcher.prime()
            self.cloudformation.delete_stack(StackName=stack_id)
        self.say(f"deleting stack {self.stack_name}")
        self._wait(stack_id, watcher, {"DELETE_COMPLETE"}, "stack deletion")
        return existing


def created_by_deploy(existing: dict[str, Any] | None) -> bool:
    """Whether deploying creates the stack: none exists, or only the husk of a failed creation."""
    return existing is None or existing.get("StackStatus") in _DEAD_ON_ARRIVAL


def deployed_parameters(existing: dict[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in existing.get("Parameters", [])}


def outputs_of(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def is_healthy(stack: dict[str, Any]) -> bool:
    return stack.get("StackStatus") in _HEALTHY
