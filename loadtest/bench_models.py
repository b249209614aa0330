"""`batchserve bench --model a,b`: models side by side on this machine (e.g. a float model and its
int8 variant).

For each model, in one run and interleaved (this machine's CPU speed jumps by about 2.5x within
seconds, so only measurements taken next to each other compare), repeated `--repeats` times:
  - the network alone: ONNX Runtime images/s on a ready batch of 32;
  - one lone request in process: decode + preprocess + inference + ranking of one image (ms);
  - the HTTP server (one `batchserve serve` holding every model) under closed-loop load at
    concurrency 32 (images/s), and a lone request over HTTP (p50 ms at concurrency 1).
The table gives medians, and each figure's ratio to the first model's as the median of the
ratios taken round by round.
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.loadtest.bench import content_type, model_info, wait_idle, warm_up
from batchserve.loadtest.bench_report import machine, run_and_print
from batchserve.loadtest.http_load import run_load, wrk_available
from batchserve.loadtest.samples import SAMPLE_PHOTO
from batchserve.loadtest.server_process import ServerProcess
from batchserve.model_repo.repository import DEFAULT_REPOSITORY

if TYPE_CHECKING:  # ONNX Runtime loads only when a bench runs, not when the CLI parser is built
    from batchserve.loadtest.inprocess import InProcess

NETWORK_BATCH = 32
SERVER_CONCURRENCY = 32
METRICS = ("network_b32_images_per_s", "lone_inprocess_ms", "server_c32_images_per_s", "server_c1_p50_ms")
HEADINGS = {
    "network_b32_images_per_s": "ORT b32 img/s",
    "lone_inprocess_ms": "lone in-proc ms",
    "server_c32_images_per_s": "server c32 img/s",
    "server_c1_p50_ms": "server c1 p50 ms",
}


@dataclass(frozen=True)
class ModelsBenchSettings:
    models: tuple[str, ...]
    duration: float = 5.0
    repeats: int = 3
    model_repo: Path = DEFAULT_REPOSITORY
    image: Path = SAMPLE_PHOTO
    client: str = "auto"

    def __post_init__(self) -> None:
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise ValueError("--model needs two or more different comma-separated models, e.g. a,b")
        if self.duration <= 0 or self.repeats < 1:
            raise ValueError("--duration must be positive and --repeats at least 1")
        if self.client not in ("auto", "wrk", "aiohttp"):
            raise ValueError(f"--client must be auto, wrk or aiohttp, not {self.client!r}")
        if not self.image.is_file():
            raise ValueError(f"image {self.image} does not exist")


@dataclass
class ModelSamples:
    """Per-repeat samples of one model's four figures."""

    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    errors: int = 0


def parse_models(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _round(
    settings: ModelsBenchSettings,
    inproc: dict[str, InProcess],
    server: ServerProcess,
    client: str,
    samples: dict[str, ModelSamples],
    say: Callable[[str], None],
) -> None:
    d, image = settings.duration, settings.image
    # Each figure is taken for every model in turn before the next figure, so the models of one
    # figure are measured seconds apart.
    for name in settings.models:
        samples[name].values["network_b32_images_per_s"].append(inproc[name].ort_rate(NETWORK_BATCH, d).per_second)
    for name in settings.models:
        samples[name].values["lone_inprocess_ms"].append(inproc[name].single_latency(d).p50_ms)
    for concurrency, metric in ((SERVER_CONCURRENCY, "server_c32_images_per_s"), (1, "server_c1_p50_ms")):
        for name in settings.models:
            result = run_load(
                f"{server.url}/v1/classify?model={name}", image, content_type(image), concurrency, d, client
            )
            wait_idle(server, name)
            samples[name].errors += result.errors
            value = result.ok_per_second if concurrency > 1 else (result.p50_ms or 0.0)
            samples[name].values[metric].append(value)
    for name in settings.models:
        line = ", ".join(f"{HEADINGS[m]} {samples[name].values[m][-1]:.1f}" for m in METRICS)
        say(f"  {name}: {line}")


def summarise(settings: ModelsBenchSettings, samples: dict[str, ModelSamples], info: dict[str, Any]) -> dict[str, Any]:
    first = samples[settings.models[0]]
    models: dict[str, Any] = {}
    for name in settings.models:
        entry: dict[str, Any] = {"errors": samples[name].errors, **info["models"][name]}
        for metric in METRICS:
            values = samples[name].values[metric]
            # Ratios are paired by round (taken seconds apart) before the median: the CPU's speed
            # changes between rounds, so a ratio of medians would compare different moments.
            ratios = [v / b for v, b in zip(values, first.values[metric], strict=True) if b > 0]
            entry[metric] = {
                "median": statistics.median(values),
                "samples": values,
                "ratio_to_first": statistics.median(ratios) if ratios else None,
                "ratio_samples": ratios,
            }
        models[name] = entry
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info["machine"],
        "settings": {
            "models": list(settings.models),
            "duration": settings.duration,
            "repeats": settings.repeats,
            "model_repo": str(settings.model_repo),
            "image": str(settings.image),
            "image_bytes": settings.image.stat().st_size,
            "client": info["client"],
            "network_batch": NETWORK_BATCH,
            "server_concurrency": SERVER_CONCURRENCY,
        },
        "models": models,
    }


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    first = s["models"][0]
    width = max(len("model"), *(len(name) for name in s["models"]))
    out = [
        f"batchserve bench {report['date']}: {', '.join(s['models'])}, {report['machine']['cpus']} cpus, "
        f"{s['duration']:g} s x {s['repeats']} repeats (medians), client {s['client']}",
        "",
        f"{'model':<{width}} " + " ".join(f"{HEADINGS[m]:>17}" for m in METRICS) + f" {'errors':>7}",
    ]
    for name, entry in report["models"].items():
        cells = []
        for metric in METRICS:
            value, ratio = entry[metric]["median"], entry[metric]["ratio_to_first"]
            shown = f"{value:.1f}" if name == first or ratio is None else f"{value:.1f} ({ratio:.2f}x)"
            cells.append(f"{shown:>17}")
        out.append(f"{name:<{width}} " + " ".join(cells) + f" {entry['errors']:>7}")
    out += [
        "",
        f"(ratios are to {first}, medians of per-round ratios; img/s higher is better, ms lower is better.",
        f" ORT b{s['network_batch']}: the network alone on a ready batch; lone in-proc: one image decoded, run and",
        f" ranked in process; server: POST /v1/classify with a {s['image_bytes'] / 1024:.0f} KB JPEG, one image per",
        " request)",
    ]
    return "\n".join(out)


def run_models_bench(settings: ModelsBenchSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from batchserve.loadtest.inprocess import InProcess

    image = settings.image.read_bytes()
    client = settings.client if settings.client != "auto" else ("wrk" if wrk_available() else "aiohttp")
    scratch = Path(tempfile.mkdtemp(prefix="batchserve-bench-models-"))
    inproc: dict[str, InProcess] = {}
    server: ServerProcess | None = None
    try:
        say(f"loading {', '.join(settings.models)} in process and in one server (client: {client})")
        # The server starts (imports, model loads) while the in-process runners load.
        server = ServerProcess(
            "--models", ",".join(settings.models), "--model-repo", str(settings.model_repo.resolve()), "--no-events",
            cwd=scratch,
        ).launch()
        for name in settings.models:
            inproc[name] = InProcess(name, settings.model_repo, image)
        server.wait_ready(server.ready_timeout)
        info: dict[str, Any] = {"machine": machine(), "client": client, "models": {}}
        for name in settings.models:
            served = model_info(server, name)
            info["models"][name] = {
                "version": served.get("version"),
                "providers": served["execution_providers"],
                "in_process_providers": inproc[name].providers,
                "max_batch_size": served["batching"]["max_batch_size"],
            }
        say("warming up")

        def warm_in_process() -> None:
            for runner in inproc.values():
                runner.warmup([1, NETWORK_BATCH])

        warm_up([(server, name, settings.image) for name in settings.models], SERVER_CONCURRENCY, client,
                warm_in_process)
        samples = {name: ModelSamples() for name in settings.models}
        for r in range(settings.repeats):
            say(f"round {r + 1} of {settings.repeats}")
            _round(settings, inproc, server, client, samples, say)
        return summarise(settings, samples, info)
    finally:
        if server is not None:
            server.stop()
        for runner in inproc.values():
            runner.close()
        shutil.rmtree(scratch, ignore_errors=True)


def run_from_args(args: Any) -> int:
    """`batchserve bench --model a,b [--duration --repeats --model-repo --image --client --json]`."""
    try:
        settings = ModelsBenchSettings(
            models=parse_models(args.model),
            duration=args.duration,
            repeats=args.repeats,
            model_repo=args.model_repo,
            image=args.image,
            client=args.client,
        )
        if settings.client == "wrk" and not wrk_available():
            raise ValueError("wrk is not installed (apt-get install wrk), use --client aiohttp")
    except ValueError as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 2
    return run_and_print(lambda say: run_models_bench(settings, say=say), render, args.json_out)
