"""`batchserve bench --slo`: the latency-target batcher against every static `max_queue_delay_ms`.

In process, as bench_batcher.py (so two cores can feed it): a Batcher whose batch function is the simulated
serial accelerator (a batch of n costs A + B·n ms) takes open-loop Poisson arrivals of one image each at
fractions of the device's capacity N / (A + B·N), N = max_batch_size. At each load the same arrival sequence
(one seed) is run under the SLO policy (`latency_slo_ms`) and under each static delay of the grid. Latency
runs from an arrival's scheduled time to its answer, so a late arrival counts against the batcher; device
time per image is the busy time of the batches started in the measured window over their images.

Two clocks: `real` (the default) runs on the wall clock, as the server does, so the event loop's timer
lateness and the machine's pauses count; `virtual` runs the same code on an event loop whose clock jumps to
the next timer whenever nothing is ready (virtual_time.py), so Python's own time costs next to nothing and a
run is exactly repeatable: it compares the policies themselves, undisturbed by whatever else the machine is
doing.

Targets, per cost model: p99 <= the SLO at loads up to 80 %, and device time per image no more than that of
the best static delay meeting the SLO at that load (the one with the least device time per image).

    batchserve bench --slo [--duration 5] [--repeats 3] [--slo-clock real|virtual]
        [--slo-costs 20+1:150,5+0.5:50] [--slo-loads 0.3,0.6,0.8,0.95] [--slo-delays 0,1,2,5,10,20,50,100]
        [--json OUT]
    python -m batchserve.loadtest.bench_slo ...   (the same options; --duration 4 and --repeats 1 by default)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchserve.batching import Batcher, BatchingConfig, nearest_rank
from batchserve.batching.cost import CostModel, SerialDevice
from batchserve.loadtest.virtual_time import VirtualTimeLoop

TARGET_MAX_LOAD = 0.8
"""The p99 target holds at loads up to this fraction of capacity."""
DEVICE_TIE = 0.005
"""Device time per image within this share above the best static's counts as a tie (shown as such): rounds of
one static setting differ by about as much, and a static delay whose p99 lands just under the SLO by chance
can cost that little less than a policy that keeps a guard for what it cannot see."""


@dataclass(frozen=True)
class SloCase:
    cost: CostModel
    slo_ms: float

    @classmethod
    def parse(cls, text: str) -> SloCase:
        """'20+1:150' -> a cost of 20 + 1·n ms with an SLO of 150 ms."""
        cost, sep, slo = text.partition(":")
        if not sep:
            raise ValueError(f"a case looks like COST:SLO_MS (e.g. 20+1:150), not {text!r}")
        try:
            slo_ms = float(slo)
        except ValueError:
            raise ValueError(f"the SLO of {text!r} must be a number of milliseconds") from None
        if not slo_ms > 0:
            raise ValueError(f"the SLO of {text!r} must be above 0 ms")
        return cls(CostModel.parse(cost), slo_ms)

    def __str__(self) -> str:
        return f"{self.cost.fixed_ms:g}+{self.cost.per_sample_ms:g}:{self.slo_ms:g}"


@dataclass(frozen=True)
class SloBenchSettings:
    cases: tuple[SloCase, ...] = (SloCase(CostModel(20.0, 1.0), 150.0), SloCase(CostModel(5.0, 0.5), 50.0))
    loads: tuple[float, ...] = (0.3, 0.6, 0.8, 0.95)
    delays_ms: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    duration_s: float = 4.0
    warmup_s: float = 1.0
    max_batch_size: int = 32
    max_inflight_batches: int = 2
    repeats: int = 1
    seed: int = 1
    loop: str = "auto"
    clock: str = "real"

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("--slo-costs needs at least one COST:SLO_MS")
        if not self.loads or not all(0 < load < 1.5 for load in self.loads):
            raise ValueError("--slo-loads are fractions of capacity, e.g. 0.3,0.6,0.8,0.95")
        if any(delay < 0 for delay in self.delays_ms):
            raise ValueError("--slo-delays are milliseconds >= 0")
        if not self.duration_s > 0 or self.warmup_s < 0:
            raise ValueError("--duration must be positive")
        if self.max_batch_size < 1 or self.max_inflight_batches < 1:
            raise ValueError("max_batch_size and max_inflight_batches must be positive")
        if self.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if self.clock not in ("real", "virtual"):
            raise ValueError(f"--slo-clock is real or virtual, not {self.clock!r}")

    def capacity(self, cost: CostModel) -> float:
        """Images per second of back-to-back full batches."""
        return cost.max_throughput(self.max_batch_size)


@dataclass(frozen=True)
class RunResult:
    policy: str
    """'slo' or 'static'."""
    delay_ms: float | None
    """The static policy's max_queue_delay_ms (None for the SLO policy)."""
    requests: int
    p50_ms: float
    p99_ms: float
    mean_batch_size: float
    device_ms_per_image: float
    meets_slo: bool
    fitted_fixed_ms: float | None = None
    fitted_per_image_ms: float | None = None

    @property
    def label(self) -> str:
        return "slo" if self.delay_ms is None else f"static {self.delay_ms:g} ms"


@dataclass(frozen=True)
class LoadResult:
    load: float
    rate_per_s: float
    slo: RunResult
    static: list[RunResult]
    best_static: RunResult | None
    """The static delay meeting the SLO with the least device time per image; None when none meets it."""
    p99_target: bool | None
    """SLO policy's p99 within the SLO; None above TARGET_MAX_LOAD (no target there)."""
    device_target: bool | None
    """SLO policy's device time per image <= the best static's (within DEVICE_TIE); None when no static
    delay meets the SLO."""
    device_ratio: float | None
    """SLO policy's device time per image over the best static's."""


@dataclass(frozen=True)
class CaseResult:
    cost: str
    slo_ms: float
    capacity_per_s: float
    loads: list[LoadResult] = field(default_factory=list)


class MeteredDevice:
    """The batch function: the serial device, counting the device time and images of batches started while
    ``measuring``."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self.device = SerialDevice(cost)
        self.measuring = False
        self.busy_s = 0.0
        self.images = 0
        self.batches = 0

    async def __call__(self, items: list[int]) -> list[int]:
        if self.measuring:
            self.busy_s += self.cost.batch_seconds(len(items))
            self.images += len(items)
            self.batches += 1
        await self.device.run(len(items))
        return items


async def run_policy(
    settings: SloBenchSettings, case: SloCase, load: float, delay_ms: float | None, round_: int = 1
) -> RunResult:
    """One open-loop run: the SLO policy when ``delay_ms`` is None, else that static delay."""
    loop = asyncio.get_running_loop()
    rate = load * settings.capacity(case.cost)
    config = BatchingConfig(
        max_batch_size=settings.max_batch_size,
        max_queue_delay_ms=delay_ms or 0.0,
        max_inflight_batches=settings.max_inflight_batches,
        max_queue_size=1_000_000,  # an open loop past capacity queues; refusing would hide it
        latency_slo_ms=case.slo_ms if delay_ms is None else None,
    )
    device = MeteredDevice(case.cost)
    # The wall clock in real time (uvloop's loop.time() moves in whole milliseconds); the loop's, in virtual.
    clock = loop.time if isinstance(loop, VirtualTimeLoop) else time.monotonic
    batcher: Batcher[int, int] = Batcher(device, config, name="bench-slo", clock=clock)
    # Every policy at one load sees the same arrivals.
    rng = random.Random(f"{settings.seed}:{round_}:{case}:{load}")
    began = clock()
    measure_from = began + settings.warmup_s
    measure_to = measure_from + settings.duration_s
    latencies: list[float] = []
    requests: set[asyncio.Task[None]] = set()
    item = [0]

    async def request(at: float) -> None:
        await batcher.submit(item)
        if measure_from <= at < measure_to:
            latencies.append(clock() - at)

    # Arrivals keep to their schedule whatever the answers (open loop); those due while the loop was busy are
    # sent together, and their latency still counts from when they were due.
    at = began
    while at < measure_to:
        now = clock()
        if at > now:
            await asyncio.sleep(at - now)
        device.measuring = measure_from <= clock() < measure_to
        task = loop.create_task(request(at))
        requests.add(task)
        task.add_done_callback(requests.discard)
        at += rng.expovariate(rate)
    device.measuring = False
    await asyncio.gather(*requests)
    await batcher.close()

    latencies.sort()
    p99 = nearest_rank(latencies, 0.99) * 1000
    fitted = batcher.cost_estimate
    return RunResult(
        policy="slo" if delay_ms is None else "static",
        delay_ms=delay_ms,
        requests=len(latencies),
        p50_ms=nearest_rank(latencies, 0.50) * 1000,
        p99_ms=p99,
        mean_batch_size=device.images / device.batches if device.batches else 0.0,
        device_ms_per_image=device.busy_s * 1000 / device.images if device.images else 0.0,
        meets_slo=bool(latencies) and p99 <= case.slo_ms,
        fitted_fixed_ms=None if fitted is None else fitted.fixed_ms,
        fitted_per_image_ms=None if fitted is None else fitted.per_sample_ms,
    )


def judge(load: float, rate: float, slo: RunResult, static: list[RunResult]) -> LoadResult:
    meeting = [run for run in static if run.meets_slo]
    best = min(meeting, key=lambda run: (run.device_ms_per_image, run.p99_ms)) if meeting else None
    ratio = None if best is None else slo.device_ms_per_image / best.device_ms_per_image
    return LoadResult(
        load=load,
        rate_per_s=rate,
        slo=slo,
        static=static,
        best_static=best,
        p99_target=slo.meets_slo if load <= TARGET_MAX_LOAD + 1e-9 else None,
        device_target=None if ratio is None else ratio <= 1.0 + DEVICE_TIE,
        device_ratio=ratio,
    )


def median_run(runs: list[RunResult], slo_ms: float) -> RunResult:
    """Rounds of one policy at one load as one result: the median of each figure (this machine's pauses
    spoil a round now and then; a median of interleaved rounds is what compares)."""
    if len(runs) == 1:
        return runs[0]
    p99 = statistics.median(run.p99_ms for run in runs)
    fixed = [run.fitted_fixed_ms for run in runs if run.fitted_fixed_ms is not None]
    per_image = [run.fitted_per_image_ms for run in runs if run.fitted_per_image_ms is not None]
    return RunResult(
        policy=runs[0].policy,
        delay_ms=runs[0].delay_ms,
        requests=sum(run.requests for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=p99,
        mean_batch_size=statistics.median(run.mean_batch_size for run in runs),
        device_ms_per_image=statistics.median(run.device_ms_per_image for run in runs),
        meets_slo=p99 <= slo_ms,
        fitted_fixed_ms=statistics.median(fixed) if fixed else None,
        fitted_per_image_ms=statistics.median(per_image) if per_image else None,
    )


async def run_case(settings: SloBenchSettings, case: SloCase, say: Callable[[str], None]) -> CaseResult:
    result = CaseResult(str(case.cost), case.slo_ms, settings.capacity(case.cost))
    policies: list[float | None] = [None, *settings.delays_ms]
    for load in settings.loads:
        rate = load * result.capacity_per_s
        rounds: dict[float | None, list[RunResult]] = {policy: [] for policy in policies}
        for round_ in range(1, settings.repeats + 1):
            for policy in policies:  # interleaved, so a slow spell of the machine hits every policy alike
                run = await run_policy(settings, case, load, policy, round_)
                say(f"{case.cost} slo {case.slo_ms:g} ms, load {load:.0%} ({rate:.0f}/s), round {round_}: "
                    f"{_line(run)}")
                rounds[policy].append(run)
        slo = median_run(rounds[None], case.slo_ms)
        static = [median_run(rounds[delay], case.slo_ms) for delay in settings.delays_ms]
        result.loads.append(judge(load, rate, slo, static))
    return result


async def run_all(settings: SloBenchSettings, say: Callable[[str], None]) -> list[CaseResult]:
    return [await run_case(settings, case, say) for case in settings.cases]


def run_bench(settings: SloBenchSettings, say: Callable[[str], None]) -> dict[str, Any]:
    loop = settings.loop
    if settings.clock == "virtual":
        loop = "virtual-time asyncio"
    elif loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if settings.clock == "virtual":
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            cases = runner.run(run_all(settings, say))
    elif loop == "uvloop":
        import uvloop

        cases = uvloop.run(run_all(settings, say))
    else:
        cases = asyncio.run(run_all(settings, say))
    targets = [t for case in cases for level in case.loads for t in (level.p99_target, level.device_target)]
    return {
        "date": dt.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loop": loop},
        "settings": {
            "cases": [str(case) for case in settings.cases],
            "loads": list(settings.loads),
            "delays_ms": list(settings.delays_ms),
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "max_batch_size": settings.max_batch_size,
            "max_inflight_batches": settings.max_inflight_batches,
            "repeats": settings.repeats,
            "clock": settings.clock,
            "seed": settings.seed,
        },
        "cases": [asdict(case) for case in cases],
        "targets_met": all(t is not False for t in targets),
    }


def _line(run: RunResult) -> str:
    return (f"{run.label:>14}: p50 {run.p50_ms:7.1f} ms, p99 {run.p99_ms:7.1f} ms, mean batch "
            f"{run.mean_batch_size:5.1f}, device {run.device_ms_per_image:6.3f} ms/image, {run.requests} requests")


def _mark(value: bool | None, ratio: float | None = None) -> str:
    if value is None:
        return "n/a"
    if not value:
        return "MISSED"
    return "tie" if ratio is not None and ratio > 1.0 else "met"


def render(report: dict[str, Any]) -> str:
    out = [f"SLO batching vs static max_queue_delay_ms — {report['date']}, {report['machine']['cpus']} CPUs, "
           f"{report['machine']['loop']} loop, {report['settings']['clock']} clock, in-process simulated device, "
           f"{report['settings']['duration_s']:g} s measured per run, median of {report['settings']['repeats']} "
           f"interleaved round(s)"]
    for case in report["cases"]:
        out += ["", f"cost {case['cost']} per batch, SLO {case['slo_ms']:g} ms, capacity "
                    f"{case['capacity_per_s']:.0f} images/s (max batch {report['settings']['max_batch_size']})"]
        out.append(f"{'load':>5} {'policy':>14} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'dev ms/img':>10} {'SLO':>4}")
        for level in case["loads"]:
            best = level["best_static"]
            for run in [level["slo"], *level["static"]]:
                label = "slo" if run["delay_ms"] is None else f"static {run['delay_ms']:g}"
                star = " *" if best is not None and run == best else ""
                out.append(f"{level['load']:>5.0%} {label:>14} {run['p50_ms']:>8.1f} {run['p99_ms']:>8.1f} "
                           f"{run['mean_batch_size']:>6.1f} {run['device_ms_per_image']:>10.3f} "
                           f"{'ok' if run['meets_slo'] else 'over':>4}{star}")
        out += ["", f"{'load':>5} {'slo p99':>8} {'slo dev':>8} {'best static':>12} {'its p99':>8} {'its dev':>8} "
                    f"{'dev/best':>8} {'p99<=SLO':>9} {'dev<=best':>9}  learned a+b ms"]
        for level in case["loads"]:
            slo, best = level["slo"], level["best_static"]
            best_cells = (f"{best['delay_ms']:>9g} ms {best['p99_ms']:>8.1f} {best['device_ms_per_image']:>8.3f} "
                          f"{level['device_ratio']:>8.3f}"
                          if best else f"{'none':>12} {'-':>8} {'-':>8} {'-':>8}")
            fitted = ("-" if slo["fitted_fixed_ms"] is None
                      else f"{slo['fitted_fixed_ms']:.2f}+{slo['fitted_per_image_ms']:.3f}")
            out.append(f"{level['load']:>5.0%} {slo['p99_ms']:>8.1f} {slo['device_ms_per_image']:>8.3f} {best_cells} "
                       f"{_mark(level['p99_target']):>9} {_mark(level['device_target'], level['device_ratio']):>9}  "
                       f"{fitted}")
    out += ["", "* best static: meets the SLO with the least device time per image. "
                f"Targets: p99 <= SLO up to {TARGET_MAX_LOAD:.0%} load; device time per image <= the best static's "
                f"(tie: at most {DEVICE_TIE:.1%} above it).",
            f"all targets met: {'yes' if report['targets_met'] else 'NO'}"]
    return "\n".join(out)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}")
    return values


def _cases(text: str) -> tuple[SloCase, ...]:
    try:
        return tuple(SloCase.parse(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `batchserve bench --slo` (its --duration, --repeats and --json are the bench's own)."""
    d = SloBenchSettings()
    group = parser.add_argument_group("--slo: the latency-target batcher against static delays (in process)")
    group.add_argument("--slo", action="store_true",
                       help="compare latency_slo_ms with a grid of max_queue_delay_ms on the simulated device")
    group.add_argument("--slo-costs", type=_cases, default=d.cases,
                       help="COST:SLO_MS cases (default 20+1:150,5+0.5:50)")
    group.add_argument("--slo-loads", type=_floats, default=d.loads,
                       help="open-loop loads as fractions of capacity (default 0.3,0.6,0.8,0.95)")
    group.add_argument("--slo-delays", type=_floats, default=d.delays_ms,
                       help="static max_queue_delay_ms grid (default 0,1,2,5,10,20,50,100)")
    group.add_argument("--slo-clock", choices=("real", "virtual"), default=d.clock,
                       help="real: the wall clock, as served; virtual: a clock that jumps to the next timer, "
                            "exactly repeatable and blind to the machine's load (default real)")


def settings_from_args(args: argparse.Namespace) -> SloBenchSettings:
    return SloBenchSettings(
        cases=tuple(args.slo_costs), loads=tuple(args.slo_loads), delays_ms=tuple(args.slo_delays),
        duration_s=args.duration, warmup_s=min(1.0, args.duration / 4), repeats=args.repeats,
        clock=args.slo_clock, loop=getattr(args, "loop", "auto"),
    )


def run_from_args(args: argparse.Namespace) -> int:
    """`batchserve bench --slo`: 0 when every target was met, 1 when one was missed, 2 for bad arguments."""
    from batchserve.loadtest.bench_report import run_and_print

    if any(getattr(args, name, False) for name in ("overload", "queue", "remote")):
        print("batchserve bench: --slo measures the batcher alone; pass it without --overload, --queue or --remote",
              file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 2
    outcome: dict[str, Any] = {}

    def run(say: Callable[[str], None]) -> dict[str, Any]:
        outcome.update(run_bench(settings, say))
        return outcome

    status = run_and_print(run, render, args.json_out)
    return status or (0 if outcome.get("targets_met") else 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=SloBenchSettings.duration_s, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians are compared")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="event loop (auto: uvloop when installed, as the server runs)")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="also write the results as JSON")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
