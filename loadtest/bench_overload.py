"""`batchserve bench --overload`: what the server does with more work than it can take.

Per round, on each server (the real model, then the simulated accelerator), one after the other:
  1. saturation: the overload client in closed loop, `saturation_concurrency` connections;
  2. open loop: `factor` times that throughput, requests sent on a schedule whatever the answers
     (bench_overload_client.py): goodput (200s answered within the window, per second), the 503
     refusals' latency, 5xx other than 503, the server's RSS growth;
  3. saturation again: goodput is compared with the mean of (1) and (3);
  4. the retry storm's reference: wrk, 64 connections, closed loop;
  5. a retry storm: wrk with `storm_connections` connections, each sending again as soon as any
     answer (a refusal included) comes back: goodput against the mean of (4) and (6), p99 of
     every answer, RSS growth;
  6. the reference again.
Everything a round compares is measured within it, next to each other, and on both sides of the
phase it judges (this machine's CPU speed jumps by about 2.5x within seconds). The load clients
run in their own processes.

RSS growth: the server's peak resident memory during an overload phase (sampled from
/proc/<pid>/status every 50 ms) minus its resident memory just before the run's first one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchserve.loadtest.bench import content_type, model_info, small_jpeg, wait_idle
from batchserve.loadtest.bench_overload_client import DRAIN_S, MARKER, REQUEST_TIMEOUT_S
from batchserve.loadtest.bench_report import machine, run_and_print
from batchserve.loadtest.http_load import LoadClientError, LoadResult, run_wrk, wrk_available
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess, start_server, start_servers, stop_servers
from batchserve.model_repo.repository import DEFAULT_REPOSITORY

GOODPUT_TARGET = 0.9  # open loop: goodput over saturated throughput, at least
REFUSAL_P99_TARGET_MS = 20.0  # open loop: p99 of the 503 answers, below
RSS_GROWTH_TARGET_MIB = 100.0  # either overload phase, below
STORM_GOODPUT_TARGET = 0.75  # retry storm: goodput over saturated throughput, above
STORM_REFERENCE_CONCURRENCY = 64
RSS_SAMPLE_S = 0.05
DELAYED_METRIC = "batchserve_admission_refusals_delayed_total"


@dataclass(frozen=True)
class OverloadSettings:
    duration: float = 10.0
    repeats: int = 3
    factor: float = 4.0
    saturation_concurrency: int = 64
    storm_connections: int = 800
    model: str = "efficientnet_lite0"
    model_repo: Path = DEFAULT_REPOSITORY
    simulate_cost: str | None = "40+2"
    image: Path = SAMPLE_PHOTO
    sim_image: Path | None = None
    server_args: tuple[str, ...] = ("--no-events",)

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.repeats < 1:
            raise ValueError("--duration must be positive and --repeats at least 1")
        if not self.factor > 1:
            raise ValueError("--overload-factor must be above 1")
        if self.saturation_concurrency < 1 or self.storm_connections < 1:
            raise ValueError("--saturation-concurrency and --storm-connections must be positive")


@dataclass
class Target:
    """One server under test and what to send it."""

    name: str
    server: ServerProcess
    model: str
    image: Path
    rss_baseline_kib: int | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1/classify?model={self.model}"


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LoadClientError(f"/proc/{pid}/status has no VmRSS line")


@contextmanager
def rss_peak(pid: int) -> Iterator[list[int]]:
    """Samples `pid`'s RSS while the block runs; the one-element list holds the peak (KiB) after it."""
    peak = [rss_kib(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(RSS_SAMPLE_S):
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except (OSError, LoadClientError):
                return

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        with suppress(OSError, LoadClientError):
            peak[0] = max(peak[0], rss_kib(pid))


def run_client(url: str, body: Path, mode: str, duration: float, *, concurrency: int = 64, rate: float = 0.0,
               max_connections: int = 4000) -> dict[str, Any]:
    """The overload client in its own process; its JSON result."""
    command = [sys.executable, "-m", "batchserve.loadtest.bench_overload_client", "--url", url, "--body", str(body),
               "--content-type", content_type(body), "--mode", mode, "--duration", str(duration),
               "--concurrency", str(concurrency), "--max-connections", str(max_connections)]
    if mode == "open":
        command += ["--rate", f"{rate:.3f}"]
    limit = duration + DRAIN_S + REQUEST_TIMEOUT_S + 30
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
        raise LoadClientError(f"the overload client did not finish within {limit:.0f} s") from None
    if proc.returncode != 0:
        raise LoadClientError(f"the overload client exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(MARKER)), None)
    if line is None:
        raise LoadClientError(f"the overload client printed no result:\n{(proc.stdout + proc.stderr)[-2000:]}")
    result: dict[str, Any] = json.loads(line[len(MARKER):])
    return result


def delayed_refusals(server: ServerProcess) -> int | None:
    """The server's count of refusals it answered late (see server/refusal_pacing.py); None when it
    has no such metric (a server that does not pace its refusals)."""
    try:
        # The child server's own http://127.0.0.1 URL: no other scheme can reach this call.
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:  # noqa: S310
            text = answer.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(DELAYED_METRIC + " "):
            return int(float(line.split()[1]))
    return None


def _other_5xx(statuses: dict[str, int]) -> int:
    return sum(n for status, n in statuses.items() if status.startswith("5") and status != "503")


def _storm(target: Target, settings: OverloadSettings, seconds: float) -> LoadResult:
    if wrk_available():
        return run_wrk(target.url, target.image, content_type(target.image), settings.storm_connections, seconds,
                       count_statuses=True)
    raw = run_client(target.url, target.image, "closed", seconds, concurrency=settings.storm_connections)
    statuses = raw["statuses"]
    ok_ms = raw["ok_ms"]
    return LoadResult(
        client="python", concurrency=settings.storm_connections, seconds=raw["window_s"],
        requests=sum(statuses.values()), errors=sum(raw["errors"].values()),
        http_errors=sum(n for s, n in statuses.items() if s != "200"),
        p50_ms=ok_ms["p50"], p90_ms=ok_ms["p90"], p95_ms=None, p99_ms=ok_ms["p99"], mean_ms=None,
        statuses={"200": statuses.get("200", 0), "503 overloaded": raw["codes"].get("503 overloaded", 0),
                  "503 other": statuses.get("503", 0) - raw["codes"].get("503 overloaded", 0),
                  "5xx other": _other_5xx(statuses),
                  "4xx": sum(n for s, n in statuses.items() if s.startswith("4"))},
    )


def _saturation(target: Target, settings: OverloadSettings) -> float:
    sat = run_client(target.url, target.image, "closed", settings.duration, concurrency=settings.saturation_concurrency)
    wait_idle(target.server, target.model)
    return float(sat["ok_in_window"] / sat["window_s"])


def _reference(target: Target, settings: OverloadSettings) -> float:
    """The retry storm's reference: closed loop, 64 connections of the storm's own client."""
    if wrk_available():
        result = run_wrk(target.url, target.image, content_type(target.image), STORM_REFERENCE_CONCURRENCY,
                         settings.duration)
        wait_idle(target.server, target.model)
        return result.ok_per_second
    raw = run_client(target.url, target.image, "closed", settings.duration, concurrency=STORM_REFERENCE_CONCURRENCY)
    wait_idle(target.server, target.model)
    return float(raw["ok_in_window"] / raw["window_s"])


def measure_round(target: Target, settings: OverloadSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """One round on one server: saturation, open loop, saturation; reference, retry storm, reference.

    Each overload phase is compared with the mean of the saturated throughputs measured right
    before and right after it, so that a change of the machine's speed during the phase weighs
    on both sides."""
    d, pid = settings.duration, target.server.process.pid
    before = _saturation(target, settings)
    rate = settings.factor * before
    if target.rss_baseline_kib is None:
        target.rss_baseline_kib = rss_kib(pid)
    baseline = target.rss_baseline_kib
    delayed_before = delayed_refusals(target.server)
    with rss_peak(pid) as open_peak:
        offered = run_client(target.url, target.image, "open", d, rate=rate)
        wait_idle(target.server, target.model)
    delayed_after = delayed_refusals(target.server)
    after = _saturation(target, settings)
    saturated = (before + after) / 2
    goodput = offered["ok_in_window"] / offered["window_s"]
    open_loop = {
        "offered_per_s": rate, "goodput_per_s": goodput, "goodput_ratio": goodput / saturated if saturated else None,
        "refusal_p99_ms": offered["refused_ms"]["p99"], "ok_p99_ms": offered["ok_ms"]["p99"],
        "other_5xx": _other_5xx(offered["statuses"]), "client_errors": sum(offered["errors"].values()),
        "rss_growth_mib": (open_peak[0] - baseline) / 1024, "client_late_p99_ms": offered["late_ms"]["p99"],
        "client_cpu_share": offered["cpu_s"] / offered["window_s"],
        "refusals_delayed": None if delayed_after is None or delayed_before is None else delayed_after - delayed_before,
        "raw": offered,
    }
    say(f"  {target.name}: saturation {before:.1f}/s, {after:.1f}/s after; open loop {rate:.0f}/s -> goodput "
        f"{goodput:.1f}/s ({open_loop['goodput_ratio'] or 0:.2f}), refusal p99 {open_loop['refusal_p99_ms'] or 0:.1f} "
        f"ms, other 5xx {open_loop['other_5xx']}, RSS +{open_loop['rss_growth_mib']:.0f} MiB")
    reference_before = _reference(target, settings)
    with rss_peak(pid) as storm_peak:
        storm = _storm(target, settings, d)
        wait_idle(target.server, target.model)
    reference_after = _reference(target, settings)
    reference = (reference_before + reference_after) / 2
    statuses = storm.statuses or {}
    storm_goodput = statuses.get("200", 0) / storm.seconds if storm.seconds else 0.0
    retry_storm = {
        "saturation_per_s": reference, "goodput_per_s": storm_goodput,
        "goodput_ratio": storm_goodput / reference if reference else None, "p99_ms": storm.p99_ms,
        "answers_per_s": storm.requests / storm.seconds if storm.seconds else 0.0, "statuses": statuses,
        "other_5xx": statuses.get("5xx other", 0), "socket_errors": storm.errors - storm.http_errors,
        "rss_growth_mib": (storm_peak[0] - baseline) / 1024, "client": storm.client,
    }
    say(f"  {target.name}: storm of {settings.storm_connections}: goodput {storm_goodput:.1f}/s of "
        f"{reference:.1f}/s ({retry_storm['goodput_ratio'] or 0:.2f}), p99 {storm.p99_ms or 0:.0f} ms, "
        f"{retry_storm['answers_per_s']:.0f} answers/s, RSS +{retry_storm['rss_growth_mib']:.0f} MiB")
    return {"saturation": {"per_s": saturated, "before_per_s": before, "after_per_s": after},
            "open_loop": open_loop, "retry_storm": retry_storm}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise_target(target: Target) -> dict[str, Any]:
    rounds = target.rounds

    def column(phase: str, key: str) -> list[Any]:
        return [r[phase][key] for r in rounds]

    open_ratio = _median(column("open_loop", "goodput_ratio"))
    refusal_p99 = _median(column("open_loop", "refusal_p99_ms"))
    open_rss = max(column("open_loop", "rss_growth_mib"))
    open_5xx = sum(column("open_loop", "other_5xx"))
    storm_ratio = _median(column("retry_storm", "goodput_ratio"))
    storm_rss = max(column("retry_storm", "rss_growth_mib"))
    storm_5xx = sum(column("retry_storm", "other_5xx"))
    return {
        "model": target.model,
        "image_bytes": target.image.stat().st_size,
        "saturation_per_s": _median([r["saturation"]["per_s"] for r in rounds]),
        "open_loop": {
            "offered_per_s": _median(column("open_loop", "offered_per_s")),
            "goodput_per_s": _median(column("open_loop", "goodput_per_s")),
            "goodput_ratio": open_ratio, "goodput_ratio_samples": column("open_loop", "goodput_ratio"),
            "refusal_p99_ms": refusal_p99, "refusal_p99_ms_samples": column("open_loop", "refusal_p99_ms"),
            "other_5xx": open_5xx, "rss_growth_mib": open_rss,
            "client_late_p99_ms": _median(column("open_loop", "client_late_p99_ms")),
            "client_cpu_share": _median(column("open_loop", "client_cpu_share")),
            "refusals_delayed": None if None in (delayed := column("open_loop", "refusals_delayed")) else sum(delayed),
        },
        "retry_storm": {
            "saturation_per_s": _median(column("retry_storm", "saturation_per_s")),
            "goodput_per_s": _median(column("retry_storm", "goodput_per_s")),
            "goodput_ratio": storm_ratio, "goodput_ratio_samples": column("retry_storm", "goodput_ratio"),
            "p99_ms": _median(column("retry_storm", "p99_ms")),
            "answers_per_s": _median(column("retry_storm", "answers_per_s")),
            "other_5xx": storm_5xx, "rss_growth_mib": storm_rss,
        },
        "targets": {
            "open_goodput_met": open_ratio is not None and open_ratio >= GOODPUT_TARGET,
            "refusal_p99_met": refusal_p99 is not None and refusal_p99 < REFUSAL_P99_TARGET_MS,
            "open_rss_met": open_rss < RSS_GROWTH_TARGET_MIB,
            "open_5xx_met": open_5xx == 0,
            "storm_goodput_met": storm_ratio is not None and storm_ratio > STORM_GOODPUT_TARGET,
            "storm_rss_met": storm_rss < RSS_GROWTH_TARGET_MIB,
            "storm_5xx_met": storm_5xx == 0,
        },
        "rounds": rounds,
    }


def start_targets(settings: OverloadSettings, scratch: Path) -> list[Target]:
    model_args = ["--models", settings.model, "--model-repo", str(settings.model_repo.resolve()), *settings.server_args]
    if not settings.simulate_cost:
        return [Target(settings.model, start_server(model_args, log_dir=scratch), settings.model, settings.image)]
    model_server, sim = start_servers(
        [model_args, ["--simulate-model", settings.simulate_cost, *settings.server_args]], log_dir=scratch)
    return [Target(settings.model, model_server, settings.model, settings.image),
            Target("simulated", sim, "simulated", settings.sim_image or small_jpeg(scratch))]


def warm_up(target: Target, settings: OverloadSettings) -> None:
    seconds = min(1.0, settings.duration)
    run_client(target.url, target.image, "closed", seconds, concurrency=settings.saturation_concurrency)
    wait_idle(target.server, target.model)


def run_overload(settings: OverloadSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="batchserve-overload-"))
    targets: list[Target] = []
    try:
        say(f"starting servers ({settings.model}" + (", simulated)" if settings.simulate_cost else ")"))
        targets = start_targets(settings, scratch)
        for target in targets:
            model_info(target.server, target.model)  # an unknown model fails here, before any load
            warm_up(target, settings)
        for r in range(settings.repeats):
            say(f"round {r + 1} of {settings.repeats}")
            for target in targets:
                target.rounds.append(measure_round(target, settings, say))
        return {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {**asdict(settings), "model_repo": str(settings.model_repo), "image": str(settings.image),
                         "sim_image": str(settings.sim_image) if settings.sim_image else None,
                         "storm_client": "wrk" if wrk_available() else "python"},
            "targets": {"goodput_ratio_min": GOODPUT_TARGET, "refusal_p99_ms_max": REFUSAL_P99_TARGET_MS,
                        "rss_growth_mib_max": RSS_GROWTH_TARGET_MIB, "storm_goodput_ratio_min": STORM_GOODPUT_TARGET},
            "servers": {t.name: summarise_target(t) for t in targets},
        }
    finally:
        stop_servers([target.server for target in targets])
        shutil.rmtree(scratch, ignore_errors=True)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    out = [f"batchserve bench --overload {report['date']}: {report['machine']['cpus']} cpus, {s['duration']:g} s x "
           f"{s['repeats']} repeats, open loop at {s['factor']:g}x saturation, storm of {s['storm_connections']} "
           f"connections ({s['storm_client']})"]
    for name, v in report["servers"].items():
        o, st, t = v["open_loop"], v["retry_storm"], v["targets"]
        samples = " ".join(_fmt(x, ".2f") for x in o["goodput_ratio_samples"])
        storm_samples = " ".join(_fmt(x, ".2f") for x in st["goodput_ratio_samples"])
        out += [
            "",
            f"{name} ({v['image_bytes'] / 1024:.0f} KB image per request), medians of the rounds",
            f"  saturation, closed loop c={s['saturation_concurrency']}: {_fmt(v['saturation_per_s'])} images/s",
            f"  open loop, {_fmt(o['offered_per_s'], '.0f')} requests/s offered:",
            f"    goodput {_fmt(o['goodput_per_s'])}/s = {_fmt(o['goodput_ratio'], '.2f')} of saturation "
            f"[{samples}] (target >= {GOODPUT_TARGET}) {_met(t['open_goodput_met'])}",
            f"    refusal p99 {_fmt(o['refusal_p99_ms'])} ms (target < {REFUSAL_P99_TARGET_MS:g}) "
            f"{_met(t['refusal_p99_met'])}; of it, the client's own lateness p99 {_fmt(o['client_late_p99_ms'])} ms"
            + ("" if o["refusals_delayed"] is None else f"; refusals paced by the server: {o['refusals_delayed']}"),
            f"    5xx other than 503: {o['other_5xx']} (target 0) {_met(t['open_5xx_met'])}; the client used "
            f"{_fmt(o['client_cpu_share'], '.2f')} of a core",
            f"    RSS growth {_fmt(o['rss_growth_mib'], '.0f')} MiB (target < {RSS_GROWTH_TARGET_MIB:g}) "
            f"{_met(t['open_rss_met'])}",
            f"  retry storm, {s['storm_connections']} connections retrying at once "
            f"({_fmt(st['answers_per_s'], '.0f')} answers/s):",
            f"    goodput {_fmt(st['goodput_per_s'])}/s = {_fmt(st['goodput_ratio'], '.2f')} of "
            f"{_fmt(st['saturation_per_s'])}/s (wrk c={STORM_REFERENCE_CONCURRENCY}) [{storm_samples}] "
            f"(target > {STORM_GOODPUT_TARGET}) {_met(t['storm_goodput_met'])}",
            f"    p99 {_fmt(st['p99_ms'], '.0f')} ms; 5xx other than 503: {st['other_5xx']} {_met(t['storm_5xx_met'])}"
            f"; RSS growth {_fmt(st['rss_growth_mib'], '.0f')} MiB {_met(t['storm_rss_met'])}",
        ]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = OverloadSettings()
    parser.add_argument("--overload", action="store_true",
                        help="measure overload instead: open loop at --overload-factor x saturation, and a retry "
                             "storm (uses --duration, --repeats, --model, --model-repo, --simulate-cost, --image, "
                             "--sim-image, --json)")
    parser.add_argument("--overload-factor", type=float, default=d.factor,
                        help="open-loop rate as a multiple of the saturated throughput")
    parser.add_argument("--saturation-concurrency", type=int, default=d.saturation_concurrency,
                        help="closed-loop connections that measure saturation")
    parser.add_argument("--storm-connections", type=int, default=d.storm_connections,
                        help="connections of the retry storm")


def run_from_args(args: argparse.Namespace) -> int:
    from batchserve.batching.cost import CostModel

    try:
        simulate = None if str(args.simulate_cost).lower() in ("off", "none", "") else args.simulate_cost
        settings = OverloadSettings(
            duration=args.duration, repeats=args.repeats, factor=args.overload_factor,
            saturation_concurrency=args.saturation_concurrency, storm_connections=args.storm_connections,
            model=args.model, model_repo=args.model_repo, simulate_cost=simulate, image=args.image,
            sim_image=args.sim_image,
        )
        if simulate:
            CostModel.parse(simulate)
        for path in (settings.image, settings.sim_image):
            if path is not None and not path.is_file():
                raise ValueError(f"image {path} does not exist")
    except ValueError as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 2
    return run_and_print(lambda say: run_overload(settings, say=say), render, args.json_out)
