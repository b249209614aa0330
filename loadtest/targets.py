"""Load-test profiles and their service-level targets, read from a TOML file (loadtest/targets.toml).

A profile is one top-level table: the Locust user class, the load, and `[<profile>.targets]`.
Two forms share the file:

- absolute: `users` run back to back for `duration`; the targets hold absolute limits on the run
  (`min_rps`, latency percentiles, failure ratio).
- relative (the table sets `rate`): `users` first run back to back for `calibrate` to find the
  server's saturated throughput (its capacity); then `rate` x capacity is offered at a constant
  rate for `duration`, and the targets judge that phase. Latency and failure limits stay
  absolute; throughput is judged as ratios (`min_achieved_ratio`: achieved / offered;
  `min_capacity_ratio`: capacity / `reference_rps`, only when a reference is given), so one
  file means the same on any machine.

Every key is known: a misspelt one is refused rather than silently left unchecked.
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
DEFAULT_CALIBRATE_S = 10.0
MAX_RATE = 1.5  # above capacity on purpose (overload), but not so far that the offered rate means nothing
_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


class TargetsError(ValueError):
    """The targets file is missing, malformed, or has no such profile."""


_Limit = Annotated[float, msgspec.Meta(ge=0)]


class Targets(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits a run must meet; None = not checked. A misspelt key is refused rather than left unchecked."""

    min_rps: _Limit | None = None
    """Absolute profiles only: requests/s over the run."""
    max_p50_ms: _Limit | None = None
    max_p95_ms: _Limit | None = None
    max_p99_ms: _Limit | None = None
    max_failure_ratio: _Limit | None = None
    min_achieved_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    """Relative profiles only: successful requests/s at constant rate / the offered rate."""
    min_capacity_ratio: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Relative profiles only: calibrated capacity / the reference; checked only when one is given."""


RELATIVE_TARGETS = ("min_achieved_ratio", "min_capacity_ratio")
ABSOLUTE_TARGETS = ("min_rps",)


@dataclass(frozen=True)
class Relative:
    """What makes a profile relative: the load it offers is a fraction of the capacity it measures."""

    rate: float
    """Fraction of the calibrated capacity offered at constant throughput, in (0, MAX_RATE]."""
    calibrate_s: float = DEFAULT_CALIBRATE_S
    """How long the profile's users run back to back to find the capacity."""
    reference_rps: float | None = None
    """A throughput to hold the capacity against (e.g. the in-process limit `batchserve bench` prints)."""


@dataclass(frozen=True)
class Profile:
    name: str
    user_class: str
    users: int
    """Absolute: the users of the run. Relative: the users of the calibration (its concurrency)."""
    spawn_rate: float
    duration_s: float
    """Absolute: the run time. Relative: the constant-rate phase, after its users have started."""
    targets: Targets
    model: str | None = None
    description: str = ""
    relative: Relative | None = None


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


class _ProfileTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One profile's table in the targets file, typed."""

    targets: Targets
    user_class: str = "RawImageUser"
    users: Annotated[int, msgspec.Meta(ge=1)] = 8
    spawn_rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """None: all users start in the first second."""
    duration: str | float = "30s"
    model: str | None = None
    description: str = ""
    rate: Annotated[float, msgspec.Meta(gt=0, le=MAX_RATE)] | None = None
    calibrate: str | float | None = None
    reference_rps: Annotated[float, msgspec.Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        if self.user_class not in USER_CLASSES:
            raise ValueError(f"user_class must be one of {', '.join(USER_CLASSES)}, not {self.user_class!r}")
        for key in ("duration", "calibrate"):
            value = getattr(self, key)
            if value is not None:
                try:
                    parse_duration(value)
                except TargetsError as exc:
                    raise ValueError(f"`{key}`: {exc}") from None
        limits = Targets.__struct_fields__
        if all(getattr(self.targets, limit) is None for limit in limits):
            raise ValueError(f"targets sets no target; known: {', '.join(limits)}")
        if self.rate is None:
            relative_only = [k for k in ("calibrate", "reference_rps") if getattr(self, k) is not None]
            relative_only += [f"targets.{k}" for k in RELATIVE_TARGETS if getattr(self.targets, k) is not None]
            if relative_only:
                raise ValueError(f"{', '.join(relative_only)} need `rate` (the fraction of the calibrated "
                                 "capacity a relative profile offers)")
        else:
            absolute_only = [f"targets.{k}" for k in ABSOLUTE_TARGETS if getattr(self.targets, k) is not None]
            if absolute_only:
                raise ValueError(f"{', '.join(absolute_only)} is an absolute throughput; a relative profile "
                                 "(one with `rate`) checks targets.min_achieved_ratio and targets.min_capacity_ratio")


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
    relative = None
    if table.rate is not None:
        calibrate_s = DEFAULT_CALIBRATE_S if table.calibrate is None else parse_duration(table.calibrate)
        relative = Relative(rate=table.rate, calibrate_s=calibrate_s, reference_rps=table.reference_rps)
    return Profile(
        name=name,
        user_class=table.user_class,
        users=table.users,
        spawn_rate=float(table.users) if table.spawn_rate is None else table.spawn_rate,
        duration_s=parse_duration(table.duration),
        targets=table.targets,
        model=table.model or None,
        description=table.description,
        relative=relative,
    )
