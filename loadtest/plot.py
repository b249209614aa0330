"""Requests/s and latency percentiles over time, from Locust's `<prefix>_stats_history.csv`."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class History:
    """Aggregated rows, one per second. Locust writes the percentiles of the last ~10 s when run
    with --csv-full-history (a rolling window), else since the start; None while nothing finished."""

    seconds: list[float] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float | None] = field(default_factory=list)
    p99_ms: list[float | None] = field(default_factory=list)


def _maybe(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


def read_history(path: Path) -> History:
    history = History()
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    if not rows:
        return history
    start = int(rows[0]["Timestamp"])
    for row in rows:
        history.seconds.append(int(row["Timestamp"]) - start)
        history.users.append(int(row["User Count"]))
        history.rps.append(float(row["Requests/s"]))
        # Locust writes 0 for the rolling-window percentiles while the window holds no request yet.
        idle = float(row["Requests/s"]) == 0.0
        history.p50_ms.append(None if idle else _maybe(row["50%"]))
        history.p99_ms.append(None if idle else _maybe(row["99%"]))
    return history


def plot_history(history_csv: Path, png: Path, title: str) -> Path:
    """Write a two-panel PNG (throughput above, latency below); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and no GUI toolkit in the image
    import matplotlib.pyplot as plt

    history = read_history(history_csv)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    try:
        top.plot(history.seconds, history.rps, color="tab:blue", label="requests/s")
        top.set_ylabel("requests/s")
        top.set_title(title)
        top.grid(alpha=0.3)
        users = top.twinx()
        users.plot(history.seconds, history.users, color="tab:gray", linestyle=":", label="users")
        users.set_ylabel("users")
        for name, values, color in (("p50", history.p50_ms, "tab:green"), ("p99", history.p99_ms, "tab:red")):
            points = [(t, v) for t, v in zip(history.seconds, values, strict=True) if v is not None]
            bottom.plot([t for t, _ in points], [v for _, v in points], color=color, label=name)
        bottom.set_ylabel("latency (ms)")
        bottom.set_xlabel("seconds since start")
        bottom.grid(alpha=0.3)
        bottom.legend(loc="upper left")
        if not history.seconds:
            top.text(0.5, 0.5, "no samples", ha="center", va="center", transform=top.transAxes)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=100)
    finally:
        plt.close(fig)
    return png
