"""What can go wrong in `batchserve deploy`, each with the exit status it maps to."""

from __future__ import annotations

from collections.abc import Sequence


class DeployError(Exception):
    """A deploy step failed; the message says what and, where it can, what to do about it."""

    exit_code = 1


class UsageError(DeployError):
    """The command line asks for something impossible (bad region, unknown parameter, min > max)."""

    exit_code = 2


class ValidationFailed(DeployError):
    """A rendered profile did not pass its checks (cfn-lint, the Cloud Run schema, the GPU rules)."""

    def __init__(self, what: str, findings: Sequence[object]) -> None:
        self.findings = list(findings)
        lines = "\n".join(f"  - {f}" for f in findings)
        super().__init__(f"{what} failed validation ({len(findings)} problem(s)):\n{lines}")


class MissingTool(DeployError):
    """A program or Python package the step needs is not installed."""


class MissingCredentials(DeployError):
    """The cloud SDK found no usable credentials."""
