"""deploy/gcp/service.yaml against the Cloud Run v1 API schema and the GPU rules, and its rendering."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import SERVICE_TEMPLATE, GcpProfile, render_gcp
from batchserve.deploy.validate import (
    check_cloud_run_service,
    check_gpu_rules,
    check_run_schema,
    parse_quantity,
    run_v1_schemas,
)


@pytest.fixture
def service() -> dict:
    return yaml.safe_load(SERVICE_TEMPLATE.read_text())


def container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


def annotations(doc: dict) -> dict:
    return doc["spec"]["template"]["metadata"]["annotations"]


def paths(findings) -> list[str]:
    return [f.path for f in findings]


def test_packaged_service_passes_schema_and_gpu_rules(service: dict) -> None:
    assert check_cloud_run_service(service) == []


def test_schema_is_the_discovery_document_google_ships() -> None:
    schemas = run_v1_schemas()
    # The walk reaches Probe through Service -> ServiceSpec -> RevisionTemplate -> RevisionSpec -> Container.
    assert schemas["Container"]["properties"]["startupProbe"] == {
        "$ref": "Probe",
        "description": schemas["Container"]["properties"]["startupProbe"]["description"],
    }
    assert schemas["ObjectMeta"]["properties"]["annotations"]["additionalProperties"]["type"] == "string"


def test_packaged_service_has_the_promised_settings(service: dict) -> None:
    spec = service["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
    assert spec["containerConcurrency"] >= 32  # more than one batch of the default max batch size
    assert annotations(service)["run.googleapis.com/gpu-zonal-redundancy-disabled"] == "true"
    assert annotations(service)["run.googleapis.com/startup-cpu-boost"] == "true"
    assert (
        annotations(service)["autoscaling.knative.dev/minScale"],
        annotations(service)["autoscaling.knative.dev/maxScale"],
    ) == ("0", "20")
    c = container(service)
    assert c["ports"] == [{"name": "http1", "containerPort": 8000}]
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120  # room for model load
    env = {e["name"]: e["value"] for e in c["env"]}
    assert float(env["BATCHSERVE_SHUTDOWN_GRACE"]) < 10  # Cloud Run kills 10 s after SIGTERM


def test_unknown_field_is_reported_with_its_path_and_a_suggestion(service: dict) -> None:
    container(service)["resource"] = {}
    service["spec"]["template"]["spec"]["containerConcurency"] = 8
    findings = {f.path: f.message for f in check_run_schema(service)}
    assert set(findings) == {"$.spec.template.spec.containerConcurency", "$.spec.template.spec.containers[0].resource"}
    assert "did you mean 'containerConcurrency'" in findings["$.spec.template.spec.containerConcurency"]
    assert "did you mean 'resources'" in findings["$.spec.template.spec.containers[0].resource"]


def test_map_values_must_be_strings(service: dict) -> None:
    annotations(service)["autoscaling.knative.dev/maxScale"] = 20
    container(service)["resources"]["limits"]["nvidia.com/gpu"] = 1
    findings = check_run_schema(service)
    assert paths(findings) == [
        "$.spec.template.metadata.annotations['autoscaling.knative.dev/maxScale']",
        "$.spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']",
    ]
    assert all("expected string, got integer" in f.message for f in findings)


def test_scalar_and_container_types_are_checked(service: dict) -> None:
    container(service)["ports"][0]["containerPort"] = "8000"
    container(service)["env"] = {"BATCHSERVE_MODELS": "efficientnet_lite0"}
    service["spec"]["template"]["spec"]["timeoutSeconds"] = True
    service["status"] = {}
    service["kind"] = "Deployment"
    messages = {f.path: f.message for f in check_run_schema(service)}
    assert (
        messages["$.spec.template.spec.containers[0].ports[0].containerPort"] == "expected integer, got string '8000'"
    )
    assert messages["$.spec.template.spec.containers[0].env"] == "expected an array, got object"
    assert messages["$.spec.template.spec.timeoutSeconds"] == "expected integer, got boolean True"
    assert "output only" in messages["$.status"]
    assert "$.kind" in messages


def test_gpu_rules_catch_each_broken_setting(service: dict) -> None:
    broken = copy.deepcopy(service)
    annotations(broken)["run.googleapis.com/cpu-throttling"] = "true"
    annotations(broken)["autoscaling.knative.dev/minScale"] = "5"
    annotations(broken)["autoscaling.knative.dev/maxScale"] = "2"
    broken["spec"]["template"]["spec"]["nodeSelector"]["run.googleapis.com/accelerator"] = "nvidia-t4"
    limits = container(broken)["resources"]["limits"]
    limits.update({"cpu": "2000m", "memory": "8Gi", "nvidia.com/gpu": "2"})
    container(broken)["startupProbe"]["failureThreshold"] = 60
    found = {f.path for f in check_gpu_rules(broken)}
    at = "$.spec.template.metadata.annotations"
    c = "$.spec.template.spec.containers[0]"
    assert found == {
        f"{at}['run.googleapis.com/cpu-throttling']",
        f"{at}['autoscaling.knative.dev/minScale']",
        "$.spec.template.spec.nodeSelector['run.googleapis.com/accelerator']",
        f"{c}.resources.limits.cpu",
        f"{c}.resources.limits.memory",
        f"{c}.resources.limits['nvidia.com/gpu']",
        f"{c}.startupProbe",
    }


def test_gpu_rules_need_scale_bounds_as_numeric_strings(service: dict) -> None:
    annotations(service)["autoscaling.knative.dev/maxScale"] = "lots"
    del annotations(service)["autoscaling.knative.dev/minScale"]
    messages = [f.message for f in check_gpu_rules(service)]
    assert messages == [
        "must be a whole number written as a string, got None",
        "must be a whole number written as a string, got 'lots'",
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("4000m", 4),
        ("4.5", 4.5),
        ("16Gi", 16 * 2**30),
        ("16384Mi", 16 * 2**30),
        ("16G", 16e9),
        ("17179869184", 2**34),
    ],
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == value


def test_parse_quantity_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a resource quantity"):
        parse_quantity("sixteen gigs")


# ---------------------------------------------------------------- rendering


def test_render_fills_in_the_deployment(tmp_path: Path) -> None:
    rendered = render_gcp(
        GcpProfile(
            image="europe-docker.pkg.dev/p/r/batchserve:2",
            region="europe-west4",
            service_name="classify",
            min_instances=1,
            max_instances=3,
            project="proj-1",
            concurrency=96,
            database_url_secret="batchserve-db",
        ),
        tmp_path,
    )
    on_disk = yaml.safe_load(rendered.path.read_text())
    assert on_disk == rendered.document
    assert check_cloud_run_service(on_disk) == []
    assert on_disk["metadata"]["name"] == "classify"
    assert on_disk["metadata"]["labels"]["cloud.googleapis.com/location"] == "europe-west4"
    assert (
        annotations(on_disk)["autoscaling.knative.dev/minScale"],
        annotations(on_disk)["autoscaling.knative.dev/maxScale"],
    ) == ("1", "3")
    assert on_disk["spec"]["template"]["spec"]["containerConcurrency"] == 96
    assert container(on_disk)["image"] == "europe-docker.pkg.dev/p/r/batchserve:2"
    assert {
        "name": "BATCHSERVE_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "batchserve-db", "key": "latest"}},
    } in container(on_disk)["env"]
    assert rendered.commands() == [
        ["gcloud", "run", "services", "replace", str(rendered.path), "--region", "europe-west4", "--project", "proj-1"]
    ]
    assert rendered.path.is_absolute()  # gcloud wants an absolute path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"service_name": "Batch_Serve"}, "service name"),
        ({"min_instances": 4, "max_instances": 2}, "--min <= --max"),
        ({"max_instances": 0}, "--max >= 1"),
        ({"concurrency": 5000}, "1..1000"),
    ],
)
def test_render_refuses_impossible_values(tmp_path: Path, changes: dict, message: str) -> None:
    profile = GcpProfile(image="img", region="us-east4", **changes)
    with pytest.raises(UsageError, match=message):
        render_gcp(profile, tmp_path)
    assert not (tmp_path / "service.yaml").exists()
