"""Read Locust's CSV statistics and judge them against a profile's targets."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, fields
from pathlib import Path

from batchserve.loadtest.targets import Relative, Targets


class StatsError(ValueError):
    """Locust's CSV output is missing or has no Aggregated row."""


@dataclass(frozen=True)
class Measured:
    """The Aggregated row of `<prefix>_stats.csv`; latencies in ms (Locust rounds them above 100 ms
    to two significant digits), requests/s over the whole run."""

    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def success_rps(self) -> float:
        """Successful requests/s: fast error answers must not count as throughput."""
        return self.rps * (self.requests - self.failures) / self.requests if self.requests else 0.0

    @classmethod
    def nothing(cls) -> Measured:
        """A phase that did not run."""
        return cls(requests=0, failures=0, rps=0.0, p50_ms=None, p95_ms=None, p99_ms=None, max_ms=None)


MEASURED_FIELDS = tuple(f.name for f in fields(Measured))


@dataclass(frozen=True)
class Check:
    metric: str
    bound: str  # ">=" or "<="
    target: float
    measured: float | None
    unit: str
    detail: str = ""  # what the measured figure was computed from, shown beside it
    skipped: str = ""  # why the target was not checked (it then passes)

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        if self.measured is None:
            return False
        return self.measured >= self.target if self.bound == ">=" else self.measured <= self.target

    def describe_miss(self) -> str:
        got = "nothing measured" if self.measured is None else f"{_fmt(self.measured)}{self.unit}"
        return f"{self.metric}: {got}, target {self.bound} {_fmt(self.target)}{self.unit}"


def _float(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "N/A"):
        return None
    return float(value)


def read_summary(path: Path) -> Measured:
    """`<prefix>_summary.json`, written by the locustfile when Locust exits (complete, unlike the
    CSV, which Locust last rewrote up to a second before it stopped)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Measured(**{f: raw[f] for f in MEASURED_FIELDS})
    except OSError as exc:
        raise StatsError(f"cannot read Locust summary {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise StatsError(f"{path} is not a Locust summary: {exc}") from None


def read_stats(path: Path) -> Measured:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise StatsError(f"cannot read Locust statistics {path}: {exc.strerror or exc}") from None
    row = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if row is None:
        raise StatsError(f"{path} has no Aggregated row")
    return Measured(
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rps=float(row["Requests/s"]),
        p50_ms=_float(row.get("50%")),
        p95_ms=_float(row.get("95%")),
        p99_ms=_float(row.get("99%")),
        max_ms=_float(row.get("Max Response Time")),
    )


def evaluate(targets: Targets, measured: Measured) -> list[Check]:
    """One Check per target the profile sets; a run with no successful request measures no latency."""
    no_requests = measured.requests == 0
    plan = [
        ("requests/s", ">=", targets.min_rps, measured.rps, ""),
        ("p50 latency", "<=", targets.max_p50_ms, measured.p50_ms, " ms"),
        ("p95 latency", "<=", targets.max_p95_ms, measured.p95_ms, " ms"),
        ("p99 latency", "<=", targets.max_p99_ms, measured.p99_ms, " ms"),
        ("failure ratio", "<=", targets.max_failure_ratio, None if no_requests else measured.failure_ratio, ""),
    ]
    return [Check(metric, bound, target, None if no_requests else value, unit)
            for metric, bound, target, value, unit in plan if target is not None]


def evaluate_relative(
    targets: Targets, relative: Relative, capacity_rps: float, offered_rps: float | None, measured: Measured
) -> list[Check]:
    """The throughput ratios of a relative profile. `offered_rps` is None when the constant-rate
    phase did not run (the calibration measured no capacity)."""
    checks: list[Check] = []
    if targets.min_achieved_ratio is not None:
        achieved = measured.success_rps
        ran = offered_rps is not None and offered_rps > 0 and measured.requests > 0
        checks.append(Check(
            "achieved/offered", ">=", targets.min_achieved_ratio,
            achieved / offered_rps if ran and offered_rps else None, "",
            detail=f"{rps(achieved)} of {rps(offered_rps)} requests/s" if ran and offered_rps else "",
        ))
    if targets.min_capacity_ratio is not None:
        reference = relative.reference_rps
        if reference is None:
            checks.append(Check("capacity/reference", ">=", targets.min_capacity_ratio, None, "",
                                skipped="no reference (--reference-rps or reference_rps)"))
        else:
            checks.append(Check("capacity/reference", ">=", targets.min_capacity_ratio, capacity_rps / reference, "",
                                detail=f"{rps(capacity_rps)} of {rps(reference)} requests/s"))
    return checks


def rps(value: float | None) -> str:
    """A rate as printed: one decimal from 10/s up, three significant digits below."""
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def table(checks: list[Check]) -> str:
    lines = [f"{'metric':<18} {'target':>14} {'measured':>12}  result"]
    for c in checks:
        measured = "-" if c.measured is None else _fmt(c.measured) + c.unit
        verdict = "SKIP" if c.skipped else "PASS" if c.passed else "FAIL"
        note = c.skipped or c.detail
        lines.append(f"{c.metric:<18} {c.bound + ' ' + _fmt(c.target) + c.unit:>14} {measured:>12}  "
                     f"{verdict}{'  (' + note + ')' if note else ''}")
    return "\n".join(lines)


def missed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]
