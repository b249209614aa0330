"""`batchserve loadtest` with a relative profile against a real server (the simulated model):
calibration, the constant-throughput phase at a fraction of its capacity, and the verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from batchserve.loadtest.locust_run import CALIBRATION_DIR, EXIT_MISSED, EXIT_PASS, RESULT_JSON
from batchserve.loadtest.report import read_summary
from batchserve.loadtest.server_process import ServerProcess, free_port
from tests.loadtest.test_locust import _loadtest

# Short phases keep a run near 5 s of load; the targets are easily met by any server that answers.
EASY = """
[easy]
users = 4
calibrate = "2s"
rate = 0.6
duration = "3s"
[easy.targets]
max_p50_ms = 20000
max_p99_ms = 20000
max_failure_ratio = 0.0
min_achieved_ratio = 0.5
min_capacity_ratio = 0.8   # no reference given: skipped
"""

IMPOSSIBLE = """
[impossible]
users = 2
calibrate = "2s"
rate = 0.5
duration = "2s"
[impossible.targets]
max_p99_ms = 60000
min_capacity_ratio = 10
"""

_RATE = r"([0-9.]+) requests/s"


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


@pytest.mark.slow
def test_a_relative_profile_offers_a_fraction_of_the_calibrated_capacity(
    simulated_server: ServerProcess, tmp_path: Path
) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(EASY)
    out = tmp_path / "out"
    proc = _loadtest(simulated_server.url, targets, "easy", out)
    assert proc.returncode == EXIT_PASS, proc.stdout + proc.stderr
    text = proc.stdout
    assert "all targets met" in text and "FAIL" not in text

    # What is printed: the calibration, the offered rate = rate x capacity, the achieved rate.
    capacity = _number(r"calibration: 4 users back to back for 2 s: .*; capacity " + _RATE, text)
    offered = _number(r"offered: " + _RATE + r" = 0\.6 x ", text)
    achieved = _number(r"achieved: " + _RATE, text)
    assert capacity > 0
    # Both printed to one decimal: 0.05 of rounding on the offered rate, 0.6 x 0.05 from the capacity.
    assert offered == pytest.approx(0.6 * capacity, abs=0.05 + 0.6 * 0.05 + 1e-9)
    assert 0.5 * offered <= achieved <= 1.5 * offered
    for metric in ("p50 latency", "p99 latency", "failure ratio", "achieved/offered"):
        assert re.search(rf"^{re.escape(metric)} .* PASS", text, re.MULTILINE), metric
    assert re.search(r"^capacity/reference .* SKIP  \(no reference", text, re.MULTILINE)

    # The same, unrounded, in the result file; each phase left its own Locust files.
    verdict = json.loads((out / RESULT_JSON).read_text())
    assert verdict["mode"] == "relative" and verdict["passed"] is True
    calibration, paced = verdict["calibration"], verdict["offered"]
    assert calibration["users"] == 4 and calibration["capacity_rps"] > 0
    assert paced["offered_rps"] == pytest.approx(0.6 * calibration["capacity_rps"])
    assert paced["users"] * paced["user_rps"] == pytest.approx(paced["offered_rps"])
    assert 0.5 <= verdict["measured"]["success_rps"] / paced["offered_rps"] <= 1.5
    assert read_summary(out / CALIBRATION_DIR / "locust_summary.json").requests == calibration["requests"]
    assert read_summary(out / "locust_summary.json").requests == verdict["measured"]["requests"] > 0
    assert (out / "locust.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_an_impossible_capacity_ratio_fails_and_is_named(simulated_server: ServerProcess, tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(IMPOSSIBLE)
    proc = _loadtest(simulated_server.url, targets, "impossible", tmp_path / "out", "--reference-rps", "190")
    assert proc.returncode == EXIT_MISSED, proc.stdout + proc.stderr
    capacity = _number(r"capacity " + _RATE, proc.stdout)
    assert _number(r"capacity/reference ([0-9.]+)", proc.stdout) == pytest.approx(capacity / 190, abs=0.006)
    missed_section = proc.stdout.split("MISSED targets:")[1]
    assert "capacity/reference" in missed_section and "target >= 10" in missed_section
    assert "p99 latency" not in missed_section  # met, so not named


@pytest.mark.slow
def test_no_capacity_misses_every_target_without_a_paced_phase(tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text(EASY.replace('"2s"', '"1s"'))
    out = tmp_path / "out"
    proc = _loadtest(f"http://127.0.0.1:{free_port()}", targets, "easy", out)
    assert proc.returncode == EXIT_MISSED, proc.stdout + proc.stderr
    assert "capacity 0 requests/s" in proc.stdout and "constant-rate phase not run" in proc.stdout
    missed_section = proc.stdout.split("MISSED targets:")[1]
    assert "achieved/offered: nothing measured" in missed_section
    assert not (out / "locust_stats.csv").exists()  # only the calibration ran
    assert json.loads((out / RESULT_JSON).read_text())["offered"] is None
