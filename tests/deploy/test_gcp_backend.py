"""`batchserve deploy gcp` as the backend of a split: API keys required, the key from Secret Manager
(a reference Cloud Run resolves, never the value), events optional; and the refusals that keep a GPU
service from being open to everyone or closed to everyone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from batchserve.deploy.cli import main
from batchserve.deploy.errors import UsageError
from batchserve.deploy.render import GcpProfile, render_gcp
from batchserve.deploy.validate import check_cloud_run_service
from batchserve.server.options import OPTIONS as SERVE_OPTIONS

IMAGE = "us-east4-docker.pkg.dev/proj/images/batchserve:1"


def env_of(document: dict) -> list[dict]:
    return list(document["spec"]["template"]["spec"]["containers"][0]["env"])


def by_name(document: dict) -> dict[str, dict]:
    items = env_of(document)
    names = [i["name"] for i in items]
    assert len(names) == len(set(names)), names  # each setting once: a second entry would silently win or lose
    return {i["name"]: i for i in items}


def test_backend_renders_auth_required_the_key_by_reference_and_no_events(tmp_path: Path) -> None:
    rendered = render_gcp(GcpProfile(image=IMAGE, region="us-east4", project="batchserve-prod",
                                     service_name="batchserve-backend",
                                     admin_key_secret="batchserve-backend-key", events=False,
                                     allow_unauthenticated=True), tmp_path)
    on_disk = yaml.safe_load(rendered.path.read_text())
    assert on_disk == rendered.document
    assert check_cloud_run_service(on_disk) == []  # the schema knows valueFrom.secretKeyRef
    env = by_name(on_disk)
    assert env["BATCHSERVE_AUTH"] == {"name": "BATCHSERVE_AUTH", "value": "required"}
    assert env["BATCHSERVE_EVENTS"] == {"name": "BATCHSERVE_EVENTS", "value": "false"}
    assert env["BATCHSERVE_ADMIN_KEY"] == {
        "name": "BATCHSERVE_ADMIN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "batchserve-backend-key", "key": "latest"}},
    }
    assert "BATCHSERVE_DATABASE_URL" not in env
    # Every setting is one `batchserve serve` reads (a misspelt one would be ignored).
    assert set(env) <= {o.env for o in SERVE_OPTIONS}
    # The IAM binding that lets a web tier outside Google reach it; batchserve's key guards it then.
    assert rendered.commands()[1][-2:] == ["--member=allUsers", "--role=roles/run.invoker"]


def test_defaults_keep_events_and_require_keys_from_the_database(tmp_path: Path) -> None:
    rendered = render_gcp(GcpProfile(image=IMAGE, region="us-east4", project="batchserve-prod",
                                     database_url_secret="batchserve-db"), tmp_path)
    env = by_name(rendered.document)
    assert env["BATCHSERVE_AUTH"]["value"] == "required"
    assert "BATCHSERVE_EVENTS" not in env and "BATCHSERVE_ADMIN_KEY" not in env
    assert env["BATCHSERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "batchserve-db", "key": "latest"}


def test_auth_off_behind_cloud_run_iam_needs_no_key(tmp_path: Path) -> None:
    rendered = render_gcp(GcpProfile(image=IMAGE, region="us-east4", project="batchserve-prod", auth="off"), tmp_path)
    assert by_name(rendered.document)["BATCHSERVE_AUTH"]["value"] == "off"
    assert len(rendered.commands()) == 1  # no allUsers binding: callers need an identity token


@pytest.mark.parametrize(("changes", "message"), [
    ({}, "--auth required (the default) needs a key the service can check"),
    ({"auth": "off", "allow_unauthenticated": True}, "would let anyone on the internet use the GPU"),
    ({"auth": "maybe", "admin_key_secret": "k"}, "--auth must be one of required, off"),
    ({"admin_key_secret": "projects/p/secrets/k"}, "--admin-key-secret takes a Secret Manager secret name"),
    ({"database_url_secret": "db url"}, "--database-url-secret takes a Secret Manager secret name"),
])
def test_access_that_would_be_wrong_is_refused_before_writing(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        render_gcp(GcpProfile(image=IMAGE, region="us-east4", project="batchserve-prod", **changes), tmp_path)
    assert not (tmp_path / "service.yaml").exists()


def test_cli_renders_the_backend_of_the_split_and_prints_its_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["gcp", "--image", IMAGE, "--region", "us-east4", "--project", "batchserve-prod",
            "--service-name", "batchserve-backend",
            "--admin-key-secret", "batchserve-backend-key", "--no-events", "--allow-unauthenticated",
            "--dry-run", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validated: Cloud Run v1 schema and GPU rules passed" in out
    assert f"gcloud run services replace {(tmp_path / 'service.yaml').resolve()} --region us-east4" in out
    assert ("add-iam-policy-binding batchserve-backend --region us-east4 --project batchserve-prod "
            "--member=allUsers") in out
    env = by_name(yaml.safe_load((tmp_path / "service.yaml").read_text()))
    assert env["BATCHSERVE_EVENTS"]["value"] == "false" and "valueFrom" in env["BATCHSERVE_ADMIN_KEY"]


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["gcp", "--image", IMAGE, "--region", "us-east4", "--project", "batchserve-prod", "--dry-run", "--out",
              str(tmp_path)]
    assert main(common) == 2
    assert "--admin-key-secret SECRET" in capsys.readouterr().err
    assert main([*common, "--auth", "off", "--allow-unauthenticated"]) == 2
    assert "anyone on the internet" in capsys.readouterr().err
    assert not (tmp_path / "service.yaml").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--auth", "sometimes"])
    assert exit_info.value.code == 2
