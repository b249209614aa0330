"""`batchserve deploy k8s`: its flags, and what a run does with them.

    batchserve deploy k8s --image IMAGE [--namespace NS] [--name NAME] [--out DIR]
                          [--dry-run | --status | --destroy] [--mode direct|queue]
                          [--autoscaler keda|hpa|none] [--prometheus-url URL] [--min N --max N] ...

Render, validate offline, print the kubectl command, then run it (unless --dry-run). Without kubectl
on PATH the manifests are still written and the run fails (exit 1) saying how to apply them.
"""

from __future__ import annotations

import argparse
import os
import re
from functools import cache
from pathlib import Path
from typing import TextIO

from batchserve.deploy.errors import UsageError, ValidationFailed
from batchserve.deploy.k8s import kubectl
from batchserve.deploy.k8s.profile import (
    AUTH_MODES,
    AUTOSCALERS,
    MODES,
    SERVICE_TYPES,
    K8sProfile,
    QueueTarget,
    Resources,
    Scaling,
    SecretRef,
    parse_node_selector,
)
from batchserve.deploy.k8s.render import BUILT_IN_KINDS, KEDA_KINDS, RenderedManifests, cluster_commands, write
from batchserve.deploy.k8s.validate import KEDA_VERSION, KUBERNETES_VERSION, check_manifests
from batchserve.deploy.regions import aws_regions
from batchserve.deploy.render import shell

DEFAULT_OUT = {"direct": Path("deploy-out/k8s"), "queue": Path("deploy-out/k8s-queue")}
# Direct mode keeps a pod (see profile.py: nothing would wake it from zero); queue workers may go.
DEFAULT_MIN = {"direct": 1, "queue": 0}
DEFAULT_MAX = 20
_K8S_VERSION = re.compile(r"^1\.[0-9]{2}$")
# Flags that only queue mode reads, with their defaults: given in direct mode, they are a mistake.
QUEUE_DEFAULTS: dict[str, object] = {
    "queue_name": None,
    "region": None,
    "aws_account_id": None,
    "aws_role_arn": None,
    "aws_credentials_secret": None,
    "input_bucket": None,
    "output_bucket": None,
    "web_min": 2,
    "web_max": 10,
    "web_cpu": "1",
    "web_memory": "1Gi",
    "backlog_per_worker": 2000,
}


def register(clouds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    k8s = clouds.add_parser(
        "k8s",
        help="plain manifests for a Kubernetes cluster: GPU Deployment, Service, disruption budget, KEDA or HPA "
        "autoscaling on the queue depth (or queue mode's web tier and workers)",
    )
    k8s.add_argument("--image", help="image built from Dockerfile.gpu (required to deploy)")
    k8s.add_argument(
        "--image-pull-secret",
        metavar="NAME",
        help="docker-registry Secret the kubelet pulls a private image with (ECR on EKS needs none)",
    )
    k8s.add_argument("--name", default="batchserve", help="name of the deployment and its objects (default batchserve)")
    k8s.add_argument("--namespace", default="batchserve", help="namespace of every object (default batchserve)")
    k8s.add_argument(
        "--create-namespace", action="store_true", help="render the Namespace too (never deleted by --destroy)"
    )
    k8s.add_argument(
        "--mode",
        choices=MODES,
        default="direct",
        help="direct (default): GPU pods serve HTTP; queue: a CPU web tier, SQS + S3, and GPU workers "
        "(`batchserve worker`) scaled on the request queue's backlog",
    )
    k8s.add_argument(
        "--models",
        default="efficientnet_lite0",
        help="comma-separated models to serve (built into the image; default efficientnet_lite0)",
    )
    k8s.add_argument(
        "--min",
        type=int,
        dest="min_size",
        metavar="N",
        help="fewest GPU pods (direct: default and least 1; queue workers: default 0)",
    )
    k8s.add_argument("--max", type=int, dest="max_size", metavar="N", help=f"most GPU pods (default {DEFAULT_MAX})")
    k8s.add_argument(
        "--autoscaler",
        choices=AUTOSCALERS,
        default="keda",
        help="keda (default): a KEDA ScaledObject (prometheus trigger on the queue depth; in queue mode "
        "aws-sqs-queue on the backlog); hpa: an autoscaling/v2 HPA on the queue depth served by a "
        "Prometheus adapter (direct mode); none: a fixed --min pods",
    )
    k8s.add_argument(
        "--prometheus-url", metavar="URL", help="Prometheus server KEDA queries (--autoscaler keda, direct mode)"
    )
    k8s.add_argument(
        "--prometheus-query",
        metavar="PROMQL",
        help="query for the deployment's total queue depth, when your scrape labels are not namespace "
        "and pod (default: built from --namespace and --name)",
    )
    k8s.add_argument(
        "--target-queue-depth",
        type=int,
        default=32,
        metavar="N",
        help="samples waiting per pod the autoscaler aims at (default 32, one full batch)",
    )
    k8s.add_argument(
        "--service-type",
        choices=SERVICE_TYPES,
        default="ClusterIP",
        help="type of the Service in front of the server (default ClusterIP; expose it with your ingress)",
    )
    k8s.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label GPU pods must find on their node, e.g. nvidia.com/gpu.product=Tesla-T4 (repeatable)",
    )
    k8s.add_argument(
        "--no-gpu-toleration",
        dest="gpu_toleration",
        action="store_false",
        help="leave out the toleration of the nvidia.com/gpu taint that GPU node pools usually carry",
    )
    k8s.add_argument("--cpu", default="3", help="CPU request of a GPU pod (default 3; no CPU limit)")
    k8s.add_argument("--memory", default="8Gi", help="memory request and limit of a GPU pod (default 8Gi)")
    k8s.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="required",
        help="required (default): every API route needs a batchserve key; off: only with a ClusterIP "
        "Service, for clusters whose network policy guards it",
    )
    k8s.add_argument(
        "--database-url-secret",
        metavar="NAME[:KEY]",
        help="Secret holding the PostgreSQL URL for events and API keys (key default database-url)",
    )
    k8s.add_argument(
        "--admin-key-secret",
        metavar="NAME[:KEY]",
        help="Secret holding the bootstrap admin key (key default admin-key)",
    )

    queue = k8s.add_argument_group("queue mode (--mode queue)")
    queue.add_argument(
        "--queue-name",
        metavar="NAME",
        help="deployment name of the queues and buckets (`batchserve queue up --name NAME`; default: --name)",
    )
    queue.add_argument("--region", help="AWS region of the queues and buckets (default $AWS_REGION)")
    queue.add_argument("--aws-account-id", metavar="ID", help="account of the request queue (for KEDA's trigger)")
    queue.add_argument(
        "--aws-role-arn", metavar="ARN", help="IAM role the pods and KEDA use (IRSA annotation on the service account)"
    )
    queue.add_argument(
        "--aws-credentials-secret",
        metavar="NAME",
        help="instead of a role: a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )
    queue.add_argument("--input-bucket", metavar="BUCKET", help="bucket of the uploads (default NAME-input)")
    queue.add_argument("--output-bucket", metavar="BUCKET", help="bucket of the results (default NAME-output)")
    queue.add_argument(
        "--web-min", type=int, default=QUEUE_DEFAULTS["web_min"], metavar="N", help="fewest web pods (default 2)"
    )
    queue.add_argument(
        "--web-max", type=int, default=QUEUE_DEFAULTS["web_max"], metavar="N", help="most web pods (default 10)"
    )
    queue.add_argument("--web-cpu", default=QUEUE_DEFAULTS["web_cpu"], help="CPU request of a web pod (default 1)")
    queue.add_argument(
        "--web-memory", default=QUEUE_DEFAULTS["web_memory"], help="memory request and limit of a web pod (default 1Gi)"
    )
    queue.add_argument(
        "--backlog-per-worker",
        type=int,
        default=QUEUE_DEFAULTS["backlog_per_worker"],
        metavar="N",
        help="messages waiting or in flight per worker KEDA aims at (default 2000)",
    )

    k8s.add_argument(
        "--out",
        type=Path,
        help="folder for manifests.yaml (default ./deploy-out/k8s/, ./deploy-out/k8s-queue/ with --mode queue)",
    )
    k8s.add_argument("--context", help="kubectl context (default: kubectl's current context)")
    action = k8s.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="render, validate and print the command; apply nothing")
    action.add_argument("--status", action="store_true", help="show the deployment's objects in the cluster")
    action.add_argument("--destroy", action="store_true", help="delete the deployment's objects (not the namespace)")
    k8s.add_argument("--skip-validation", action="store_true", help="apply without the offline checks")
    k8s.add_argument(
        "--kubernetes-version",
        default=KUBERNETES_VERSION,
        metavar="1.NN",
        help=f"Kubernetes release whose schemas the manifests must pass (default {KUBERNETES_VERSION})",
    )
    return k8s


def profile_from(args: argparse.Namespace) -> K8sProfile:
    if not args.image:
        raise UsageError("--image is required to deploy (the image built from Dockerfile.gpu)")
    mode = args.mode
    queue = _queue_target(args) if mode == "queue" else None
    if queue is None:
        given = [f"--{n.replace('_', '-')}" for n, default in QUEUE_DEFAULTS.items() if getattr(args, n) != default]
        if given:
            raise UsageError(f"{', '.join(given)} go with --mode queue")
    return K8sProfile(
        image=args.image,
        name=args.name,
        namespace=args.namespace,
        mode=mode,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        auth=args.auth,
        database_url=None
        if args.database_url_secret is None
        else SecretRef.parse(args.database_url_secret, "--database-url-secret", "database-url"),
        admin_key=None
        if args.admin_key_secret is None
        else SecretRef.parse(args.admin_key_secret, "--admin-key-secret", "admin-key"),
        service_type=args.service_type,
        resources=Resources(args.cpu, args.memory),
        node_selector=parse_node_selector(args.node_selector),
        gpu_toleration=args.gpu_toleration,
        image_pull_secret=args.image_pull_secret,
        scaling=Scaling(
            autoscaler=args.autoscaler,
            min_replicas=DEFAULT_MIN[mode] if args.min_size is None else args.min_size,
            max_replicas=DEFAULT_MAX if args.max_size is None else args.max_size,
            target_queue_depth=args.target_queue_depth,
            prometheus_url=args.prometheus_url,
            prometheus_query=args.prometheus_query,
            backlog_per_worker=args.backlog_per_worker,
        ),
        queue=queue,
        create_namespace=args.create_namespace,
    )


@cache
def _aws_regions() -> frozenset[str]:
    return aws_regions()  # botocore's endpoint data: read once, it takes a second


def _queue_target(args: argparse.Namespace) -> QueueTarget:
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise UsageError("--mode queue needs the queues' AWS region: pass --region or set AWS_REGION")
    if region not in _aws_regions():
        raise UsageError(f"unknown AWS region {region!r}; regions are: {', '.join(sorted(_aws_regions()))}")
    return QueueTarget(
        queue_name=args.queue_name or args.name,
        region=region,
        account_id=args.aws_account_id,
        role_arn=args.aws_role_arn,
        credentials_secret=args.aws_credentials_secret,
        input_bucket=args.input_bucket,
        output_bucket=args.output_bucket,
        web_min=args.web_min,
        web_max=args.web_max,
        web_resources=Resources(args.web_cpu, args.web_memory),
    )


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.status or args.destroy:
        return _in_cluster(args, out)
    if not _K8S_VERSION.match(args.kubernetes_version):
        raise UsageError(
            f"--kubernetes-version takes a release such as {KUBERNETES_VERSION}, got {args.kubernetes_version!r}"
        )
    profile = profile_from(args)
    rendered = write(profile, args.out or DEFAULT_OUT[profile.mode], args.context)
    print(f"rendered {rendered.path}", file=out)
    if not args.skip_validation:
        findings = check_manifests(rendered.documents, args.kubernetes_version)
        if findings:
            raise ValidationFailed(f"{rendered.path}", findings)
        print(
            f"validated: Kubernetes {args.kubernetes_version} schemas, KEDA {KEDA_VERSION} CRD schemas and the "
            "shutdown, secret and autoscaling rules passed",
            file=out,
        )
    print(f"objects (namespace {profile.namespace}):", file=out)
    for line in rendered.summary():
        print(f"  {line}", file=out)
    _notes(profile, err)
    print("command:", file=out)
    print(f"  {shell(rendered.apply_command())}", file=out)
    if args.dry_run:
        print("dry run: nothing applied", file=out)
        return 0
    return _apply(rendered, out)


def _notes(profile: K8sProfile, err: TextIO) -> None:
    """What the cluster must provide that the manifests cannot."""
    if profile.scaling.autoscaler == "hpa":
        print(
            "note: the HPA reads batchserve_queue_depth through the custom metrics API: a Prometheus adapter "
            "must serve it (its rule: docs/deploy-k8s.md)",
            file=err,
        )
    if profile.queue is not None and profile.queue.role_arn is None and profile.queue.credentials_secret is None:
        print(
            f"note: the pods and KEDA reach S3 and SQS as service account {profile.namespace}/{profile.name}: give "
            "it an AWS identity (an EKS Pod Identity association), or pass --aws-role-arn or "
            "--aws-credentials-secret",
            file=err,
        )


def _apply(rendered: RenderedManifests, out: TextIO) -> int:
    executable = kubectl.find_kubectl(
        f"apply the rendered file from a machine that has it: {shell(rendered.apply_command())}"
    )
    if rendered.uses_keda() and not kubectl.serves_keda(executable, rendered.context):
        raise UsageError(
            "the cluster has no KEDA (scaledobjects.keda.sh is not served): install KEDA "
            f"{KEDA_VERSION.rsplit('.', 1)[0]} or newer (https://keda.sh/docs/deploy/), or pass --autoscaler hpa "
            "or none"
        )
    kubectl.run(rendered.apply_command(), out, executable)
    print(
        f"applied; follow the rollout with: kubectl --namespace {rendered.namespace} get pods --selector "
        f"app.kubernetes.io/instance={rendered.name} --watch",
        file=out,
    )
    return 0


def _in_cluster(args: argparse.Namespace, out: TextIO) -> int:
    """--status and --destroy find the deployment's objects by its labels: no rendering needed."""
    action = "status" if args.status else "destroy"
    everything = cluster_commands(args.namespace, args.name, [*BUILT_IN_KINDS, *KEDA_KINDS], args.context)[action]
    executable = kubectl.find_kubectl(f"run this where kubectl is installed: {shell(everything)}")
    # Naming KEDA's kinds to a cluster without them would fail the whole command.
    kinds = [*BUILT_IN_KINDS, *KEDA_KINDS] if kubectl.serves_keda(executable, args.context) else list(BUILT_IN_KINDS)
    kubectl.run(cluster_commands(args.namespace, args.name, kinds, args.context)[action], out, executable)
    return 0
