"""Offline checks of rendered manifests, run before anything reaches a cluster.

* Built-in kinds: kubernetes-validate's strict schemas for a pinned Kubernetes release (they ship
  with the package: no cluster, no network), every error of each object. Strict means an unknown
  field is an error, where the API server would drop it silently.
* KEDA's kinds: the CRD schemas of a pinned KEDA release, committed in crds/, with every object
  closed to unknown fields as well (the API server prunes them: a misspelt field would be lost).
* The rules no schema states: the shutdown sequence fits in the grace period, secrets arrive by
  reference, probes name declared ports, selectors select their pods, autoscalers point at
  Deployments that leave the replica count to them.

Each problem is a Finding whose path starts with the object (`Deployment/batchserve $.spec...`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from batchserve.deploy.errors import MissingTool, UsageError
from batchserve.deploy.k8s import contract as c
from batchserve.deploy.k8s.pods import GPU_RESOURCE, Manifest
from batchserve.deploy.validate import Finding

KUBERNETES_VERSION = "1.32"  # the oldest release the manifests are checked against; --kubernetes-version
KEDA_VERSION = "2.20.2"
CRD_DIR = Path(__file__).parent / "crds"
CRD_FILES = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}
# Environment variables whose values are secrets: they must come from a Secret, never inline.
SECRET_ENV = frozenset({c.ENV_DATABASE_URL, c.ENV_ADMIN_KEY, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})


def _where(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "?"
    name = doc.get("metadata", {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    return f"{doc.get('kind', '?')}/{name}"


def _json_path(parts: Sequence[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


# ---------------------------------------------------------------- built-in kinds


def _kubernetes_validate() -> Any:
    try:
        from kubernetes_validate import utils
    except ImportError:
        raise MissingTool(
            "checking the manifests needs kubernetes-validate (pip install kubernetes-validate or "
            "batchserve[deploy]; or pass --skip-validation)"
        ) from None
    return utils


@cache
def _schema_dir(release: str) -> str:
    """The package's strict schemas for `release` (1.NN)."""
    utils = _kubernetes_validate()
    shipped = [v for v in utils.all_versions() if utils.major_minor(v) == release]
    if not shipped:
        known = sorted({utils.major_minor(v) for v in utils.all_versions()}, key=lambda v: int(v.split(".")[1]))
        raise UsageError(
            f"kubernetes-validate {utils.__version__} has no schemas for Kubernetes {release} "
            f"(it has {known[0]} to {known[-1]})"
        )
    return f"kubernetes-json-schema/v{shipped[-1]}-local-strict"


@cache
def _builtin_validator(kind: str, api_version: str, release: str) -> Any:
    """kubernetes-validate's own schema and validator for one kind, built once: the shared definitions
    are megabytes of JSON that `kubernetes_validate.validate` would parse again for every object."""
    import jsonschema
    from referencing import Registry, Resource

    utils = _kubernetes_validate()
    directory = _schema_dir(release)
    # As kubernetes-validate names its files: apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", release)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"{directory}/_definitions.json", release)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check_builtin(doc: Manifest, release: str = KUBERNETES_VERSION) -> list[Finding]:
    """Every error of one object against the strict schema of its kind in Kubernetes `release`."""
    validator = _builtin_validator(str(doc.get("kind")), str(doc.get("apiVersion")), release)
    if validator is None:
        return [
            Finding(_where(doc), f"no schema for {doc.get('kind')} {doc.get('apiVersion')} in Kubernetes {release}")
        ]
    return [
        Finding(f"{_where(doc)} {_json_path(list(error.absolute_path))}", f"{error.message} (Kubernetes {release})")
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# ---------------------------------------------------------------- KEDA kinds


@cache
def crd_schema(kind: str, version: str) -> dict[str, Any]:
    """The openAPIV3Schema of `kind` at API `version` (e.g. v1alpha1), closed to unknown fields."""
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text(encoding="utf-8"))
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return _closed(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    raise KeyError(f"{kind} has no version {version} in KEDA {KEDA_VERSION}")


def _closed(node: Any) -> Any:
    """Where a schema lists properties and says nothing of others, others are errors; objects that
    keep unknown fields by design (x-kubernetes-preserve-unknown-fields) stay open."""
    if isinstance(node, dict):
        for value in node.values():
            _closed(value)
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for item in node:
            _closed(item)
    return node


def check_crd(doc: Manifest) -> list[Finding]:
    try:
        import jsonschema
    except ImportError:
        raise MissingTool(
            "checking KEDA objects needs jsonschema (pip install jsonschema or batchserve[deploy])"
        ) from None
    kind, api_version = doc.get("kind"), str(doc.get("apiVersion", ""))
    group, _, version = api_version.partition("/")
    if group != "keda.sh" or kind not in CRD_FILES:
        return [Finding(_where(doc), f"no schema for {kind} {api_version} (KEDA {KEDA_VERSION})")]
    try:
        schema = crd_schema(kind, version)
    except KeyError as exc:
        return [Finding(_where(doc), str(exc.args[0]))]
    # OpenAPI v3's schema objects are JSON Schema draft 4 with extensions the validator ignores.
    validator = jsonschema.Draft4Validator(schema)
    return [
        Finding(f"{_where(doc)} {_json_path(list(error.absolute_path))}", f"{error.message} (KEDA {KEDA_VERSION})")
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


# ---------------------------------------------------------------- rules


def _flag(args: Sequence[str], flag: str) -> float | None:
    for arg in args:
        name, _, value = arg.partition("=")
        if name == flag:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _pre_stop_s(container: Manifest) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        try:
            return float(command[1])
        except ValueError:
            return 0.0
    return 0.0


def _pod_rules(doc: Manifest) -> Iterator[Finding]:
    where = _where(doc)
    spec = doc["spec"]
    template = spec.get("template", {})
    pod = template.get("spec", {})
    selected = spec.get("selector", {}).get("matchLabels", {})
    pod_labels = template.get("metadata", {}).get("labels", {})
    if any(pod_labels.get(k) != v for k, v in selected.items()):
        yield Finding(f"{where} $.spec.selector", "selects labels the pod template does not carry")
    if pod.get("enableServiceLinks") is not False:
        yield Finding(
            f"{where} $.spec.template.spec.enableServiceLinks",
            "must be false: service links would set BATCHSERVE_* variables the server reads",
        )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    for i, container in enumerate(pod.get("containers", [])):
        at = f"{where} $.spec.template.spec.containers[{i}]"
        args = container.get("args", [])
        command = container.get("command", [])
        if command[-1:] == ["serve"]:
            drain, shutdown = _flag(args, "--drain-delay"), _flag(args, "--shutdown-grace")
            if drain is None or shutdown is None:
                yield Finding(
                    f"{at}.args", "must set --drain-delay and --shutdown-grace (the grace period depends on them)"
                )
            elif grace <= _pre_stop_s(container) + drain + shutdown:
                yield Finding(
                    f"{where} $.spec.template.spec.terminationGracePeriodSeconds",
                    f"{grace} s does not exceed preStop {_pre_stop_s(container):g} s + drain delay {drain:g} s "
                    f"+ shutdown grace {shutdown:g} s: the kubelet would kill the server mid-shutdown",
                )
        elif command[-1:] == ["worker"]:
            shutdown = _flag(args, "--shutdown-grace-s")
            if shutdown is None or grace <= shutdown:
                yield Finding(
                    f"{where} $.spec.template.spec.terminationGracePeriodSeconds",
                    f"{grace} s must exceed the worker's --shutdown-grace-s ({shutdown})",
                )
        ports = {p.get("name") for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                yield Finding(
                    f"{at}.{probe}.httpGet.port", f"names port {port!r}, which the container does not declare"
                )
        for j, env in enumerate(container.get("env", [])):
            if env.get("name") in SECRET_ENV and "value" in env:
                yield Finding(f"{at}.env[{j}]", f"{env['name']} holds a secret: take it from a Secret (valueFrom)")
        limits = container.get("resources", {}).get("limits", {})
        if GPU_RESOURCE in limits and str(limits[GPU_RESOURCE]) != "1":
            yield Finding(f"{at}.resources.limits['{GPU_RESOURCE}']", "one GPU per pod: the server drives one device")


def _autoscaler_rules(doc: Manifest, deployments: dict[str, Manifest], auths: set[str]) -> Iterator[Finding]:
    where = _where(doc)
    spec = doc.get("spec", {})
    target = spec.get("scaleTargetRef", {}).get("name")
    if target not in deployments:
        yield Finding(f"{where} $.spec.scaleTargetRef.name", f"names {target!r}, which is not a rendered Deployment")
    elif "replicas" in deployments[target]["spec"]:
        yield Finding(
            f"Deployment/{target} $.spec.replicas",
            "must be left out when an autoscaler owns the count (each apply would reset it)",
        )
    low = spec.get("minReplicaCount", spec.get("minReplicas", 1))
    high = spec.get("maxReplicaCount", spec.get("maxReplicas"))
    if isinstance(low, int) and isinstance(high, int) and low > high:
        yield Finding(f"{where} $.spec", f"minimum {low} is above maximum {high}")
    for i, trigger in enumerate(spec.get("triggers", [])):
        ref = trigger.get("authenticationRef", {}).get("name")
        if ref is not None and ref not in auths:
            yield Finding(
                f"{where} $.spec.triggers[{i}].authenticationRef.name",
                f"names {ref!r}, which is not a rendered TriggerAuthentication",
            )


def check_rules(documents: Sequence[Manifest]) -> list[Finding]:
    findings: list[Finding] = []
    namespaces = {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        findings.append(Finding("$", f"every object must name the same namespace, got {sorted(map(str, namespaces))}"))
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    auths = {d["metadata"]["name"] for d in documents if d["kind"] == "TriggerAuthentication"}
    for doc in documents:
        if doc["kind"] == "Deployment":
            findings.extend(_pod_rules(doc))
        elif doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"):
            findings.extend(_autoscaler_rules(doc, deployments, auths))
    return findings


def check_manifests(documents: Sequence[Any], version: str = KUBERNETES_VERSION) -> list[Finding]:
    """Every check, every object; an empty list means the manifests passed."""
    findings: list[Finding] = []
    sound = []
    for doc in documents:
        if not (
            isinstance(doc, dict)
            and isinstance(doc.get("kind"), str)
            and isinstance(doc.get("apiVersion"), str)
            and isinstance(doc.get("metadata"), dict)
        ):
            findings.append(Finding(_where(doc), "not a Kubernetes object (apiVersion, kind and metadata)"))
            continue
        problems = check_crd(doc) if doc["apiVersion"].startswith("keda.sh/") else check_builtin(doc, version)
        findings.extend(problems)
        if not problems:
            sound.append(doc)
    # The rules read fields the schemas vouch for, so only objects that passed them are read.
    if len(sound) == len(documents):
        findings.extend(check_rules(sound))
    return findings
