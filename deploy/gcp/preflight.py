"""Checks before `batchserve deploy gcp` applies anything: the APIs it needs are enabled, the
project has Cloud Run L4 GPU quota in the region, the image and the secrets exist.

Every decision is a pure function over what gcloud printed (`--format=json`), so tests feed it
recorded answers; `run_preflight` is the one place that asks gcloud. A problem names the command
or console page that fixes it. A check that cannot run (its API is off, gcloud refused) becomes a
warning when the deploy itself would report the same thing, and an error otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RUN_API = "run.googleapis.com"
IAM_API = "iam.googleapis.com"
ARTIFACT_REGISTRY_API = "artifactregistry.googleapis.com"
SECRET_MANAGER_API = "secretmanager.googleapis.com"
CLOUD_SQL_API = "sqladmin.googleapis.com"
CLOUD_BUILD_API = "cloudbuild.googleapis.com"
QUOTAS_API = "cloudquotas.googleapis.com"
# Cloud Run's L4 quotas (Cloud Quotas ids), per project and region, counted in GPUs.
L4_QUOTA = "NvidiaL4GpuAllocPerProjectRegion"
L4_QUOTA_NO_ZONAL_REDUNDANCY = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str = ""

    def json(self) -> Any:
        return json.loads(self.stdout or "null")

    def reason(self, limit: int = 400) -> str:
        """gcloud's own words (its advice included, e.g. `gcloud auth login`), on one line."""
        text = " ".join(line.strip() for line in self.stderr.splitlines() if line.strip())
        if not text:
            return f"exit status {self.returncode}"
        return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    fix: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.check}: {self.message}\n      fix: {self.fix}"


@dataclass(frozen=True)
class PreflightPlan:
    project: str
    region: str
    image: str
    min_instances: int
    max_instances: int
    zonal_redundancy: bool = False
    secrets: tuple[str, ...] = ()
    cloudsql: bool = False
    remote_build: bool = False

    @property
    def image_in_artifact_registry(self) -> bool:
        return self.image.split("/", 1)[0].endswith("-docker.pkg.dev")

    @property
    def quota_id(self) -> str:
        return L4_QUOTA if self.zonal_redundancy else L4_QUOTA_NO_ZONAL_REDUNDANCY

    def required_apis(self) -> tuple[str, ...]:
        apis = [RUN_API, IAM_API]
        if self.image_in_artifact_registry or self.remote_build:
            apis.append(ARTIFACT_REGISTRY_API)
        if self.remote_build:
            apis.append(CLOUD_BUILD_API)
        if self.secrets:
            apis.append(SECRET_MANAGER_API)
        if self.cloudsql:
            apis.append(CLOUD_SQL_API)
        return tuple(apis)

    # The gcloud calls, in the order run_preflight makes them.
    def services_command(self) -> list[str]:
        return ["gcloud", "services", "list", "--enabled", "--project", self.project, "--format=json"]

    def quota_command(self) -> list[str]:
        # The Cloud Quotas commands are GA only in recent gcloud releases; beta has them since 2024.
        return ["gcloud", "beta", "quotas", "info", "describe", self.quota_id, f"--service={RUN_API}",
                f"--project={self.project}", "--format=json"]

    def image_command(self) -> list[str]:
        return ["gcloud", "artifacts", "docker", "images", "describe", self.image, "--format=json"]

    def secret_command(self, secret: str) -> list[str]:
        return ["gcloud", "secrets", "describe", secret, "--project", self.project, "--format=json"]


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


# ---------------------------------------------------------------- decisions (pure)


def enabled_apis(services: Iterable[Mapping[str, Any]]) -> set[str]:
    """API names from `gcloud services list --enabled --format=json` (config.name, or the last part of name)."""
    found = set()
    for service in services:
        name = (service.get("config") or {}).get("name") or str(service.get("name", "")).rsplit("/", 1)[-1]
        if name and service.get("state", "ENABLED") == "ENABLED":
            found.add(name)
    return found


def check_apis(services: Iterable[Mapping[str, Any]], needed: Sequence[str], project: str) -> list[Problem]:
    missing = [api for api in needed if api not in enabled_apis(services)]
    if not missing:
        return []
    return [Problem(
        "APIs", f"not enabled in {project}: {', '.join(missing)}",
        f"gcloud services enable {' '.join(missing)} --project {project}  (or "
        f"https://console.cloud.google.com/apis/library/{missing[0]}?project={project})",
    )]


def quota_value(quota_info: Mapping[str, Any], region: str) -> int | None:
    """The effective quota in `region` from a Cloud Quotas QuotaInfo: the entry for that region, else
    the entry without a region dimension (the default for every region without an entry of its own)."""
    fallback = None
    for info in quota_info.get("dimensionsInfos") or []:
        dimensions = info.get("dimensions") or {}
        value = (info.get("details") or {}).get("value")
        if value is None:
            continue
        if dimensions.get("region") == region:
            return int(value)
        locations = info.get("applicableLocations") or []
        if "region" not in dimensions and (not locations or region in locations):
            fallback = int(value)
    return fallback


def check_gpu_quota(quota_info: Mapping[str, Any], plan: PreflightPlan) -> tuple[list[Problem], int | None]:
    value = quota_value(quota_info, plan.region)
    page = f"https://console.cloud.google.com/iam-admin/quotas?project={plan.project} (filter: {plan.quota_id})"
    wanted = max(plan.max_instances, 1)
    request = (f"gcloud beta quotas preferences create --service={RUN_API} --quota-id={plan.quota_id} "
               f"--preferred-value={wanted} --dimensions=region={plan.region} --project={plan.project} "
               "--email=YOU@EXAMPLE.COM --justification='batchserve on Cloud Run L4'")
    if value is None:
        unknown = Problem("GPU quota", f"no {plan.quota_id} value for {plan.region} in the answer", page, fatal=False)
        return [unknown], None
    if value < max(plan.min_instances, 1):
        need = max(plan.min_instances, 1)
        return [Problem("GPU quota", f"{plan.quota_id} in {plan.region} is {value}: the service needs {need} L4 "
                        "GPU(s) to start an instance", f"{request}  (or {page})")], value
    if value < plan.max_instances:
        return [Problem("GPU quota", f"{plan.quota_id} in {plan.region} is {value}, below --max {plan.max_instances}: "
                        f"the service stops scaling at {value} instance(s), fewer if other services use L4s there",
                        f"{request}  (or {page})", fatal=False)], value
    return [], value


def check_image(result: CommandResult, image: str, project: str) -> tuple[list[Problem], str | None]:
    """`gcloud artifacts docker images describe IMAGE --format=json`: found (its digest), or not."""
    if result.returncode == 0:
        summary = (result.json() or {}).get("image_summary") or {}
        return [], summary.get("digest")
    host = image.split("/", 1)[0]
    return [Problem(
        "image", f"{image} is not in Artifact Registry ({result.reason()})",
        f"docker build -f Dockerfile.gpu -t {image} . && gcloud auth configure-docker {host} && docker push {image}; "
        f"or deploy with --remote-build (Cloud Build builds and pushes it); "
        f"https://console.cloud.google.com/artifacts?project={project}",
    )], None


def check_secret(result: CommandResult, secret: str, project: str) -> list[Problem]:
    if result.returncode == 0:
        return []
    return [Problem(
        "secret", f"Secret Manager secret {secret} cannot be read in {project} ({result.reason()})",
        f"printf %s VALUE | gcloud secrets create {secret} --project {project} --data-file=-  (setup.sh has the "
        f"line for this deployment; https://console.cloud.google.com/security/secret-manager?project={project})",
    )]


# ---------------------------------------------------------------- the one place that asks gcloud

Runner = Callable[[list[str]], CommandResult]


def run_preflight(plan: PreflightPlan, run: Runner) -> Report:
    report = Report()
    listed = run(plan.services_command())
    if listed.returncode != 0:
        report.problems.append(Problem(
            "APIs", f"`gcloud services list` failed for project {plan.project}: {listed.reason()}",
            "gcloud auth login; check the project id (gcloud projects describe "
            f"{plan.project})"))
        return report  # nothing else can be asked of a project gcloud cannot read
    services = listed.json() or []
    report.problems += check_apis(services, plan.required_apis(), plan.project)
    enabled = enabled_apis(services)
    if not report.problems:
        report.passed.append(f"APIs enabled: {', '.join(plan.required_apis())}")

    if QUOTAS_API in enabled:
        quota = run(plan.quota_command())
        if quota.returncode == 0:
            problems, value = check_gpu_quota(quota.json() or {}, plan)
            report.problems += problems
            if not problems:
                report.passed.append(f"GPU quota {plan.quota_id} in {plan.region}: {value}")
        else:
            report.problems.append(Problem("GPU quota", f"could not read {plan.quota_id}: {quota.reason()}",
                                           f"https://console.cloud.google.com/iam-admin/quotas?project={plan.project}",
                                           fatal=False))
    else:
        report.problems.append(Problem(
            "GPU quota", f"not checked: the Cloud Quotas API ({QUOTAS_API}) is not enabled",
            f"gcloud services enable {QUOTAS_API} --project {plan.project}; or look up {plan.quota_id} on "
            f"https://console.cloud.google.com/iam-admin/quotas?project={plan.project}", fatal=False))

    if plan.image_in_artifact_registry and not plan.remote_build and ARTIFACT_REGISTRY_API in enabled:
        problems, digest = check_image(run(plan.image_command()), plan.image, plan.project)
        report.problems += problems
        if not problems:
            report.passed.append(f"image {plan.image} ({digest or 'digest unknown'})")
    if SECRET_MANAGER_API in enabled:
        for secret in plan.secrets:
            problems = check_secret(run(plan.secret_command(secret)), secret, plan.project)
            report.problems += problems
            if not problems:
                report.passed.append(f"secret {secret}")
    return report
