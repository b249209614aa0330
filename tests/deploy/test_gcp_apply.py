"""`batchserve deploy gcp`: the gcloud commands it runs (preflight, identity, service), and what
happens without gcloud, an account or a project. gcloud is a recording stand-in (gcloud_fake.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchserve.deploy.cli import main

from .gcloud_fake import FakeGcloud, healthy_project, install, recorded

IMAGE = "us-east4-docker.pkg.dev/batchserve-prod/images/batchserve:1"
PROJECT = ["--project", "batchserve-prod"]
KEY = ["--admin-key-secret", "batchserve-admin-key"]  # the key --auth required (the default) checks
SA = "classify-run@batchserve-prod.iam.gserviceaccount.com"


@pytest.fixture
def gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGcloud:
    return install(tmp_path, monkeypatch)


def deploy_argv(out: Path, *extra: str) -> list[str]:
    return ["gcp", "--image", IMAGE, "--region", "us-east4", "--service-name", "classify", *PROJECT,
            "--min", "1", "--max", "3", *KEY, "--out", str(out), *extra]


def test_deploy_checks_then_creates_the_account_grants_and_applies(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy_project(gcloud)
    gcloud.answer("iam", "service-accounts", "describe", exit=1, stderr="ERROR: NOT_FOUND")  # not there yet
    assert main(deploy_argv(tmp_path / "out", "--allow-unauthenticated")) == 0
    out = capsys.readouterr().out
    service_file = (tmp_path / "out" / "service.yaml").resolve()
    scope = ["--region", "us-east4", "--project", "batchserve-prod"]
    expected = [
        # preflight: asked, output captured
        ["services", "list", "--enabled", "--project", "batchserve-prod", "--format=json"],
        ["beta", "quotas", "info", "describe", "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
         "--service=run.googleapis.com", "--project=batchserve-prod", "--format=json"],
        ["artifacts", "docker", "images", "describe", IMAGE, "--format=json"],
        ["secrets", "describe", "batchserve-admin-key", "--project", "batchserve-prod", "--format=json"],
        # the identity: created because the describe failed, then its one grant
        ["iam", "service-accounts", "describe", SA, "--project", "batchserve-prod", "--format=value(email)"],
        ["iam", "service-accounts", "create", "classify-run", "--project", "batchserve-prod",
         "--display-name=batchserve Cloud Run service classify",
         "--description=Runtime identity of the Cloud Run service; holds only its own grants"],
        ["secrets", "add-iam-policy-binding", "batchserve-admin-key", "--project", "batchserve-prod",
         f"--member=serviceAccount:{SA}", "--role=roles/secretmanager.secretAccessor", "--condition=None"],
        # the service
        ["run", "services", "replace", str(service_file), *scope],
        ["run", "services", "add-iam-policy-binding", "classify", *scope, "--member=allUsers",
         "--role=roles/run.invoker"],
    ]
    assert gcloud.calls() == expected
    for command in expected[5:]:
        assert f"$ gcloud {' '.join(command[:4])}" in out
    assert "ok: image " + IMAGE + " (sha256:6b3d0f6b" in out
    assert "ok: GPU quota NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion in us-east4: 3" in out  # and --max 3
    rendered = yaml.safe_load(service_file.read_text())
    assert rendered["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"] == "3"
    assert rendered["spec"]["template"]["spec"]["serviceAccountName"] == SA


def test_a_second_deploy_finds_the_account_and_skips_creating_it(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy_project(gcloud)
    gcloud.answer("iam", "service-accounts", "describe", stdout=SA + "\n")
    assert main(deploy_argv(tmp_path / "out")) == 0
    commands = [c[:4] for c in gcloud.calls()]
    assert ["iam", "service-accounts", "create", "classify-run"] not in commands
    assert ["run", "services", "replace", str((tmp_path / "out" / "service.yaml").resolve())] in commands
    assert "(skipped: `gcloud iam service-accounts describe ...` found it)" in capsys.readouterr().out


def test_preflight_problems_stop_before_anything_changes(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    services = [s for s in json.loads(recorded("services_enabled.json"))
                if s["config"]["name"] != "secretmanager.googleapis.com"]
    gcloud.answer("services", "list", stdout=json.dumps(services))
    gcloud.answer("beta", "quotas", "info", "describe", stdout=json.dumps(
        {"quotaId": "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
         "dimensionsInfos": [{"dimensions": {}, "details": {"value": "0"}, "applicableLocations": ["us-east4"]}]}))
    gcloud.answer("artifacts", "docker", "images", "describe", exit=1,
                  stderr="ERROR: (gcloud.artifacts.docker.images.describe) NOT_FOUND: "
                         "Requested entity was not found.\n")
    assert main(deploy_argv(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert "preflight found 3 problem(s)" in captured.err and "nothing was applied" in captured.err
    out = captured.out
    assert "error: APIs: not enabled in batchserve-prod: secretmanager.googleapis.com" in out
    assert "fix: gcloud services enable secretmanager.googleapis.com --project batchserve-prod" in out
    assert "is 0: the service needs 1 L4 GPU(s)" in out and "gcloud beta quotas preferences create" in out
    assert f"{IMAGE} is not in Artifact Registry (ERROR: (gcloud.artifacts.docker.images.describe) NOT_FOUND" in out
    assert "--remote-build" in out
    called = [c[:2] for c in gcloud.calls()]
    assert ["secrets", "describe"] not in called  # its API is off: asking would only repeat that
    assert not any(c[0] in ("iam", "run") or c[1] == "add-iam-policy-binding" for c in gcloud.calls())


def test_skip_preflight_applies_without_asking(gcloud: FakeGcloud, tmp_path: Path) -> None:
    gcloud.answer("iam", "service-accounts", "describe", stdout=SA)
    assert main(deploy_argv(tmp_path / "out", "--skip-preflight")) == 0
    assert [c[:2] for c in gcloud.calls()] == [["iam", "service-accounts"], ["secrets", "add-iam-policy-binding"],
                                               ["run", "services"]]


def test_status_and_destroy_describe_and_delete(gcloud: FakeGcloud) -> None:
    assert main(["gcp", "--region", "europe-west1", "--status"]) == 0
    assert main(["gcp", "--region", "europe-west1", "--destroy", "--service-name", "classify"]) == 0
    assert gcloud.calls() == [
        ["run", "services", "describe", "batchserve", "--region", "europe-west1"],
        ["run", "services", "delete", "classify", "--region", "europe-west1", "--quiet"],
    ]


def test_a_failing_gcloud_stops_the_sequence(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy_project(gcloud)
    gcloud.answer("iam", "service-accounts", "describe", stdout=SA)
    gcloud.answer("secrets", "add-iam-policy-binding", exit=3, stderr="PERMISSION_DENIED")
    assert main(deploy_argv(tmp_path / "out", "--allow-unauthenticated")) == 1
    assert not any(c[:2] == ["run", "services"] for c in gcloud.calls())  # nothing after the failed grant
    assert "failed with exit status 3" in capsys.readouterr().err


def test_dry_run_prints_everything_and_runs_nothing(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["gcp", "--image", IMAGE, "--region", "europe-west4", *PROJECT, *KEY, "--dry-run", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validated: Cloud Run v1 schema and GPU rules passed" in out
    assert "runs as batchserve-run@batchserve-prod.iam.gserviceaccount.com: " \
           "roles/secretmanager.secretAccessor on secret batchserve-admin-key" in out
    assert "gcloud services list --enabled --project batchserve-prod --format=json" in out
    assert "gcloud iam service-accounts create batchserve-run --project batchserve-prod" in out
    assert "# unless: gcloud iam service-accounts describe batchserve-run@" in out
    assert f"gcloud run services replace {(tmp_path / 'service.yaml').resolve()} --region europe-west4" in out
    assert "gcloud services enable run.googleapis.com iam.googleapis.com" in out  # setup.sh, printed
    assert (tmp_path / "setup.sh").is_file()
    assert gcloud.calls() == []


def test_remote_build_builds_dockerfile_gpu_with_cloud_build_first(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Path(__file__).resolve().parents[2]  # the checkout, with Dockerfile.gpu
    healthy_project(gcloud)
    gcloud.answer("iam", "service-accounts", "describe", stdout=SA)
    assert main(deploy_argv(tmp_path / "out", "--remote-build", "--source", str(source))) == 0
    calls = gcloud.calls()
    config = (tmp_path / "out" / "cloudbuild.yaml").resolve()
    assert ["builds", "submit", str(source), "--config", str(config), "--project", "batchserve-prod"] in calls
    # The image does not exist before the build: no describe of it; the build comes before the service.
    assert not any(c[:3] == ["artifacts", "docker", "images"] for c in calls)
    order = [c[0] for c in calls if c[0] in ("builds", "run")]
    assert order == ["builds", "run"]
    build = yaml.safe_load(config.read_text())
    assert build["steps"][0]["args"] == ["build", "--file", "Dockerfile.gpu", "--tag", IMAGE, "."]
    assert build["images"] == [IMAGE]


def test_remote_build_needs_the_source_with_its_dockerfile(
    gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy_argv(tmp_path / "out", "--remote-build", "--source", str(tmp_path))) == 2
    assert "Dockerfile.gpu, which is not there" in capsys.readouterr().err
    assert gcloud.calls() == []


def test_project_comes_from_the_flag_the_environment_or_gcloud(
    gcloud: FakeGcloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["gcp", "--image", IMAGE, "--region", "us-east4", *KEY, "--dry-run", "--out", str(tmp_path)]
    assert main(base) == 2  # gcloud has none configured either (it printed nothing)
    assert "no project: pass --project PROJECT" in capsys.readouterr().err
    gcloud.answer("config", "get-value", "project", stdout="from-gcloud-config\n")
    assert main(base) == 0
    assert "batchserve-run@from-gcloud-config.iam.gserviceaccount.com" in capsys.readouterr().out
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "from-environment")
    assert main(base) == 0
    assert "batchserve-run@from-environment.iam" in capsys.readouterr().out
    assert main([*base, "--project", "Not_A_Project"]) == 2
    assert "is not a Google Cloud project id" in capsys.readouterr().err


def test_missing_gcloud_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["gcp", "--image", IMAGE, "--region", "us-east4", *PROJECT, *KEY, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "gcloud was not found on PATH" in err and "install the Google Cloud CLI" in err


def test_region_errors(gcloud: FakeGcloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gcp", "--image", IMAGE, *PROJECT, "--dry-run", "--out", str(tmp_path)]) == 2
    assert "no region" in capsys.readouterr().err
    assert main(["gcp", "--image", IMAGE, "--region", "us-centrall1", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "unknown Google Cloud region 'us-centrall1'" in capsys.readouterr().err
    # A real region without L4 GPUs: warned about, not refused (the list may be behind Google's).
    argv = ["gcp", "--image", IMAGE, "--region", "europe-west2", *PROJECT, *KEY, "--dry-run", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "no L4 GPUs in europe-west2" in capsys.readouterr().err
    assert main(["gcp", "--region", "us-east4", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--image is required" in capsys.readouterr().err


def test_flags_of_the_other_cloud_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["gcp", "--image", IMAGE, "--region", "us-east4", "--instance-type", "g5.xlarge"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["gcp", "--dry-run", "--status"])
    assert exit_info.value.code == 2


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")
def test_real_gcloud_without_an_account_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # A fresh, empty gcloud configuration: no account, so gcloud refuses before any network call.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud-config"))
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "batchserve-test")
    assert main(["gcp", "--image", IMAGE, "--region", "us-east4", *KEY, "--out", str(tmp_path / "out")]) == 1
    captured = capfd.readouterr()
    # The preflight's first question fails; gcloud's own advice reaches the user, nothing is applied.
    assert "`gcloud services list` failed for project batchserve-test" in captured.out
    assert "gcloud auth login" in captured.out
    assert "preflight found 1 problem(s)" in captured.err


def test_batchserve_console_script_wires_the_command(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("batchserve")
    result = subprocess.run(
        [str(script), "deploy", "gcp", "--image", IMAGE, "--region", "us-east4", *PROJECT, *KEY, "--dry-run",
         "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing applied" in result.stdout
