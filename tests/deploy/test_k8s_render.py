"""`batchserve deploy k8s --dry-run`: what it renders in direct and queue mode, and the command lines it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from batchserve.cli import build_parser
from batchserve.deploy.cli import main
from batchserve.deploy.k8s import contract
from batchserve.deploy.k8s.command import profile_from
from batchserve.deploy.k8s.render import build

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:2026.12"
PROMETHEUS = "http://prometheus-server.monitoring.svc:80"
KEYS = ["--admin-key-secret", "batchserve-keys", "--database-url-secret", "batchserve-db:url"]
DIRECT = ["--image", IMAGE, *KEYS, "--prometheus-url", PROMETHEUS]
QUEUE = ["--mode", "queue", "--image", IMAGE, *KEYS, "--region", "us-east-1", "--aws-account-id", "123456789012"]


def documents(*argv: str) -> list[dict[str, Any]]:
    return build(profile_from(build_parser().parse_args(["deploy", "k8s", *argv])))


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        found.setdefault(doc["kind"], []).append(doc)
    return found


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[list[dict[str, Any]], str]:
    rc = main(["k8s", *argv, "--out", str(tmp_path), "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = (tmp_path / "manifests.yaml").read_text()
    return list(yaml.safe_load_all(text)), captured.out


def test_direct_dry_run_writes_validates_and_lists_every_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, out = dry_run(tmp_path, capsys, *DIRECT)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Deployment", "batchserve"),
        ("Service", "batchserve"),
        ("PodDisruptionBudget", "batchserve"),
        ("ScaledObject", "batchserve"),
    ]
    assert "validated: Kubernetes 1.32 schemas, KEDA 2.20.2 CRD schemas" in out
    for line in (
        "Deployment/batchserve",
        "Service/batchserve",
        "PodDisruptionBudget/batchserve",
        "ScaledObject/batchserve",
    ):
        assert f"  {line}\n" in out
    assert f"kubectl apply -f {(tmp_path / 'manifests.yaml').resolve()}" in out
    assert out.rstrip().endswith("dry run: nothing applied")
    assert {d["metadata"]["namespace"] for d in docs} == {"batchserve"}


def test_queue_dry_run_renders_a_web_tier_and_gpu_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs, out = dry_run(tmp_path, capsys, *QUEUE, "--name", "shop", "--namespace", "ml")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ServiceAccount", "shop"),
        ("Deployment", "shop-web"),
        ("Service", "shop"),
        ("Deployment", "shop-worker"),
        ("PodDisruptionBudget", "shop-web"),
        ("PodDisruptionBudget", "shop-worker"),
        ("HorizontalPodAutoscaler", "shop-web"),
        ("TriggerAuthentication", "shop-aws"),
        ("ScaledObject", "shop-worker"),
    ]
    assert "dry run: nothing applied" in out
    web, worker = container(deployment(docs, "shop-web")), container(deployment(docs, "shop-worker"))
    assert web["command"] == ["batchserve", "serve"]
    assert {"--backend=queue", "--queue-name=shop", "--aws-region=us-east-1"} <= set(web["args"])
    assert "nvidia.com/gpu" not in web["resources"]["limits"]  # the web tier runs no model
    assert worker["command"] == ["batchserve", "worker"]
    assert {"--queue-name=shop", "--aws-region=us-east-1"} <= set(worker["args"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "tolerations" in deployment(docs, "shop-worker")["spec"]["template"]["spec"]
    assert "tolerations" not in deployment(docs, "shop-web")["spec"]["template"]["spec"]
    # Both tiers reach AWS as the rendered service account.
    for name in ("shop-web", "shop-worker"):
        assert deployment(docs, name)["spec"]["template"]["spec"]["serviceAccountName"] == "shop"

    scaled = by_kind(docs)["ScaledObject"][0]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "shop-worker"
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 20)  # to and from zero
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"]["queueURL"] == "https://sqs.us-east-1.amazonaws.com/123456789012/shop-requests"
    assert trigger["metadata"]["awsRegion"] == "us-east-1"
    assert trigger["authenticationRef"]["name"] == "shop-aws"
    auth = by_kind(docs)["TriggerAuthentication"][0]["spec"]
    assert auth == {"podIdentity": {"provider": "aws", "identityOwner": "workload"}}


def test_queue_identity_from_a_role_or_a_secret() -> None:
    role = "arn:aws:iam::123456789012:role/batchserve-pods"
    docs = documents(*QUEUE, "--aws-role-arn", role)
    assert by_kind(docs)["ServiceAccount"][0]["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}

    docs = documents(*QUEUE, "--aws-credentials-secret", "aws-keys")
    assert "annotations" not in by_kind(docs)["ServiceAccount"][0]["metadata"]
    assert by_kind(docs)["TriggerAuthentication"][0]["spec"] == {
        "secretTargetRef": [
            {"parameter": "awsAccessKeyID", "name": "aws-keys", "key": "AWS_ACCESS_KEY_ID"},
            {"parameter": "awsSecretAccessKey", "name": "aws-keys", "key": "AWS_SECRET_ACCESS_KEY"},
        ]
    }
    for name in ("batchserve-web", "batchserve-worker"):
        env = {e["name"]: e for e in container(deployment(docs, name))["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "aws-keys", "key": "AWS_SECRET_ACCESS_KEY"}
        }


def test_queue_buckets_follow_the_flags() -> None:
    docs = documents(*QUEUE, "--input-bucket", "acme-uploads", "--output-bucket", "acme-results")
    for name in ("batchserve-web", "batchserve-worker"):
        args = container(deployment(docs, name))["args"]
        assert {"--input-bucket=acme-uploads", "--output-bucket=acme-results"} <= set(args)


def test_hpa_is_the_alternative_on_the_same_metric() -> None:
    docs = documents("--image", IMAGE, *KEYS, "--autoscaler", "hpa", "--min", "2", "--max", "6")
    kinds = by_kind(docs)
    assert "ScaledObject" not in kinds
    (hpa,) = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == contract.QUEUE_DEPTH_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "32"}
    # The autoscaler owns the count: a replicas field would reset it on every apply.
    assert "replicas" not in deployment(docs, "batchserve")["spec"]


def test_without_an_autoscaler_the_count_is_fixed() -> None:
    docs = documents("--image", IMAGE, *KEYS, "--autoscaler", "none", "--min", "3")
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget"}
    assert deployment(docs, "batchserve")["spec"]["replicas"] == 3
    # A single pod needs no disruption budget (and one with minAvailable would block node drains).
    docs = documents("--image", IMAGE, *KEYS, "--autoscaler", "none", "--min", "1", "--max", "1")
    assert "PodDisruptionBudget" not in by_kind(docs)


def test_keda_trigger_asks_prometheus_for_this_deployments_queue_depth() -> None:
    docs = documents(*DIRECT, "--namespace", "ml", "--name", "vision", "--target-queue-depth", "48")
    (trigger,) = by_kind(docs)["ScaledObject"][0]["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == PROMETHEUS
    assert meta["threshold"] == "48"
    assert meta["query"] == (
        f'sum(avg_over_time({contract.QUEUE_DEPTH_METRIC}{{namespace="ml",pod=~"vision-[a-z0-9]+-[a-z0-9]+"}}[1m]))'
    )
    docs = documents(*DIRECT, "--prometheus-query", "sum(batchserve_queue_depth{job='vision'})")
    (trigger,) = by_kind(docs)["ScaledObject"][0]["spec"]["triggers"]
    assert trigger["metadata"]["query"] == "sum(batchserve_queue_depth{job='vision'})"


def test_gpu_resources_toleration_and_node_selector() -> None:
    docs = documents(
        *DIRECT,
        "--node-selector",
        "nvidia.com/gpu.product=NVIDIA-L4",
        "--node-selector",
        "pool=gpu",
        "--cpu",
        "3500m",
        "--memory",
        "12Gi",
    )
    pod = deployment(docs, "batchserve")["spec"]["template"]["spec"]
    server = container(deployment(docs, "batchserve"))
    assert server["resources"] == {
        "requests": {"cpu": "3500m", "memory": "12Gi"},
        "limits": {"memory": "12Gi", "nvidia.com/gpu": 1},
    }
    assert "--preprocess-threads=4" in server["args"]  # the pod's CPUs, not the node's
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4", "pool": "gpu"}
    pod = deployment(documents(*DIRECT, "--no-gpu-toleration"), "batchserve")["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_private_images_pull_with_the_named_secret() -> None:
    for docs in (
        documents(*DIRECT, "--image-pull-secret", "ghcr-pull"),
        documents(*QUEUE, "--image-pull-secret", "ghcr-pull"),
    ):
        for doc in docs:
            if doc["kind"] == "Deployment":
                assert doc["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}]
    assert "imagePullSecrets" not in deployment(documents(*DIRECT), "batchserve")["spec"]["template"]["spec"]


def test_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    for docs, name in (
        (documents(*DIRECT), "batchserve"),
        (documents(*QUEUE), "batchserve-worker"),
        (documents(*QUEUE), "batchserve-web"),
    ):
        pod = deployment(docs, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == contract.IMAGE_UID
        assert pod["enableServiceLinks"] is False
        c = container(deployment(docs, name))
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # The journal, SQLite events and caches (working directory) and /tmp are the writable places.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts == {contract.WORK_DIR: "work", "/tmp": "tmp"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(volumes) == {"work", "tmp"} and all("emptyDir" in v for v in volumes.values())


def test_shutdown_fits_in_the_grace_period() -> None:
    for docs, name in ((documents(*DIRECT), "batchserve"), (documents(*QUEUE), "batchserve-web")):
        pod = deployment(docs, name)["spec"]["template"]["spec"]
        args = dict(a.split("=", 1) for a in container(deployment(docs, name))["args"])
        drain, grace = float(args["--drain-delay"]), float(args["--shutdown-grace"])
        assert (drain, grace) == (contract.DRAIN_DELAY_S, contract.SHUTDOWN_GRACE_S)
        (sleep, seconds) = container(deployment(docs, name))["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep == "sleep"
        # The grace period counts from the preStop hook: it must cover the hook, then the drain
        # delay and the shutdown grace of the server.
        assert pod["terminationGracePeriodSeconds"] > float(seconds) + drain + grace
    worker = deployment(documents(*QUEUE), "batchserve-worker")
    args = dict(a.split("=", 1) for a in container(worker)["args"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(args["--shutdown-grace-s"])


def test_no_secret_value_reaches_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values the renderer could pick up from its own environment must never land in the files.
    secrets = {
        "BATCHSERVE_ADMIN_KEY": "bsk_admin_0123456789abcdef",
        "BATCHSERVE_DATABASE_URL": "postgresql://events:hunter2@db.internal/events",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    for argv, out in (
        (DIRECT, tmp_path / "direct"),
        ([*QUEUE, "--aws-credentials-secret", "aws-keys"], tmp_path / "queue"),
    ):
        docs, printed = dry_run(out, capsys, *argv)
        text = (out / "manifests.yaml").read_text()
        for value in secrets.values():
            assert value not in text and value not in printed
        assert "Secret" not in {d["kind"] for d in docs}
        for doc in docs:
            if doc["kind"] != "Deployment":
                continue
            env = {e["name"]: e for e in container(doc).get("env", [])}
            for name in set(secrets) & set(env):
                assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"]
    server = container(deployment(documents(*DIRECT), "batchserve"))
    env = {e["name"]: e for e in server["env"]}
    assert env[contract.ENV_DATABASE_URL]["valueFrom"]["secretKeyRef"] == {"name": "batchserve-db", "key": "url"}
    assert env[contract.ENV_ADMIN_KEY]["valueFrom"]["secretKeyRef"] == {"name": "batchserve-keys", "key": "admin-key"}
    assert env[contract.ENV_REQUIRE_GPU] == {"name": contract.ENV_REQUIRE_GPU, "value": "true"}


def test_labels_and_selectors() -> None:
    docs = documents(*DIRECT, "--name", "vision")
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "batchserve"
        assert labels["app.kubernetes.io/instance"] == "vision"
        assert labels["app.kubernetes.io/version"] == "2026.12"
    dep = deployment(docs, "vision")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert "app.kubernetes.io/version" not in selector  # selectors are immutable: no per-release label
    assert by_kind(docs)["Service"][0]["spec"]["selector"] == selector
    assert by_kind(docs)["Service"][0]["spec"]["type"] == "ClusterIP"
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_create_namespace_renders_it_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs, _ = dry_run(tmp_path, capsys, *DIRECT, "--namespace", "vision", "--create-namespace")
    assert (docs[0]["kind"], docs[0]["metadata"]["name"]) == ("Namespace", "vision")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image", "Not An Image", *KEYS, "--prometheus-url", PROMETHEUS], "--image 'Not An Image'"),
        (["--image", "ghcr.io/acme/batchserve:1:2", *KEYS, "--prometheus-url", PROMETHEUS], "is not an image"),
        ([*DIRECT, "--namespace", "Bad_Namespace"], "--namespace 'Bad_Namespace' is not a namespace name"),
        ([*DIRECT, "--namespace", "x" * 64], "is not a namespace name"),
        ([*DIRECT, "--name", "9lives"], "--name '9lives'"),
        (["--image", IMAGE, *KEYS], "--prometheus-url"),
        ([*DIRECT, "--prometheus-url", "prometheus:9090"], "is not an http(s):// URL"),
        ([*DIRECT, "--min", "0"], "--min 0 cannot work in direct mode"),
        ([*DIRECT, "--min", "5", "--max", "2"], "need 0 <= --min <= --max"),
        (["--image", IMAGE, "--prometheus-url", PROMETHEUS], "--auth required (the default) needs a key"),
        ([*DIRECT, "--auth", "off", "--service-type", "LoadBalancer"], "--auth off with --service-type LoadBalancer"),
        ([*DIRECT, "--database-url-secret", "Bad/Name"], "--database-url-secret takes a Secret name"),
        ([*DIRECT, "--node-selector", "pool"], "--node-selector takes KEY=VALUE"),
        ([*DIRECT, "--image-pull-secret", "Pull_Secret"], "--image-pull-secret 'Pull_Secret' is not a Secret name"),
        ([*DIRECT, "--node-selector", "pool=a b"], "is not a label value"),
        ([*DIRECT, "--memory", "lots"], "--memory 'lots' is not a quantity"),
        ([*DIRECT, "--region", "us-east-1"], "--region go with --mode queue"),
        ([*DIRECT, "--kubernetes-version", "latest"], "--kubernetes-version takes a release"),
        ([*QUEUE[:-2]], "needs --aws-account-id"),
        ([*QUEUE, "--autoscaler", "hpa"], "--autoscaler hpa is for direct mode"),
        ([*QUEUE, "--queue-name", "Shop"], "--queue-name 'Shop'"),
        ([*QUEUE, "--aws-role-arn", "arn:aws:iam::1:role/x"], "is not an IAM role ARN"),
        (
            ["--mode", "queue", "--image", IMAGE, *KEYS, "--aws-account-id", "123456789012", "--region", "mars-1"],
            "unknown AWS region 'mars-1'",
        ),
        ([*KEYS, "--prometheus-url", PROMETHEUS], "--image is required"),
    ],
)
def test_invalid_flags_exit_2_naming_the_problem(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["k8s", *argv, "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("batchserve deploy k8s: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing is written for a command line that cannot work


def test_argparse_refuses_unknown_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["k8s", *DIRECT, "--autoscaler", "vpa", "--dry-run"])
    assert exit_info.value.code == 2
    assert "--autoscaler" in capsys.readouterr().err
