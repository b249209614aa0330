"""The `batchserve bench` and `batchserve loadtest` subcommands.

Imports of the measured packages (and of matplotlib) happen inside the handlers, so building the
`batchserve` parser stays cheap for every other subcommand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from batchserve.client.http import API_KEY_ENV, resolve_api_key
from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.targets import DEFAULT_TARGETS, TargetsError, parse_duration


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except TargetsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def _loadtest(args: argparse.Namespace) -> int:
    from batchserve.loadtest.locust_run import (
        EXIT_LOCUST,
        EXIT_MISSED,
        EXIT_PASS,
        EXIT_USAGE,
        LoadTestError,
        LoadTestOptions,
        check_url,
        default_out,
        run_loadtest,
        summary,
    )

    options = LoadTestOptions(
        url=args.url, profile=args.profile, targets=args.targets, out=args.out or default_out(args.profile),
        users=args.users, spawn_rate=args.spawn_rate, duration_s=args.duration, model=args.model,
        images=args.images, api_key=resolve_api_key(args.api_key),
        rate=args.rate, calibrate_s=args.calibrate, reference_rps=args.reference_rps,
    )
    try:
        url = check_url(options.url)
        result = run_loadtest(options)
    except (TargetsError, ValueError) as exc:
        print(f"batchserve loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LoadTestError as exc:
        print(f"batchserve loadtest: {exc}", file=sys.stderr)
        return EXIT_LOCUST
    print(summary(result, url))
    return EXIT_PASS if result.passed else EXIT_MISSED


def _bench(args: argparse.Namespace) -> int:
    if "," in args.model:
        from batchserve.loadtest.bench_models import run_from_args as run_models

        return run_models(args)
    if args.slo:
        from batchserve.loadtest.bench_slo import run_from_args as run_slo

        return run_slo(args)
    from batchserve.loadtest.bench import run_from_args

    return run_from_args(args)


def register(subparsers: Any) -> None:
    loadtest = subparsers.add_parser(
        "loadtest",
        help="run a Locust load profile against a server and check it against targets",
        description="Runs Locust headless against --url for the profile's duration, writes Locust's CSV and a "
                    "PNG plot to --out, prints target vs measured, and exits 1 when any target is missed "
                    "(2: bad arguments or targets file, 3: Locust failed). A relative profile (one that sets "
                    "`rate`) first calibrates the server's capacity with its users back to back, then offers "
                    "rate x capacity at a constant rate and judges that.",
    )
    loadtest.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    loadtest.add_argument("--profile", required=True, help="profile in the targets file (smoke, raw, multipart, mixed)")
    loadtest.add_argument("--targets", type=Path, default=DEFAULT_TARGETS,
                          help=f"targets file (default {DEFAULT_TARGETS})")
    loadtest.add_argument("--users", type=_positive_int, default=None,
                          help="concurrent users; of the calibration for relative profiles (default: the profile's)")
    loadtest.add_argument("--spawn-rate", type=_positive_float, default=None, help="users started per second")
    loadtest.add_argument("--duration", type=_duration, default=None,
                          help="run time, e.g. 30s or 2m; of the constant-rate phase for relative profiles")
    loadtest.add_argument("--model", default=None, help="model query parameter (default: the profile's)")
    loadtest.add_argument("--images", type=Path, default=SAMPLE_IMAGES,
                          help="folder of images to send (default: the shipped sample photos)")
    loadtest.add_argument("--out", type=Path, default=None, help="output folder (default out/loadtest/PROFILE-TIME)")
    loadtest.add_argument("--api-key", default=None, help=f"API key the users send (env {API_KEY_ENV})")
    loadtest.add_argument("--rate", type=_positive_float, default=None,
                          help="relative profiles: fraction of the calibrated capacity offered (default: profile's)")
    loadtest.add_argument("--calibrate", type=_duration, default=None,
                          help="relative profiles: how long the calibration runs, e.g. 10s (default: the profile's)")
    loadtest.add_argument("--reference-rps", type=_positive_float, default=None,
                          help="relative profiles: throughput the capacity is held against by min_capacity_ratio, "
                               "e.g. the in-process limit `batchserve bench` prints (default: the profile's "
                               "reference_rps, else that target is skipped)")
    loadtest.set_defaults(func=_loadtest)

    from batchserve.loadtest.bench import add_arguments

    bench = subparsers.add_parser(
        "bench",
        help="measure the server against the in-process limit on this machine",
        description="Interleaved, repeated measurements of ONNX Runtime alone, the in-process decode+infer "
                    "pipeline, the HTTP server (wrk) and the simulated accelerator; prints medians. With "
                    "--overload: an open loop at 4x the saturated throughput and a retry storm (goodput, "
                    "refusal latency, RSS growth, 5xx). With --queue: queue mode (moto, a worker, a web tier) "
                    "against direct mode. With --remote: a web tier forwarding to a simulated backend against "
                    "the backend alone (added latency, the web tier's CPU per request, throughput). With --slo: "
                    "the batcher's latency_slo_ms against static max_queue_delay_ms settings, in process on the "
                    "simulated accelerator (p99 and device time per image, open-loop Poisson load). With --model a,b: "
                    "the models side by side (network images/s at batch 32, a lone request in process, server "
                    "images/s at concurrency 32 and a lone request's p50 over HTTP).",
    )
    add_arguments(bench)
    from batchserve.loadtest.bench_slo import add_arguments as add_slo_arguments

    add_slo_arguments(bench)
    bench.set_defaults(func=_bench)
