"""`batchserve bench --overload` and its client, on tiny durations: they run and report well-formed numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.client.http import request_json
from batchserve.loadtest.bench_overload import rss_kib, run_client
from batchserve.loadtest.http_load import run_wrk, wrk_available
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess, ServerStartError, start_servers


@pytest.mark.slow
def test_overload_bench_reports_every_measurement(built_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    command = [sys.executable, "-m", "batchserve", "bench", "--overload", "--duration", "0.5", "--repeats", "1",
               "--model", "tiny", "--model-repo", str(built_models), "--simulate-cost", "off",
               "--saturation-concurrency", "4", "--storm-connections", "16", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    assert report["machine"]["cpus"] >= 1 and report["settings"]["factor"] == 4.0
    assert report["settings"]["storm_client"] in ("wrk", "python")
    assert set(report["targets"]) == {"goodput_ratio_min", "refusal_p99_ms_max", "rss_growth_mib_max",
                                      "storm_goodput_ratio_min"}
    assert set(report["servers"]) == {"tiny"}  # the simulated server runs the same rounds
    for server in report["servers"].values():
        assert server["saturation_per_s"] > 0 and server["image_bytes"] > 0 and len(server["rounds"]) == 1
        open_loop, storm = server["open_loop"], server["retry_storm"]
        assert open_loop["offered_per_s"] == pytest.approx(4 * server["saturation_per_s"], rel=0.5)
        assert open_loop["goodput_per_s"] > 0 and len(open_loop["goodput_ratio_samples"]) == 1
        assert open_loop["other_5xx"] == 0 and storm["other_5xx"] == 0
        assert open_loop["client_late_p99_ms"] >= 0 and open_loop["refusals_delayed"] >= 0
        assert 0 < open_loop["client_cpu_share"] < 4
        assert storm["saturation_per_s"] > 0 and storm["goodput_per_s"] > 0 and storm["p99_ms"] > 0
        assert storm["answers_per_s"] >= storm["goodput_per_s"]
        for phase in (open_loop, storm):
            assert isinstance(phase["rss_growth_mib"], float)
        assert set(server["targets"]) == {"open_goodput_met", "refusal_p99_met", "open_rss_met", "open_5xx_met",
                                          "storm_goodput_met", "storm_rss_met", "storm_5xx_met"}
        for round_ in server["rounds"]:
            raw = round_["open_loop"]["raw"]
            assert raw["mode"] == "open" and raw["sent"] + raw["unsent"] > 0
            assert sum(raw["statuses"].values()) <= raw["sent"]

    assert "open loop, " in proc.stdout and "retry storm, 16 connections" in proc.stdout
    assert "goodput" in proc.stdout and "refusal p99" in proc.stdout and "RSS growth" in proc.stdout
    assert "refusals paced by the server" in proc.stdout


def test_servers_started_together_are_all_ready_or_all_stopped(tmp_path: Path) -> None:
    servers = start_servers([["--simulate-model", "1+0", "--no-events"]] * 2, log_dir=tmp_path)
    try:
        assert len({s.url for s in servers}) == 2
        assert all(request_json(s.url + "/readyz", timeout=5)["status"] == "ready" for s in servers)
    finally:
        for server in servers:
            server.stop()
    before = set(_children())  # servers other tests share stay up
    with pytest.raises(ServerStartError, match="does not exist") as failed:
        start_servers([["--model-repo", str(tmp_path / "none")], ["--simulate-model", "1+0", "--no-events"]],
                      log_dir=tmp_path)
    assert "Task exception was never retrieved" not in str(failed.value)  # the failure is logged once
    assert set(_children()) == before  # the one that would have started was stopped too


def _children() -> list[str]:
    pid = os.getpid()
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overload-factor", "1"], "--overload-factor must be above 1"),
        (["--storm-connections", "0"], "must be positive"),
        (["--image", "/nonexistent.jpg"], "does not exist"),
    ],
)
def test_overload_bench_explains_what_it_cannot_do(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "batchserve", "bench", "--overload", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_open_loop_client_sends_on_schedule_and_counts_answers(simulated_server: ServerProcess) -> None:
    url = simulated_server.url + "/v1/classify"
    result = run_client(url, SAMPLE_PHOTO, "open", 1.0, rate=40)
    assert result["mode"] == "open" and result["rate"] == 40
    assert result["sent"] + result["unsent"] == 40
    assert result["statuses"] == {"200": result["sent"]} and result["errors"] == {}
    assert 0 < result["ok_in_window"] <= result["sent"]
    assert 0 < result["ok_ms"]["p50"] <= result["ok_ms"]["p99"] <= result["ok_ms"]["max"]
    assert result["refused_ms"]["p99"] is None and result["late_ms"]["p50"] is not None
    assert result["cpu_s"] > 0

    closed = run_client(url, SAMPLE_PHOTO, "closed", 0.5, concurrency=3)
    assert closed["mode"] == "closed" and closed["concurrency"] == 3 and closed["connections_opened"] == 3
    assert closed["statuses"]["200"] == closed["sent"] > 0


@pytest.mark.slow
def test_clients_count_refusals_by_kind(simulated_server: ServerProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    url = simulated_server.url + "/v1/classify"
    result = run_client(url, garbage, "closed", 0.3, concurrency=2)
    assert result["codes"] and set(result["codes"]) == {"400 invalid_image"}
    if wrk_available():
        wrk = run_wrk(url, garbage, "image/jpeg", 2, 1, count_statuses=True)
        assert wrk.statuses is not None and wrk.statuses["4xx"] == wrk.requests > 0
        assert wrk.statuses["200"] == wrk.statuses["5xx other"] == 0


def test_rss_is_read_from_proc() -> None:
    import os

    assert rss_kib(os.getpid()) > 1000
