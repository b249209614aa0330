"""`batchserve bench`: how close the HTTP server comes to what this machine can do without HTTP.

In one run it measures, interleaved and repeated (this machine's CPU speed jumps by about 2.5x
within seconds, so only measurements taken next to each other compare):
  (a) the in-process limit: decode + preprocess + ONNX Runtime at several batch sizes;
  (b) ONNX Runtime alone at those sizes;
  (c) `batchserve serve` in a child process under closed-loop load (wrk) at several concurrencies,
      each right after a fresh measurement of the limit, as a ratio of it; at concurrency 1 the
      server's median latency against one image's in-process latency;
  (d) a server with the simulated accelerator (`--simulate-model A+B`), as a fraction of its
      theoretical maximum max_batch / (A + B * max_batch).
Medians go to a table and, with every sample, to JSON (--json). `--overload` measures what the
server does with more work than it can take instead (see bench_overload.py); `--queue`, what
queue mode costs against direct mode (see bench_queue.py); `--remote`, what a web tier forwarding
to a backend costs against the backend alone (see bench_remote.py).
"""

from __future__ import annotations

import argparse
import mimetypes
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.client.http import HttpError, request_json
from batchserve.loadtest.bench_report import Samples, machine, render, run_and_print, summarise
from batchserve.loadtest.http_load import LoadClientError, run_load, wrk_available
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess, start_servers, stop_servers
from batchserve.model_repo.repository import DEFAULT_REPOSITORY

if TYPE_CHECKING:  # ONNX Runtime loads only when a bench runs, not when the CLI parser is built
    from batchserve.batching.cost import CostModel
    from batchserve.loadtest.inprocess import InProcess


@dataclass(frozen=True)
class BenchSettings:
    duration: float = 5.0
    repeats: int = 3
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    model: str = "efficientnet_lite0"
    model_repo: Path = DEFAULT_REPOSITORY
    simulate_cost: str | None = "40+2"
    image: Path = SAMPLE_PHOTO
    sim_image: Path | None = None
    """Image for the simulated server; None: a generated 256 x 256 JPEG (see small_jpeg)."""
    client: str = "auto"

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.repeats < 1:
            raise ValueError("--duration must be positive and --repeats at least 1")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("--concurrency needs positive integers, e.g. 1,8,32,64")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("--batch-sizes needs positive integers, e.g. 1,4,8,16,32")
        if self.client not in ("auto", "wrk", "aiohttp"):
            raise ValueError(f"--client must be auto, wrk or aiohttp, not {self.client!r}")


def model_info(server: ServerProcess, name: str) -> dict[str, Any]:
    try:
        return request_json(f"{server.url}/v1/models/{name}", timeout=10)["versions"][-1]
    except HttpError as exc:
        raise LoadClientError(f"cannot read model {name!r} from {server.url}: {exc.message}") from None


def small_jpeg(folder: Path) -> Path:
    """A 256 x 256 JPEG (4 KB) for the simulated server. The simulated device stands for a GPU,
    where the CPU only decodes and serves HTTP; decoding the 34 KB test photo costs about three
    times as much as this, and at the simulated device's ~300 images/s that alone would use most
    of two cores, so the run would measure the decoder instead of the batching."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    pixels = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    path = folder / "sim-256.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=85)
    return path


def content_type(path: Path) -> str:
    guessed = mimetypes.guess_type(path.name)[0]
    # The server sniffs the format of an octet-stream body from its magic bytes.
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


# The server's count of classification requests admitted and not yet answered: unlike the
# batcher's counts, it covers requests still being read or decoded.
ADMITTED_GAUGE = "batchserve_admission_inflight_requests"


def admitted_requests(server: ServerProcess) -> int | None:
    """The server's ADMITTED_GAUGE, or None when its /metrics cannot be read or does not carry it."""
    try:
        # A loopback http URL the bench built itself.
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == ADMITTED_GAUGE:
            try:
                return int(float(value))
            except ValueError:
                return None
    return None


def wait_idle(server: ServerProcess, model: str, timeout: float = 120.0, quiet_s: float = 0.5) -> None:
    """Block until the server has finished what the load left. A closed-loop client stops sending
    when its time is up, but the requests it left in the server still decode and run; measuring
    the next thing while they do would charge their CPU time to it.

    Finished means: no queued or running batch, no new submission and no admitted request
    unanswered (ADMITTED_GAUGE), on two polls in a row. A server that does not export the gauge
    must instead show no new submission for `quiet_s` (a request still decoding is not in the
    batcher's counts yet; the decode pool clears its backlog well within that)."""
    deadline = time.monotonic() + timeout
    last_total, quiet_since, idle_polls = -1, time.monotonic(), 0
    while time.monotonic() < deadline:
        stats = model_info(server, model)["stats"]
        now = time.monotonic()
        if stats["queue_depth"] or stats["inflight_batches"] or stats["requests_total"] != last_total:
            last_total, quiet_since, idle_polls = stats["requests_total"], now, 0
        else:
            admitted = admitted_requests(server)
            idle_polls = idle_polls + 1 if admitted == 0 else 0
            if idle_polls >= 2 or (admitted is None and now - quiet_since >= quiet_s):
                return
        time.sleep(0.05)
    raise LoadClientError(f"{server.url} still had work {timeout:.0f} s after the load stopped")


def _round(settings: BenchSettings, inproc: InProcess, server: ServerProcess, sim: ServerProcess | None,
           samples: Samples, say: Callable[[str], None]) -> None:
    d, image = settings.duration, settings.image
    rates: dict[int, float] = {}
    for b in settings.batch_sizes:
        samples.ort.setdefault(b, []).append(inproc.ort_rate(b, d).per_second)
        rates[b] = inproc.pipeline_rate(b, d).per_second
        samples.pipeline.setdefault(b, []).append(rates[b])
        say(f"  batch {b:>3}: ORT {samples.ort[b][-1]:8.1f} img/s, pipeline {rates[b]:8.1f} img/s")
    best = max(rates, key=rates.__getitem__)
    for c in settings.concurrency:
        limit = inproc.pipeline_rate(best, d).per_second
        samples.limit_at_load.setdefault(c, []).append(limit)
        if c == 1:
            samples.single_ms.append(inproc.single_latency(d).p50_ms)
        result = run_load(server.url + f"/v1/classify?model={settings.model}", image, content_type(image), c, d,
                          settings.client)
        wait_idle(server, settings.model)
        samples.server.setdefault(c, []).append(result)
        say(f"  c={c:>3}: limit {limit:8.1f} img/s (batch {best}), server {result.ok_per_second:8.1f} img/s, "
            f"p50 {result.p50_ms or 0:.1f} ms, errors {result.errors}")
    if sim is not None:
        measure_simulated(settings, sim, samples, say)


def measure_simulated(settings: BenchSettings, sim: ServerProcess, samples: Samples,
                      say: Callable[[str], None]) -> None:
    """One round on the simulated accelerator: a load at each concurrency."""
    sim_image = settings.sim_image or settings.image
    for c in settings.concurrency:
        result = run_load(sim.url + "/v1/classify?model=simulated", sim_image, content_type(sim_image), c,
                          settings.duration, settings.client)
        wait_idle(sim, "simulated")
        samples.simulated.setdefault(c, []).append(result)
        say(f"  simulated c={c:>3}: {result.ok_per_second:8.1f} img/s, p50 {result.p50_ms or 0:.1f} ms")


def simulated_info(sim: ServerProcess, cost: CostModel, sim_image: Path) -> dict[str, Any]:
    """What the report says of the simulated accelerator besides its loads."""
    max_batch = int(model_info(sim, "simulated")["batching"]["max_batch_size"])
    return {"cost_ms": str(cost), "max_batch_size": max_batch, "image": str(sim_image),
            "image_bytes": sim_image.stat().st_size, "theoretical_images_per_s": cost.max_throughput(max_batch)}


def run_bench(settings: BenchSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from batchserve.batching.cost import CostModel
    from batchserve.loadtest.inprocess import InProcess

    cost = CostModel.parse(settings.simulate_cost) if settings.simulate_cost else None
    image = settings.image.read_bytes()
    client = settings.client if settings.client != "auto" else ("wrk" if wrk_available() else "aiohttp")
    scratch = Path(tempfile.mkdtemp(prefix="batchserve-bench-"))
    servers: list[ServerProcess] = []
    inproc: InProcess | None = None
    try:
        sim_image = settings.sim_image or small_jpeg(scratch)
        settings = BenchSettings(**{**asdict(settings), "client": client, "sim_image": sim_image})
        say(f"loading {settings.model} in process and in a server (client: {client})")
        model_args = ["--models", settings.model, "--model-repo", str(settings.model_repo.resolve()), "--no-events"]
        sim_args = ["--simulate-model", settings.simulate_cost or "", "--no-events"]
        inproc = InProcess(settings.model, settings.model_repo, image)  # an unknown model fails here
        servers = start_servers([model_args, sim_args] if cost is not None else [model_args], log_dir=scratch)
        server, sim = servers[0], (servers[1] if cost is not None else None)
        info: dict[str, Any] = {"machine": machine(), "client": client}
        model = model_info(server, settings.model)
        info["model"] = {"name": settings.model, "providers": model["execution_providers"],
                         "in_process_providers": inproc.providers,
                         "max_batch_size": model["batching"]["max_batch_size"],
                         "max_inflight_batches": model["batching"]["max_inflight_batches"]}
        if sim is not None and cost is not None:
            info["simulated"] = simulated_info(sim, cost, sim_image)
        say("warming up")
        loads = [(server, settings.model, settings.image)] + ([(sim, "simulated", sim_image)] if sim else [])
        warm_up(loads, max(settings.concurrency), client, partial(inproc.warmup, list(settings.batch_sizes)))
        samples = Samples()
        for r in range(settings.repeats):
            say(f"round {r + 1} of {settings.repeats}")
            _round(settings, inproc, server, sim, samples, say)
        return summarise(settings, samples, info)
    finally:
        stop_servers(servers)
        if inproc is not None:
            inproc.close()
        shutil.rmtree(scratch, ignore_errors=True)


def warm_up(loads: Sequence[tuple[ServerProcess, str, Path]], concurrency: int, client: str,
            in_process: Callable[[], None]) -> None:
    """One second of load on each server and the in-process warm-up, all at once: nothing is
    measured yet, so they may share the cores, and a run pays the warm-up once, not per server."""

    def load(server: ServerProcess, model: str, body: Path) -> None:
        run_load(f"{server.url}/v1/classify?model={model}", body, content_type(body), concurrency, 1.0, client)
        wait_idle(server, model)

    with ThreadPoolExecutor(len(loads)) as pool:
        pending = [pool.submit(load, *target) for target in loads]
        in_process()
        for future in pending:
            future.result()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchSettings()
    parser.add_argument("--duration", type=float, default=d.duration, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="interleaved rounds (medians are reported)")
    parser.add_argument("--concurrency", type=_int_list, default=d.concurrency,
                        help="client connections, e.g. 1,8,32,64")
    parser.add_argument("--batch-sizes", type=_int_list, default=d.batch_sizes, help="in-process batch sizes")
    parser.add_argument("--model", default=d.model, help="model to measure (must be built)")
    parser.add_argument("--model-repo", type=Path, default=d.model_repo, help="model repository directory")
    parser.add_argument("--simulate-cost", default=d.simulate_cost,
                        help="cost A+B (ms) of the simulated accelerator; 'off' skips that part")
    parser.add_argument("--image", type=Path, default=d.image,
                        help="image posted to the server (default: a sample photo)")
    parser.add_argument("--sim-image", type=Path, default=None,
                        help="image posted to the simulated server (default: a generated 256x256 JPEG)")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default=d.client,
                        help="load client (auto: wrk when installed)")
    parser.add_argument("--json", type=Path, default=None, dest="json_out", help="write the full results here")
    from batchserve.loadtest.bench_overload import add_arguments as add_overload_arguments
    from batchserve.loadtest.bench_queue import add_arguments as add_queue_arguments
    from batchserve.loadtest.bench_remote import add_arguments as add_remote_arguments

    add_overload_arguments(parser)
    add_queue_arguments(parser)
    add_remote_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    from batchserve.batching.cost import CostModel

    if sum((args.overload, args.queue, args.remote)) > 1:
        print("batchserve bench: --overload, --queue and --remote measure different things; pass one of them",
              file=sys.stderr)
        return 2
    if args.queue:
        from batchserve.loadtest.bench_queue import run_from_args as run_queue

        return run_queue(args)
    if args.remote:
        from batchserve.loadtest.bench_remote import run_from_args as run_remote

        return run_remote(args)
    if args.overload:
        from batchserve.loadtest.bench_overload import run_from_args as run_overload

        return run_overload(args)
    try:
        settings = BenchSettings(
            duration=args.duration, repeats=args.repeats, concurrency=args.concurrency,
            batch_sizes=args.batch_sizes, model=args.model, model_repo=args.model_repo,
            simulate_cost=None if str(args.simulate_cost).lower() in ("off", "none", "") else args.simulate_cost,
            image=args.image, sim_image=args.sim_image, client=args.client,
        )
        if settings.simulate_cost:
            CostModel.parse(settings.simulate_cost)  # a malformed cost is a usage error, found before any work
        for path in (settings.image, settings.sim_image):
            if path is not None and not path.is_file():
                raise ValueError(f"image {path} does not exist")
        if settings.client == "wrk" and not wrk_available():
            raise ValueError("wrk is not installed (apt-get install wrk), use --client aiohttp")
    except ValueError as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 2
    return run_and_print(lambda say: run_bench(settings, say=say), render, args.json_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchserve bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
