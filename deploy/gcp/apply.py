"""`batchserve deploy gcp` after rendering: the gcloud commands, run one after the other.

gcloud owns authentication, project selection and progress display, so the output of the
commands that change things goes straight to the terminal; a failing command stops the sequence
with gcloud's exit status reported. The preflight's questions are asked with their output
captured (JSON for the checks in preflight.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TextIO

from batchserve.deploy.errors import DeployError, MissingTool
from batchserve.deploy.gcp.preflight import CommandResult
from batchserve.deploy.gcp.steps import Step
from batchserve.deploy.render import shell

INSTALL_HELP = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then "
    "`gcloud auth login` and `gcloud config set project PROJECT`"
)
# Bounds one captured question (a list or a describe), not the changes, which gcloud follows itself.
CAPTURE_TIMEOUT_S = 120


def find_gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise MissingTool(f"gcloud was not found on PATH: {INSTALL_HELP}")
    return path


def _env() -> dict[str, str]:
    # No prompts: a deploy must not sit waiting for an answer nobody sees.
    return {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}


def _run(command: Sequence[str], *, capture: bool = False,
         timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([find_gcloud(), *command[1:]], env=_env(), check=False, text=True,
                              capture_output=capture, timeout=timeout)
    except OSError as exc:
        raise MissingTool(f"could not run gcloud ({exc}): {INSTALL_HELP}") from None


def capture(command: Sequence[str]) -> CommandResult:
    """Run a gcloud question; its output comes back instead of reaching the terminal."""
    try:
        completed = _run(command, capture=True, timeout=CAPTURE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"no answer within {CAPTURE_TIMEOUT_S} s")
    return CommandResult(completed.returncode, completed.stdout or "", completed.stderr or "")


def configured_project() -> str | None:
    """gcloud's configured project (`gcloud config get-value project`, read locally), if any."""
    if shutil.which("gcloud") is None:
        return None
    answer = capture(["gcloud", "config", "get-value", "project"])
    value = answer.stdout.strip()
    return value if answer.returncode == 0 and value and value != "(unset)" else None


def run_steps(steps: Sequence[Step], out: TextIO) -> int:
    """Run each step in order (a step whose `unless` check succeeds is skipped); stop at the first failure."""
    for step in steps:
        if step.unless is not None and capture(step.unless).returncode == 0:
            print(f"= {shell(list(step.command))}  (skipped: `{shell(list(step.unless[:4]))} ...` found it)",
                  file=out, flush=True)
            continue
        print(f"$ {shell(list(step.command))}", file=out, flush=True)
        completed = _run(step.command)
        if completed.returncode != 0:
            raise DeployError(
                f"`{shell(list(step.command[:4]))} ...` failed with exit status {completed.returncode} "
                "(gcloud's message is above)"
            )
    return 0


def run_commands(commands: Sequence[Sequence[str]], out: TextIO) -> int:
    """Run each command (its first word, gcloud, resolved on PATH); stop at the first failure."""
    return run_steps([Step(tuple(c)) for c in commands], out)
