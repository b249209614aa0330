"""The one-time setup a Cloud Run deployment needs and `batchserve deploy gcp` does not do itself,
written out as a commented shell script (`setup.sh` beside `service.yaml`).

Why not run it: creating a database instance takes minutes and bills from then on, its tier and
availability are the owner's call, and a database password or the first API key must reach the
person running it, not a deploy log. Each part is printed once, with the values of this
deployment, to be read, adjusted and run.

The database is Cloud SQL for PostgreSQL reached through Cloud Run's Cloud SQL connection: the
service account's `roles/cloudsql.client` authorises it and Cloud Run mounts a unix socket at
/cloudsql/PROJECT:REGION:INSTANCE, so no VPC, no authorised network and no password travel over
a network (docs/deploy-gcp.md compares it with a private IP through Direct VPC egress).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from batchserve.deploy.gcp import names

DATABASE = "batchserve"
DATABASE_USER = "batchserve"
FIRST_KEY_NAME = "admin"
FIRST_KEY_SCOPES = "classify,stats,admin"
# PostgreSQL sessions one server instance may hold: the event writer's pool (4), the statistics
# pool (stats_max_connections, 2) and the key directory's connection (1).
CONNECTIONS_PER_INSTANCE = 7
# Room beyond the instances' own for the key job, the Auth Proxy and administrators.
SPARE_CONNECTIONS = 25


@dataclass(frozen=True)
class SetupPlan:
    project: str
    region: str
    service_name: str
    image: str
    service_account: str
    apis: tuple[str, ...]
    database_url_secret: str | None = None
    cloudsql_instance: str | None = None
    admin_key_secret: str | None = None
    max_instances: int = 20

    @property
    def max_connections(self) -> int:
        """Every instance at its pools' full size, with room to spare; never below PostgreSQL's 100."""
        return max(100, CONNECTIONS_PER_INSTANCE * self.max_instances + SPARE_CONNECTIONS)

    @property
    def keys_job(self) -> str:
        return f"{self.service_name}-keys"


def _line(*words: str) -> str:
    return shlex.join(words)


def socket_url(connection: str, password: str = "PASSWORD") -> str:
    """The database URL for Cloud Run's Cloud SQL socket; asyncpg reads `host` as the socket's folder."""
    return f"postgresql://{DATABASE_USER}:{password}@/{DATABASE}?host=/cloudsql/{connection}"


def setup_script(plan: SetupPlan) -> str:
    lines = [
        "#!/bin/sh",
        f"# One-time setup of the Cloud Run service {plan.service_name} in project {plan.project}, written by",
        "# `batchserve deploy gcp`. The deploy does not run it: read it, adjust it, run what you still need.",
        "set -eu",
        "",
        "# 1. The APIs the deployment uses (the deploy's preflight checks them).",
        _line("gcloud", "services", "enable", *plan.apis, "--project", plan.project),
    ]
    step = 2
    if plan.cloudsql_instance:
        sql_project, sql_region, instance = names.cloudsql_connection(plan.cloudsql_instance)
        lines += [
            "",
            f"# {step}. Cloud SQL for PostgreSQL 16: daily backups kept 7 days, point-in-time recovery over 7 days of",
            "#    write-ahead log, connections only through Cloud SQL connectors (Cloud Run's Cloud SQL connection,",
            "#    the Auth Proxy) and so no authorised network. 1 vCPU / 3.75 GB is plenty for the event writer;",
            f"#    max_connections {plan.max_connections}: {CONNECTIONS_PER_INSTANCE} sessions per server instance at "
            f"--max {plan.max_instances}, plus {SPARE_CONNECTIONS}.",
            "#    Add --availability-type regional for a standby in a second zone (twice the price).",
            _line("gcloud", "sql", "instances", "create", instance, "--project", sql_project, "--region", sql_region,
                  "--database-version", "POSTGRES_16", "--edition", "enterprise", "--tier", "db-custom-1-3840",
                  "--storage-auto-increase", "--backup-start-time", "03:00", "--retained-backups-count", "7",
                  "--enable-point-in-time-recovery", "--retained-transaction-log-days", "7",
                  "--connector-enforcement", "REQUIRED", "--deletion-protection",
                  "--database-flags", f"max_connections={plan.max_connections}"),
            _line("gcloud", "sql", "databases", "create", DATABASE, "--instance", instance, "--project", sql_project),
            "# Hex: nothing in the password needs escaping in the URL below.",
            'DB_PASSWORD="$(openssl rand -hex 24)"',
            _line("gcloud", "sql", "users", "create", DATABASE_USER, "--instance", instance, "--project",
                  sql_project) + ' --password "$DB_PASSWORD"',
        ]
        step += 1
    if plan.database_url_secret:
        if plan.cloudsql_instance:
            url = socket_url(plan.cloudsql_instance, "${DB_PASSWORD}")
            source = f'printf %s "{url}"'
            comment = "it names the socket Cloud Run mounts for the Cloud SQL connection"
        else:
            source = "printf %s 'postgresql://USER:PASSWORD@HOST:5432/DATABASE?sslmode=require'"
            comment = "your PostgreSQL server, which Cloud Run must reach"
        lines += [
            "",
            f"# {step}. The database URL in Secret Manager; {comment}.",
            "#    The service reads it as BATCHSERVE_DATABASE_URL; its configuration never holds it.",
            f"{source} | " + _line("gcloud", "secrets", "create", plan.database_url_secret, "--project", plan.project,
                                   "--replication-policy", "automatic", "--data-file=-"),
        ]
        step += 1
    if plan.admin_key_secret:
        lines += [
            "",
            f"# {step}. The bootstrap admin key (every scope), kept in Secret Manager only; read it back with",
            f"#    gcloud secrets versions access latest --secret {plan.admin_key_secret} --project {plan.project}",
            "openssl rand -hex 32 | tr -d '\\n' | " + _line(
                "gcloud", "secrets", "create", plan.admin_key_secret, "--project", plan.project,
                "--replication-policy", "automatic", "--data-file=-"),
        ]
        step += 1
    if plan.database_url_secret:
        lines += _keys_job(plan, step)
    return "\n".join(lines) + "\n"


def _keys_job(plan: SetupPlan, step: int) -> list[str]:
    """The first API key in the service's database, made by the service's own image and identity."""
    job = [
        "gcloud", "run", "jobs", "deploy", plan.keys_job, "--project", plan.project, "--region", plan.region,
        "--image", plan.image, "--service-account", plan.service_account,
        "--set-secrets", f"BATCHSERVE_DATABASE_URL={plan.database_url_secret}:latest",
    ]
    if plan.cloudsql_instance:
        job += ["--set-cloudsql-instances", plan.cloudsql_instance]
    # `^|^` makes | the list separator (gcloud topic escaping): the scopes hold commas.
    job += ["--command", "batchserve",
            "--args", f"^|^keys|create|{FIRST_KEY_NAME}|--scopes|{FIRST_KEY_SCOPES}",
            "--max-retries", "0", "--task-timeout", "300s", "--cpu", "1", "--memory", "2Gi"]
    log_filter = (f'resource.type="cloud_run_job" AND resource.labels.job_name="{plan.keys_job}" '
                  'AND textPayload:"bsk_"')
    return [
        "",
        f"# {step}. The first API key ({FIRST_KEY_SCOPES}) in the service's database, after the first",
        "#    `batchserve deploy gcp` (it creates the service account): a Cloud Run job runs",
        f"#    `batchserve keys create {FIRST_KEY_NAME}` with the service's image, account and Cloud SQL connection.",
        "#    The job prints the key once, so it lands in the job's log in Cloud Logging: read it there, and",
        "#    prefer the Cloud SQL Auth Proxy from your own machine (docs/deploy-gcp.md) where nobody else",
        "#    may read the project's logs.",
        _line(*job),
        _line("gcloud", "run", "jobs", "execute", plan.keys_job, "--project", plan.project, "--region", plan.region,
              "--wait"),
        _line("gcloud", "logging", "read", log_filter, "--project", plan.project, "--freshness", "1h", "--limit", "1",
              "--format", "value(textPayload)"),
    ]
