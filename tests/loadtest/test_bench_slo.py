"""`batchserve bench --slo` on tiny runs: the table and JSON are well formed, the targets are judged, and on
the virtual clock (exactly repeatable) the latency target beats the static delays it should beat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchserve.cli import main as batchserve_main
from batchserve.loadtest.bench_slo import DEVICE_TIE, RunResult, judge, main

RUN_FIELDS = {
    "policy", "delay_ms", "requests", "p50_ms", "p99_ms", "mean_batch_size", "device_ms_per_image", "meets_slo",
    "fitted_fixed_ms", "fitted_per_image_ms",
}


def check_report(report: dict, loads: list[float], delays: list[float], capacity: float) -> None:
    assert set(report["settings"]) >= {"cases", "loads", "delays_ms", "duration_s", "repeats", "clock"}
    (case,) = report["cases"]
    assert case["capacity_per_s"] == pytest.approx(capacity)
    assert [level["load"] for level in case["loads"]] == loads
    for level in case["loads"]:
        assert level["rate_per_s"] == pytest.approx(level["load"] * capacity)
        runs = [level["slo"], *level["static"]]
        assert [run["delay_ms"] for run in runs] == [None, *delays]
        for run in runs:
            assert set(run) == RUN_FIELDS
            assert run["requests"] > 0
            assert 0 < run["p50_ms"] <= run["p99_ms"]
            assert 1 <= run["mean_batch_size"] <= 32
            assert run["device_ms_per_image"] > 0
            assert run["meets_slo"] == (run["p99_ms"] <= case["slo_ms"])
        best = level["best_static"]
        if best is not None:
            assert best["meets_slo"]
            meeting = [run["device_ms_per_image"] for run in level["static"] if run["meets_slo"]]
            assert best["device_ms_per_image"] == min(meeting)
            ratio = level["slo"]["device_ms_per_image"] / best["device_ms_per_image"]
            assert level["device_ratio"] == pytest.approx(ratio)
            assert level["device_target"] == (ratio <= 1 + DEVICE_TIE)


def test_virtual_clock_run_judges_the_latency_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "slo.json"
    status = main(["--slo-clock", "virtual", "--duration", "1.5", "--slo-costs", "20+1:150", "--slo-loads", "0.6",
                   "--slo-delays", "0,20", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "cost 20+1 ms per batch, SLO 150 ms" in printed and "all targets met: yes" in printed
    report = json.loads(out.read_text())
    check_report(report, [0.6], [0.0, 20.0], 32 / 0.052)
    (level,) = report["cases"][0]["loads"]
    slo = level["slo"]
    assert slo["p99_ms"] <= 150 and level["p99_target"] is True
    # Static delays this short leave batches small; the target holds them until it is nearly spent.
    assert slo["mean_batch_size"] > 2 * max(run["mean_batch_size"] for run in level["static"])
    assert slo["fitted_fixed_ms"] == pytest.approx(20.0, abs=0.5)
    assert slo["fitted_per_image_ms"] == pytest.approx(1.0, abs=0.05)
    assert status == 0 and report["targets_met"] is True


def test_real_clock_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "slo.json"
    # Judged or not, a real-clock run on a busy machine says nothing reliable here: only its shape is checked.
    status = batchserve_main(["bench", "--slo", "--duration", "0.3", "--repeats", "1", "--slo-costs", "2+0.1:30",
                              "--slo-loads", "0.5", "--slo-delays", "5", "--json", str(out)])
    assert status in (0, 1)
    report = json.loads(out.read_text())
    assert report["settings"]["clock"] == "real" and report["targets_met"] is (status == 0)
    check_report(report, [0.5], [5.0], 32 / 0.0052)
    assert "SLO batching vs static max_queue_delay_ms" in capsys.readouterr().out


def test_best_static_is_the_cheapest_meeting_the_slo() -> None:
    def run(delay: float | None, p99: float, device: float) -> RunResult:
        return RunResult("slo" if delay is None else "static", delay, 100, p99 / 2, p99, 8.0, device, p99 <= 50)

    static = [run(0, 20, 2.0), run(20, 45, 1.0), run(50, 80, 0.5)]
    level = judge(0.8, 100.0, run(None, 49, 0.9), static)
    assert level.best_static == static[1]  # the 50 ms delay is cheaper but misses the SLO
    assert level.p99_target is True and level.device_target is True
    tie = judge(0.8, 100.0, run(None, 49, 1.004), static)
    assert tie.device_target is True and tie.device_ratio == pytest.approx(1.004)
    above = judge(0.95, 100.0, run(None, 70, 1.1), static)
    assert above.p99_target is None and above.device_target is False


@pytest.mark.parametrize(
    "argv",
    [["--slo-costs", "20+1"], ["--slo-costs", "fast:150"], ["--slo-costs", "20+1:-5"], ["--slo-loads", "a"],
     ["--slo-clock", "sundial"]],
)
def test_bad_arguments_exit_with_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_bad_settings_and_other_modes_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--slo-loads", "0"]) == 2
    assert "fractions of capacity" in capsys.readouterr().err
    assert batchserve_main(["bench", "--slo", "--overload"]) == 2
    assert "--slo measures the batcher alone" in capsys.readouterr().err
