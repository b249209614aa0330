"""`batchserve loadtest`: run Locust headless against one URL, then judge the run against targets.

Locust runs in a child process (it monkey-patches the standard library with gevent at import),
bounded twice: by its own --run-time and by a subprocess timeout a minute past it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from batchserve.loadtest.plot import plot_history
from batchserve.loadtest.report import Check, Measured, StatsError, evaluate, missed, read_stats, read_summary, table
from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.targets import Profile, load_profile

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
START_GRACE_S = 60.0  # Locust's own start-up and shutdown, on top of the run time
LOCUST_API_KEY_ENV = "BATCHSERVE_LOADTEST_API_KEY"  # read by locustfile.py (which imports nothing of batchserve)

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


@dataclass(frozen=True)
class LoadTestResult:
    profile: Profile
    measured: Measured
    checks: list[Check]
    stats_csv: Path
    plot_png: Path

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
    return profile


def locust_command(profile: Profile, url: str, csv_prefix: Path, images: Path) -> list[str]:
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", url,
        "--users", str(profile.users),
        "--spawn-rate", f"{profile.spawn_rate:g}",
        "--run-time", f"{math.ceil(profile.duration_s)}s",
        "--stop-timeout", "5",
        "--csv", str(csv_prefix),
        "--csv-full-history",  # rolling-window percentiles in the history, for the plot
        "--only-summary",
        "--exit-code-on-error", "0",  # failures are judged against the targets, not by Locust
        "--loglevel", "WARNING",
        "--images", str(images),
    ]
    if profile.model:
        command += ["--model", profile.model]
    return [*command, profile.user_class]


def run_locust(profile: Profile, url: str, out: Path, images: Path, api_key: str | None = None) -> Path:
    """Run Locust to completion; returns the stats CSV. The log goes to `out/locust.log`."""
    out = out.resolve()  # Locust runs with the output folder as its working directory
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    command = locust_command(profile, url, prefix, images.resolve())
    ramp_s = profile.users / profile.spawn_rate
    timeout = math.ceil(profile.duration_s) + ramp_s + START_GRACE_S
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


def run_loadtest(options: LoadTestOptions) -> LoadTestResult:
    url = check_url(options.url)
    profile = resolve_profile(options)
    stats_csv = run_locust(profile, url, options.out, options.images, options.api_key)
    summary_json = stats_csv.with_name("locust_summary.json")
    try:
        measured = read_summary(summary_json) if summary_json.exists() else read_stats(stats_csv)
    except StatsError as exc:
        raise LoadTestError(str(exc)) from None
    history = stats_csv.with_name("locust_stats_history.csv")
    title = f"{profile.name}: {profile.user_class}, {profile.users} users against {url}"
    png = plot_history(history, options.out / "locust.png", title)
    return LoadTestResult(profile, measured, evaluate(profile.targets, measured), stats_csv, png)


def summary(result: LoadTestResult, url: str) -> str:
    p, m = result.profile, result.measured
    head = (f"profile {p.name} ({p.user_class}, {p.users} users, {p.duration_s:g} s) against {url}\n"
            f"requests {m.requests}, failures {m.failures}\n")
    lines = [head + table(result.checks)]
    misses = missed(result.checks)
    if misses:
        lines.append("MISSED targets:")
        lines += [f"  - {c.describe_miss()}" for c in misses]
    else:
        lines.append("all targets met")
    lines.append(f"csv: {result.stats_csv.parent}/locust_*.csv  plot: {result.plot_png}")
    return "\n".join(lines)


def default_out(profile: str) -> Path:
    return Path("out") / "loadtest" / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
