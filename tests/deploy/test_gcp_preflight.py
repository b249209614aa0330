"""The preflight's decisions over gcloud's JSON (recorded answers in gcp_recorded/), and the order
in which run_preflight asks, with a runner that answers from a table instead of gcloud."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from batchserve.deploy.gcp.preflight import (
    L4_QUOTA,
    L4_QUOTA_NO_ZONAL_REDUNDANCY,
    CommandResult,
    PreflightPlan,
    check_apis,
    check_gpu_quota,
    check_image,
    check_secret,
    enabled_apis,
    quota_value,
    run_preflight,
)

from .gcloud_fake import recorded

SERVICES = json.loads(recorded("services_enabled.json"))
QUOTA = json.loads(recorded("quota_l4_no_zonal_redundancy.json"))
IMAGE = "us-east4-docker.pkg.dev/batchserve-prod/images/batchserve:1"
PLAN = PreflightPlan(project="batchserve-prod", region="us-east4", image=IMAGE, min_instances=0, max_instances=3,
                     secrets=("batchserve-db", "batchserve-admin-key"), cloudsql=True)


def test_enabled_apis_reads_gclouds_listing() -> None:
    apis = enabled_apis(SERVICES)
    assert {"run.googleapis.com", "sqladmin.googleapis.com", "cloudquotas.googleapis.com"} <= apis
    # Entries without a config block are named by the last part of their resource name.
    assert enabled_apis([{"name": "projects/1/services/iam.googleapis.com", "state": "ENABLED"},
                         {"name": "projects/1/services/run.googleapis.com", "state": "DISABLED"}]) == {
        "iam.googleapis.com"}


def test_required_apis_follow_what_the_deployment_uses() -> None:
    assert PLAN.required_apis() == ("run.googleapis.com", "iam.googleapis.com", "artifactregistry.googleapis.com",
                                    "secretmanager.googleapis.com", "sqladmin.googleapis.com")
    bare = PreflightPlan(project="p-123456", region="us-east4", image="docker.io/me/batchserve:1",
                         min_instances=0, max_instances=1)
    assert bare.required_apis() == ("run.googleapis.com", "iam.googleapis.com")
    built = replace(bare, remote_build=True)
    assert "cloudbuild.googleapis.com" in built.required_apis()
    assert "artifactregistry.googleapis.com" in built.required_apis()


def test_missing_apis_name_the_command_that_enables_them() -> None:
    assert check_apis(SERVICES, PLAN.required_apis(), "batchserve-prod") == []
    without_sql = [s for s in SERVICES if s["config"]["name"] != "sqladmin.googleapis.com"]
    [problem] = check_apis(without_sql, PLAN.required_apis(), "batchserve-prod")
    assert problem.fatal and problem.message == "not enabled in batchserve-prod: sqladmin.googleapis.com"
    assert problem.fix.startswith("gcloud services enable sqladmin.googleapis.com --project batchserve-prod")
    assert "console.cloud.google.com/apis/library/sqladmin.googleapis.com?project=batchserve-prod" in problem.fix


@pytest.mark.parametrize(("region", "value"), [
    ("us-east4", 3), ("europe-west4", 25),
    ("europe-west1", 0),  # no entry of its own: the default entry that lists it
    ("asia-south1", None),  # neither
])
def test_quota_value_per_region(region: str, value: int | None) -> None:
    assert quota_value(QUOTA, region) == value


def test_quota_decisions() -> None:
    assert check_gpu_quota(QUOTA, PLAN) == ([], 3)  # 3 GPUs, --max 3
    [short], value = check_gpu_quota(QUOTA, replace(PLAN, max_instances=20))
    assert value == 3 and not short.fatal  # it deploys; it stops scaling at 3
    assert "below --max 20" in short.message and "stops scaling at 3" in short.message
    assert "gcloud beta quotas preferences create --service=run.googleapis.com" in short.fix
    assert f"--quota-id={L4_QUOTA_NO_ZONAL_REDUNDANCY} --preferred-value=20 --dimensions=region=us-east4" in short.fix
    [none], _ = check_gpu_quota(QUOTA, replace(PLAN, region="europe-west1"))
    assert none.fatal and "is 0: the service needs 1 L4 GPU(s)" in none.message
    [too_few], _ = check_gpu_quota(QUOTA, replace(PLAN, min_instances=5, max_instances=5))
    assert too_few.fatal and "needs 5 L4 GPU(s)" in too_few.message
    [unknown], _ = check_gpu_quota(QUOTA, replace(PLAN, region="asia-south1"))
    assert not unknown.fatal and "iam-admin/quotas?project=batchserve-prod" in unknown.fix


def test_zonal_redundancy_draws_on_the_other_quota() -> None:
    assert PLAN.quota_id == L4_QUOTA_NO_ZONAL_REDUNDANCY
    assert replace(PLAN, zonal_redundancy=True).quota_id == L4_QUOTA


def test_image_and_secret_checks() -> None:
    found = CommandResult(0, recorded("image_describe.json"))
    digest = "sha256:6b3d0f6b8e7c1d5f4a2b9c8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a"
    assert check_image(found, IMAGE, "batchserve-prod") == ([], digest)
    missing = CommandResult(1, "", "ERROR: (gcloud.artifacts.docker.images.describe) NOT_FOUND: Requested entity "
                                   "was not found.\n")
    [problem], digest = check_image(missing, IMAGE, "batchserve-prod")
    assert digest is None and "NOT_FOUND" in problem.message
    assert f"docker push {IMAGE}" in problem.fix and "--remote-build" in problem.fix
    assert check_secret(CommandResult(0, recorded("secret_describe.json")), "batchserve-db", "batchserve-prod") == []
    [gone] = check_secret(CommandResult(1, "", "ERROR: NOT_FOUND: Secret [batchserve-db] not found\n"),
                          "batchserve-db", "batchserve-prod")
    assert "gcloud secrets create batchserve-db --project batchserve-prod --data-file=-" in gone.fix


class Table:
    """Answers gcloud questions by their first words; records what was asked."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    def __call__(self, command: list[str]) -> CommandResult:
        self.asked.append(command)
        for prefix, result in self.answers.items():
            if tuple(command[1:1 + len(prefix)]) == prefix:
                return result
        raise AssertionError(f"unexpected question {command}")


HEALTHY = {
    ("services", "list"): CommandResult(0, recorded("services_enabled.json")),
    ("beta", "quotas", "info", "describe"): CommandResult(0, recorded("quota_l4_no_zonal_redundancy.json")),
    ("artifacts", "docker", "images", "describe"): CommandResult(0, recorded("image_describe.json")),
    ("secrets", "describe"): CommandResult(0, recorded("secret_describe.json")),
}


def test_a_healthy_project_passes_every_check() -> None:
    table = Table(HEALTHY)
    report = run_preflight(PLAN, table)
    assert report.problems == []
    assert len(report.passed) == 5  # APIs, quota, image, two secrets
    assert [c[1] for c in table.asked] == ["services", "beta", "artifacts", "secrets", "secrets"]


def test_checks_whose_api_is_off_are_not_asked() -> None:
    services = [s for s in SERVICES if s["config"]["name"] not in ("cloudquotas.googleapis.com",
                                                                    "secretmanager.googleapis.com")]
    table = Table({**HEALTHY, ("services", "list"): CommandResult(0, json.dumps(services))})
    report = run_preflight(PLAN, table)
    assert [c[1] for c in table.asked] == ["services", "artifacts"]
    assert [(p.check, p.fatal) for p in report.problems] == [("APIs", True), ("GPU quota", False)]
    assert "gcloud services enable cloudquotas.googleapis.com" in report.problems[1].fix


def test_a_project_gcloud_cannot_read_stops_the_preflight_at_once() -> None:
    table = Table({("services", "list"): CommandResult(
        1, "", "ERROR: (gcloud.services.list) You do not currently have an active account selected.\nPlease run:\n\n"
               "  $ gcloud auth login\n")})
    report = run_preflight(PLAN, table)
    assert len(table.asked) == 1
    [problem] = report.errors
    assert "You do not currently have an active account selected. Please run: $ gcloud auth login" in problem.message


def test_an_unreadable_quota_is_a_warning_not_a_refusal() -> None:
    table = Table({**HEALTHY, ("beta", "quotas", "info", "describe"): CommandResult(
        1, "", "ERROR: (gcloud.beta.quotas.info.describe) PERMISSION_DENIED: cloudquotas.quotas.get\n")})
    report = run_preflight(PLAN, table)
    [problem] = report.problems
    assert not problem.fatal and "PERMISSION_DENIED" in problem.message and report.errors == []
