"""One Kubernetes deployment's choices, typed, and the checks they must pass before anything renders.

Every check here is about the command line (names Kubernetes would refuse, numbers out of range,
flags that contradict each other): a failure is a UsageError (exit 2) naming the flag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from batchserve.deploy.errors import UsageError
from batchserve.deploy.validate import parse_quantity

Mode = Literal["direct", "queue"]
Autoscaler = Literal["keda", "hpa", "none"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
AuthMode = Literal["required", "off"]

MODES: tuple[Mode, ...] = ("direct", "queue")
AUTOSCALERS: tuple[Autoscaler, ...] = ("keda", "hpa", "none")
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
AUTH_MODES: tuple[AuthMode, ...] = ("required", "off")

# DNS-1123 label (namespaces) and DNS-1035 label (Service names must start with a letter). The
# deployment name also prefixes NAME-worker, NAME-web and their pods, hence the shorter bound.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 40
# DNS-1123 subdomain (Secret names) and Secret data keys.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Label keys ([prefix/]name) and values, as the API server checks them.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# An image reference as the container runtime parses it: [registry[:port]/]path[:tag][@digest].
_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,37}$")  # jobs/config.py's deployment names
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")


@dataclass(frozen=True)
class SecretRef:
    """A key of a Kubernetes Secret: the manifests name it, the kubelet reads the value."""

    name: str
    key: str

    @classmethod
    def parse(cls, text: str, flag: str, default_key: str) -> SecretRef:
        name, sep, key = text.partition(":")
        key = key if sep else default_key
        if not (_SUBDOMAIN.match(name) and len(name) <= 253):
            raise UsageError(f"{flag} takes a Secret name (lower-case letters, digits, '-' and '.'), got {name!r}")
        if not (_SECRET_KEY.match(key) and len(key) <= 253):
            raise UsageError(f"{flag}: {key!r} is not a Secret key (letters, digits, '-', '_' and '.')")
        return cls(name, key)


@dataclass(frozen=True)
class Resources:
    """One container's requests; memory is its limit too (a pod that outgrows it is restarted, not
    the node's other pods). No CPU limit: throttling a server mid-batch only adds latency."""

    cpu: str
    memory: str


@dataclass(frozen=True)
class Scaling:
    autoscaler: Autoscaler = "keda"
    min_replicas: int = 1
    max_replicas: int = 20
    # Direct mode: samples waiting in the batchers per pod, as the AWS profile's TargetQueueDepth
    # (one full batch at the default max_batch_size).
    target_queue_depth: int = 32
    prometheus_url: str | None = None
    prometheus_query: str | None = None  # None: the query built from the namespace and name
    # Queue mode: messages in NAME-requests per worker, as the AWS profile's BacklogPerInstance.
    backlog_per_worker: int = 2000
    # Queue mode with no minimum: how long the queue stays empty before the last worker goes.
    idle_before_zero_s: int = 900


@dataclass(frozen=True)
class QueueTarget:
    """Queue mode: where the queues are and how the pods and KEDA reach AWS."""

    queue_name: str
    region: str
    account_id: str | None = None  # for the request queue's URL (KEDA's aws-sqs-queue trigger)
    role_arn: str | None = None  # IAM role for the service account (IRSA)
    credentials_secret: str | None = None  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    input_bucket: str | None = None  # None: NAME-input, as `batchserve queue up` names it
    output_bucket: str | None = None  # None: NAME-output
    web_min: int = 2
    web_max: int = 10
    web_resources: Resources = field(default_factory=lambda: Resources("1", "1Gi"))


@dataclass(frozen=True)
class K8sProfile:
    image: str
    name: str = "batchserve"
    namespace: str = "batchserve"
    mode: Mode = "direct"
    models: tuple[str, ...] = ("efficientnet_lite0",)
    auth: AuthMode = "required"
    database_url: SecretRef | None = None
    admin_key: SecretRef | None = None
    service_type: ServiceType = "ClusterIP"
    resources: Resources = field(default_factory=lambda: Resources("3", "8Gi"))
    node_selector: tuple[tuple[str, str], ...] = ()
    gpu_toleration: bool = True
    image_pull_secret: str | None = None  # a docker-registry Secret for a private registry
    scaling: Scaling = field(default_factory=Scaling)
    queue: QueueTarget | None = None
    create_namespace: bool = False

    @property
    def gpu_deployment(self) -> str:
        """The Deployment that holds the GPUs: the server, or the queue workers."""
        return self.name if self.mode == "direct" else f"{self.name}-worker"


def check_profile(profile: K8sProfile) -> None:
    """Raise UsageError listing every problem with the choices, or return."""
    problems = [*_names(profile), *_access(profile), *_sizes(profile), *_scaling(profile), *_queue(profile)]
    if problems:
        raise UsageError("; ".join(problems))


def _names(p: K8sProfile) -> list[str]:
    problems = []
    if not (_NAME.match(p.name) and len(p.name) <= NAME_MAX):
        problems.append(
            f"--name {p.name!r} must be lower-case letters, digits and '-', start with a letter, end with a "
            f"letter or digit, at most {NAME_MAX} characters"
        )
    if not (_LABEL.match(p.namespace) and len(p.namespace) <= 63):
        problems.append(
            f"--namespace {p.namespace!r} is not a namespace name (lower-case letters, digits and '-', at most 63, "
            "starting and ending with a letter or digit)"
        )
    if not p.image.strip() or len(p.image) > 512 or not _IMAGE.match(p.image):
        problems.append(f"--image {p.image!r} is not an image reference (REGISTRY/PATH:TAG or ...@sha256:DIGEST)")
    if p.image_pull_secret is not None and not (
        _SUBDOMAIN.match(p.image_pull_secret) and len(p.image_pull_secret) <= 253
    ):
        problems.append(f"--image-pull-secret {p.image_pull_secret!r} is not a Secret name")
    if not p.models:
        problems.append("--models names no model")
    for model in p.models:
        if not _MODEL.match(model):
            problems.append(f"--models: {model!r} is not a model name")
    for key, value in p.node_selector:
        prefix, _, label = key.rpartition("/")
        if not (_LABEL_NAME.match(label) and len(label) <= 63) or (prefix and not _SUBDOMAIN.match(prefix)):
            problems.append(f"--node-selector: {key!r} is not a label key")
        if not (_LABEL_VALUE.match(value) and len(value) <= 63):
            problems.append(f"--node-selector: {value!r} is not a label value")
    return problems


def _access(p: K8sProfile) -> list[str]:
    if p.auth == "required" and p.database_url is None and p.admin_key is None:
        return [
            "--auth required (the default) needs a key the server can check: --admin-key-secret NAME[:KEY] (a "
            "Secret holding the bootstrap key) or --database-url-secret NAME[:KEY] (keys from `batchserve keys "
            "create` in that database); or --auth off on a cluster-internal Service"
        ]
    if p.auth == "off" and p.service_type != "ClusterIP":
        return [
            f"--auth off with --service-type {p.service_type} would let anyone who reaches the node or load "
            "balancer use the GPU: keep --auth required, or keep the Service cluster-internal (ClusterIP)"
        ]
    return []


def _sizes(p: K8sProfile) -> list[str]:
    problems = []
    sized = [("--cpu", p.resources.cpu), ("--memory", p.resources.memory)]
    if p.queue is not None:
        sized += [("--web-cpu", p.queue.web_resources.cpu), ("--web-memory", p.queue.web_resources.memory)]
    for flag, quantity in sized:
        try:
            if parse_quantity(quantity) <= 0:
                problems.append(f"{flag} must be above zero, got {quantity!r}")
        except ValueError:
            problems.append(f"{flag} {quantity!r} is not a quantity (e.g. 2, 500m, 8Gi)")
    return problems


def _scaling(p: K8sProfile) -> list[str]:
    s = p.scaling
    problems = []
    if not 0 <= s.min_replicas <= s.max_replicas or s.max_replicas < 1:
        problems.append(f"need 0 <= --min <= --max and --max >= 1, got --min {s.min_replicas} --max {s.max_replicas}")
    if s.target_queue_depth < 1 or s.backlog_per_worker < 1:
        problems.append("--target-queue-depth and --backlog-per-worker must be at least 1")
    if p.mode == "direct" and s.min_replicas == 0:
        # Requests reach pods through the Service; with none running, no batcher queues anything,
        # so the metric that would wake the first pod never rises.
        problems.append(
            "--min 0 cannot work in direct mode: with no pod running nothing measures the queue, so nothing "
            "scales it back up; keep --min 1, or use --mode queue, where the SQS backlog wakes the workers"
        )
    if p.mode == "direct" and s.autoscaler == "keda":
        problems.extend(_prometheus(s))
    elif s.prometheus_url is not None or s.prometheus_query is not None:
        problems.append("--prometheus-url and --prometheus-query go with --autoscaler keda in direct mode")
    if p.mode == "queue" and s.autoscaler == "hpa":
        problems.append(
            "--autoscaler hpa is for direct mode; --mode queue scales the workers on the SQS backlog with KEDA "
            "(--autoscaler keda) or keeps them fixed (--autoscaler none)"
        )
    if p.mode == "queue" and s.autoscaler == "none" and s.min_replicas == 0:
        problems.append("--autoscaler none with --min 0 would run no worker: pass --min N")
    return problems


def _prometheus(s: Scaling) -> list[str]:
    if s.prometheus_url is None:
        return [
            "--autoscaler keda (the default) reads the queue depth from Prometheus: pass --prometheus-url URL "
            "(e.g. http://prometheus-server.monitoring.svc:80), or --autoscaler hpa (Prometheus adapter) or none"
        ]
    url = urlsplit(s.prometheus_url)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        return [f"--prometheus-url {s.prometheus_url!r} is not an http(s):// URL of a Prometheus server"]
    if s.prometheus_query is not None and not s.prometheus_query.strip():
        return ["--prometheus-query must not be empty"]
    return []


def _queue(p: K8sProfile) -> list[str]:
    q = p.queue
    if (q is None) != (p.mode == "direct"):
        return ["queue settings go with --mode queue"]
    if q is None:
        return []
    problems = []
    if not _QUEUE_NAME.match(q.queue_name):
        problems.append(f"--queue-name {q.queue_name!r} must be 1-38 lower-case letters, digits or '-'")
    if p.scaling.autoscaler == "keda" and q.account_id is None:
        problems.append("--mode queue with KEDA needs --aws-account-id ID: the trigger names the queue by its URL")
    if q.account_id is not None and not _ACCOUNT_ID.match(q.account_id):
        problems.append(f"--aws-account-id {q.account_id!r} must be 12 digits")
    if q.role_arn is not None and not _ROLE_ARN.match(q.role_arn):
        problems.append(f"--aws-role-arn {q.role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    if q.role_arn is not None and q.credentials_secret is not None:
        problems.append("pass --aws-role-arn or --aws-credentials-secret, not both")
    if q.credentials_secret is not None and not _SUBDOMAIN.match(q.credentials_secret):
        problems.append(f"--aws-credentials-secret {q.credentials_secret!r} is not a Secret name")
    for flag, bucket in (("--input-bucket", q.input_bucket), ("--output-bucket", q.output_bucket)):
        if bucket is not None and not _BUCKET.match(bucket):
            problems.append(f"{flag} {bucket!r} is not an S3 bucket name")
    if not 1 <= q.web_min <= q.web_max:
        problems.append(f"need 1 <= --web-min <= --web-max, got {q.web_min} and {q.web_max}")
    return problems


def parse_node_selector(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--node-selector takes KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise UsageError(f"--node-selector names {repeated[0]} twice")
    return tuple(pairs)
