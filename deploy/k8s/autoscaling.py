"""Autoscaling objects.

Direct mode scales the GPU server on its own queue depth (`batchserve_queue_depth`, samples waiting
in the batchers), through either
* a KEDA ScaledObject with the prometheus trigger (the default: KEDA asks Prometheus itself, so no
  metrics adapter is needed), or
* an autoscaling/v2 HorizontalPodAutoscaler on the Pods metric, which a Prometheus adapter must serve
  under the same name (its rule is in docs/deploy-k8s.md).

Queue mode scales the GPU workers with a KEDA ScaledObject on the backlog of NAME-requests (the
aws-sqs-queue trigger, to and from zero) and the CPU web tier with an HPA on CPU use.
"""

from __future__ import annotations

from batchserve.deploy.k8s import contract as c
from batchserve.deploy.k8s.objects import metadata
from batchserve.deploy.k8s.pods import Manifest
from batchserve.deploy.k8s.profile import K8sProfile

KEDA_API = "keda.sh/v1alpha1"
# GPU pods are slow to come back (node, image pull, model load): shed one at a time, after the load
# has stayed low for five minutes.
_SCALE_DOWN: Manifest = {
    "stabilizationWindowSeconds": 300,
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
}
WEB_CPU_UTILIZATION = 70


def queue_depth_query(profile: K8sProfile) -> str:
    """PromQL for the samples waiting in this deployment's batchers, summed over its pods.

    Pods are matched by the labels that Kubernetes pod discovery usually attaches (`namespace`,
    `pod`); the pod name pattern is NAME-<replica set hash>-<suffix>, so another Deployment whose name
    merely starts with NAME does not count. --prometheus-query replaces it for other label schemes.
    """
    if profile.scaling.prometheus_query is not None:
        return profile.scaling.prometheus_query
    selector = f'namespace="{profile.namespace}",pod=~"{profile.name}-[a-z0-9]+-[a-z0-9]+"'
    # Averaged over a minute: one scrape catches a queue at an instant, and batches drain it in ms.
    return f"sum(avg_over_time({c.QUEUE_DEPTH_METRIC}{{{selector}}}[1m]))"


def _scaled_object(profile: K8sProfile, target: str, component: str, trigger: Manifest, cooldown_s: int) -> Manifest:
    s = profile.scaling
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": metadata(profile, target, component),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicaCount": s.min_replicas,
            "maxReplicaCount": s.max_replicas,
            "pollingInterval": 15,
            # Only used between 1 and 0 replicas: how long with nothing to do before the last pod goes.
            "cooldownPeriod": cooldown_s,
            # When the metric cannot be read three times running, keep what runs (never fewer than
            # the minimum) instead of guessing.
            "fallback": {
                "failureThreshold": 3,
                "replicas": max(s.min_replicas, 1),
                "behavior": "currentReplicasIfHigher",
            },
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": dict(_SCALE_DOWN)}}},
            "triggers": [trigger],
        },
    }


def keda_queue_depth(profile: K8sProfile) -> Manifest:
    assert profile.scaling.prometheus_url is not None
    trigger = {
        "type": "prometheus",
        "name": "queue-depth",
        "metadata": {
            "serverAddress": profile.scaling.prometheus_url,
            "query": queue_depth_query(profile),
            # Desired pods = ceil(query / threshold): the queue depth each pod should carry at most.
            "threshold": str(profile.scaling.target_queue_depth),
        },
    }
    return _scaled_object(profile, profile.name, "server", trigger, cooldown_s=300)


def hpa_queue_depth(profile: K8sProfile) -> Manifest:
    s = profile.scaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(profile, profile.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": profile.name},
            "minReplicas": s.min_replicas,
            "maxReplicas": s.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": c.QUEUE_DEPTH_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(s.target_queue_depth)},
                    },
                }
            ],
            "behavior": {"scaleDown": dict(_SCALE_DOWN)},
        },
    }


def request_queue_url(profile: K8sProfile) -> str:
    assert profile.queue is not None and profile.queue.account_id is not None
    q = profile.queue
    domain = "amazonaws.com.cn" if q.region.startswith("cn-") else "amazonaws.com"
    return f"https://sqs.{q.region}.{domain}/{q.account_id}/{q.queue_name}{c.REQUESTS_QUEUE_SUFFIX}"


def trigger_authentication(profile: K8sProfile) -> Manifest:
    """How KEDA reads the queue's attributes: static keys from the Secret the pods use, or else the
    workload's own identity (the service account's IAM role, or its EKS Pod Identity association)."""
    assert profile.queue is not None
    secret = profile.queue.credentials_secret
    spec: Manifest
    if secret is not None:
        spec = {
            "secretTargetRef": [
                {"parameter": "awsAccessKeyID", "name": secret, "key": "AWS_ACCESS_KEY_ID"},
                {"parameter": "awsSecretAccessKey", "name": secret, "key": "AWS_SECRET_ACCESS_KEY"},
            ]
        }
    else:
        spec = {"podIdentity": {"provider": "aws", "identityOwner": "workload"}}
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": metadata(profile, f"{profile.name}-aws", "identity"),
        "spec": spec,
    }


def keda_request_backlog(profile: K8sProfile) -> Manifest:
    assert profile.queue is not None
    trigger = {
        "type": "aws-sqs-queue",
        "name": "request-backlog",
        "authenticationRef": {"kind": "TriggerAuthentication", "name": f"{profile.name}-aws"},
        "metadata": {
            "queueURL": request_queue_url(profile),
            "awsRegion": profile.queue.region,
            # Messages waiting plus those in flight, per worker; a single message wakes the first one.
            "queueLength": str(profile.scaling.backlog_per_worker),
            "activationQueueLength": "0",
            "scaleOnInFlight": "true",
        },
    }
    return _scaled_object(
        profile, profile.gpu_deployment, "worker", trigger, cooldown_s=profile.scaling.idle_before_zero_s
    )


def hpa_web_cpu(profile: K8sProfile, name: str) -> Manifest:
    assert profile.queue is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(profile, name, "web"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": profile.queue.web_min,
            "maxReplicas": profile.queue.web_max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": WEB_CPU_UTILIZATION},
                    },
                }
            ],
        },
    }
