"""The bench's results: per-repeat samples in, medians, ratios and a printed table out."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.loadtest.http_load import LoadClientError, LoadResult
from batchserve.loadtest.server_process import ServerStartError
from batchserve.model_repo.errors import ModelRepoError

if TYPE_CHECKING:
    from batchserve.loadtest.bench import BenchSettings

SATURATION_TARGET = 0.95  # server images/s over the in-process limit, at the highest concurrency
LATENCY_TARGET = 1.2  # server p50 at concurrency 1 over one image's in-process latency


@dataclass
class Samples:
    """Per-repeat samples of everything measured, keyed by batch size or concurrency."""

    ort: dict[int, list[float]] = field(default_factory=dict)
    pipeline: dict[int, list[float]] = field(default_factory=dict)
    limit_at_load: dict[int, list[float]] = field(default_factory=dict)
    server: dict[int, list[LoadResult]] = field(default_factory=dict)
    single_ms: list[float] = field(default_factory=list)
    simulated: dict[int, list[LoadResult]] = field(default_factory=dict)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _load_summary(results: list[LoadResult]) -> dict[str, Any]:
    return {
        "images_per_s": _median([r.ok_per_second for r in results]),
        "p50_ms": _median([r.p50_ms for r in results if r.p50_ms is not None]),
        "p99_ms": _median([r.p99_ms for r in results if r.p99_ms is not None]),
        "errors": sum(r.errors for r in results),
        "samples": [asdict(r) for r in results],
    }


def summarise(settings: BenchSettings, samples: Samples, info: dict[str, Any]) -> dict[str, Any]:
    server: dict[str, Any] = {}
    for c, results in samples.server.items():
        entry = _load_summary(results)
        limits = samples.limit_at_load[c]
        ratios = [r.ok_per_second / lim for r, lim in zip(results, limits, strict=True) if lim > 0]
        entry["limit_images_per_s"] = _median(limits)
        entry["ratio_to_limit"] = _median(ratios)
        entry["ratio_samples"] = ratios
        server[str(c)] = entry
    c1 = samples.server.get(1, [])
    latency_ratios = [r.p50_ms / s for r, s in zip(c1, samples.single_ms, strict=False) if r.p50_ms and s > 0]
    top = str(max(settings.concurrency))
    saturation = server[top]["ratio_to_limit"] if top in server else None
    latency_ratio = _median(latency_ratios)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info["machine"],
        "settings": {**asdict(settings), "model_repo": str(settings.model_repo), "image": str(settings.image),
                     "sim_image": str(settings.sim_image) if settings.sim_image else None,
                     "image_bytes": settings.image.stat().st_size, "client": info["client"]},
        "model": info["model"],
        "ort_only": {str(b): {"images_per_s": _median(v), "samples": v} for b, v in samples.ort.items()},
        "inprocess": {str(b): {"images_per_s": _median(v), "samples": v} for b, v in samples.pipeline.items()},
        "single_image_ms": {"p50": _median(samples.single_ms), "samples": samples.single_ms},
        "server": server,
        "c1_latency_ratio": latency_ratio,
        "c1_latency_ratio_samples": latency_ratios,
        "saturation_ratio": saturation,
        "targets": {
            "saturation_ratio_min": SATURATION_TARGET,
            "c1_latency_ratio_max": LATENCY_TARGET,
            "saturation_met": saturation is not None and saturation >= SATURATION_TARGET,
            "c1_latency_met": latency_ratio is not None and latency_ratio <= LATENCY_TARGET,
        },
        "simulated": None,
    }
    if samples.simulated:
        sim = info["simulated"]
        by_c = {}
        for c, results in samples.simulated.items():
            entry = _load_summary(results)
            entry["fraction_of_max"] = (entry["images_per_s"] or 0.0) / sim["theoretical_images_per_s"]
            by_c[str(c)] = entry
        report["simulated"] = {**sim, "by_concurrency": by_c}
    return report


def machine() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import PIL

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["model"]
    out = [
        f"batchserve bench {report['date']}: {m['name']} on {', '.join(m['providers'])}, "
        f"{report['machine']['cpus']} cpus, {s['duration']:g} s x {s['repeats']} repeats, client {s['client']}",
        "",
        "in process (images/s, median)",
        f"{'batch':>6} {'ORT only':>10} {'decode+ORT':>11}",
    ]
    for b, v in report["inprocess"].items():
        out.append(f"{b:>6} {_fmt(report['ort_only'][b]['images_per_s']):>10} {_fmt(v['images_per_s']):>11}")
    out += ["", f"server (POST /v1/classify, {s['image_bytes'] / 1024:.0f} KB JPEG, one image per request)",
            f"{'conc':>6} {'images/s':>9} {'limit':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for c, v in report["server"].items():
        out.append(f"{c:>6} {_fmt(v['images_per_s']):>9} {_fmt(v['limit_images_per_s']):>8} "
                   f"{_fmt(v['ratio_to_limit'], '.2f'):>6} {_fmt(v['p50_ms']):>8} {_fmt(v['p99_ms']):>8} "
                   f"{v['errors']:>7}")
    t = report["targets"]
    out += [
        "",
        f"saturation (c={max(map(int, report['server']))}): server/limit = {_fmt(report['saturation_ratio'], '.2f')} "
        f"(target >= {t['saturation_ratio_min']}) {'met' if t['saturation_met'] else 'MISSED'}",
        f"latency at c=1: server p50 / in-process single image "
        f"({_fmt(report['single_image_ms']['p50'])} ms) = {_fmt(report['c1_latency_ratio'], '.2f')} "
        f"(target <= {t['c1_latency_ratio_max']}) {'met' if t['c1_latency_met'] else 'MISSED'}",
    ]
    sim = report["simulated"]
    if sim:
        out += ["", f"simulated accelerator {sim['cost_ms']} per batch, max batch {sim['max_batch_size']}: "
                    f"theoretical maximum {sim['theoretical_images_per_s']:.1f} images/s "
                    f"({sim['image_bytes'] / 1024:.0f} KB image per request)",
                f"{'conc':>6} {'images/s':>9} {'of max':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
        for c, v in sim["by_concurrency"].items():
            out.append(f"{c:>6} {_fmt(v['images_per_s']):>9} {_fmt(v['fraction_of_max'], '.2f'):>7} "
                       f"{_fmt(v['p50_ms']):>8} {_fmt(v['p99_ms']):>8} {v['errors']:>7}")
    return "\n".join(out)


Report = dict[str, Any]


def run_and_print(run: Callable[[Callable[[str], None]], Report], render_report: Callable[[Report], str],
                  json_out: Path | None) -> int:
    """Run a benchmark (progress to stderr), print its report (and write it as JSON to `json_out`).
    Returns the exit status: 0 when it ran, 1 when a server, the load client or the model failed."""
    try:
        report = run(lambda line: print(line, file=sys.stderr, flush=True))
    except (ServerStartError, LoadClientError, ModelRepoError, OSError) as exc:
        print(f"batchserve bench: {exc}", file=sys.stderr)
        return 1
    print(render_report(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON: {json_out}")
    return 0
