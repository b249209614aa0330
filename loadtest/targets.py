"""Load-test profiles and their service-level targets, read from a TOML file (loadtest/targets.toml).

A profile names the Locust user class and the default load shape; its `[<profile>.targets]`
table holds absolute limits on what the run measures (the Aggregated row of Locust's stats).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = Path(__file__).resolve().parent / "targets.toml"
USER_CLASSES = ("RawImageUser", "MultipartUser", "MixedUser")
_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


class TargetsError(ValueError):
    """The targets file is missing, malformed, or has no such profile."""


@dataclass(frozen=True)
class Targets:
    """Limits a run must meet; None = not checked."""

    min_rps: float | None = None
    max_p50_ms: float | None = None
    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_failure_ratio: float | None = None


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


def _number(table: dict[str, Any], key: str, where: str) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TargetsError(f"{where}.{key} must be a non-negative number, not {value!r}")
    return float(value)


def _targets(table: Any, where: str) -> Targets:
    if not isinstance(table, dict):
        raise TargetsError(f"{where} must be a table")
    known = {f.name for f in fields(Targets)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise TargetsError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    targets = Targets(**{k: _number(table, k, where) for k in known})
    if all(getattr(targets, k) is None for k in known):
        raise TargetsError(f"{where} sets no target")
    return targets


def load_profile(path: Path, name: str) -> Profile:
    """The profile `name` of the targets file at `path`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TargetsError(f"cannot read targets file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetsError(f"targets file {path} is not valid TOML: {exc}") from None
    profiles = sorted(k for k, v in raw.items() if isinstance(v, dict))
    if name not in raw or not isinstance(raw[name], dict):
        raise TargetsError(f"no profile {name!r} in {path}; profiles: {', '.join(profiles) or 'none'}")
    table = raw[name]
    user_class = table.get("user_class", "RawImageUser")
    if user_class not in USER_CLASSES:
        raise TargetsError(f"{name}.user_class must be one of {', '.join(USER_CLASSES)}, not {user_class!r}")
    users = table.get("users", 8)
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise TargetsError(f"{name}.users must be a positive integer, not {users!r}")
    spawn_rate = _number(table, "spawn_rate", name) or float(users)
    model = table.get("model")
    if model is not None and not isinstance(model, str):
        raise TargetsError(f"{name}.model must be a string")
    return Profile(
        name=name,
        user_class=user_class,
        users=users,
        spawn_rate=spawn_rate,
        duration_s=parse_duration(table.get("duration", "30s")),
        targets=_targets(table.get("targets"), f"{name}.targets"),
        model=model or None,
        description=str(table.get("description", "")),
    )
