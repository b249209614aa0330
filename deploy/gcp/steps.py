"""One gcloud call of a deployment, with the check that makes it safe to run again."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    command: tuple[str, ...]
    # When given and it succeeds, `command` is skipped: for calls that fail on a second run
    # ("create" of something that exists), so a deploy can be repeated as it is.
    unless: tuple[str, ...] | None = None

    def describe(self) -> str:
        text = shlex.join(self.command)
        return text if self.unless is None else f"{text}    # unless: {shlex.join(self.unless)}"


def steps(*commands: list[str] | tuple[str, ...]) -> list[Step]:
    return [Step(tuple(c)) for c in commands]
