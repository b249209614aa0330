"""Checks a rendered profile must pass before it is applied.

* Cloud Run: the service YAML against the Cloud Run Admin API v1 schemas that google-api-python-client
  ships (`run.v1.json`, the API's discovery document), walked recursively from `Service`: unknown
  fields and wrong JSON types are reported with their path. Then the rules a GPU service lives by,
  which no schema says (annotations are free-form strings to the API), and the runtime rules: a
  dedicated service account, a well-formed Cloud SQL connection, in-memory volumes that leave the
  server its memory and hold the event journal's caps.
* CloudFormation: cfn-lint, through its Python API.

Each problem is a Finding; an empty list means the profile passed.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from batchserve.deploy.errors import MissingTool


@dataclass(frozen=True)
class Finding:
    path: str  # JSON path ($.spec.template...) or file:line
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# ---------------------------------------------------------------- Cloud Run schema


@lru_cache(maxsize=1)
def run_v1_schemas() -> dict[str, Any]:
    """The `schemas` section of google-api-python-client's copy of the Cloud Run v1 discovery document."""
    try:
        import googleapiclient
    except ImportError:
        raise MissingTool(
            "checking the Cloud Run service needs google-api-python-client "
            "(pip install google-api-python-client or batchserve[dev]; or pass --skip-validation)"
        ) from None
    document = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "run.v1.json"
    return json.loads(document.read_text(encoding="utf-8"))["schemas"]


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _child(path: str, key: object) -> str:
    """JSONPath of a member: dotted when the key is a plain name, bracketed when it has '/' or '.'."""
    return f"{path}.{key}" if _PLAIN_KEY.match(str(key)) else f"{path}['{key}']"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


class _SchemaWalker:
    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas
        self.findings: list[Finding] = []

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.schemas[node["$ref"]]
        return node

    def _report(self, path: str, message: str) -> None:
        self.findings.append(Finding(path, message))

    def check(self, value: Any, node: dict[str, Any], path: str) -> None:
        node = self._resolve(node)
        expected = node.get("type", "object" if "properties" in node else "any")
        if expected == "any":
            return
        if expected == "object":
            self._object(value, node, path)
        elif expected == "array":
            if not isinstance(value, list):
                self._report(path, f"expected an array, got {_type_name(value)}")
                return
            for i, item in enumerate(value):
                self.check(item, node.get("items", {"type": "any"}), f"{path}[{i}]")
        else:
            self._scalar(value, expected, node, path)

    def _object(self, value: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(value, dict):
            self._report(path, f"expected an object, got {_type_name(value)}")
            return
        properties: dict[str, Any] = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, item in value.items():
            where = _child(path, key)
            if key in properties:
                self.check(item, properties[key], where)
            elif extra is not None:
                # A map (annotations, labels, limits, nodeSelector): keys are free, values typed.
                self.check(item, extra, where)
            else:
                close = difflib.get_close_matches(str(key), list(properties), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self._report(where, f"unknown field {key!r}{hint}")

    def _scalar(self, value: Any, expected: str, node: dict[str, Any], path: str) -> None:
        actual = _type_name(value)
        ok = {
            "string": actual == "string",
            "integer": actual == "integer",
            "number": actual in ("integer", "number"),
            "boolean": actual == "boolean",
        }.get(expected, True)
        # 64-bit integers travel as JSON strings in Google APIs; a number is accepted for them too.
        if expected == "string" and node.get("format") in ("int64", "uint64") and actual == "integer":
            ok = True
        if not ok:
            self._report(path, f"expected {expected}, got {actual} {value!r}")
        elif "enum" in node and value not in node["enum"]:
            self._report(path, f"{value!r} is not one of {node['enum']}")


def check_run_schema(service: Any, schemas: dict[str, Any] | None = None) -> list[Finding]:
    """Structural check of a Knative `Service` document against the Cloud Run v1 API."""
    walker = _SchemaWalker(schemas if schemas is not None else run_v1_schemas())
    if not isinstance(service, dict):
        return [Finding("$", f"expected a Service object, got {_type_name(service)}")]
    walker.check(service, {"$ref": "Service"}, "$")
    if service.get("apiVersion") != "serving.knative.dev/v1":
        walker.findings.append(Finding("$.apiVersion", "must be 'serving.knative.dev/v1'"))
    if service.get("kind") != "Service":
        walker.findings.append(Finding("$.kind", "must be 'Service'"))
    if "status" in service:
        walker.findings.append(Finding("$.status", "is output only; remove it"))
    return walker.findings


# ---------------------------------------------------------------- Cloud Run GPU rules

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
GPU_MIN_CPU = 4
GPU_MIN_MEMORY = 16 * 2**30
STARTUP_PROBE_MAX_S = 240  # Cloud Run's limit on initialDelaySeconds + periodSeconds * failureThreshold


def parse_quantity(text: str) -> float:
    """A Kubernetes resource quantity ('4', '4000m', '16Gi', '17179869184') as a plain number."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a resource quantity")
    return float(match.group(1)) * _FACTORS[match.group(2)]


def _get(doc: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(key, int):
            doc = doc[key] if isinstance(doc, list) and len(doc) > key else None
        else:
            doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def check_gpu_rules(service: dict[str, Any]) -> list[Finding]:
    """What a Cloud Run service with an L4 GPU needs, beyond what the API's types say."""
    findings: list[Finding] = []

    def need(condition: bool, path: str, message: str) -> None:
        if not condition:
            findings.append(Finding(path, message))

    need(bool(_get(service, "metadata", "name")), "$.metadata.name", "the service needs a name")
    annotations = _get(service, "spec", "template", "metadata", "annotations") or {}
    at = "$.spec.template.metadata.annotations"
    need(
        annotations.get("run.googleapis.com/cpu-throttling") == "false",
        f"{at}['run.googleapis.com/cpu-throttling']",
        'must be "false": GPU services need CPU always allocated',
    )
    need(
        annotations.get("run.googleapis.com/startup-cpu-boost") == "true",
        f"{at}['run.googleapis.com/startup-cpu-boost']",
        'should be "true": model load is CPU-bound',
    )
    scale: dict[str, int] = {}
    for key in ("minScale", "maxScale"):
        name = f"autoscaling.knative.dev/{key}"
        raw = annotations.get(name)
        if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()):
            findings.append(Finding(f"{at}['{name}']", f"must be a whole number written as a string, got {raw!r}"))
        else:
            scale[key] = int(raw)
    if len(scale) == 2:
        need(
            scale["minScale"] <= scale["maxScale"],
            f"{at}['autoscaling.knative.dev/minScale']",
            f"minScale {scale['minScale']} is above maxScale {scale['maxScale']}",
        )
        need(scale["maxScale"] >= 1, f"{at}['autoscaling.knative.dev/maxScale']", "maxScale must be at least 1")

    spec = _get(service, "spec", "template", "spec") or {}
    sp = "$.spec.template.spec"
    need(
        _get(spec, "nodeSelector", "run.googleapis.com/accelerator") == "nvidia-l4",
        f"{sp}.nodeSelector['run.googleapis.com/accelerator']",
        'must be "nvidia-l4"',
    )
    concurrency = spec.get("containerConcurrency")
    need(
        isinstance(concurrency, int) and concurrency >= 1,
        f"{sp}.containerConcurrency",
        "must be a positive integer (requests per instance the batcher can group)",
    )

    containers = spec.get("containers") or []
    need(len(containers) >= 1, f"{sp}.containers", "needs a container")
    gpu_holders = [i for i, c in enumerate(containers) if _get(c, "resources", "limits", "nvidia.com/gpu") is not None]
    need(len(gpu_holders) == 1, f"{sp}.containers", "exactly one container must have the nvidia.com/gpu limit")
    for i in gpu_holders:
        findings.extend(_check_gpu_container(containers[i], f"{sp}.containers[{i}]"))
    return findings


def _check_gpu_container(container: dict[str, Any], path: str) -> list[Finding]:
    findings: list[Finding] = []
    limits = _get(container, "resources", "limits") or {}
    lp = f"{path}.resources.limits"
    if limits.get("nvidia.com/gpu") != "1":
        findings.append(
            Finding(
                f"{lp}['nvidia.com/gpu']", f'must be "1" (one L4 per instance), got {limits.get("nvidia.com/gpu")!r}'
            )
        )
    for key, minimum, shown in (("cpu", GPU_MIN_CPU, "4"), ("memory", GPU_MIN_MEMORY, "16Gi")):
        try:
            value = parse_quantity(limits.get(key, ""))
        except ValueError as exc:
            findings.append(Finding(f"{lp}.{key}", str(exc)))
            continue
        if value < minimum:
            findings.append(Finding(f"{lp}.{key}", f"an L4 needs at least {shown}, got {limits.get(key)!r}"))
    if not container.get("image"):
        findings.append(Finding(f"{path}.image", "the container needs an image"))
    probe = container.get("startupProbe")
    if not isinstance(probe, dict) or not isinstance(_get(probe, "httpGet", "path"), str):
        findings.append(Finding(f"{path}.startupProbe", "needs an httpGet probe (the server's /readyz)"))
    else:
        budget = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        if isinstance(budget, int) and budget > STARTUP_PROBE_MAX_S:
            findings.append(
                Finding(
                    f"{path}.startupProbe",
                    f"initialDelaySeconds + periodSeconds x failureThreshold = {budget} s, "
                    f"above Cloud Run's {STARTUP_PROBE_MAX_S} s",
                )
            )
    return findings


_CLOUDSQL_CONNECTION = re.compile(
    r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]:[a-z]+-[a-z]+[0-9]+:[a-z][a-z0-9-]*$")
_DEFAULT_COMPUTE_ACCOUNT = re.compile(r"^[0-9]+-compute@developer\.gserviceaccount\.com$")
# What the in-memory volumes may take of the container's memory: the rest is the server's (the
# model, ONNX Runtime's host buffers, decoding, the event buffer).
MEMORY_VOLUMES_MAX_SHARE = 0.5


def check_runtime_rules(service: dict[str, Any]) -> list[Finding]:
    """Who the revision runs as, how it reaches Cloud SQL, and what its in-memory volumes may hold."""
    findings: list[Finding] = []
    spec = _get(service, "spec", "template", "spec") or {}
    sp = "$.spec.template.spec"
    account = spec.get("serviceAccountName")
    if not isinstance(account, str) or "@" not in account:
        findings.append(Finding(f"{sp}.serviceAccountName", "needs a dedicated service account's e-mail (without "
                                "one the revision runs as the Compute Engine default account, Editor on the project)"))
    elif _DEFAULT_COMPUTE_ACCOUNT.match(account):
        findings.append(Finding(f"{sp}.serviceAccountName", f"{account} is the Compute Engine default account "
                                "(Editor on the project): use a dedicated one"))
    annotations = _get(service, "spec", "template", "metadata", "annotations") or {}
    connections = annotations.get("run.googleapis.com/cloudsql-instances")
    if isinstance(connections, str):
        for name in connections.split(","):
            if not _CLOUDSQL_CONNECTION.match(name.strip()):
                findings.append(Finding("$.spec.template.metadata.annotations['run.googleapis.com/cloudsql-instances']",
                                        f"{name.strip()!r} is not a connection name PROJECT:REGION:INSTANCE"))
    findings.extend(_check_memory_volumes(spec, sp))
    return findings


def _check_memory_volumes(spec: dict[str, Any], sp: str) -> list[Finding]:
    """In-memory volumes count against the container's memory: together they may take at most
    MEMORY_VOLUMES_MAX_SHARE of it, and the event journal on one must be capped below its size, so
    the writer drops (and counts) events before the volume refuses a write."""
    findings: list[Finding] = []
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    limits: dict[str, float] = {}
    for name, volume in volumes.items():
        if _get(volume, "emptyDir", "medium") != "Memory":
            continue
        raw = _get(volume, "emptyDir", "sizeLimit")
        try:
            limits[str(name)] = parse_quantity(raw)
        except ValueError:
            findings.append(Finding(f"{sp}.volumes[{name!r}].emptyDir.sizeLimit",
                                    f"an in-memory volume needs a size limit (e.g. 2Gi), got {raw!r}"))
    for i, container in enumerate(spec.get("containers") or []):
        path = f"{sp}.containers[{i}]"
        try:
            memory = parse_quantity(_get(container, "resources", "limits", "memory") or "")
        except ValueError:
            continue  # reported by the GPU rules
        mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts") or [] if isinstance(m, dict)}
        mounted = sum(limits.get(str(name), 0.0) for name in set(mounts.values()))
        if mounted > memory * MEMORY_VOLUMES_MAX_SHARE:
            findings.append(Finding(f"{path}.volumeMounts", f"in-memory volumes of {mounted / 2**30:g} GiB leave too "
                                    f"little of the {memory / 2**30:g} GiB limit to the server (at most "
                                    f"{MEMORY_VOLUMES_MAX_SHARE:.0%})"))
        env = {e.get("name"): e.get("value") for e in container.get("env") or [] if isinstance(e, dict)}
        journal = env.get("BATCHSERVE_JOURNAL_DIR")
        holder = mounts.get(journal) if isinstance(journal, str) else None
        if holder is None or str(holder) not in limits:
            continue
        try:
            caps = sum(int(env.get(k) or default) for k, default in (
                ("BATCHSERVE_EVENTS_JOURNAL_MAX_BYTES", 1 << 30),
                ("BATCHSERVE_EVENTS_DEAD_LETTER_MAX_BYTES", 256 << 20)))
        except ValueError:
            findings.append(Finding(f"{path}.env", "the journal's byte caps must be whole numbers"))
            continue
        if caps >= limits[str(holder)]:
            findings.append(Finding(f"{path}.env", f"the journal and dead-letter caps ({caps} bytes) must stay "
                                    f"below the in-memory volume {holder!r} that holds them "
                                    f"({limits[str(holder)]:.0f} bytes)"))
    return findings


def check_cloud_run_service(service: Any) -> list[Finding]:
    """Schema first; the GPU and runtime rules only make sense for a structurally sound document."""
    findings = check_run_schema(service)
    if isinstance(service, dict):
        findings.extend(check_gpu_rules(service))
        findings.extend(check_runtime_rules(service))
    return findings


# ---------------------------------------------------------------- CloudFormation


def lint_cloudformation(template: Path, regions: Sequence[str] = ("us-east-1",)) -> list[Finding]:
    """cfn-lint's errors and warnings (its default rule set) for a template file."""
    try:
        from cfnlint.api import ManualArgs, lint_file
    except ImportError:
        raise MissingTool(
            "checking the CloudFormation template needs cfn-lint "
            "(pip install cfn-lint or batchserve[dev]; or pass --skip-validation)"
        ) from None
    matches = lint_file(Path(template), config=ManualArgs(regions=list(regions)))
    return [Finding(f"{Path(m.filename or template).name}:{m.linenumber}", f"{m.rule.id} {m.message}") for m in matches]
