"""`batchserve loadtest`: targets files, Locust's CSV, the verdict and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.locust_run import (
    EXIT_MISSED,
    EXIT_PASS,
    EXIT_USAGE,
    LoadTestOptions,
    Phase,
    check_url,
    locust_command,
    resolve_profile,
)
from batchserve.loadtest.report import Measured, StatsError, evaluate, missed, read_stats, read_summary, table
from batchserve.loadtest.server_process import ServerProcess, free_port
from batchserve.loadtest.targets import DEFAULT_TARGETS, Relative, Targets, load_profile

EASY = """
[easy]
user_class = "{user_class}"
users = 3
spawn_rate = 3
duration = "4s"
[easy.targets]
min_rps = 1
max_p50_ms = 20000
max_p95_ms = 20000
max_p99_ms = 20000
max_failure_ratio = 0.0
"""

IMPOSSIBLE = """
[impossible]
users = 2
duration = "3s"
[impossible.targets]
min_rps = 1e9
max_p99_ms = 60000
"""


def _loadtest(url: str, targets: Path, profile: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchserve", "loadtest", "--url", url, "--profile", profile,
               "--targets", str(targets), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


# ---- against a running server ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("user_class", ["RawImageUser", "MultipartUser"])
def test_easy_targets_pass_and_leave_csv_and_plot(
    simulated_server: ServerProcess, tmp_path: Path, user_class: str
) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(EASY.format(user_class=user_class))
    out = tmp_path / "out"
    proc = _loadtest(simulated_server.url, targets, "easy", out)
    assert proc.returncode == EXIT_PASS, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.split()[:1] in (["requests/s"], ["p99"], ["failure"])]
    assert len(rows) == 3 and all(line.rstrip().endswith("PASS") for line in rows), proc.stdout
    assert "FAIL" not in proc.stdout
    assert "all targets met" in proc.stdout
    final = read_summary(out / "locust_summary.json")
    assert final.requests > 0 and final.failures == 0 and final.p50_ms is not None
    assert f"requests {final.requests}, failures 0" in proc.stdout  # the verdict is on the complete figures
    assert read_stats(out / "locust_stats.csv").requests <= final.requests  # the CSV is a periodic snapshot
    assert (out / "locust_stats_history.csv").stat().st_size > 0
    assert (out / "locust.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdict = json.loads((out / "loadtest.json").read_text())
    assert (verdict["mode"], verdict["passed"], verdict["measured"]["requests"]) == ("absolute", True, final.requests)


@pytest.mark.slow
def test_missed_target_fails_and_is_named(simulated_server: ServerProcess, tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(IMPOSSIBLE)
    proc = _loadtest(simulated_server.url, targets, "impossible", tmp_path / "out")
    assert proc.returncode == EXIT_MISSED, proc.stdout + proc.stderr
    missed_section = proc.stdout.split("MISSED targets:")[1]
    assert "requests/s" in missed_section and "target >= 1000000000" in missed_section
    assert "p99 latency" not in missed_section  # met, so not named
    assert (tmp_path / "out" / "locust_stats.csv").exists()


@pytest.mark.slow
def test_unreachable_server_counts_as_failures(tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(EASY.format(user_class="RawImageUser").replace('"4s"', '"2s"'))
    proc = _loadtest(f"http://127.0.0.1:{free_port()}", targets, "easy", tmp_path / "out")
    assert proc.returncode == EXIT_MISSED, proc.stdout + proc.stderr
    assert "failure ratio" in proc.stdout.split("MISSED targets:")[1]


# ---- arguments and files, no Locust run ----------------------------------------------------------

def test_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    proc = _loadtest("http://127.0.0.1:9", DEFAULT_TARGETS, "nope", tmp_path / "out")
    assert proc.returncode == EXIT_USAGE
    assert "no profile 'nope'" in proc.stderr and "smoke" in proc.stderr


def test_url_with_a_path_is_a_usage_error(tmp_path: Path) -> None:
    proc = _loadtest("http://127.0.0.1:9/v1/classify", DEFAULT_TARGETS, "smoke", tmp_path / "out")
    assert proc.returncode == EXIT_USAGE
    assert "base URL" in proc.stderr


def test_evaluate_names_every_miss() -> None:
    targets = Targets(min_rps=10, max_p50_ms=100, max_p99_ms=500, max_failure_ratio=0.01)
    measured = Measured(requests=200, failures=4, rps=12.5, p50_ms=90, p95_ms=300, p99_ms=700, max_ms=900)
    checks = evaluate(targets, measured)
    assert [c.metric for c in checks] == ["requests/s", "p50 latency", "p99 latency", "failure ratio"]
    assert [c.metric for c in missed(checks)] == ["p99 latency", "failure ratio"]
    assert "p99 latency: 700 ms, target <= 500 ms" in [c.describe_miss() for c in missed(checks)]
    assert table(checks).count("FAIL") == 2


def test_a_run_without_requests_misses_every_target() -> None:
    checks = evaluate(Targets(max_p50_ms=100, max_failure_ratio=0.5),
                      Measured(requests=0, failures=0, rps=0.0, p50_ms=None, p95_ms=None, p99_ms=None, max_ms=None))
    assert all(not c.passed for c in checks)
    assert "nothing measured" in checks[0].describe_miss()


def test_summary_must_hold_every_figure(tmp_path: Path) -> None:
    path = tmp_path / "locust_summary.json"
    path.write_text('{"requests": 3, "failures": 0}')
    with pytest.raises(StatsError, match="not a Locust summary"):
        read_summary(path)


def test_stats_csv_without_aggregated_row(tmp_path: Path) -> None:
    path = tmp_path / "x_stats.csv"
    path.write_text("Type,Name,Request Count\nPOST,/v1/classify,3\n")
    with pytest.raises(StatsError, match="no Aggregated row"):
        read_stats(path)


def test_the_locustfile_defaults_to_the_sample_photos() -> None:
    # Imported in a child: Locust patches the standard library with gevent when it is imported.
    probe = ("from batchserve.loadtest import locustfile as f, samples; "
             "print(f.DEFAULT_IMAGES == samples.SAMPLE_IMAGES, len(f.load_images(f.DEFAULT_IMAGES)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "3"]


def test_locust_command_is_bounded_and_names_the_user_class(tmp_path: Path) -> None:
    profile = load_profile(DEFAULT_TARGETS, "multipart")
    phase = Phase(profile.users, profile.spawn_rate, profile.duration_s)
    command = locust_command(phase, profile, check_url("http://127.0.0.1:8000/"), tmp_path / "locust", tmp_path)
    assert command[-1] == "MultipartUser"
    assert command[command.index("--run-time") + 1] == "30s"
    assert "--headless" in command and command[command.index("--host") + 1] == "http://127.0.0.1:8000"
    assert command[command.index("--model") + 1] == "efficientnet_lite0"
    assert "--user-rps" not in command and "--reset-stats" not in command  # back to back, whole run measured


def test_a_paced_phase_is_measured_after_its_ramp(tmp_path: Path) -> None:
    profile = load_profile(DEFAULT_TARGETS, "raw")
    phase = Phase(users=40, spawn_rate=16, measure_s=30, user_rps=0.825, measure_after_ramp=True)
    command = locust_command(phase, profile, "http://127.0.0.1:8000", tmp_path / "locust", tmp_path)
    assert command[command.index("--run-time") + 1] == "33s"  # 40 users at 16/s start over 2.5 s, then 30 s
    assert "--reset-stats" in command
    assert command[command.index("--user-rps") + 1] == "0.825"
    assert command[command.index("--users") + 1] == "40"


def _options(tmp_path: Path, profile: str, rate: float | None = None, calibrate_s: float | None = None,
             reference_rps: float | None = None) -> LoadTestOptions:
    return LoadTestOptions(url="http://127.0.0.1:9", profile=profile, targets=DEFAULT_TARGETS, out=tmp_path,
                           rate=rate, calibrate_s=calibrate_s, reference_rps=reference_rps)


def test_relative_overrides_apply_to_relative_profiles_only(tmp_path: Path) -> None:
    raw = resolve_profile(_options(tmp_path, "raw", rate=0.5, calibrate_s=3.0, reference_rps=190.0))
    assert raw.relative == Relative(rate=0.5, calibrate_s=3.0, reference_rps=190.0)
    assert resolve_profile(_options(tmp_path, "raw")).relative == Relative(rate=0.8, calibrate_s=10.0)
    with pytest.raises(ValueError, match=r"--reference-rps: profile 'smoke' is absolute"):
        resolve_profile(_options(tmp_path, "smoke", reference_rps=190.0))
    with pytest.raises(ValueError, match=r"--rate must be in \(0, 1.5\]"):
        resolve_profile(_options(tmp_path, "raw", rate=2.0))


def test_relative_flags_on_an_absolute_profile_are_a_usage_error(tmp_path: Path) -> None:
    proc = _loadtest("http://127.0.0.1:9", DEFAULT_TARGETS, "smoke", tmp_path / "out", "--rate", "0.5",
                     "--calibrate", "5s")
    assert proc.returncode == EXIT_USAGE
    assert "--rate, --calibrate: profile 'smoke' is absolute" in proc.stderr
