"""`batchserve bench --queue`: what queue mode costs against direct mode, on this machine.

It starts its own S3 + SQS (moto's server behind uvicorn, loadtest/moto_server.py), the deployment
(what `batchserve queue up` does), one `batchserve worker`, a direct-mode server and a queue-mode
web tier in front of that worker (events off everywhere). With two CPUs or more (and without
`--no-pin`) it pins them once each is ready, so that moto's CPU is not counted as ours: moto and
the web tier on the first CPU; the worker, the direct server and the in-process reference on the
last. Without pinning everything shares every CPU. Then it measures in rounds, each side next to
the other (this machine's CPU speed jumps by about 2.5x within seconds, so only measurements taken
side by side compare):
  (a) the acceptance workload (50 labelled photos at once, loadtest/workload.py) through the web
      tier and through the direct server, in alternating order: wall time of each, and the ratio;
  (b) the worker draining a backlog of `--backlog` request messages at full speed (the worker is
      stopped while they are queued, then let go; the drain ends with the last response's
      SentTimestamp; the answers are read as they come, as a web tier reads them) over the
      in-process limit (decode + infer as `batchserve bench` measures it), measured just before and
      just after, on the worker's CPU when pinned: target >= 0.9. Beside it the CPU per image of
      the worker, of the in-process pipeline (their ratio is what the worker's own CPU allows,
      whatever else runs) and of moto;
  (c) at concurrency 1, POST /v1/classify of one photo through the web tier and through the direct
      server, alternating: the added p50 (target < 25 ms), and beside it, to tell moto's share from
      ours, (c1) the same seven S3/SQS calls a queued image makes (put, send, receive, get, put,
      send, receive) made back to back by this process, through the clients the tiers use, against
      the same moto, and (c2) the round trip through the worker without the web tier (put + send
      here, the worker, the reply received here), with the worker's own time for the image taken
      from its answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batchserve.jobs.config import INLINE_CEILING_BYTES, INLINE_DEFAULT_BYTES
from batchserve.loadtest.bench_report import run_and_print
from batchserve.loadtest.samples import SAMPLE_IMAGES, SAMPLE_PHOTO
from batchserve.model_repo.repository import DEFAULT_REPOSITORY

WORKER_RATIO_TARGET = 0.9  # one worker's drain rate over the in-process limit, at least
ADDED_P50_TARGET_MS = 25.0  # web tier p50 minus direct p50 at concurrency 1, below
WORKLOAD_IMAGES = 50
# The direct server beside the worker, on the same CPU: HTTP clients at once (as many as a full batch).
DIRECT_CONNECTIONS = 32


@dataclass(frozen=True)
class QueueBenchSettings:
    duration: float = 5.0  # seconds of each in-process limit and of each round's latency pairs
    repeats: int = 3
    # Long enough (7-8 s at 80 images/s) that the first batch's ramp and the last one's tail weigh little
    # against a steady rate, as the in-process limit is one.
    backlog: int = 600
    model: str = "efficientnet_lite0"
    model_repo: Path = DEFAULT_REPOSITORY
    image: Path = SAMPLE_PHOTO
    workload_images: Path = SAMPLE_IMAGES
    pin: bool = True  # moto and the web tier on one CPU, the model's processes on another
    inline_max_bytes: int = INLINE_DEFAULT_BYTES  # as the web tier's --queue-inline-max-bytes

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.repeats < 1:
            raise ValueError("--duration must be positive and --repeats at least 1")
        if self.backlog < 1:
            raise ValueError("--backlog must be at least 1")
        if not self.image.is_file():
            raise ValueError(f"image {self.image} does not exist")
        if not 0 <= self.inline_max_bytes <= INLINE_CEILING_BYTES:
            raise ValueError(f"--queue-inline-max-bytes must be in 0..{INLINE_CEILING_BYTES}")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(settings: QueueBenchSettings, samples: dict[str, list[Any]], info: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds of every measurement (`samples`: per kind, one entry per round)."""
    workloads, workers, latencies = (samples.get(k, []) for k in ("workload", "worker", "latency"))
    web_s = [w["web"]["seconds"] for w in workloads]
    direct_s = [w["direct"]["seconds"] for w in workloads]
    ratio = _median([w["ratio"] for w in workers])
    added = _median([c["added_p50_ms"] for c in latencies])
    step_p50 = {k: _median([c["p50_ms"][k] for c in latencies])
                for k in ("web", "direct", "chain", "through_worker", "worker_own")}
    chain_steps = {k: _median([c["chain_steps_p50_ms"][k] for c in latencies])
                   for k in (latencies[0]["chain_steps_p50_ms"] if latencies else {})}
    chain_cpu = {k: _median([c["chain_cpu_mean_ms"][k] for c in latencies]) for k in ("client_cpu", "moto_cpu")}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info["machine"],
        "settings": {**asdict(settings), "model_repo": str(settings.model_repo), "image": str(settings.image),
                     "workload_images": str(settings.workload_images), "image_bytes": info["image_bytes"],
                     "limit_batch_size": info["limit_batch_size"]},
        "workload": {
            "images": WORKLOAD_IMAGES,
            "web_seconds": _median(web_s), "direct_seconds": _median(direct_s),
            "ratio": _median([w / d for w, d in zip(web_s, direct_s, strict=True)]),
            **{f"{side}_{count}": min((w[side][count] for w in workloads), default=None)
               for side in ("web", "direct") for count in ("completed", "correct")},
            "samples": workloads,
        },
        "worker": {
            "backlog": settings.backlog,
            "images_per_s": _median([w["images_per_s"] for w in workers]),
            "limit_images_per_s": _median([(w["limit_before"] + w["limit_after"]) / 2 for w in workers]),
            "ratio": ratio,
            "moto_cpu_s_per_image": _median([w["moto_cpu_s"] / w["images"] for w in workers]),
            "worker_cpu_s_per_image": _median([w["worker_cpu_s"] / w["images"] for w in workers]),
            "limit_cpu_s_per_image": _median([w["limit_cpu_s_per_image"] for w in workers]),
            # What the worker's own CPU allows, whatever else ran: in-process CPU per image over the worker's.
            "cpu_ratio": _median([w["limit_cpu_s_per_image"] * w["images"] / w["worker_cpu_s"] for w in workers
                                  if w["worker_cpu_s"] > 0]),
            # HTTP on the same CPU: the direct server under DIRECT_CONNECTIONS clients, against the
            # same limit, and the worker against it.
            "direct_images_per_s": _median([w["direct_images_per_s"] for w in workers]),
            "direct_ratio": _median([w["direct_images_per_s"] / ((w["limit_before"] + w["limit_after"]) / 2)
                                     for w in workers]),
            "worker_vs_direct": _median([w["images_per_s"] / w["direct_images_per_s"] for w in workers
                                         if w["direct_images_per_s"] > 0]),
            "errors": sum(w["errors"] for w in workers),
            "samples": workers,
        },
        "latency": {
            "p50_ms": step_p50, "chain_steps_p50_ms": chain_steps, "chain_cpu_ms": chain_cpu,
            "added_p50_ms": added,
            "ours_ms": None if added is None or step_p50["chain"] is None else added - step_p50["chain"],
            "samples": latencies,
        },
        "targets": {
            "worker_ratio_min": WORKER_RATIO_TARGET, "added_p50_ms_max": ADDED_P50_TARGET_MS,
            "worker_ratio_met": ratio is not None and ratio >= WORKER_RATIO_TARGET,
            "added_p50_met": added is not None and added < ADDED_P50_TARGET_MS,
        },
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def where(pinning: dict[str, list[int]] | None, cpus: int) -> str:
    """Where the parts ran, in words."""
    if pinning is None:
        return f"not pinned: moto, the web tier, the worker, the direct server and the in-process reference share " \
               f"the {cpus} cpus"
    return (f"pinned: moto and the web tier on cpu {_cpus(pinning['moto'])}; the worker, the direct server and the "
            f"in-process reference on cpu {_cpus(pinning['worker'])}")


def _cpus(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def render(report: dict[str, Any]) -> str:
    s, m, t = report["settings"], report["machine"], report["targets"]
    w, k, c = report["workload"], report["worker"], report["latency"]
    p = c["p50_ms"]
    pinned = m["pinning"] is not None
    return "\n".join([
        f"batchserve bench --queue {report['date']}: {s['model']}, {m['cpus']} cpus ({m['processor']}), "
        f"moto {m['moto']}, one worker, events off, {s['repeats']} rounds, {s['duration']:g} s "
        f"per measurement; load average {m['load_average_1m']['before']:.1f} before the start, "
        f"{m['load_average_1m']['end']:.1f} at the end",
        where(m["pinning"], m["cpus"]),
        "",
        f"(a) the workload: {w['images']} labelled photos at once (medians of the rounds)",
        f"    web tier -> queue -> worker  {_fmt(w['web_seconds'], '.2f'):>6} s   answered "
        f"{w['web_completed']}/{w['images']}, correct {w['web_correct']}/{w['images']}",
        f"    direct server                {_fmt(w['direct_seconds'], '.2f'):>6} s   answered "
        f"{w['direct_completed']}/{w['images']}, correct {w['direct_correct']}/{w['images']}",
        f"    queue / direct               {_fmt(w['ratio'], '.2f'):>6}x",
        "",
        f"(b) one worker draining {k['backlog']} queued images ({s['image_bytes'] / 1024:.0f} KB JPEG, "
        + ("inside each message)" if s["image_bytes"] <= s["inline_max_bytes"] else "read from S3)"),
        f"    worker {_fmt(k['images_per_s'])} images/s, in-process limit {_fmt(k['limit_images_per_s'])} images/s "
        f"(batch {s['limit_batch_size']}): ratio {_fmt(k['ratio'], '.2f')} (target >= {t['worker_ratio_min']}) "
        f"{_met(t['worker_ratio_met'])}; error answers: {k['errors']}",
        f"    HTTP on the same cpu: the direct server {_fmt(k['direct_images_per_s'])} images/s with "
        f"{DIRECT_CONNECTIONS} connections (ratio {_fmt(k['direct_ratio'], '.2f')}); the worker drains "
        f"{_fmt(k['worker_vs_direct'], '.2f')}x the direct server's rate",
        f"    CPU per image: in process {_fmt(_ms(k['limit_cpu_s_per_image']))} ms, the worker "
        f"{_fmt(_ms(k['worker_cpu_s_per_image']))} ms (ratio {_fmt(k['cpu_ratio'], '.2f')}); moto "
        f"{_fmt(_ms(k['moto_cpu_s_per_image']))} ms " + ("on a cpu of its own" if pinned else
                                                       f"on the same {m['cpus']} cpus"),
        "",
        "(c) one image at a time (POST /v1/classify, concurrency 1), p50 ms",
        f"    web tier {_fmt(p['web'])}, direct {_fmt(p['direct'])}: added {_fmt(c['added_p50_ms'])} "
        f"(target < {t['added_p50_ms_max']:g}) {_met(t['added_p50_met'])}",
        f"    of it, moto: the 7 S3/SQS calls of a queued image, made in turn from one process "
        f"{_fmt(p['chain'])}; the rest (ours) {_fmt(c['ours_ms'])}",
        "      per call: " + ", ".join(f"{k} {_fmt(v)}" for k, v in c["chain_steps_p50_ms"].items() if k != "total"),
        f"      CPU of the 7 calls: the calling process (the tiers' S3/SQS clients) "
        f"{_fmt(c['chain_cpu_ms']['client_cpu'])}, "
        f"moto {_fmt(c['chain_cpu_ms']['moto_cpu'])}",
        f"    through the worker without the web tier {_fmt(p['through_worker'])} (the worker's own, receipt to "
        f"answer: {_fmt(p['worker_own'])})",
    ])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", action="store_true",
                        help="measure queue mode instead (starts moto, a worker, a web tier and a direct server): "
                             "the 50-photo workload through each, one worker's drain rate against the in-process "
                             "limit, and the added latency at concurrency 1 (uses --duration, --repeats, --model, "
                             "--model-repo, --image, --json)")
    parser.add_argument("--backlog", type=int, default=QueueBenchSettings.backlog,
                        help="with --queue: request messages the worker drains in each round")
    parser.add_argument("--queue-inline-max-bytes", dest="inline_max_bytes", type=int,
                        default=QueueBenchSettings.inline_max_bytes,
                        help="with --queue: the web tier's --queue-inline-max-bytes, and the same rule for the "
                             "messages the bench queues itself (0: every image is read from S3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="with --queue: leave every process on every cpu (by default moto and the web tier run "
                             "on the first cpu, the worker, the direct server and the in-process reference on the "
                             "last)")


def run_from_args(args: argparse.Namespace) -> int:
    from batchserve.loadtest.bench_queue_run import run_queue_bench

    try:
        settings = QueueBenchSettings(duration=args.duration, repeats=args.repeats, backlog=args.backlog,
                                      model=args.model, model_repo=args.model_repo, image=args.image, pin=args.pin,
                                      inline_max_bytes=args.inline_max_bytes)
    except ValueError as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 2
    return run_and_print(lambda say: run_queue_bench(settings, say=say), render, args.json_out)
