"""In-process benchmark of the dynamic batcher against a simulated accelerator.

    python loadtest/bench_batcher.py [--cost 8+0.25] [--max-batch-size 32] [--duration 3]
                                     [--concurrency 1,8,32,64] [--json OUT]

Closed-loop clients (each keeps one request of ``--items`` samples outstanding) drive a Batcher whose batch
function is a simulated device: a batch of n costs ``a + b·n`` ms and the device runs one batch at a time,
back to back, like a GPU stream. Batches queued on it while it is busy start the moment it frees up, so the
timer jitter of the event loop does not count against the batcher; a device left idle between batches does.

The theoretical throughput at concurrency c is ``k / (a + b·k)`` items/s with ``k = min(c·items,
max_batch_size)``: no batch can hold more samples than are outstanding, and the device is serial, so the
best it can do is back-to-back batches of k. With c·items >= max_batch_size this is the device's ceiling
``max_batch / (a + b·max_batch)``, whatever ``max_inflight_batches`` is.

It also measures the batcher's own cost: p50 of submit → result at concurrency 1 with a null model (no work),
minus p50 of calling that null model directly.

The event loop matters for the simulated device: asyncio's selector loop rounds timer waits up to whole
milliseconds, so on it a lone 8.25 ms batch takes about 10 ms and concurrency 1 can not approach its bound;
uvloop (the server's loop under uvicorn) fires timers within about 0.1 ms.

Figures on a machine whose CPU clock jumps should be compared across repeated, interleaved runs (--repeat).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchserve.batching import Batcher, BatchingConfig, nearest_rank
from batchserve.batching.cost import CostModel, SerialDevice

FORMULA = "k / (a + b*k) items/s, k = min(concurrency * items_per_request, max_batch_size); serial device"


def parse_cost(text: str) -> CostModel:
    try:
        return CostModel.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class EchoDevice:
    """The batch function: the serial device's time, then each item back as its own answer."""

    def __init__(self, cost: CostModel) -> None:
        self.device = SerialDevice(cost)

    @property
    def busy_s(self) -> float:
        return self.device.busy_s

    async def __call__(self, items: list[Any]) -> list[Any]:
        await self.device.run(len(items))
        return items


@dataclass(frozen=True)
class LevelResult:
    round: int
    concurrency: int
    requests: int
    items_per_s: float
    theoretical_items_per_s: float
    fraction_of_theoretical: float
    mean_batch_size: float
    p50_ms: float
    p99_ms: float
    device_utilisation: float


@dataclass(frozen=True)
class OverheadResult:
    model: str
    requests: int
    batcher_p50_ms: float
    batcher_p99_ms: float
    direct_p50_ms: float
    added_p50_ms: float


async def run_level(args: argparse.Namespace, concurrency: int, round_: int) -> LevelResult:
    device = EchoDevice(args.cost)
    config = BatchingConfig(
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_inflight_batches=args.max_inflight_batches,
        max_queue_size=max(256, concurrency * args.items),
    )
    sizes: list[int] = []
    batcher: Batcher[int, int] = Batcher(device, config, name="bench", on_batch=lambda r: sizes.append(r.size))
    measuring = False
    stop = False
    latencies: list[float] = []
    items = list(range(args.items))

    async def client() -> None:
        while not stop:
            started = time.perf_counter()
            await batcher.submit(items)
            if measuring:
                latencies.append(time.perf_counter() - started)

    clients = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(args.warmup)
    measuring = True
    sizes.clear()
    busy_before = device.busy_s
    began = time.perf_counter()
    await asyncio.sleep(args.duration)
    measuring = False
    elapsed = time.perf_counter() - began
    busy = device.busy_s - busy_before
    stop = True
    await asyncio.gather(*clients)
    await batcher.close()

    latencies.sort()
    k = min(concurrency * args.items, args.max_batch_size)
    throughput = len(latencies) * args.items / elapsed
    theoretical = args.cost.max_throughput(k)
    return LevelResult(
        round=round_,
        concurrency=concurrency,
        requests=len(latencies),
        items_per_s=throughput,
        theoretical_items_per_s=theoretical,
        fraction_of_theoretical=throughput / theoretical,
        mean_batch_size=sum(sizes) / len(sizes) if sizes else 0.0,
        p50_ms=nearest_rank(latencies, 0.50) * 1000,
        p99_ms=nearest_rank(latencies, 0.99) * 1000,
        device_utilisation=min(busy, elapsed) / elapsed,
    )


async def _null_async(items: list[int]) -> list[int]:
    return items


def _null_sync(items: list[int]) -> list[int]:
    return items


async def run_overhead(seconds: float, sync: bool) -> OverheadResult:
    """Batcher overhead at concurrency 1: submit → result with a model that does nothing."""
    loop = asyncio.get_running_loop()
    batcher: Batcher[int, int] = Batcher(_null_sync if sync else _null_async, BatchingConfig(), name="null")
    item = [1]
    through_batcher: list[float] = []
    direct: list[float] = []
    deadline = time.perf_counter() + seconds
    # Interleaved so both see the same CPU clock speed.
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await batcher.submit(item)
        through_batcher.append(time.perf_counter() - started)
        started = time.perf_counter()
        if sync:
            await loop.run_in_executor(None, _null_sync, item)
        else:
            await _null_async(item)
        direct.append(time.perf_counter() - started)
    await batcher.close()
    # Sync: the direct path pays the thread hand-off too, so "added" is the batcher's own share.
    through_batcher.sort()
    direct.sort()
    batcher_p50 = nearest_rank(through_batcher, 0.50) * 1000
    direct_p50 = nearest_rank(direct, 0.50) * 1000
    return OverheadResult(
        model="sync null model via executor" if sync else "async null model",
        requests=len(through_batcher),
        batcher_p50_ms=batcher_p50,
        batcher_p99_ms=nearest_rank(through_batcher, 0.99) * 1000,
        direct_p50_ms=direct_p50,
        added_p50_ms=batcher_p50 - direct_p50,
    )


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    levels: list[LevelResult] = []
    overhead: list[OverheadResult] = []
    overhead_s = min(args.duration, 1.0)
    for round_ in range(1, args.repeat + 1):
        for concurrency in args.concurrency:
            level = await run_level(args, concurrency, round_)
            levels.append(level)
            print_level(level)
        for sync in (False, True):
            result = await run_overhead(overhead_s, sync)
            overhead.append(result)
            print_overhead(result)
    return {
        "params": {
            "cost_ms": {"a": args.cost.fixed_ms, "b": args.cost.per_sample_ms},
            "max_batch_size": args.max_batch_size,
            "max_inflight_batches": args.max_inflight_batches,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "items_per_request": args.items,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "loop": args.loop,
            "python": sys.version.split()[0],
        },
        "theoretical_formula": FORMULA,
        "device_ceiling_items_per_s": args.cost.max_throughput(args.max_batch_size),
        "levels": [asdict(level) for level in levels],
        "overhead": [asdict(result) for result in overhead],
    }


HEADER = (
    f"{'round':>5} {'conc':>5} {'items/s':>9} {'theory':>9} {'fraction':>8} {'mean_bs':>7} "
    f"{'p50_ms':>8} {'p99_ms':>8} {'device':>6}"
)


def print_level(level: LevelResult) -> None:
    print(
        f"{level.round:>5} {level.concurrency:>5} {level.items_per_s:>9.1f} "
        f"{level.theoretical_items_per_s:>9.1f} {level.fraction_of_theoretical:>8.3f} "
        f"{level.mean_batch_size:>7.2f} {level.p50_ms:>8.2f} {level.p99_ms:>8.2f} {level.device_utilisation:>6.1%}",
        flush=True,
    )


def print_overhead(result: OverheadResult) -> None:
    print(
        f"added p50 latency at concurrency 1, {result.model}: {result.added_p50_ms:.4f} ms "
        f"(through batcher p50 {result.batcher_p50_ms:.4f} ms, p99 {result.batcher_p99_ms:.4f} ms; "
        f"direct p50 {result.direct_p50_ms:.4f} ms; {result.requests} requests)",
        flush=True,
    )


def _concurrency(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"concurrency must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return values


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--cost", type=parse_cost, default=CostModel(8.0, 0.25), help="A+B in ms: a batch of n costs A + B*n (8+0.25)")
    add("--max-batch-size", type=_positive(int), default=32)
    add("--max-inflight-batches", type=_positive(int), default=2)
    add("--max-queue-delay-ms", type=float, default=0.0)
    add("--items", type=_positive(int), default=1, help="samples per request (default 1)")
    add("--duration", type=_positive(float), default=3.0, help="measured seconds per concurrency level")
    add("--warmup", type=float, default=None, help="unmeasured seconds per level (default: 20%% of it, <= 0.5)")
    add("--concurrency", type=_concurrency, default=[1, 8, 32, 64], help="comma-separated client counts")
    add("--repeat", type=_positive(int), default=1, help="run the whole sweep this many times")
    add("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
        help="event loop; auto: uvloop when installed, as uvicorn (and so the server) picks it")
    add("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.loop == "auto":
        args.loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if args.warmup is None:
        args.warmup = min(0.5, args.duration * 0.2)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cost: CostModel = args.cost
    print(
        f"batcher bench: cost {cost.fixed_ms:g}+{cost.per_sample_ms:g} ms (a + b*n per batch), "
        f"max_batch_size {args.max_batch_size}, max_inflight_batches {args.max_inflight_batches}, "
        f"max_queue_delay_ms {args.max_queue_delay_ms:g}, "
        f"{args.items} item(s)/request, {args.duration:g} s per level, {args.loop} loop"
    )
    print(f"theoretical: {FORMULA}; device ceiling {cost.max_throughput(args.max_batch_size):.1f} items/s")
    print(HEADER, flush=True)
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(run_all(args))
    else:
        results = asyncio.run(run_all(args))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
