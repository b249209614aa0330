"""The workload objects around the pods: Deployments, the Service, disruption budgets, the
service account and, when asked for, the namespace. Every object carries the recommended
app.kubernetes.io labels; `--status` and `--destroy` find a deployment's objects by them.
"""

from __future__ import annotations

import re

from batchserve.deploy.k8s import contract as c
from batchserve.deploy.k8s.pods import Manifest
from batchserve.deploy.k8s.profile import K8sProfile

APP = "batchserve"
MANAGED_BY = "batchserve-deploy"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def selector_labels(profile: K8sProfile, component: str) -> dict[str, str]:
    """The labels a Deployment selects its pods by (immutable once applied: no version here)."""
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": profile.name,
        "app.kubernetes.io/component": component,
    }


def image_version(image: str) -> str | None:
    """The image's tag, when it can be a label value (a digest alone names no version)."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    _, sep, tag = last.partition(":")
    return tag if sep and len(tag) <= 63 and _LABEL_VALUE.match(tag) else None


def labels(profile: K8sProfile, component: str) -> dict[str, str]:
    found = {
        **selector_labels(profile, component),
        "app.kubernetes.io/part-of": APP,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    version = image_version(profile.image)
    if version is not None:
        found["app.kubernetes.io/version"] = version
    return found


def instance_selector(name: str) -> str:
    """The label selector that finds every object of the deployment `name` (for kubectl get/delete)."""
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}"


def metadata(profile: K8sProfile, name: str, component: str) -> Manifest:
    return {"name": name, "namespace": profile.namespace, "labels": labels(profile, component)}


def namespace(profile: K8sProfile) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": profile.namespace, "labels": {"app.kubernetes.io/part-of": APP}},
    }


def service_account(profile: K8sProfile) -> Manifest:
    """Queue mode's pods reach S3 and SQS as this account; with --aws-role-arn it assumes that role
    (IAM roles for service accounts); an EKS Pod Identity association can name it instead."""
    meta = metadata(profile, profile.name, "identity")
    if profile.queue is not None and profile.queue.role_arn is not None:
        meta["annotations"] = {"eks.amazonaws.com/role-arn": profile.queue.role_arn}
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": False}


def deployment(
    profile: K8sProfile, name: str, component: str, pod: Manifest, *, replicas: int | None, scrape: bool
) -> Manifest:
    """`replicas` None leaves the count to an autoscaler: a value here would reset it on every apply."""
    template_meta: Manifest = {"labels": labels(profile, component)}
    if scrape:
        # The annotations most Prometheus setups' pod discovery honours (kubernetes_sd_configs with
        # the usual relabelling); the metrics port needs no key.
        template_meta["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(c.METRICS_PORT),
            "prometheus.io/path": c.METRICS_PATH,
        }
    spec: Manifest = {
        "selector": {"matchLabels": selector_labels(profile, component)},
        # A new pod must be ready before an old one goes: capacity never drops during a rollout
        # (on a full GPU pool the rollout waits for a node rather than serving with fewer GPUs).
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 5,
        "template": {"metadata": template_meta, "spec": pod},
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(profile, name, component), "spec": spec}


def service(profile: K8sProfile, component: str) -> Manifest:
    """Port 80 in front of the server's HTTP port; the metrics port stays off it (it has no auth)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(profile, profile.name, component),
        "spec": {
            "type": profile.service_type,
            "selector": selector_labels(profile, component),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def disruption_budget(profile: K8sProfile, name: str, component: str) -> Manifest:
    """One pod at a time may go for a node drain or a cluster scale-down. maxUnavailable rather than
    minAvailable: with a single replica, minAvailable 1 would block every drain of its node."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(profile, name, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(profile, component)}},
    }
