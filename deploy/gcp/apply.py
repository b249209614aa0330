"""`batchserve deploy gcp` after rendering: the gcloud commands, run one after the other.

gcloud owns authentication, project selection and progress display, so its output goes straight to
the terminal; a failing command stops the sequence with gcloud's exit status reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TextIO

from batchserve.deploy.errors import DeployError, MissingTool
from batchserve.deploy.render import shell

INSTALL_HELP = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then "
    "`gcloud auth login` and `gcloud config set project PROJECT`"
)


def find_gcloud() -> str:
    path = shutil.which("gcloud")
    if path is None:
        raise MissingTool(f"gcloud was not found on PATH: {INSTALL_HELP}")
    return path


def run_commands(commands: Sequence[Sequence[str]], out: TextIO) -> int:
    """Run each command (its first word, gcloud, resolved on PATH); stop at the first failure."""
    executable = find_gcloud()
    # No prompts: a deploy must not sit waiting for an answer nobody sees.
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    for command in commands:
        print(f"$ {shell(list(command))}", file=out, flush=True)
        try:
            completed = subprocess.run([executable, *command[1:]], env=env, check=False)
        except OSError as exc:
            raise MissingTool(f"could not run gcloud ({exc}): {INSTALL_HELP}") from None
        if completed.returncode != 0:
            raise DeployError(
                f"`{shell(list(command[:4]))} ...` failed with exit status {completed.returncode} "
                "(gcloud's message is above)"
            )
    return 0
