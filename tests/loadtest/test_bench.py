"""`batchserve bench` and its load clients, on tiny durations: they run and report well-formed numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.http_load import LoadClientError, parse_result, run_aiohttp, run_wrk, wrk_available
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess


@pytest.mark.slow
def test_bench_reports_every_measurement(built_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "batchserve", "bench", "--duration", "0.3", "--repeats", "2",
               "--concurrency", "1,4", "--batch-sizes", "1,2", "--model", "tiny", "--model-repo", str(built_models),
               "--simulate-cost", "5+0.5", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    assert report["machine"]["cpus"] >= 1 and report["settings"]["client"] in ("wrk", "aiohttp")
    assert report["model"]["name"] == "tiny" and "CPUExecutionProvider" in report["model"]["providers"]
    for section in ("ort_only", "inprocess"):
        assert set(report[section]) == {"1", "2"}
        for entry in report[section].values():
            assert len(entry["samples"]) == 2 and entry["images_per_s"] > 0
    assert report["single_image_ms"]["p50"] > 0
    assert set(report["server"]) == {"1", "4"}
    for entry in report["server"].values():
        assert entry["errors"] == 0
        assert entry["images_per_s"] > 0 and entry["limit_images_per_s"] > 0
        assert entry["ratio_to_limit"] > 0 and len(entry["ratio_samples"]) == 2
        assert 0 < entry["p50_ms"] <= entry["p99_ms"]
    assert report["saturation_ratio"] == report["server"]["4"]["ratio_to_limit"]
    assert report["c1_latency_ratio"] > 0
    assert set(report["targets"]) >= {"saturation_met", "c1_latency_met"}

    sim = report["simulated"]
    assert sim["cost_ms"] == "5+0.5 ms" and sim["max_batch_size"] >= 1 and sim["image_bytes"] > 0
    assert sim["theoretical_images_per_s"] == pytest.approx(
        sim["max_batch_size"] / (5 + 0.5 * sim["max_batch_size"]) * 1000
    )
    for entry in sim["by_concurrency"].values():
        assert 0 < entry["fraction_of_max"] <= 1.0 and entry["errors"] == 0

    assert "in process (images/s, median)" in proc.stdout
    assert "saturation (c=4): server/limit =" in proc.stdout
    assert "theoretical maximum" in proc.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--concurrency", "1,x"], 2, "comma-separated integers"),
        (["--batch-sizes", "0"], 2, "positive integers"),
        (["--simulate-cost", "fast"], 2, "must look like 'A+B'"),
        (["--image", "/nonexistent.jpg"], 2, "does not exist"),
        (["--model", "no_such_model", "--duration", "0.1", "--repeats", "1"], 1, "no_such_model"),
    ],
)
def test_bench_explains_what_it_cannot_do(args: list[str], status: int, message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "batchserve", "bench", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("client", ["wrk", "aiohttp"])
def test_load_clients_measure_a_server(simulated_server: ServerProcess, client: str) -> None:
    if client == "wrk" and not wrk_available():
        pytest.skip("wrk is not installed (scripts/ensure-system-packages.sh installs it)")
    run = run_wrk if client == "wrk" else run_aiohttp
    result = run(simulated_server.url + "/v1/classify", SAMPLE_PHOTO, "image/jpeg", 3, 1.0)
    assert result.client == client and result.concurrency == 3
    assert result.requests > 0 and result.errors == 0
    assert 0.5 < result.seconds < 10
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.ok_per_second == pytest.approx(result.requests / result.seconds)


@pytest.mark.slow
def test_http_errors_are_counted(simulated_server: ServerProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    result = run_aiohttp(simulated_server.url + "/v1/classify", garbage, "image/jpeg", 2, 0.5)
    assert result.requests > 0 and result.http_errors == result.requests
    assert result.ok_per_second == 0


def test_result_line_is_required() -> None:
    with pytest.raises(LoadClientError, match="printed no result line"):
        parse_result("Running 1s test @ http://x\n", "wrk", 1)
    line = ('WRK_JSON {"duration_us": 2000000, "requests": 10, "bytes": 1, "errors": {"connect": 0, "read": 1, '
            '"write": 0, "status": 2, "timeout": 0}, "latency_us": {"min": 1, "mean": 2.5, "max": 9, "p50": 2000, '
            '"p90": 3000, "p95": 3500, "p99": 4000}}')
    result = parse_result("noise\n" + line + "\n", "wrk", 4)
    assert (result.errors, result.http_errors, result.p50_ms, result.p99_ms) == (3, 2, 2.0, 4.0)
    assert result.ok_per_second == 4.0
