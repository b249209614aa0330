"""The offline checks of `deploy k8s`: kubernetes-validate on the built-in kinds, KEDA's CRD schemas on
its kinds, the rules no schema states, and proof that each of them rejects a broken object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchserve.cli import build_parser
from batchserve.deploy.cli import main
from batchserve.deploy.k8s import objects
from batchserve.deploy.k8s.command import profile_from
from batchserve.deploy.k8s.render import build
from batchserve.deploy.k8s.validate import (
    CRD_DIR,
    KEDA_VERSION,
    KUBERNETES_VERSION,
    check_builtin,
    check_crd,
    check_manifests,
    check_rules,
)

IMAGE = "ghcr.io/acme/batchserve:1.4.0"
KEYS = ["--admin-key-secret", "batchserve-keys"]
DIRECT = ["--image", IMAGE, *KEYS, "--prometheus-url", "http://prometheus.monitoring.svc:9090"]
QUEUE = ["--mode", "queue", "--image", IMAGE, *KEYS, "--region", "eu-west-1", "--aws-account-id", "123456789012"]
VARIANTS = {
    "direct-keda": DIRECT,
    "direct-hpa": ["--image", IMAGE, *KEYS, "--autoscaler", "hpa"],
    "direct-fixed": ["--image", IMAGE, *KEYS, "--autoscaler", "none", "--create-namespace"],
    "queue-keda": [*QUEUE, "--aws-credentials-secret", "aws-keys"],
    "queue-fixed": [*QUEUE, "--autoscaler", "none", "--min", "2"],
}


def documents(*argv: str) -> list[dict[str, Any]]:
    return build(profile_from(build_parser().parse_args(["deploy", "k8s", *argv])))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_passes_its_schema(variant: str) -> None:
    docs = documents(*VARIANTS[variant])
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            assert check_crd(doc) == [], doc["kind"]
        else:
            assert check_builtin(doc) == [], doc["kind"]
    assert check_rules(docs) == []
    assert check_manifests(docs) == []


def test_objects_pass_every_kubernetes_release_the_package_ships_from_the_pinned_one() -> None:
    docs = documents(*VARIANTS["queue-keda"]) + documents(*VARIANTS["direct-hpa"])
    for version in ("1.32", "1.34", "1.37"):
        assert [f for d in docs if not d["apiVersion"].startswith("keda.sh/") for f in check_builtin(d, version)] == []


def test_crds_are_the_pinned_keda_release() -> None:
    for name, kind in (
        ("keda.sh_scaledobjects.yaml", "ScaledObject"),
        ("keda.sh_triggerauthentications.yaml", "TriggerAuthentication"),
    ):
        text = (CRD_DIR / name).read_text()
        assert text.startswith(f"# KEDA v{KEDA_VERSION}: config/crd/bases/{name}")
        crd = yaml.safe_load(text)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def test_a_broken_built_in_object_fails_kubernetes_validate() -> None:
    deployment = find(documents(*DIRECT), "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    (finding,) = check_builtin(misspelt)
    assert finding.path == "Deployment/batchserve $.spec.template.spec.containers[0]"
    assert "imagePullPolicyy" in finding.message and KUBERNETES_VERSION in finding.message

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    (finding,) = check_builtin(wrong_type)
    assert finding.path == "Deployment/batchserve $.spec.replicas"

    service = find(documents(*DIRECT), "Service")
    service["spec"]["selector"] = ["app.kubernetes.io/name"]  # a map of labels, not a list
    assert [f.path for f in check_builtin(service)] == ["Service/batchserve $.spec.selector"]

    unknown = {"apiVersion": "apps/v1", "kind": "Deploymentt", "metadata": {"name": "x"}}
    assert check_builtin(unknown)[0].message == "no schema for Deploymentt apps/v1 in Kubernetes 1.32"


def test_the_cached_checks_agree_with_kubernetes_validate_itself() -> None:
    """check_builtin builds kubernetes-validate's validator once per kind; the verdicts are the library's."""
    import kubernetes_validate

    deployment = find(documents(*DIRECT), "Deployment")
    assert kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = ["8Gi"]
    with pytest.raises(kubernetes_validate.ValidationError) as raised:
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (finding,) = check_builtin(deployment)
    assert finding.path.endswith(".".join(map(str, raised.value.path)).replace(".0.", "[0].", 1))
    assert finding.message.startswith(raised.value.message)


def test_a_release_without_schemas_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["k8s", *DIRECT, "--out", str(tmp_path), "--dry-run", "--kubernetes-version", "1.19"])
    assert rc == 2
    assert "has no schemas for Kubernetes 1.19 (it has 1.25 to" in capsys.readouterr().err


def test_a_broken_keda_object_fails_the_crd_schema() -> None:
    scaled = find(documents(*DIRECT), "ScaledObject")
    as_number = copy.deepcopy(scaled)
    as_number["spec"]["triggers"][0]["metadata"]["threshold"] = 32  # trigger metadata values are strings
    (finding,) = check_crd(as_number)
    assert finding.path == "ScaledObject/batchserve $.spec.triggers[0].metadata.threshold"
    assert KEDA_VERSION in finding.message

    # The API server would prune a misspelt field silently; the closed schema reports it.
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    assert [f.path for f in check_crd(misspelt)] == ["ScaledObject/batchserve $.spec"]
    assert "minReplicas" in check_crd(misspelt)[0].message

    no_target = copy.deepcopy(scaled)
    del no_target["spec"]["scaleTargetRef"]
    assert "'scaleTargetRef' is a required property" in check_crd(no_target)[0].message

    auth = find(documents(*QUEUE), "TriggerAuthentication")
    auth["spec"]["podIdentity"]["provider"] = "aws-iam"
    (finding,) = check_crd(auth)
    assert finding.path == "TriggerAuthentication/batchserve-aws $.spec.podIdentity.provider"

    assert "no version v1beta9" in check_crd({**scaled, "apiVersion": "keda.sh/v1beta9"})[0].message


def test_rules_catch_what_no_schema_says() -> None:
    docs = documents(*DIRECT)
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]

    pod["terminationGracePeriodSeconds"] = 10  # preStop 5 + drain 1 + shutdown grace 8 do not fit
    server["env"].append({"name": "BATCHSERVE_DATABASE_URL", "value": "postgresql://u:p@db/events"})
    server["readinessProbe"]["httpGet"]["port"] = "web"
    del pod["enableServiceLinks"]
    deployment["spec"]["replicas"] = 2  # while the ScaledObject owns the count
    find(docs, "ScaledObject")["spec"]["minReplicaCount"] = 30
    messages = {f.path: f.message for f in check_rules(docs)}
    grace = "Deployment/batchserve $.spec.template.spec.terminationGracePeriodSeconds"
    assert "10 s does not exceed preStop 5 s + drain delay 1 s + shutdown grace 8 s" in messages[grace]
    at = "Deployment/batchserve $.spec.template.spec.containers[0]"
    assert "holds a secret" in messages[f"{at}.env[{len(server['env']) - 1}]"]
    assert "names port 'web'" in messages[f"{at}.readinessProbe.httpGet.port"]
    assert "BATCHSERVE_*" in messages["Deployment/batchserve $.spec.template.spec.enableServiceLinks"]
    assert "left out" in messages["Deployment/batchserve $.spec.replicas"]
    assert "minimum 30 is above maximum 20" in messages["ScaledObject/batchserve $.spec"]
    assert len(messages) == 6


def test_rules_follow_references_between_objects() -> None:
    docs = documents(*QUEUE)
    find(docs, "ScaledObject")["spec"]["scaleTargetRef"]["name"] = "batchserve-workers"
    find(docs, "ScaledObject")["spec"]["triggers"][0]["authenticationRef"]["name"] = "aws"
    worker = find(docs, "Deployment", "batchserve-worker")["spec"]
    worker["selector"]["matchLabels"]["app.kubernetes.io/component"] = "gpu"
    worker["template"]["spec"]["terminationGracePeriodSeconds"] = 20  # not above the worker's 20 s
    find(docs, "Service")["metadata"]["namespace"] = "elsewhere"
    paths = {f.path for f in check_rules(docs)}
    assert paths == {
        "$",
        "ScaledObject/batchserve-worker $.spec.scaleTargetRef.name",
        "ScaledObject/batchserve-worker $.spec.triggers[0].authenticationRef.name",
        "Deployment/batchserve-worker $.spec.selector",
        "Deployment/batchserve-worker $.spec.template.spec.terminationGracePeriodSeconds",
    }


def test_the_command_refuses_to_apply_what_fails_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks run inside `deploy k8s` itself: a Service that no longer passes its schema stops the run."""
    real = objects.service

    def broken_service(*args: Any, **kwargs: Any) -> dict[str, Any]:
        service = real(*args, **kwargs)
        service["spec"]["ports"][0]["port"] = "eighty"
        return service

    monkeypatch.setattr(objects, "service", broken_service)
    rc = main(["k8s", *DIRECT, "--out", str(tmp_path), "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "failed validation (1 problem(s))" in captured.err
    assert "Service/batchserve $.spec.ports[0].port" in captured.err
    assert "dry run" not in captured.out

    # --skip-validation renders the same objects and lets them through.
    rc = main(["k8s", *DIRECT, "--out", str(tmp_path), "--dry-run", "--skip-validation"])
    assert rc == 0 and "validated" not in capsys.readouterr().out


def test_not_an_object_is_reported_not_raised() -> None:
    findings = check_manifests([{"kind": "Service"}, ["not", "a", "mapping"]])
    assert [f.message for f in findings] == ["not a Kubernetes object (apiVersion, kind and metadata)"] * 2
