"""Google Cloud names the Cloud Run profile takes, checked before anything is rendered: a typo
should fail in a second with the rule it broke, not minutes later in a cloud API."""

from __future__ import annotations

import re

from batchserve.deploy.errors import UsageError

# Project ids: 6-30 lower-case letters, digits and hyphens, starting with a letter; older
# domain-scoped projects carry a "domain.com:" prefix.
_PROJECT = r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
PROJECT = re.compile(rf"^{_PROJECT}$")
# A Cloud SQL instance's connection name, PROJECT:REGION:INSTANCE (instance ids: lower-case
# letters, digits and hyphens, starting with a letter, at most 98 characters).
CLOUDSQL_CONNECTION = re.compile(rf"^(?P<project>{_PROJECT}):(?P<region>[a-z]+-[a-z]+[0-9]+):"
                                 r"(?P<instance>[a-z][a-z0-9-]{0,96}[a-z0-9])$")
ACCOUNT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")  # a service account's id, the part before '@'
_MANAGED_EMAIL = re.compile(
    rf"^(?P<id>[a-z][a-z0-9-]{{4,28}}[a-z0-9])@(?P<project>{_PROJECT})\.iam\.gserviceaccount\.com$")
# The Compute Engine default service account: Editor on the whole project unless an organisation
# policy says otherwise, which is everything a classifier does not need.
_DEFAULT_COMPUTE = re.compile(r"^[0-9]+-compute@developer\.gserviceaccount\.com$")
ACCOUNT_SUFFIX = "-run"


def check_project(project: str) -> str:
    if not PROJECT.match(project):
        raise UsageError(f"{project!r} is not a Google Cloud project id (6-30 lower-case letters, digits and "
                         "hyphens, starting with a letter)")
    return project


def cloudsql_connection(text: str) -> tuple[str, str, str]:
    """PROJECT:REGION:INSTANCE → its three parts."""
    match = CLOUDSQL_CONNECTION.match(text)
    if not match:
        raise UsageError(f"--cloudsql-instance takes the instance's connection name PROJECT:REGION:INSTANCE (as "
                         f"`gcloud sql instances describe INSTANCE --format 'value(connectionName)'` prints it), "
                         f"got {text!r}")
    return match["project"], match["region"], match["instance"]


def default_account_id(service_name: str) -> str:
    """The runtime account a service gets unless told otherwise: its name plus "-run"."""
    account = service_name + ACCOUNT_SUFFIX
    if not ACCOUNT_ID.match(account):
        raise UsageError(f"the service name {service_name!r} makes no valid service account id ({account!r} must "
                         "be 6-30 characters): pass --service-account NAME")
    return account


def service_account(given: str | None, service_name: str, project: str | None) -> tuple[str, str | None]:
    """The runtime identity's e-mail, and the project to create it in (None: an account this
    command does not manage, e.g. one of another kind, which must exist already)."""
    if given is not None and _DEFAULT_COMPUTE.match(given):
        raise UsageError(f"{given} is the Compute Engine default service account, which holds Editor on the "
                         "project: give the service a dedicated account (leave out --service-account for one "
                         "named after the service)")
    if given is not None and "@" in given:
        managed = _MANAGED_EMAIL.match(given)
        return given, managed["project"] if managed else None
    account = given if given is not None else default_account_id(service_name)
    if not ACCOUNT_ID.match(account):
        raise UsageError(f"--service-account takes an account id (6-30 lower-case letters, digits and hyphens, "
                         f"starting with a letter) or an e-mail, got {account!r}")
    if project is None:
        raise UsageError("the service's own service account is named in its project: pass --project PROJECT "
                         "(or --service-account EMAIL)")
    return f"{account}@{project}.iam.gserviceaccount.com", project


def account_id(email: str) -> str:
    return email.split("@", 1)[0]
