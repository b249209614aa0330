"""`batchserve deploy k8s` past the dry run: the kubectl commands it runs, and what it does without
kubectl, without KEDA in the cluster, or when kubectl fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from batchserve.deploy.cli import main

IMAGE = "ghcr.io/acme/batchserve:1.4.0"
DIRECT = ["--image", IMAGE, "--admin-key-secret", "batchserve-keys", "--prometheus-url", "http://prom.monitoring:9090"]
RECORDER = """#!/bin/sh
# Stands in for kubectl: records its arguments (one per line, then ---); knows KEDA when KEDA=1.
for arg in "$@"; do printf '%s\\n' "$arg" >> "$KUBECTL_LOG"; done
printf -- '---\\n' >> "$KUBECTL_LOG"
for arg in "$@"; do
  if [ "$arg" = api-resources ]; then
    [ "$KEDA" = 1 ] && printf 'scaledjobs.keda.sh\\nscaledobjects.keda.sh\\ntriggerauthentications.keda.sh\\n'
    exit 0
  fi
done
exit "${KUBECTL_EXIT:-0}"
"""


@pytest.fixture
def kubectl_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubectl on PATH (and only it) that records how it was called; returns the log it writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(RECORDER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("KUBECTL_LOG", str(log))
    monkeypatch.setenv("KEDA", "1")
    return log


def calls(log: Path) -> list[list[str]]:
    result, current = [], []
    for line in log.read_text().splitlines():
        if line == "---":
            result.append(current)
            current = []
        else:
            current.append(line)
    return result


def test_deploy_runs_the_printed_apply(kubectl_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["k8s", *DIRECT, "--out", str(out), "--context", "gpu-cluster"])
    printed = capsys.readouterr().out
    manifest = str((out / "manifests.yaml").resolve())
    assert rc == 0
    assert calls(kubectl_log) == [
        ["--context", "gpu-cluster", "api-resources", "--api-group=keda.sh", "--output=name"],
        ["--context", "gpu-cluster", "apply", "-f", manifest],
    ]
    assert f"  kubectl --context gpu-cluster apply -f {manifest}\n" in printed
    assert f"$ kubectl --context gpu-cluster apply -f {manifest}\n" in printed
    assert "get pods --selector app.kubernetes.io/instance=batchserve --watch" in printed


def test_without_keda_in_the_cluster_nothing_is_applied(
    kubectl_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEDA", "0")
    rc = main(["k8s", *DIRECT, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "the cluster has no KEDA" in err and "--autoscaler hpa" in err
    assert [c[0] for c in calls(kubectl_log)] == ["api-resources"]
    # An autoscaler the cluster has needs no KEDA.
    rc = main(["k8s", "--image", IMAGE, "--admin-key-secret", "k", "--autoscaler", "hpa", "--out", str(tmp_path)])
    assert rc == 0
    assert calls(kubectl_log)[-1][0] == "apply"


def test_a_failing_kubectl_fails_the_deploy(
    kubectl_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECTL_EXIT", "1")
    rc = main(["k8s", *DIRECT, "--out", str(tmp_path)])
    assert rc == 1
    assert "`kubectl apply -f ...` failed with exit status 1 (kubectl's message is above)" in capsys.readouterr().err


def test_without_kubectl_the_files_are_written_and_the_message_says_how_to_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    rc = main(["k8s", *DIRECT, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "manifests.yaml").is_file()
    assert "kubectl was not found on PATH" in err
    assert f"kubectl apply -f {(out / 'manifests.yaml').resolve()}" in err
    # A dry run never needs kubectl.
    assert main(["k8s", *DIRECT, "--out", str(out), "--dry-run"]) == 0


def test_status_and_destroy_find_the_objects_by_their_labels(
    kubectl_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    selector = "app.kubernetes.io/instance=vision,app.kubernetes.io/managed-by=batchserve-deploy"
    kinds = (
        "deployments,services,poddisruptionbudgets,horizontalpodautoscalers,serviceaccounts,"
        "scaledobjects.keda.sh,triggerauthentications.keda.sh"
    )
    assert main(["k8s", "--status", "--name", "vision", "--namespace", "ml"]) == 0
    assert main(["k8s", "--destroy", "--name", "vision", "--namespace", "ml"]) == 0
    assert calls(kubectl_log)[1] == ["get", kinds, "--namespace", "ml", "--selector", selector, "--output", "wide"]
    assert calls(kubectl_log)[3] == ["delete", kinds, "--namespace", "ml", "--selector", selector, "--ignore-not-found"]
    assert "$ kubectl delete" in capsys.readouterr().out


def test_destroy_leaves_keda_kinds_out_where_the_cluster_has_none(
    kubectl_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEDA", "0")
    assert main(["k8s", "--destroy"]) == 0
    assert "keda.sh" not in calls(kubectl_log)[-1][1]
