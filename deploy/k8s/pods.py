"""The pods: the GPU server (direct mode), the CPU web tier and the GPU worker (queue mode).

Flags carry every setting that is not a secret, so `kubectl describe` shows what a pod runs and
nothing the image sets in its environment can override it; secrets arrive as environment variables
read from Secrets by the kubelet, never as values in the manifests.
"""

from __future__ import annotations

import math
from typing import Any

from batchserve.deploy.k8s import contract as c
from batchserve.deploy.k8s.profile import K8sProfile, Resources, SecretRef
from batchserve.deploy.validate import parse_quantity

Manifest = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
# Before SIGTERM reaches the server: the pod is already out of the Service's endpoints, and kube-proxy
# and ingress controllers take a few seconds to notice. The server keeps serving normally meanwhile.
PRE_STOP_S = 5
# Beyond the shutdown sequence itself, time for the kubelet's own steps before it sends SIGKILL.
GRACE_MARGIN_S = 5
# Model load and CUDA initialisation (TensorRT engines, when listed, build for minutes): the
# startup probe allows 10 s x 60 before the kubelet restarts a server that never became ready.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES_GPU = 60
STARTUP_FAILURES_WEB = 30
# The journal (1 GiB at most), its dead letters (256 MiB at most), SQLite events and the caches.
WORK_VOLUME_LIMIT = "2Gi"
TMP_VOLUME_LIMIT = "1Gi"


def server_grace_s() -> int:
    """terminationGracePeriodSeconds of a server pod; it counts from the start of the preStop hook."""
    return PRE_STOP_S + c.DRAIN_DELAY_S + c.SHUTDOWN_GRACE_S + GRACE_MARGIN_S


def worker_grace_s() -> int:
    return c.WORKER_SHUTDOWN_GRACE_S + 2 * GRACE_MARGIN_S


def _secret_env(name: str, ref: SecretRef) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _aws_env(profile: K8sProfile) -> list[Manifest]:
    """Static AWS keys, when the cluster has no workload identity (IRSA, EKS Pod Identity)."""
    secret = profile.queue.credentials_secret if profile.queue is not None else None
    if secret is None:
        return []
    return [
        _secret_env("AWS_ACCESS_KEY_ID", SecretRef(secret, "AWS_ACCESS_KEY_ID")),
        _secret_env("AWS_SECRET_ACCESS_KEY", SecretRef(secret, "AWS_SECRET_ACCESS_KEY")),
    ]


def _queue_args(profile: K8sProfile) -> list[str]:
    """Where both tiers find the queues and buckets."""
    assert profile.queue is not None
    q = profile.queue
    args = [f"--queue-name={q.queue_name}", f"--aws-region={q.region}"]
    args += [f"--input-bucket={q.input_bucket}"] if q.input_bucket else []
    args += [f"--output-bucket={q.output_bucket}"] if q.output_bucket else []
    return args


def _resources(resources: Resources, gpu: bool) -> Manifest:
    limits: Manifest = {"memory": resources.memory}
    if gpu:
        limits[GPU_RESOURCE] = 1
    return {"requests": {"cpu": resources.cpu, "memory": resources.memory}, "limits": limits}


def _decode_threads(resources: Resources) -> int:
    # The default (one per core) counts the node's cores, not this pod's share of them.
    return max(1, math.ceil(parse_quantity(resources.cpu)))


def _http_probe(path: str, period_s: int, timeout_s: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    }


def _security_context() -> Manifest:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _volume_mounts() -> list[Manifest]:
    return [{"name": "work", "mountPath": c.WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"}]


def server_container(profile: K8sProfile) -> Manifest:
    """`batchserve serve`: the GPU server in direct mode, the CPU web tier in queue mode."""
    web = profile.mode == "queue"
    resources = profile.queue.web_resources if profile.queue is not None else profile.resources
    args = [
        "--host=0.0.0.0",
        f"--port={c.HTTP_PORT}",
        f"--metrics-port={c.METRICS_PORT}",
        f"--auth={profile.auth}",
        f"--drain-delay={c.DRAIN_DELAY_S}",
        f"--shutdown-grace={c.SHUTDOWN_GRACE_S}",
        f"--models={','.join(profile.models)}",
        f"--preprocess-threads={_decode_threads(resources)}",
        "--log-format=json",
    ]
    if profile.queue is not None:
        args += ["--backend=queue", *_queue_args(profile)]
    # /readyz stays 503 while a model runs on CPU only (the web tier runs no model).
    env = [] if web else [{"name": c.ENV_REQUIRE_GPU, "value": "true"}]
    if profile.database_url is not None:
        env.append(_secret_env(c.ENV_DATABASE_URL, profile.database_url))
    if profile.admin_key is not None:
        env.append(_secret_env(c.ENV_ADMIN_KEY, profile.admin_key))
    env += _aws_env(profile)
    container: Manifest = {"name": "server", "image": profile.image, "command": ["batchserve", "serve"], "args": args}
    if env:
        container["env"] = env
    container |= {
        "ports": [
            {"name": "http", "containerPort": c.HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": c.METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _http_probe(
            c.READY_PATH, STARTUP_PERIOD_S, 5, STARTUP_FAILURES_WEB if web else STARTUP_FAILURES_GPU
        ),
        # Out of rotation within seconds when it stops answering ready; draining pods are removed
        # from the endpoints anyway as soon as they terminate.
        "readinessProbe": _http_probe(c.READY_PATH, 5, 3, 2),
        "livenessProbe": _http_probe(c.LIVE_PATH, 20, 5, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_S)]}}},
        "resources": _resources(resources, gpu=not web),
        "securityContext": _security_context(),
        "volumeMounts": _volume_mounts(),
    }
    return container


def worker_container(profile: K8sProfile) -> Manifest:
    """`batchserve worker`: long-polls NAME-requests; no HTTP listener, so no probes."""
    assert profile.queue is not None
    env: list[Manifest] = []
    if profile.database_url is not None:
        env.append(_secret_env(c.ENV_DATABASE_URL, profile.database_url))
    env += _aws_env(profile)
    return {
        "name": "worker",
        "image": profile.image,
        "command": ["batchserve", "worker"],
        "args": [
            *_queue_args(profile),
            f"--shutdown-grace-s={c.WORKER_SHUTDOWN_GRACE_S}",
            f"--models={','.join(profile.models)}",
            f"--preprocess-threads={_decode_threads(profile.resources)}",
            "--log-format=json",
        ],
        **({"env": env} if env else {}),
        "resources": _resources(profile.resources, gpu=True),
        "securityContext": _security_context(),
        "volumeMounts": _volume_mounts(),
    }


def pod_spec(profile: K8sProfile, container: Manifest, *, gpu: bool, grace_s: int) -> Manifest:
    spec: Manifest = {
        # Kubernetes would otherwise put BATCHSERVE_PORT=tcp://... and friends in the environment for a
        # Service named batchserve: variables the server reads as its own settings.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": c.IMAGE_UID,
            "runAsGroup": c.IMAGE_UID,
            "fsGroup": c.IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        **({"imagePullSecrets": [{"name": profile.image_pull_secret}]} if profile.image_pull_secret else {}),
        # The image's only writable places, on a read-only root filesystem. An emptyDir outlives
        # container restarts but not the pod: see docs/deploy-k8s.md on the event journal.
        "volumes": [
            {"name": "work", "emptyDir": {"sizeLimit": WORK_VOLUME_LIMIT}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_VOLUME_LIMIT}},
        ],
    }
    if profile.mode == "queue":
        spec["serviceAccountName"] = profile.name  # the AWS identity of both tiers
    if gpu:
        if profile.gpu_toleration:
            # GPU node pools are usually tainted so that only pods asking for a GPU land there.
            spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if profile.node_selector:
            spec["nodeSelector"] = dict(profile.node_selector)
    return spec
