"""The service's own account, and exactly the grants the server's code uses on Cloud Run.

What a running `batchserve serve` reaches as its identity, and so what it is granted:

* Secret Manager: the revision names its secrets (`valueFrom.secretKeyRef`); Cloud Run reads them
  as the revision's account when an instance starts. → `roles/secretmanager.secretAccessor` on
  each named secret, not on the project.
* Cloud SQL: the Cloud SQL connection (`run.googleapis.com/cloudsql-instances`) authorises as
  the revision's account. → `roles/cloudsql.client`, with an IAM condition naming the one
  instance (the role cannot be granted on an instance itself).
* Cloud Storage, with `--model-repo gs://BUCKET/...`: the server lists and reads the repository
  with the metadata server's token (model_repo/object_store.py). → `roles/storage.objectViewer`
  on that bucket only.

Not granted, because nothing uses them: logging (the server writes to stdout/stderr, which Cloud
Run itself ships to Cloud Logging), monitoring (metrics are Prometheus text on /metrics, scraped;
nothing is written to Cloud Monitoring), Artifact Registry (the image is pulled by Cloud Run's
service agent, not by the runtime account).
"""

from __future__ import annotations

from dataclasses import dataclass

from batchserve.deploy.gcp import names
from batchserve.deploy.gcp.steps import Step

SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"
CLOUDSQL_CLIENT = "roles/cloudsql.client"
OBJECT_VIEWER = "roles/storage.objectViewer"


@dataclass(frozen=True)
class Identity:
    email: str
    project: str  # where the service runs
    create_in: str | None  # the project to create the account in; None: not ours to create
    secrets: tuple[str, ...] = ()
    cloudsql_instance: str | None = None  # PROJECT:REGION:INSTANCE
    model_bucket: str | None = None  # from --model-repo gs://BUCKET/...
    service_name: str = "batchserve"

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.email}"

    def grants(self) -> list[tuple[str, str]]:
        """(role, on what) pairs, for people to read."""
        granted = [(SECRET_ACCESSOR, f"secret {s}") for s in self.secrets]
        if self.cloudsql_instance:
            granted.append((CLOUDSQL_CLIENT, f"Cloud SQL instance {self.cloudsql_instance}"))
        if self.model_bucket:
            granted.append((OBJECT_VIEWER, f"bucket gs://{self.model_bucket}"))
        return granted

    def steps(self) -> list[Step]:
        found: list[Step] = []
        if self.create_in is not None:
            found.append(Step(
                ("gcloud", "iam", "service-accounts", "create", names.account_id(self.email), "--project",
                 self.create_in, f"--display-name=batchserve Cloud Run service {self.service_name}",
                 "--description=Runtime identity of the Cloud Run service; holds only its own grants"),
                unless=("gcloud", "iam", "service-accounts", "describe", self.email, "--project", self.create_in,
                        "--format=value(email)"),
            ))
        for secret in self.secrets:
            # --condition=None: without prompts, gcloud refuses an unconditional binding on a policy
            # that already holds conditional ones unless told so.
            found.append(Step(("gcloud", "secrets", "add-iam-policy-binding", secret, "--project", self.project,
                               f"--member={self.member}", f"--role={SECRET_ACCESSOR}", "--condition=None")))
        if self.cloudsql_instance:
            sql_project, _, instance = names.cloudsql_connection(self.cloudsql_instance)
            expression = (f"resource.name == 'projects/{sql_project}/instances/{instance}' && "
                          "resource.type == 'sqladmin.googleapis.com/Instance'")
            found.append(Step(("gcloud", "projects", "add-iam-policy-binding", sql_project, f"--member={self.member}",
                               f"--role={CLOUDSQL_CLIENT}",
                               f"--condition=expression={expression},title={self.service_name} to {instance} only")))
        if self.model_bucket:
            found.append(Step(("gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{self.model_bucket}",
                               f"--member={self.member}", f"--role={OBJECT_VIEWER}")))
        return found


def model_bucket(model_repo: str | None) -> str | None:
    """The bucket of a gs:// repository, which the account may read; None for a path in the image."""
    if model_repo is None or not model_repo.startswith("gs://"):
        return None
    return model_repo.removeprefix("gs://").split("/", 1)[0]
