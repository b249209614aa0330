"""`batchserve bench --queue` on a short run: it starts its own moto server, worker, web tier and
direct server, measures each part and reports well-formed numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.bench_queue import where
from batchserve.loadtest.bench_queue_run import CHAIN_STEPS


@pytest.mark.slow
def test_queue_bench_reports_every_measurement(built_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "queue.json"
    # The tiny model keeps start-up and inference short; its labels are not the photos' (so nothing is
    # "correct"), but the queue must answer exactly what the direct server answers.
    command = [sys.executable, "-m", "batchserve", "bench", "--queue", "--duration", "0.2", "--repeats", "1",
               "--backlog", "20", "--model", "tiny", "--model-repo", str(built_models), "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())

    assert report["machine"]["cpus"] >= 1 and report["machine"]["moto"]
    cpus = sorted(os.sched_getaffinity(0))
    pinning = report["machine"]["pinning"]
    if len(cpus) >= 2:  # moto and the web tier on one cpu, the model's processes on another
        assert pinning == {"moto": [cpus[0]], "web_tier": [cpus[0]], "worker": [cpus[-1]], "direct": [cpus[-1]],
                           "in_process": [cpus[-1]]}
        assert f"pinned: moto and the web tier on cpu {cpus[0]}; the worker" in proc.stdout
    else:
        assert pinning is None and "not pinned" in proc.stdout
    assert report["settings"]["backlog"] == 20 and report["settings"]["image_bytes"] > 0

    workload = report["workload"]
    assert workload["web_completed"] == workload["direct_completed"] == 50
    assert workload["web_correct"] == workload["direct_correct"]
    assert workload["web_seconds"] > 0 and workload["direct_seconds"] > 0
    assert workload["ratio"] == pytest.approx(workload["web_seconds"] / workload["direct_seconds"])

    worker = report["worker"]
    assert worker["images_per_s"] > 0 and worker["limit_images_per_s"] > 0
    assert worker["ratio"] == pytest.approx(worker["images_per_s"] / worker["limit_images_per_s"])
    assert worker["worker_cpu_s_per_image"] > 0 and worker["limit_cpu_s_per_image"] > 0
    assert worker["moto_cpu_s_per_image"] >= 0 and worker["errors"] == 0
    assert worker["cpu_ratio"] == pytest.approx(worker["limit_cpu_s_per_image"] / worker["worker_cpu_s_per_image"])
    # HTTP on the worker's cpu, beside it: the direct server's rate, against the limit and the worker.
    assert worker["direct_images_per_s"] > 0
    assert worker["direct_ratio"] == pytest.approx(worker["direct_images_per_s"] / worker["limit_images_per_s"])
    assert worker["worker_vs_direct"] == pytest.approx(worker["images_per_s"] / worker["direct_images_per_s"])
    assert "HTTP on the same cpu: the direct server" in proc.stdout
    # The sample photo is below the web tier's inline bound: the queued messages carry it.
    assert report["settings"]["image_bytes"] <= report["settings"]["inline_max_bytes"]
    assert "inside each message" in proc.stdout

    latency = report["latency"]
    p50 = latency["p50_ms"]
    assert all(p50[k] > 0 for k in ("web", "direct", "chain", "through_worker", "worker_own"))
    assert latency["added_p50_ms"] == pytest.approx(p50["web"] - p50["direct"])
    assert latency["ours_ms"] == pytest.approx(latency["added_p50_ms"] - p50["chain"])
    assert set(latency["chain_steps_p50_ms"]) == {*CHAIN_STEPS, "total"}
    assert all(v > 0 for v in latency["chain_steps_p50_ms"].values())
    assert latency["chain_cpu_ms"]["client_cpu"] > 0
    assert set(report["targets"]) == {"worker_ratio_min", "added_p50_ms_max", "worker_ratio_met", "added_p50_met"}

    assert "(a) the workload: 50 labelled photos" in proc.stdout
    assert "(b) one worker draining 20 queued images" in proc.stdout
    assert "(c) one image at a time" in proc.stdout and "per call: put_image" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backlog", "0"], "--backlog must be at least 1"),
        (["--overload"], "pass one of them"),
        (["--image", "/nonexistent.jpg"], "does not exist"),
    ],
)
def test_queue_bench_explains_what_it_cannot_do(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "batchserve", "bench", "--queue", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_the_report_says_where_each_part_ran() -> None:
    pinned = {"moto": [0], "web_tier": [0], "worker": [1], "direct": [1], "in_process": [1]}
    assert where(pinned, 2) == ("pinned: moto and the web tier on cpu 0; the worker, the direct server and the "
                                "in-process reference on cpu 1")
    assert where(None, 2) == ("not pinned: moto, the web tier, the worker, the direct server and the in-process "
                              "reference share the 2 cpus")
