"""The batcher benchmark runs on tiny durations and reports well-formed numbers (it does not judge them)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.loadtest.bench_batcher import main

ROOT = Path(__file__).resolve().parents[2]
LEVEL_FIELDS = {
    "round",
    "concurrency",
    "requests",
    "items_per_s",
    "theoretical_items_per_s",
    "fraction_of_theoretical",
    "mean_batch_size",
    "p50_ms",
    "p99_ms",
    "device_utilisation",
}
OVERHEAD_FIELDS = {"model", "requests", "batcher_p50_ms", "batcher_p99_ms", "direct_p50_ms", "added_p50_ms"}


def check_results(results: dict, concurrency: list[int], max_batch: int, cost: tuple[float, float]) -> None:
    a, b = cost
    assert results["params"]["max_batch_size"] == max_batch
    assert "k / (a + b*k)" in results["theoretical_formula"]
    assert [level["concurrency"] for level in results["levels"]] == concurrency
    for level in results["levels"]:
        assert set(level) == LEVEL_FIELDS
        assert level["requests"] > 0
        k = min(level["concurrency"], max_batch)
        assert level["theoretical_items_per_s"] == pytest.approx(k / ((a + b * k) / 1000))
        assert 0 < level["fraction_of_theoretical"] <= 1.2
        assert 1 <= level["mean_batch_size"] <= max_batch
        assert 0 < level["p50_ms"] <= level["p99_ms"]
        assert 0 < level["device_utilisation"] <= 1
    assert {o["model"] for o in results["overhead"]} == {"async null model", "sync null model via executor"}
    for overhead in results["overhead"]:
        assert set(overhead) == OVERHEAD_FIELDS
        assert overhead["requests"] > 0
        assert all(math.isfinite(overhead[key]) for key in OVERHEAD_FIELDS - {"model", "requests"})
        assert 0 < overhead["batcher_p50_ms"] <= overhead["batcher_p99_ms"]


def test_main_prints_a_table_and_writes_matching_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    returned = main(
        ["--cost", "2+0.1", "--max-batch-size", "8", "--duration", "0.15", "--concurrency", "1,16",
         "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert "theoretical: k / (a + b*k)" in printed
    assert "fraction" in printed
    assert printed.count("added p50 latency at concurrency 1") == 2
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    check_results(written, [1, 16], 8, (2.0, 0.1))
    # a 16-client closed loop against batches of at most 8 fills them
    assert written["levels"][1]["mean_batch_size"] > 1


def test_script_runs_as_documented(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "loadtest/bench_batcher.py", "--cost", "1+0.05", "--duration", "0.1",
         "--concurrency", "4", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    check_results(json.loads(out.read_text()), [4], 32, (1.0, 0.05))


@pytest.mark.parametrize(
    "argv",
    [["--cost", "fast"], ["--cost", "-1+2"], ["--concurrency", "0"], ["--concurrency", "a,b"], ["--duration", "0"]],
)
def test_bad_arguments_exit_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
