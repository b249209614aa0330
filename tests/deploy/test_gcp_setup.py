"""The service account and its grants, and the one-time setup script (Cloud SQL, secrets, the
first API key): what they hold, that the shell can parse the script and that the key job's
command line is one `batchserve` accepts."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from batchserve.cli import build_parser
from batchserve.deploy.gcp.identity import CLOUDSQL_CLIENT, OBJECT_VIEWER, SECRET_ACCESSOR, Identity, model_bucket
from batchserve.deploy.gcp.plan import plan_deployment
from batchserve.deploy.gcp.setup import SetupPlan, setup_script, socket_url
from batchserve.deploy.render import GcpProfile, render_gcp

SA = "classify-run@batchserve-prod.iam.gserviceaccount.com"
CONNECTION = "batchserve-prod:us-east4:events-db"
IMAGE = "us-east4-docker.pkg.dev/batchserve-prod/images/batchserve:1"


def roles(identity: Identity) -> list[str]:
    return [arg.removeprefix("--role=") for step in identity.steps() for arg in step.command
            if arg.startswith("--role=")]


def test_only_what_the_server_uses_is_granted() -> None:
    full = Identity(SA, "batchserve-prod", "batchserve-prod", ("batchserve-db", "batchserve-admin-key"), CONNECTION,
                    "batchserve-models", "classify")
    assert roles(full) == [SECRET_ACCESSOR, SECRET_ACCESSOR, CLOUDSQL_CLIENT, OBJECT_VIEWER]
    assert not any("logging" in r or "monitoring" in r or "editor" in r for r in roles(full))
    steps = full.steps()
    create = steps[0]
    assert create.command[:5] == ("gcloud", "iam", "service-accounts", "create", "classify-run")
    assert create.unless == ("gcloud", "iam", "service-accounts", "describe", SA, "--project", "batchserve-prod",
                             "--format=value(email)")
    # Each secret by name, not the project's Secret Manager as a whole.
    assert [s.command[3] for s in steps if s.command[1] == "secrets"] == ["batchserve-db", "batchserve-admin-key"]
    # Cloud SQL: the role only exists at project level; the condition narrows it to the one instance.
    sql = next(s for s in steps if "--role=roles/cloudsql.client" in s.command)
    assert sql.command[3] == "batchserve-prod"
    assert ("--condition=expression=resource.name == 'projects/batchserve-prod/instances/events-db' && "
            "resource.type == 'sqladmin.googleapis.com/Instance',title=classify to events-db only") in sql.command
    bucket = next(s for s in steps if s.command[1] == "storage")
    assert bucket.command[4] == "gs://batchserve-models"

    bare = Identity(SA, "batchserve-prod", "batchserve-prod")
    assert roles(bare) == [] and len(bare.steps()) == 1  # an account with no role at all
    foreign = Identity("ci@other.example.com", "batchserve-prod", None, ("k",))
    assert [s.command[1] for s in foreign.steps()] == ["secrets"]  # not ours to create


def test_model_bucket() -> None:
    assert model_bucket("gs://batchserve-models/prod/v2") == "batchserve-models"
    assert model_bucket("gs://bucket") == "bucket"
    assert model_bucket("/opt/models") is None and model_bucket(None) is None


def script(**changes: object) -> str:
    plan = SetupPlan(project="batchserve-prod", region="us-east4", service_name="classify", image=IMAGE,
                     service_account=SA, apis=("run.googleapis.com", "sqladmin.googleapis.com"),
                     database_url_secret="batchserve-db", cloudsql_instance=CONNECTION,
                     admin_key_secret="batchserve-admin-key")
    return setup_script(SetupPlan(**{**plan.__dict__, **changes}))


def commands(text: str) -> list[list[str]]:
    """The script's gcloud calls as argv lists (pipelines: the part after the last |)."""
    found = []
    for line in text.splitlines():
        if "gcloud " in line and not line.lstrip().startswith("#"):
            found.append(shlex.split(line.rsplit("| ", 1)[-1]))
    return found


def test_cloud_sql_instance_with_backups_point_in_time_recovery_and_connectors_only() -> None:
    calls = commands(script())
    create = next(c for c in calls if c[:4] == ["gcloud", "sql", "instances", "create"])
    assert create[4] == "events-db"
    flags = dict(zip(create[5::2], create[6::2], strict=False))
    assert flags["--project"] == "batchserve-prod" and flags["--region"] == "us-east4"
    assert flags["--database-version"] == "POSTGRES_16"
    assert "--enable-point-in-time-recovery" in create and "--backup-start-time" in create
    assert create[create.index("--retained-transaction-log-days") + 1] == "7"
    assert create[create.index("--connector-enforcement") + 1] == "REQUIRED"
    assert "--deletion-protection" in create
    # Every server instance's pools at --max 20 (7 each), and room to spare.
    assert create[create.index("--database-flags") + 1] == "max_connections=165"
    assert "max_connections=100" in " ".join(commands(script(max_instances=3))[1])
    assert ["gcloud", "sql", "databases", "create", "batchserve", "--instance", "events-db", "--project",
            "batchserve-prod"] in calls


def test_the_database_url_secret_names_the_cloud_sql_socket() -> None:
    text = script()
    assert 'printf %s "postgresql://batchserve:${DB_PASSWORD}@/batchserve?host=/cloudsql/' \
           'batchserve-prod:us-east4:events-db" | gcloud secrets create batchserve-db' in text
    assert socket_url(CONNECTION, "pw") == "postgresql://batchserve:pw@/batchserve?host=/cloudsql/" + CONNECTION
    elsewhere = script(cloudsql_instance=None)
    assert "gcloud sql" not in elsewhere and "postgresql://USER:PASSWORD@HOST:5432/DATABASE" in elsewhere


def test_the_first_key_job_runs_the_same_image_identity_and_connection() -> None:
    calls = commands(script())
    job = next(c for c in calls if c[:4] == ["gcloud", "run", "jobs", "deploy"])
    flag = {name: job[job.index(name) + 1] for name in ("--image", "--service-account", "--set-cloudsql-instances",
                                                        "--set-secrets", "--command", "--args", "--region")}
    assert flag["--image"] == IMAGE and flag["--service-account"] == SA and flag["--region"] == "us-east4"
    assert flag["--set-cloudsql-instances"] == CONNECTION
    assert flag["--set-secrets"] == "BATCHSERVE_DATABASE_URL=batchserve-db:latest"
    # gcloud's ^|^ prefix makes | the list separator (the scopes hold commas): split as gcloud will.
    raw = flag["--args"]
    assert raw.startswith("^|^")
    argv = [flag["--command"], *raw[3:].split("|")]
    assert argv == ["batchserve", "keys", "create", "admin", "--scopes", "classify,stats,admin"]
    parsed = build_parser().parse_args(argv[1:])  # the image's own command line takes it
    assert parsed.name == "admin" and parsed.scopes == ("classify", "stats", "admin")
    assert ["gcloud", "run", "jobs", "execute", "classify-keys", "--project", "batchserve-prod", "--region",
            "us-east4", "--wait"] in calls


def test_without_a_database_there_is_no_key_job() -> None:
    text = script(database_url_secret=None, cloudsql_instance=None)
    assert "gcloud run jobs" not in text and "gcloud secrets create batchserve-admin-key" in text


def test_the_shell_parses_the_script(tmp_path: Path) -> None:
    path = tmp_path / "setup.sh"
    path.write_text(script())
    result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_plan_orders_identity_before_the_service_and_writes_the_setup(tmp_path: Path) -> None:
    profile = GcpProfile(image=IMAGE, region="us-east4", project="batchserve-prod", service_name="classify",
                         database_url_secret="batchserve-db", cloudsql_instance=CONNECTION,
                         allow_unauthenticated=True)
    rendered = render_gcp(profile, tmp_path)
    deployment = plan_deployment(profile, rendered, tmp_path)
    order = [" ".join(s.command[1:4]) for s in deployment.steps]
    assert order == ["iam service-accounts create", "secrets add-iam-policy-binding batchserve-db",
                     "projects add-iam-policy-binding batchserve-prod", "run services replace",
                     "run services add-iam-policy-binding"]
    assert deployment.preflight.cloudsql and deployment.preflight.secrets == ("batchserve-db",)
    assert not deployment.preflight.zonal_redundancy  # the profile turns it off: the cheaper quota
    assert deployment.setup_path.read_text().startswith("#!/bin/sh")
    assert "cloudquotas.googleapis.com" in deployment.setup_path.read_text()


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_gcloud_accepts_the_setup_commands_arguments(tmp_path: Path) -> None:
    """Without an account gcloud still parses a command's arguments first: a flag it does not know
    fails as 'unrecognized arguments', a well-formed call on the missing account. Two calls: the
    ones with the most flags."""
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    calls = commands(script())
    chosen = [c for c in calls if c[:4] in (["gcloud", "sql", "instances", "create"],
                                            ["gcloud", "run", "jobs", "deploy"])]
    assert len(chosen) == 2
    for argv in chosen:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert "active account" in result.stderr, (argv, result.stderr)
