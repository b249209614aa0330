"""`batchserve loadtest`: run Locust headless against one URL, then judge the run against targets.

Locust runs in a child process (it monkey-patches the standard library with gevent at import),
bounded twice: by its own --run-time and by a subprocess timeout a minute past it. An absolute
profile is one Locust run; a relative one is two (calibration.py): a closed-loop calibration,
then a constant-throughput phase at a fraction of the capacity it found.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchserve.loadtest.calibration import Calibration, Pacing, plan_pacing
from batchserve.loadtest.plot import plot_history
from batchserve.loadtest.report import (
    Check,
    Measured,
    StatsError,
    evaluate,
    evaluate_relative,
    missed,
    read_stats,
    read_summary,
    rps,
    table,
)
from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.targets import MAX_RATE, Profile, Relative, load_profile

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
START_GRACE_S = 60.0  # Locust's own start-up and shutdown, on top of the run time
LOCUST_API_KEY_ENV = "BATCHSERVE_LOADTEST_API_KEY"  # read by locustfile.py (which imports nothing of batchserve)
CALIBRATION_DIR = "calibration"  # under --out: the calibration's own Locust files
RESULT_JSON = "loadtest.json"  # under --out: the verdict, for scripts

EXIT_PASS, EXIT_MISSED, EXIT_USAGE, EXIT_LOCUST = 0, 1, 2, 3


class LoadTestError(RuntimeError):
    """Locust could not run, or ran without producing statistics."""


@dataclass(frozen=True)
class LoadTestOptions:
    url: str
    profile: str
    targets: Path
    out: Path
    users: int | None = None
    spawn_rate: float | None = None
    duration_s: float | None = None
    model: str | None = None
    images: Path = SAMPLE_IMAGES
    api_key: str | None = None
    rate: float | None = None
    calibrate_s: float | None = None
    reference_rps: float | None = None


@dataclass(frozen=True)
class Phase:
    """One Locust run. `measure_s` is measured after every user has started when
    `measure_after_ramp` (Locust's --reset-stats), else it is the whole run, start-up included."""

    users: int
    spawn_rate: float
    measure_s: float
    user_rps: float | None = None  # None: back to back
    measure_after_ramp: bool = False

    @property
    def run_s(self) -> int:
        """Locust's --run-time, which counts from the start, the ramp included."""
        ramp = self.users / self.spawn_rate if self.measure_after_ramp else 0.0
        return math.ceil(ramp + self.measure_s)


@dataclass(frozen=True)
class LoadTestResult:
    profile: Profile
    measured: Measured
    """The judged phase: the whole run (absolute) or the constant-throughput phase (relative)."""
    checks: list[Check]
    stats_csv: Path
    plot_png: Path | None
    calibration: Calibration | None = None
    pacing: Pacing | None = None
    """None for an absolute profile, or when the calibration measured no capacity."""

    @property
    def passed(self) -> bool:
        return not missed(self.checks)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http(s) URL such as http://127.0.0.1:8000, not {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"--url is the server's base URL (no path or query), not {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def resolve_profile(options: LoadTestOptions) -> Profile:
    profile = load_profile(options.targets, options.profile)
    overrides: dict[str, Any] = {
        "users": options.users,
        "spawn_rate": options.spawn_rate,
        "duration_s": options.duration_s,
        "model": options.model,
    }
    profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    if profile.users < 1 or profile.spawn_rate <= 0 or profile.duration_s <= 0:
        raise ValueError("users, spawn rate and duration must be positive")
    relative_overrides = {"rate": options.rate, "calibrate_s": options.calibrate_s,
                          "reference_rps": options.reference_rps}
    given = {k: v for k, v in relative_overrides.items() if v is not None}
    if given and profile.relative is None:
        flags = ", ".join("--" + k.removesuffix("_s").replace("_", "-") for k in given)
        raise ValueError(f"{flags}: profile {profile.name!r} is absolute (it sets no `rate`); "
                         "these apply to relative profiles only")
    if profile.relative is not None:
        relative = replace(profile.relative, **given)
        if not 0 < relative.rate <= MAX_RATE or relative.calibrate_s <= 0:
            raise ValueError(f"--rate must be in (0, {MAX_RATE:g}] and --calibrate positive")
        if relative.reference_rps is not None and relative.reference_rps <= 0:
            raise ValueError("--reference-rps must be positive")
        profile = replace(profile, relative=relative)
    return profile


def locust_command(phase: Phase, profile: Profile, url: str, csv_prefix: Path, images: Path) -> list[str]:
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", url,
        "--users", str(phase.users),
        "--spawn-rate", f"{phase.spawn_rate:g}",
        "--run-time", f"{phase.run_s}s",
        "--stop-timeout", "5",
        "--csv", str(csv_prefix),
        "--csv-full-history",  # rolling-window percentiles in the history, for the plot
        "--only-summary",
        "--exit-code-on-error", "0",  # failures are judged against the targets, not by Locust
        "--loglevel", "WARNING",
        "--images", str(images),
    ]
    if phase.measure_after_ramp:
        command.append("--reset-stats")
    if phase.user_rps is not None:
        command += ["--user-rps", f"{phase.user_rps:.6g}"]
    if profile.model:
        command += ["--model", profile.model]
    return [*command, profile.user_class]


def run_locust(phase: Phase, profile: Profile, url: str, out: Path, images: Path, api_key: str | None = None) -> Path:
    """Run Locust to completion; returns the stats CSV. The log goes to `out/locust.log`."""
    out = out.resolve()  # Locust runs with the output folder as its working directory
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    command = locust_command(phase, profile, url, prefix, images.resolve())
    timeout = phase.run_s + phase.users / phase.spawn_rate + START_GRACE_S
    log_path = out / "locust.log"
    # Locust reads a locust.conf or pyproject [tool.locust] in its working directory: run it in
    # the output folder so nothing but these flags configures the run.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if api_key:
        env[LOCUST_API_KEY_ENV] = api_key  # the environment, not argv: a key on a command line shows in `ps`
    with log_path.open("wb") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=out, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"Locust did not finish within {timeout:.0f} s; see {log_path}") from None
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if proc.returncode != 0 or not stats.exists():
        raise LoadTestError(f"Locust exited with status {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
    return stats


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _measured(stats_csv: Path) -> Measured:
    summary_json = stats_csv.with_name("locust_summary.json")
    try:
        return read_summary(summary_json) if summary_json.exists() else read_stats(stats_csv)
    except StatsError as exc:
        raise LoadTestError(str(exc)) from None


def run_loadtest(options: LoadTestOptions) -> LoadTestResult:
    url = check_url(options.url)
    profile = resolve_profile(options)
    if profile.relative is None:
        result = _run_absolute(profile, url, options)
    else:
        result = _run_relative(profile, profile.relative, url, options)
    write_result(result, options.out / RESULT_JSON)
    return result


def _run_absolute(profile: Profile, url: str, options: LoadTestOptions) -> LoadTestResult:
    phase = Phase(profile.users, profile.spawn_rate, profile.duration_s)
    stats_csv = run_locust(phase, profile, url, options.out, options.images, options.api_key)
    measured = _measured(stats_csv)
    title = f"{profile.name}: {profile.user_class}, {profile.users} users against {url}"
    png = plot_history(stats_csv.with_name("locust_stats_history.csv"), options.out / "locust.png", title)
    return LoadTestResult(profile, measured, evaluate(profile.targets, measured), stats_csv, png)


def _run_relative(profile: Profile, relative: Relative, url: str, options: LoadTestOptions) -> LoadTestResult:
    closed = Phase(profile.users, profile.spawn_rate, relative.calibrate_s, measure_after_ramp=True)
    calibration_csv = run_locust(closed, profile, url, options.out / CALIBRATION_DIR, options.images, options.api_key)
    calibration = Calibration(profile.users, relative.calibrate_s, _measured(calibration_csv))
    if calibration.capacity_rps <= 0:
        # Nothing succeeded: there is no rate to offer a fraction of, and every target is missed.
        measured = Measured.nothing()
        checks = evaluate(profile.targets, measured)
        checks += evaluate_relative(profile.targets, relative, 0.0, None, measured)
        return LoadTestResult(profile, measured, checks, calibration_csv, None, calibration, None)
    pacing = plan_pacing(calibration, relative.rate)
    # Every user starts at once; each then waits a random phase before its first request (locustfile.py).
    paced = Phase(pacing.users, float(pacing.users), profile.duration_s, user_rps=pacing.user_rps,
                  measure_after_ramp=True)
    stats_csv = run_locust(paced, profile, url, options.out, options.images, options.api_key)
    measured = _measured(stats_csv)
    checks = evaluate(profile.targets, measured)
    checks += evaluate_relative(profile.targets, relative, calibration.capacity_rps, pacing.offered_rps, measured)
    title = (f"{profile.name}: {profile.user_class}, {rps(pacing.offered_rps)} requests/s "
             f"({relative.rate:g} of capacity) against {url}")
    png = plot_history(stats_csv.with_name("locust_stats_history.csv"), options.out / "locust.png", title)
    return LoadTestResult(profile, measured, checks, stats_csv, png, calibration, pacing)


def write_result(result: LoadTestResult, path: Path) -> None:
    """The verdict as JSON: what the summary prints, unrounded."""
    p = result.profile

    def figures(m: Measured) -> dict[str, Any]:
        return {**asdict(m), "success_rps": m.success_rps, "failure_ratio": m.failure_ratio if m.requests else None}

    doc: dict[str, Any] = {
        "profile": p.name,
        "user_class": p.user_class,
        "mode": "absolute" if p.relative is None else "relative",
        "passed": result.passed,
        "measured": figures(result.measured),
        "checks": [{**asdict(c), "passed": c.passed} for c in result.checks],
    }
    if p.relative is not None and result.calibration is not None:
        c = result.calibration
        doc["calibration"] = {"users": c.users, "duration_s": c.duration_s, "capacity_rps": c.capacity_rps,
                              **figures(c.measured)}
        doc["rate"] = p.relative.rate
        doc["reference_rps"] = p.relative.reference_rps
        doc["offered"] = None if result.pacing is None else asdict(result.pacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def summary(result: LoadTestResult, url: str) -> str:
    p, m = result.profile, result.measured
    if p.relative is None:
        head = (f"profile {p.name} ({p.user_class}, {p.users} users, {p.duration_s:g} s) against {url}\n"
                f"requests {m.requests}, failures {m.failures}\n")
    else:
        head = _relative_head(result, url)
    lines = [head + table(result.checks)]
    misses = missed(result.checks)
    if misses:
        lines.append("MISSED targets:")
        lines += [f"  - {c.describe_miss()}" for c in misses]
    else:
        lines.append("all targets met")
    files = f"csv: {result.stats_csv.parent}/locust_*.csv"
    lines.append(files + (f"  plot: {result.plot_png}" if result.plot_png else ""))
    return "\n".join(lines)


def _relative_head(result: LoadTestResult, url: str) -> str:
    p, m, c, pacing = result.profile, result.measured, result.calibration, result.pacing
    assert p.relative is not None and c is not None
    cm = c.measured
    lines = [
        f"profile {p.name} ({p.user_class}, relative: {p.relative.rate:g} of capacity) against {url}",
        f"calibration: {c.users} users back to back for {c.duration_s:g} s: requests {cm.requests}, "
        f"failures {cm.failures}, p99 {_ms(cm.p99_ms)}; capacity {rps(c.capacity_rps)} requests/s",
    ]
    if p.relative.reference_rps is not None:
        lines.append(f"reference: {rps(p.relative.reference_rps)} requests/s; capacity/reference "
                     f"{c.capacity_rps / p.relative.reference_rps:.2f}")
    if pacing is None:
        lines.append("offered: nothing (the calibration had no successful request); constant-rate phase not run")
    else:
        lines += [
            f"offered: {rps(pacing.offered_rps)} requests/s = {pacing.rate:g} x {rps(c.capacity_rps)}, "
            f"{pacing.users} users x {pacing.user_rps:.3g}/s for {p.duration_s:g} s",
            f"achieved: {rps(m.success_rps)} requests/s ({m.success_rps / pacing.offered_rps:.2f} of offered); "
            f"requests {m.requests}, failures {m.failures}",
        ]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def default_out(profile: str) -> Path:
    return Path("out") / "loadtest" / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
