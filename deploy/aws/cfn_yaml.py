"""CloudFormation YAML in and out.

The template is written with CloudFormation's short-form tags (`!Ref`, `!Sub`, `!GetAtt a.b`, ...),
which a plain YAML loader rejects. Loading turns each tag into the long form CloudFormation also
accepts (`{"Ref": ...}`, `{"Fn::Sub": ...}`), so the result is ordinary data that can be changed and
dumped again, and that tests can read (scaling policies, parameters) without a second copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

TEMPLATE_PATH = Path(__file__).with_name("template.yaml")


class _Loader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:  # YAML has no fourth kind of node
        value = loader.construct_mapping(cast(yaml.MappingNode, node), deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        # `!GetAtt Resource.Attribute` is the one tag whose short form has another shape.
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


_Loader.add_multi_constructor("!", _intrinsic)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line strings (the user data script) stay readable as literal blocks.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def loads(text: str) -> dict[str, Any]:
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader with tag constructors
    if not isinstance(data, dict):
        raise ValueError("a CloudFormation template must be a mapping at the top level")
    return data


def load(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    return loads(Path(path).read_text(encoding="utf-8"))


def dumps(template: dict[str, Any]) -> str:
    return yaml.dump(template, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def dumps_compact(template: dict[str, Any]) -> str:
    """The same data in flow style on one line (multi-line strings double-quoted with escapes)."""
    return yaml.dump(
        template, Dumper=_Dumper, sort_keys=False, default_flow_style=True, width=float("inf"), allow_unicode=True
    )
