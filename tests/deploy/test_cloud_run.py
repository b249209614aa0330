"""deploy/gcp/service.yaml against the Cloud Run v1 API schema and the GPU rules, and its rendering."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import SERVICE_TEMPLATE, GcpProfile, render_gcp
from batchserve.deploy.validate import (
    check_cloud_run_service,
    check_gpu_rules,
    check_run_schema,
    check_runtime_rules,
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
    profile = GcpProfile(image="img", region="us-east4", project="batchserve-prod", **changes)
    with pytest.raises(UsageError, match=message):
        render_gcp(profile, tmp_path)
    assert not (tmp_path / "service.yaml").exists()


# ---------------------------------------------------------------- identity, Cloud SQL, models, journal


def env_values(doc: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(doc)["env"]}


def test_packaged_service_requires_a_gpu_and_keeps_its_journal_in_memory(service: dict) -> None:
    env = env_values(service)
    assert env["BATCHSERVE_REQUIRE_GPU"] == "true"
    assert env["BATCHSERVE_JOURNAL_DIR"] == "/var/lib/batchserve/journal"
    assert container(service)["volumeMounts"] == [{"name": "journal", "mountPath": "/var/lib/batchserve/journal"}]
    volume = service["spec"]["template"]["spec"]["volumes"][0]
    assert volume == {"name": "journal", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
    # The writer's caps stay below the volume, so it drops and counts before the volume refuses a write.
    caps = int(env["BATCHSERVE_EVENTS_JOURNAL_MAX_BYTES"]) + int(env["BATCHSERVE_EVENTS_DEAD_LETTER_MAX_BYTES"])
    assert caps < parse_quantity(volume["emptyDir"]["sizeLimit"])


def test_render_names_the_account_the_cloud_sql_socket_and_the_model_bucket(tmp_path: Path) -> None:
    rendered = render_gcp(
        GcpProfile(image="img", region="us-east4", project="batchserve-prod", service_name="classify",
                   database_url_secret="batchserve-db", cloudsql_instance="batchserve-prod:us-east4:events-db",
                   model_repo="gs://batchserve-models/prod"),
        tmp_path,
    )
    doc = rendered.document
    assert check_cloud_run_service(doc) == []
    assert doc["spec"]["template"]["spec"]["serviceAccountName"] == \
        "classify-run@batchserve-prod.iam.gserviceaccount.com"
    assert rendered.service_account == "classify-run@batchserve-prod.iam.gserviceaccount.com"
    assert annotations(doc)["run.googleapis.com/cloudsql-instances"] == "batchserve-prod:us-east4:events-db"
    assert env_values(doc)["BATCHSERVE_MODEL_REPO"] == "gs://batchserve-models/prod"
    assert rendered.notes == ()  # the database is there and in the service's region


def test_render_says_what_the_deployment_will_lack(tmp_path: Path) -> None:
    no_database = render_gcp(GcpProfile(image="img", region="us-east4", project="batchserve-prod",
                                        admin_key_secret="k"), tmp_path)
    assert any("in-memory filesystem" in note and "--database-url-secret" in note for note in no_database.notes)
    far = render_gcp(GcpProfile(image="img", region="us-east4", project="batchserve-prod", database_url_secret="db",
                                cloudsql_instance="batchserve-prod:europe-west4:events-db"), tmp_path)
    assert far.notes == ("the Cloud SQL instance is in europe-west4, the service in us-east4: every event batch "
                         "crosses regions (latency, and traffic billed between regions)",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cloudsql_instance": "batchserve-prod:us-east4:events-db"},
         "--cloudsql-instance needs --database-url-secret"),
        ({"cloudsql_instance": "events-db", "database_url_secret": "db"}, "connection name PROJECT:REGION:INSTANCE"),
        ({"service_account": "123456789012-compute@developer.gserviceaccount.com"}, "Compute Engine default"),
        ({"service_account": "Bad_Name"}, "--service-account takes an account id"),
        ({"project": None}, "pass --project PROJECT"),
        ({"service_name": "a"}, "pass --service-account NAME"),
        ({"model_repo": "s3://bucket/models"}, "--model-repo on Cloud Run takes gs://"),
    ],
)
def test_render_refuses_what_cannot_work(tmp_path: Path, changes: dict, message: str) -> None:
    settings = {"image": "img", "region": "us-east4", "project": "batchserve-prod", "admin_key_secret": "k"} | changes
    with pytest.raises(UsageError, match=re.escape(message)):
        render_gcp(GcpProfile(**settings), tmp_path)
    assert not (tmp_path / "service.yaml").exists()


def test_an_explicit_account_keeps_its_e_mail(tmp_path: Path) -> None:
    rendered = render_gcp(GcpProfile(image="img", region="us-east4", project="batchserve-prod", admin_key_secret="k",
                                     service_account="shared-sa@other-proj.iam.gserviceaccount.com"), tmp_path)
    assert rendered.document["spec"]["template"]["spec"]["serviceAccountName"] == \
        "shared-sa@other-proj.iam.gserviceaccount.com"


def test_runtime_rules_catch_identity_cloud_sql_and_memory_mistakes(service: dict) -> None:
    spec = service["spec"]["template"]["spec"]
    spec["serviceAccountName"] = "123456789012-compute@developer.gserviceaccount.com"
    annotations(service)["run.googleapis.com/cloudsql-instances"] = "events-db"
    spec["volumes"][0]["emptyDir"]["sizeLimit"] = "12Gi"  # of 16 GiB
    found = {f.path: f.message for f in check_runtime_rules(service)}
    assert "Compute Engine default account" in found["$.spec.template.spec.serviceAccountName"]
    assert "'events-db' is not a connection name" in \
        found["$.spec.template.metadata.annotations['run.googleapis.com/cloudsql-instances']"]
    assert "leave too little of the 16 GiB limit" in found["$.spec.template.spec.containers[0].volumeMounts"]

    del spec["serviceAccountName"]
    spec["volumes"][0]["emptyDir"]["sizeLimit"] = "1Gi"  # below the journal's 1.5 GiB cap
    found = {f.path: f.message for f in check_runtime_rules(service)}
    assert "needs a dedicated service account" in found["$.spec.template.spec.serviceAccountName"]
    assert "must stay below the in-memory volume 'journal'" in found["$.spec.template.spec.containers[0].env"]


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_itself_parses_the_rendered_service(tmp_path: Path) -> None:
    """`gcloud run services replace` reads the file into the API's protobuf before it asks for an
    account: with no account, a well-formed file fails on the account, a malformed one on its fields."""
    rendered = render_gcp(GcpProfile(image="us-east4-docker.pkg.dev/p/r/batchserve:1", region="us-east4",
                                     project="batchserve-prod", database_url_secret="db",
                                     cloudsql_instance="batchserve-prod:us-east4:events-db"), tmp_path)
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    result = subprocess.run([*rendered.commands()[0]], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "active account" in result.stderr and "Failed to parse" not in result.stderr, result.stderr
