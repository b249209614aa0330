"""Load-test profiles and their service-level targets, read from a TOML file (loadtest/targets.toml).

A profile names the Locust user class and the default load shape; its `[<profile>.targets]`
table holds absolute limits on what the run measures (the Aggregated row of Locust's stats).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

DEFAULT_TARGETS = Path(__file__).resolve().parent / "targets.toml"
USER_CLASSES = ("RawImageUser", "MultipartUser", "MixedUser")
_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


class TargetsError(ValueError):
    """The targets file is missing, malformed, or has no such profile."""


_Limit = Annotated[float, msgspec.Meta(ge=0)]


class Targets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits a run must meet; None = not checked. A misspelt key is refused rather than left unchecked."""

    min_rps: _Limit | None = None
    max_p50_ms: _Limit | None = None
    max_p95_ms: _Limit | None = None
    max_p99_ms: _Limit | None = None
    max_failure_ratio: _Limit | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    user_class: str
    users: int
    spawn_rate: float
    duration_s: float
    targets: Targets
    model: str | None = None
    description: str = ""


def parse_duration(text: str | int | float) -> float:
    """'30s', '2m', '1h30m', '45' (seconds) -> seconds, as Locust's --run-time reads them."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if not match or not text.strip() or not any(match.groups()):
            raise TargetsError(f"duration must look like 30s, 2m or 1h30m, not {text!r}")
        h, m, s = match.groups()
        seconds = int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)
    if seconds <= 0:
        raise TargetsError(f"duration must be positive, not {text!r}")
    return seconds


class _ProfileTable(msgspec.Struct, frozen=True):
    """One profile's table in the targets file, typed; keys it does not know are left alone."""

    targets: Targets
    user_class: str = "RawImageUser"
    users: Annotated[int, msgspec.Meta(ge=1)] = 8
    spawn_rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """None: all users start in the first second."""
    duration: str | float = "30s"
    model: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.user_class not in USER_CLASSES:
            raise ValueError(f"user_class must be one of {', '.join(USER_CLASSES)}, not {self.user_class!r}")
        parse_duration(self.duration)
        limits = Targets.__struct_fields__
        if all(getattr(self.targets, limit) is None for limit in limits):
            raise ValueError(f"targets sets no target; known: {', '.join(limits)}")


def load_profile(path: Path, name: str) -> Profile:
    """The profile `name` of the targets file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetsError(f"cannot read targets file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetsError(f"targets file {path} is not valid TOML: {exc}") from None
    profiles = sorted(k for k, v in raw.items() if isinstance(v, dict))
    if name not in raw or not isinstance(raw[name], dict):
        raise TargetsError(f"no profile {name!r} in {path}; profiles: {', '.join(profiles) or 'none'}")
    try:
        table = msgspec.convert(raw[name], _ProfileTable)
    except msgspec.ValidationError as exc:  # the message ends with the key, e.g. `$.targets.min_rps`
        raise TargetsError(f"profile {name!r} in {path}: {exc}") from None
    return Profile(
        name=name,
        user_class=table.user_class,
        users=table.users,
        spawn_rate=float(table.users) if table.spawn_rate is None else table.spawn_rate,
        duration_s=parse_duration(table.duration),
        targets=table.targets,
        model=table.model or None,
        description=table.description,
    )
