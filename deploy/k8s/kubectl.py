"""`batchserve deploy k8s` after rendering: kubectl, run with the user's own configuration.

kubectl owns authentication, the current context and its output, which goes straight to the
terminal; a failing command stops with kubectl's exit status reported.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import TextIO

from batchserve.deploy.errors import DeployError, MissingTool
from batchserve.deploy.render import shell

INSTALL_HELP = "install kubectl (https://kubernetes.io/docs/tasks/tools/) and point it at the cluster"


def find_kubectl(then: str) -> str:
    """kubectl's path; `then` says what to do without it (the rendered file is already there)."""
    path = shutil.which("kubectl")
    if path is None:
        raise MissingTool(f"kubectl was not found on PATH: {INSTALL_HELP}, or {then}")
    return path


def run(command: Sequence[str], out: TextIO, executable: str) -> None:
    print(f"$ {shell(list(command))}", file=out, flush=True)
    try:
        completed = subprocess.run([executable, *command[1:]], check=False)
    except OSError as exc:
        raise MissingTool(f"could not run kubectl ({exc}): {INSTALL_HELP}") from None
    if completed.returncode != 0:
        raise DeployError(
            f"`{shell(list(command[:3]))} ...` failed with exit status {completed.returncode} "
            "(kubectl's message is above)"
        )


def serves_keda(executable: str, context: str | None) -> bool:
    """Whether the cluster knows KEDA's kinds (its CRDs are installed)."""
    command = [
        executable,
        *(["--context", context] if context else []),
        "api-resources",
        "--api-group=keda.sh",
        "--output=name",
    ]
    try:
        completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployError(f"could not ask the cluster for its API resources: {exc}") from None
    if completed.returncode != 0:
        raise DeployError(
            f"kubectl could not reach the cluster (exit status {completed.returncode}): "
            f"{completed.stderr.strip() or completed.stdout.strip()}"
        )
    return "scaledobjects.keda.sh" in completed.stdout.split()
