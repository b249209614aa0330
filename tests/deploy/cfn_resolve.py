"""Evaluate the intrinsic functions of a template's resource properties against a created stack.

moto's CloudFormation skips scaling policies and alarms, so the tests create them through the API
from the template's own properties; this resolves those properties (Ref, Fn::GetAtt, Fn::Join,
Fn::Sub, Fn::If and conditions) the way CloudFormation would, so the API calls cannot drift from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NO_VALUE = object()


@dataclass
class StackScope:
    template: dict[str, Any]
    parameters: dict[str, str]  # effective values (defaults filled in)
    physical_ids: dict[str, str]  # logical id -> physical id (created resources and API-made ones)
    pseudo: dict[str, str] = field(default_factory=dict)  # AWS::Region, AWS::StackName, ...

    def condition(self, name: str) -> bool:
        return bool(self.evaluate(self.template["Conditions"][name]))

    def get_att(self, logical_id: str, attribute: str) -> str:
        physical = self.physical_ids[logical_id]
        if attribute == "LoadBalancerFullName":  # arn:...:loadbalancer/app/NAME/ID -> app/NAME/ID
            return physical.split(":loadbalancer/", 1)[1]
        if attribute == "TargetGroupFullName":  # arn:...:targetgroup/NAME/ID -> targetgroup/NAME/ID
            return "targetgroup/" + physical.split(":targetgroup/", 1)[1]
        raise KeyError(f"no resolver for {logical_id}.{attribute}")

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return self.physical_ids[name]

    def evaluate(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.evaluate(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(arg[0], arg[1])
            if key == "Fn::Join":
                return arg[0].join(str(v) for v in self.evaluate(arg[1]))
            if key == "Fn::If":
                return self.evaluate(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                left, right = self.evaluate(arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.evaluate(arg[0])
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Sub":
                return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self._sub_var(m.group(1))), arg)
        out = {k: self.evaluate(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _sub_var(self, name: str) -> Any:
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self.get_att(logical_id, attribute)
        return self.ref(name)


def coerce_to_api(client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation converts parameter strings to the API's types; do the same using botocore's model."""
    shape = client.meta.service_model.operation_model(operation).input_shape

    def convert(value: Any, shape: Any) -> Any:
        kind = shape.type_name
        if kind == "structure" and isinstance(value, dict):
            return {k: convert(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
        if kind == "list" and isinstance(value, list):
            return [convert(v, shape.member) for v in value]
        if isinstance(value, str):
            if kind in ("integer", "long"):
                return int(value)
            if kind in ("double", "float"):
                return float(value)
            if kind == "boolean":
                return value.lower() == "true"
        return value

    return convert(params, shape)
