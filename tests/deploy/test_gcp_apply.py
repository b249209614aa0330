"""`batchserve deploy gcp`: the gcloud commands it runs, and what happens without gcloud or an account."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchserve.deploy.cli import main

IMAGE = "us-docker.pkg.dev/proj/images/batchserve:1"
KEY = ["--admin-key-secret", "batchserve-admin-key"]  # the key --auth required (the default) checks
RECORDER = """#!/bin/sh
# Stands in for gcloud: records its arguments (one per line, then ---) and the prompt setting.
for arg in "$@"; do printf '%s\\n' "$arg" >> "$GCLOUD_LOG"; done
printf -- '--- prompts-disabled=%s\\n' "$CLOUDSDK_CORE_DISABLE_PROMPTS" >> "$GCLOUD_LOG"
exit "${GCLOUD_EXIT:-0}"
"""


@pytest.fixture
def recorded_gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A gcloud on PATH that only records how it was called; returns the log it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(RECORDER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "gcloud.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GCLOUD_LOG", str(log))
    monkeypatch.delenv("CLOUDSDK_RUN_REGION", raising=False)
    return log


def calls(log: Path) -> list[list[str]]:
    result, current = [], []
    for line in log.read_text().splitlines():
        if line.startswith("--- prompts-disabled="):
            assert line.endswith("=1")  # never waits on a prompt nobody sees
            result.append(current)
            current = []
        else:
            current.append(line)
    return result


def test_deploy_runs_exactly_the_printed_commands(
    recorded_gcloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "gcp",
        "--image",
        IMAGE,
        "--region",
        "us-east4",
        "--service-name",
        "classify",
        "--project",
        "p-1",
        "--min",
        "1",
        "--max",
        "4",
        "--allow-unauthenticated",
        *KEY,
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    service_file = (tmp_path / "out" / "service.yaml").resolve()
    expected = [
        ["run", "services", "replace", str(service_file), "--region", "us-east4", "--project", "p-1"],
        [
            "run",
            "services",
            "add-iam-policy-binding",
            "classify",
            "--region",
            "us-east4",
            "--project",
            "p-1",
            "--member=allUsers",
            "--role=roles/run.invoker",
        ],
    ]
    assert calls(recorded_gcloud) == expected
    for command in expected:
        assert f"$ gcloud {' '.join(command)}" in out
    rendered = yaml.safe_load(service_file.read_text())
    assert rendered["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"] == "4"


def test_status_and_destroy_describe_and_delete(recorded_gcloud: Path) -> None:
    assert main(["gcp", "--region", "europe-west1", "--status"]) == 0
    assert main(["gcp", "--region", "europe-west1", "--destroy", "--service-name", "classify"]) == 0
    assert calls(recorded_gcloud) == [
        ["run", "services", "describe", "batchserve", "--region", "europe-west1"],
        ["run", "services", "delete", "classify", "--region", "europe-west1", "--quiet"],
    ]


def test_a_failing_gcloud_stops_the_sequence(
    recorded_gcloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GCLOUD_EXIT", "3")
    argv = ["gcp", "--image", IMAGE, "--region", "us-east4", "--allow-unauthenticated", *KEY, "--out", str(tmp_path)]
    assert main(argv) == 1
    assert len(calls(recorded_gcloud)) == 1  # the IAM binding never ran
    assert "failed with exit status 3" in capsys.readouterr().err


def test_dry_run_prints_commands_and_runs_nothing(
    recorded_gcloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gcp", "--image", IMAGE, "--region", "europe-west4", *KEY, "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "validated: Cloud Run v1 schema and GPU rules passed" in out
    assert f"gcloud run services replace {(tmp_path / 'service.yaml').resolve()} --region europe-west4" in out
    assert not recorded_gcloud.exists()


def test_missing_gcloud_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["gcp", "--image", IMAGE, "--region", "us-east4", *KEY, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "gcloud was not found on PATH" in err and "install the Google Cloud CLI" in err


def test_region_errors(recorded_gcloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gcp", "--image", IMAGE, "--dry-run", "--out", str(tmp_path)]) == 2
    assert "no region" in capsys.readouterr().err
    assert main(["gcp", "--image", IMAGE, "--region", "us-centrall1", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "unknown Google Cloud region 'us-centrall1'" in capsys.readouterr().err
    # A real region without L4 GPUs: warned about, not refused (the list may be behind Google's).
    assert main(["gcp", "--image", IMAGE, "--region", "europe-west2", *KEY, "--dry-run", "--out", str(tmp_path)]) == 0
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
    err = capfd.readouterr().err
    assert "gcloud auth login" in err  # gcloud's own advice reaches the user
    assert "failed with exit status 1" in err


def test_batchserve_console_script_wires_the_command(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("batchserve")
    result = subprocess.run(
        [str(script), "deploy", "gcp", "--image", IMAGE, "--region", "us-east4", *KEY, "--dry-run", "--out",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing applied" in result.stdout
