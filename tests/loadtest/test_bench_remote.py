"""`batchserve bench --remote` on tiny durations: it runs and reports well-formed numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from batchserve.loadtest.bench import add_arguments, run_from_args


@pytest.mark.slow
def test_remote_bench_reports_every_measurement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One level and one round (wrk runs whole seconds): every field is reported for each level.
    out = tmp_path / "remote.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--remote", "--duration", "0.5", "--repeats", "1", "--concurrency", "1",
                              "--simulate-cost", "5+0.5", "--protocol-exchanges", "10", "--json", str(out)])
    assert run_from_args(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    assert report["machine"]["cpus"] >= 1 and report["settings"]["concurrency"] == [1]
    assert report["backend"]["cost_ms"] == "5+0.5" and report["settings"]["image_bytes"] > 0
    assert report["settings"]["protocol_exchanges"] == 10 and len(report["rounds"]) == 1
    (level,) = report["levels"].values()
    assert level["errors"] == 0
    assert level["backend_per_s"] > 0 and level["web_per_s"] > 0 and 0 < level["throughput_ratio"] < 5
    assert report["throughput_ratio"] == level["throughput_ratio"]
    assert level["web_p50_ms"] > 0 and level["backend_p50_ms"] > 0 and level["added_p50_ms"] is not None
    assert level["web_cpu_ms_per_request"] > 0 and level["backend_cpu_ms_per_request"] > 0
    assert 0 <= level["web_cpu_ms_per_request_net"] <= level["web_cpu_ms_per_request"]
    assert level["web_idle_cpu_ms_per_s"] >= 0
    protocols = report["protocols"]
    assert protocols["top1_agree"] is True and protocols["cheaper"] in ("v1_raw", "v2_binary", "tie")
    assert all(v > 0 for v in protocols["cpu_us_per_exchange"].values())
    assert set(report["targets"]) == {"added_p50_ms_max", "web_cpu_ms_per_request_max", "added_p50_met",
                                      "web_cpu_met"}
    assert "added p50 at concurrency 1" in printed and "web tier CPU per forwarded request" in printed
    assert "forwarding one image, CPU per exchange" in printed


@pytest.mark.parametrize(("args", "message"), [
    (["--simulate-cost", "off"], "--remote needs a simulated backend"),
    (["--sim-image", "/nonexistent.jpg"], "does not exist"),
    (["--concurrency", "1", "--protocol-exchanges", "0"], "--protocol-exchanges must be at least 1"),
    (["--queue"], "measure different things"),
])
def test_remote_bench_explains_what_it_cannot_do(args: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args(["--remote", *args])) == 2
    assert message in capsys.readouterr().err
