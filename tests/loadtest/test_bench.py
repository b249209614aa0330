"""`batchserve bench` and its load clients, on tiny durations: they run and report well-formed numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.batching.cost import CostModel
from batchserve.loadtest.bench import (
    BenchSettings,
    admitted_requests,
    measure_simulated,
    model_info,
    simulated_info,
    small_jpeg,
)
from batchserve.loadtest.bench import main as bench_main
from batchserve.loadtest.bench_report import LATENCY_TARGET, SATURATION_TARGET, Samples, render, summarise
from batchserve.loadtest.http_load import (
    LoadClientError,
    LoadResult,
    parse_result,
    run_aiohttp,
    run_wrk,
    wrk_available,
)
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess

MACHINE_FIELDS = {"cpus", "platform", "processor", "python", "onnxruntime", "numpy", "pillow"}
LOAD_FIELDS = {"images_per_s", "p50_ms", "p99_ms", "errors", "samples"}


@pytest.mark.slow
def test_bench_reports_every_measurement(built_models: Path, tmp_path: Path) -> None:
    """One round of the whole bench on the tiny model: every field of the JSON and the table. The
    simulated accelerator's part is measured on the shared simulated server below, and how repeats
    combine into medians and ratios on made-up samples (test_summary_pairs_each_round)."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "batchserve", "bench", "--duration", "0.3", "--repeats", "1",
               "--concurrency", "1,4", "--batch-sizes", "2", "--model", "tiny", "--model-repo", str(built_models),
               "--simulate-cost", "off", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    assert set(report) == {"date", "machine", "settings", "model", "ort_only", "inprocess", "single_image_ms",
                           "server", "c1_latency_ratio", "c1_latency_ratio_samples", "saturation_ratio", "targets",
                           "simulated"}
    assert report["date"].startswith("20")
    assert set(report["machine"]) == MACHINE_FIELDS and report["machine"]["cpus"] >= 1
    settings = report["settings"]
    assert settings["client"] in ("wrk", "aiohttp") and settings["image_bytes"] == SAMPLE_PHOTO.stat().st_size
    assert (settings["duration"], settings["repeats"], settings["concurrency"], settings["batch_sizes"],
            settings["model"], settings["simulate_cost"]) == (0.3, 1, [1, 4], [2], "tiny", None)
    assert settings["image"] == str(SAMPLE_PHOTO) and settings["sim_image"].endswith(".jpg")
    model = report["model"]
    assert model["name"] == "tiny" and "CPUExecutionProvider" in model["providers"]
    assert model["in_process_providers"] == ["CPUExecutionProvider"]
    assert model["max_batch_size"] >= 1 and model["max_inflight_batches"] >= 1
    for section in ("ort_only", "inprocess"):
        assert set(report[section]) == {"2"}
        entry = report[section]["2"]
        assert len(entry["samples"]) == 1 and entry["images_per_s"] == entry["samples"][0] > 0
    assert report["single_image_ms"]["p50"] == report["single_image_ms"]["samples"][0] > 0
    assert set(report["server"]) == {"1", "4"}
    for c, entry in report["server"].items():
        assert set(entry) == LOAD_FIELDS | {"limit_images_per_s", "ratio_to_limit", "ratio_samples"}
        assert entry["errors"] == 0 and len(entry["samples"]) == 1
        run = entry["samples"][0]
        assert run["concurrency"] == int(c) and run["client"] == settings["client"] and run["requests"] > 0
        assert entry["images_per_s"] > 0 and entry["limit_images_per_s"] > 0
        assert entry["ratio_to_limit"] == pytest.approx(entry["images_per_s"] / entry["limit_images_per_s"])
        assert entry["ratio_samples"] == [entry["ratio_to_limit"]]
        assert 0 < entry["p50_ms"] <= entry["p99_ms"]
    assert report["saturation_ratio"] == report["server"]["4"]["ratio_to_limit"]
    c1_ratio = report["server"]["1"]["p50_ms"] / report["single_image_ms"]["p50"]
    assert report["c1_latency_ratio"] == pytest.approx(c1_ratio)
    assert report["c1_latency_ratio_samples"] == [report["c1_latency_ratio"]]
    targets = report["targets"]
    assert (targets["saturation_ratio_min"], targets["c1_latency_ratio_max"]) == (SATURATION_TARGET, LATENCY_TARGET)
    assert targets["saturation_met"] == (report["saturation_ratio"] >= SATURATION_TARGET)
    assert targets["c1_latency_met"] == (report["c1_latency_ratio"] <= LATENCY_TARGET)

    assert report["simulated"] is None

    assert "in process (images/s, median)" in proc.stdout
    assert "saturation (c=4): server/limit =" in proc.stdout
    assert "latency at c=1: server p50 / in-process single image" in proc.stdout
    assert "theoretical maximum" not in proc.stdout  # the simulated part was off
    rows = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"2", "1", "4"} <= rows  # the batch row of the in-process table, a row per concurrency
    assert "round 1 of 1" in proc.stderr and "warming up" in proc.stderr


def _load(images_per_s: float, p50_ms: float, concurrency: int) -> LoadResult:
    return LoadResult(client="wrk", concurrency=concurrency, seconds=1.0, requests=int(images_per_s), errors=0,
                      http_errors=0, p50_ms=p50_ms, p90_ms=p50_ms, p95_ms=p50_ms, p99_ms=2 * p50_ms, mean_ms=p50_ms)


def test_summary_pairs_each_round() -> None:
    """Medians over repeats, and each ratio taken within its round before the median (the CPU's
    speed changes between rounds)."""
    settings = BenchSettings(repeats=3, concurrency=(1, 8), batch_sizes=(4,), simulate_cost=None)
    samples = Samples(
        ort={4: [100.0, 50.0, 80.0]},
        pipeline={4: [90.0, 45.0, 70.0]},
        limit_at_load={1: [100.0, 50.0, 80.0], 8: [90.0, 40.0, 100.0]},
        server={1: [_load(90, 10.0, 1), _load(40, 20.0, 1), _load(60, 12.0, 1)],
                8: [_load(81, 50.0, 8), _load(40, 90.0, 8), _load(60, 70.0, 8)]},
        single_ms=[8.0, 16.0, 12.0],
        simulated={8: [_load(200, 30.0, 8), _load(100, 40.0, 8), _load(150, 35.0, 8)]},
    )
    simulated = {"cost_ms": "5+0.5 ms", "max_batch_size": 32, "image": "sim.jpg", "image_bytes": 4000,
                 "theoretical_images_per_s": 1523.8}
    info = {"machine": {"cpus": 2}, "client": "wrk", "model": {"name": "m", "providers": ["CPU"]},
            "simulated": simulated}
    report = summarise(settings, samples, info)
    assert report["ort_only"]["4"] == {"images_per_s": 80.0, "samples": [100.0, 50.0, 80.0]}
    assert report["inprocess"]["4"]["images_per_s"] == 70.0 and report["single_image_ms"]["p50"] == 12.0
    c8 = report["server"]["8"]
    assert c8["ratio_samples"] == pytest.approx([0.9, 1.0, 0.6])
    assert c8["ratio_to_limit"] == pytest.approx(0.9)  # not median(server) / median(limit) = 60 / 90
    assert (c8["images_per_s"], c8["limit_images_per_s"], c8["p50_ms"], c8["p99_ms"]) == (60.0, 90.0, 70.0, 140.0)
    assert report["saturation_ratio"] == c8["ratio_to_limit"]
    assert report["c1_latency_ratio_samples"] == pytest.approx([1.25, 1.25, 1.0])
    assert report["c1_latency_ratio"] == pytest.approx(1.25)
    assert report["targets"]["saturation_met"] is False and report["targets"]["c1_latency_met"] is False
    sim = report["simulated"]["by_concurrency"]["8"]
    assert sim["images_per_s"] == 150.0 and sim["fraction_of_max"] == pytest.approx(150.0 / 1523.8)
    table = render(report)
    assert "saturation (c=8): server/limit = 0.90 (target >= 0.95) MISSED" in table
    assert "= 1.25 (target <= 1.2) MISSED" in table
    assert "theoretical maximum 1523.8 images/s" in table


@pytest.mark.slow
def test_simulated_accelerator_part(simulated_server: ServerProcess, tmp_path: Path) -> None:
    """The simulated accelerator's loads and report fields (the fixture serves `--simulate-model 5+0.5`),
    and the wait after each load: nothing is left admitted, queued or running."""
    image = small_jpeg(tmp_path)
    settings = BenchSettings(duration=0.3, repeats=1, concurrency=(4,), simulate_cost="5+0.5", sim_image=image)
    samples = Samples()
    measure_simulated(settings, simulated_server, samples, lambda _: None)
    assert admitted_requests(simulated_server) == 0
    stats = model_info(simulated_server, "simulated")["stats"]
    assert stats["queue_depth"] == 0 and stats["inflight_batches"] == 0 and stats["requests_total"] > 0

    info = {"machine": {"cpus": 2}, "client": "auto", "model": {"name": "m", "providers": ["CPU"]},
            "simulated": simulated_info(simulated_server, CostModel.parse("5+0.5"), image)}
    sim = summarise(settings, samples, info)["simulated"]
    assert set(sim) == {"cost_ms", "max_batch_size", "image", "image_bytes", "theoretical_images_per_s",
                        "by_concurrency"}
    assert sim["cost_ms"] == "5+0.5 ms" and sim["max_batch_size"] >= 1
    assert sim["image"] == str(image) and sim["image_bytes"] == image.stat().st_size
    assert sim["theoretical_images_per_s"] == pytest.approx(
        sim["max_batch_size"] / (5 + 0.5 * sim["max_batch_size"]) * 1000
    )
    assert set(sim["by_concurrency"]) == {"4"}
    entry = sim["by_concurrency"]["4"]
    assert set(entry) == LOAD_FIELDS | {"fraction_of_max"}
    assert entry["errors"] == 0 and len(entry["samples"]) == 1 and 0 < entry["p50_ms"] <= entry["p99_ms"]
    assert 0 < entry["fraction_of_max"] <= 1.0
    assert entry["fraction_of_max"] == pytest.approx(entry["images_per_s"] / sim["theoretical_images_per_s"])


def test_admitted_requests_of_a_server_that_does_not_answer() -> None:
    assert admitted_requests(ServerProcess("--no-events")) is None  # never started: nothing listens


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
def test_bench_explains_what_it_cannot_do(args: list[str], status: int, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # In process: `batchserve bench` is this parser and run_from_args (the CLI runs above).
    try:
        code = bench_main(args)
    except SystemExit as exc:  # argparse refuses a malformed value itself
        code = exc.code
    assert code == status
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("client", ["wrk", "aiohttp"])
def test_load_clients_measure_a_server(simulated_server: ServerProcess, client: str) -> None:
    if client == "wrk" and not wrk_available():
        pytest.skip("wrk is not installed (scripts/ensure-system-packages.sh installs it)")
    run, duration = (run_wrk, 1.0) if client == "wrk" else (run_aiohttp, 0.5)  # wrk counts whole seconds
    result = run(simulated_server.url + "/v1/classify", SAMPLE_PHOTO, "image/jpeg", 3, duration)
    assert result.client == client and result.concurrency == 3
    assert result.requests > 0 and result.errors == 0
    assert duration / 2 < result.seconds < 10
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.ok_per_second == pytest.approx(result.requests / result.seconds)


@pytest.mark.slow
def test_http_errors_are_counted(simulated_server: ServerProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    result = run_aiohttp(simulated_server.url + "/v1/classify", garbage, "image/jpeg", 2, 0.3)
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
