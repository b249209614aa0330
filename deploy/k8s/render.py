"""Assemble one deployment's objects and write them as one multi-document YAML file.

One file rather than one per object: `kubectl apply -f FILE` then applies exactly this rendering,
with nothing left over from an earlier one that rendered other objects into the same folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from batchserve.deploy.k8s import autoscaling, objects
from batchserve.deploy.k8s.pods import (
    Manifest,
    pod_spec,
    server_container,
    server_grace_s,
    worker_container,
    worker_grace_s,
)
from batchserve.deploy.k8s.profile import K8sProfile, check_profile

MANIFEST_FILE = "manifests.yaml"
KEDA_KINDS = ("scaledobjects.keda.sh", "triggerauthentications.keda.sh")
BUILT_IN_KINDS = ("deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers", "serviceaccounts")


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order built, and no &anchors for objects that happen to repeat."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def build(profile: K8sProfile) -> list[Manifest]:
    """Every object of the deployment, in the order they are applied."""
    check_profile(profile)
    found: list[Manifest] = [objects.namespace(profile)] if profile.create_namespace else []
    if profile.mode == "direct":
        found += _direct(profile)
    else:
        found += _queue(profile)
    return found


def _direct(profile: K8sProfile) -> list[Manifest]:
    s = profile.scaling
    pod = pod_spec(profile, server_container(profile), gpu=True, grace_s=server_grace_s())
    replicas = s.min_replicas if s.autoscaler == "none" else None
    found = [
        objects.deployment(profile, profile.name, "server", pod, replicas=replicas, scrape=True),
        objects.service(profile, "server"),
    ]
    if s.max_replicas > 1:
        found.append(objects.disruption_budget(profile, profile.name, "server"))
    if s.autoscaler == "keda":
        found.append(autoscaling.keda_queue_depth(profile))
    elif s.autoscaler == "hpa":
        found.append(autoscaling.hpa_queue_depth(profile))
    return found


def _queue(profile: K8sProfile) -> list[Manifest]:
    assert profile.queue is not None
    s, q = profile.scaling, profile.queue
    web_name, worker_name = f"{profile.name}-web", profile.gpu_deployment
    web_pod = pod_spec(profile, server_container(profile), gpu=False, grace_s=server_grace_s())
    worker_pod = pod_spec(profile, worker_container(profile), gpu=True, grace_s=worker_grace_s())
    autoscaled = s.autoscaler != "none"
    found = [
        objects.service_account(profile),
        objects.deployment(profile, web_name, "web", web_pod, replicas=None if autoscaled else q.web_min, scrape=True),
        objects.service(profile, "web"),
        objects.deployment(
            profile, worker_name, "worker", worker_pod, replicas=None if autoscaled else s.min_replicas, scrape=False
        ),
    ]
    if q.web_max > 1:
        found.append(objects.disruption_budget(profile, web_name, "web"))
    if s.max_replicas > 1:
        found.append(objects.disruption_budget(profile, worker_name, "worker"))
    if autoscaled:
        found += [
            autoscaling.hpa_web_cpu(profile, web_name),
            autoscaling.trigger_authentication(profile),
            autoscaling.keda_request_backlog(profile),
        ]
    return found


def dump(documents: Sequence[Manifest]) -> str:
    return yaml.dump_all(list(documents), Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)


@dataclass(frozen=True)
class RenderedManifests:
    namespace: str
    name: str
    path: Path
    documents: list[Manifest]
    context: str | None = None  # kubectl --context; None: kubectl's current context

    def _kubectl(self) -> list[str]:
        return ["kubectl", *(["--context", self.context] if self.context else [])]

    def apply_command(self) -> list[str]:
        return [*self._kubectl(), "apply", "-f", str(self.path)]

    def summary(self) -> list[str]:
        """kind/name of each object, as kubectl names them."""
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.documents]

    def uses_keda(self) -> bool:
        return any(d["apiVersion"].startswith("keda.sh/") for d in self.documents)


def write(profile: K8sProfile, out_dir: Path, context: str | None = None) -> RenderedManifests:
    documents = build(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST_FILE
    mode = f"--mode {profile.mode}"
    path.write_text(
        f"# Rendered by `batchserve deploy k8s {mode}` for {profile.namespace}/{profile.name}; apply with\n"
        f"# `kubectl apply -f {MANIFEST_FILE}`. Secrets are referenced by name, never included.\n" + dump(documents),
        encoding="utf-8",
    )
    return RenderedManifests(profile.namespace, profile.name, path.resolve(), documents, context)


def cluster_commands(
    namespace: str, name: str, kinds: Sequence[str], context: str | None = None
) -> dict[str, list[str]]:
    """`kubectl get` and `kubectl delete` of every object of a deployment, found by its labels."""
    kubectl = ["kubectl", *(["--context", context] if context else [])]
    scope = ["--namespace", namespace, "--selector", objects.instance_selector(name)]
    joined = ",".join(kinds)
    return {
        "status": [*kubectl, "get", joined, *scope, "--output", "wide"],
        "destroy": [*kubectl, "delete", joined, *scope, "--ignore-not-found"],
    }
